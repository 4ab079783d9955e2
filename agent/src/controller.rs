//! The shape every agent subsystem has.
//!
//! A subsystem is a [`Controller`] in its own folder: it names its section
//! of the host plan ([`SectionKind`]), checks a section before the plan is
//! stored, takes deliveries, and runs until its tree is cancelled,
//! reconciling what exists on the host toward its section with one pure
//! diff ([`Reconcile`], driven by [`drive`]) and reporting what it
//! observes ([`Reporter`]).
//!
//! The supervisor gives each controller a [`Port`]: the link routes a
//! plan's sections and the deliveries to ports by section name, and sends
//! the reports, without knowing what is in any of them.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use skiff_shared::plan::Section;
use skiff_shared::sections::SectionKind;
use skiff_shared::tasks::TaskTree;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// One agent subsystem.
pub trait Controller: Send + Sync + 'static {
    type Kind: SectionKind;

    /// Checks a section before the plan holding it is stored and
    /// acknowledged; an error refuses the whole plan.
    fn check(&self, _desired: &Desired<Self::Kind>) -> Result<(), String> {
        Ok(())
    }

    /// Takes a delivery. Called on the link's task, before the plan that
    /// needs it is accepted, so it must be quick.
    fn deliver(&self, _delivery: <Self::Kind as SectionKind>::Delivery) -> Result<(), String> {
        Err(format!("section {} takes no deliveries", Self::Kind::NAME))
    }

    /// Starts answering a query (`skiff logs`): chunks go to `out` (the
    /// section's own type says which one ends the answer) until the answer
    /// ends, `out` closes or `cancel` fires. Must not block: the answer runs
    /// in a task of the controller's own.
    fn query(
        &self,
        _body: serde_json::Value,
        _out: tokio::sync::mpsc::Sender<serde_json::Value>,
        _cancel: CancellationToken,
    ) -> Result<(), String> {
        Err(format!("section {} answers no queries", Self::Kind::NAME))
    }

    /// Runs until `cx.tree` is cancelled.
    fn run(self: Arc<Self>, cx: Context<Self::Kind>) -> impl Future<Output = ()> + Send;
}

/// A section's desired state.
pub type Desired<K> = <K as SectionKind>::Desired;

/// A section as accepted, with the host generation it last changed at.
#[derive(Debug)]
pub struct Versioned<T> {
    pub generation: u64,
    pub value: Arc<T>,
}

impl<T> Clone for Versioned<T> {
    fn clone(&self) -> Self {
        Self {
            generation: self.generation,
            value: self.value.clone(),
        }
    }
}

/// What a running controller gets from the supervisor.
#[derive(Debug)]
pub struct Context<K: SectionKind> {
    /// The latest accepted section; `None` until a plan holds one. With no
    /// section a controller changes nothing on the host.
    pub desired: watch::Receiver<Option<Versioned<Desired<K>>>>,
    pub reports: Reporter<K>,
    /// The controller's own subtree: its tasks are spawned on it.
    pub tree: TaskTree,
}

/// The type-erased side of a controller that the link uses.
pub trait Port: Send + Sync {
    fn name(&self) -> &'static str;
    fn capability(&self) -> &'static str;
    /// Parses and checks a section; the returned step publishes it to the
    /// controller once the plan is stored.
    fn prepare(&self, section: &Section) -> Result<Publish, String>;
    /// The step that tells the controller a stored plan has no section
    /// for it (any more).
    fn absent(&self) -> Publish;
    /// Parses a delivery and hands it to the controller.
    fn deliver(&self, body: serde_json::Value) -> Result<(), String>;
    /// Starts answering a query; see [`Controller::query`].
    fn query(
        &self,
        body: serde_json::Value,
        out: tokio::sync::mpsc::Sender<serde_json::Value>,
        cancel: CancellationToken,
    ) -> Result<(), String>;
}

/// Publishes one prepared section to its controller.
pub type Publish = Box<dyn FnOnce() + Send>;

/// The port of a typed controller.
pub(crate) struct TypedPort<C: Controller> {
    pub(crate) controller: Arc<C>,
    pub(crate) desired: watch::Sender<Option<Versioned<Desired<C::Kind>>>>,
}

impl<C: Controller> Port for TypedPort<C> {
    fn name(&self) -> &'static str {
        C::Kind::NAME
    }

    fn capability(&self) -> &'static str {
        C::Kind::CAPABILITY
    }

    fn prepare(&self, section: &Section) -> Result<Publish, String> {
        let value = section
            .parse::<C::Kind>()
            .map_err(|e| format!("section {} is invalid: {e}", C::Kind::NAME))?;
        self.controller.check(&value)?;
        let tx = self.desired.clone();
        let generation = section.generation;
        Ok(Box::new(move || {
            tx.send_if_modified(|current| {
                if current.as_ref().is_some_and(|c| c.generation == generation) {
                    return false;
                }
                *current = Some(Versioned {
                    generation,
                    value: Arc::new(value),
                });
                true
            });
        }))
    }

    fn absent(&self) -> Publish {
        let tx = self.desired.clone();
        Box::new(move || {
            // Said even when there was none: a controller may have
            // left things from before the agent started.
            tx.send_modify(|current| *current = None);
        })
    }

    fn deliver(&self, body: serde_json::Value) -> Result<(), String> {
        let delivery = serde_json::from_value(body)
            .map_err(|e| format!("a delivery for {} is invalid: {e}", C::Kind::NAME))?;
        self.controller.deliver(delivery)
    }

    fn query(
        &self,
        body: serde_json::Value,
        out: tokio::sync::mpsc::Sender<serde_json::Value>,
        cancel: CancellationToken,
    ) -> Result<(), String> {
        self.controller.query(body, out, cancel)
    }
}

/// The latest report of every controller, and which ones the coordinator
/// has not been sent yet.
#[derive(Debug, Default)]
pub struct Reports {
    inner: Mutex<BTreeMap<&'static str, (serde_json::Value, bool)>>,
    changed: Notify,
}

impl Reports {
    fn set(&self, section: &'static str, body: serde_json::Value) {
        let mut map = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if map.get(section).is_some_and(|(old, _)| *old == body) {
            return;
        }
        map.insert(section, (body, true));
        drop(map);
        self.changed.notify_one();
    }

    /// Marks every report unsent (a new connection).
    pub fn resend_all(&self) {
        let mut map = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        for (_, dirty) in map.values_mut() {
            *dirty = true;
        }
        drop(map);
        self.changed.notify_one();
    }

    /// Resolves when a report changed since the last [`Reports::take`].
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// The unsent reports of the sections `wanted` accepts, now marked sent.
    pub fn take(&self, wanted: impl Fn(&str) -> bool) -> Vec<(&'static str, serde_json::Value)> {
        let mut map = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        map.iter_mut()
            .filter(|(name, (_, dirty))| *dirty && wanted(name))
            .map(|(name, (body, dirty))| {
                *dirty = false;
                (*name, body.clone())
            })
            .collect()
    }
}

/// Sends one controller's reports.
#[derive(Debug)]
pub struct Reporter<K> {
    reports: Arc<Reports>,
    kind: std::marker::PhantomData<fn(K)>,
}

impl<K: SectionKind> Reporter<K> {
    /// A reporter into `reports` (the supervisor's; a bench or a test may
    /// run a controller alone with its own).
    pub fn new(reports: Arc<Reports>) -> Self {
        Self {
            reports,
            kind: std::marker::PhantomData,
        }
    }

    /// Reports `report`; nothing is sent when it equals the last one.
    pub fn send(&self, report: &K::Report) {
        match serde_json::to_value(report) {
            Ok(body) => self.reports.set(K::NAME, body),
            Err(error) => warn!(section = K::NAME, error = %error, "A report cannot be encoded."),
        }
    }
}

/// Observe, diff, apply: the loop body of a controller that reconciles
/// host state toward its section.
pub trait Reconcile: Send + Sync {
    type Kind: SectionKind;
    /// What exists on the host now.
    type Observed: Send;
    /// One change to the host.
    type Action: Send + Sync;
    type Error: Display + Send;

    /// Reads what exists now.
    fn observe(&self) -> impl Future<Output = Result<Self::Observed, Self::Error>> + Send;

    /// Decides every change; pure, and tested without the host.
    fn diff(desired: &Desired<Self::Kind>, observed: &Self::Observed) -> Vec<Self::Action>;

    /// Makes the changes.
    fn apply(
        &self,
        actions: &[Self::Action],
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Wake-ups beside plan changes (the engine's events); re-opened when
    /// the stream ends.
    fn wakeups(&self) -> BoxStream<'static, ()>;

    /// After every round, failed or not: report what is there now.
    fn after_round(
        &self,
        _desired: &Versioned<Desired<Self::Kind>>,
        _error: Option<String>,
    ) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// One round: observe, diff, apply. Returns how many actions were taken.
///
/// # Errors
/// The first failure of observing or applying.
pub async fn round<R: Reconcile>(r: &R, desired: &Desired<R::Kind>) -> Result<usize, R::Error> {
    let observed = r.observe().await?;
    let actions = R::diff(desired, &observed);
    r.apply(&actions).await?;
    Ok(actions.len())
}

/// How often [`drive`] runs a round with nothing else happening, and how
/// soon it retries after a failed one.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    pub resync: Duration,
    pub retry: Duration,
}

impl Default for Pace {
    fn default() -> Self {
        Self {
            resync: Duration::from_secs(30),
            retry: Duration::from_secs(2),
        }
    }
}

/// Runs rounds until `tree` is cancelled: after every new section, every
/// wake-up, and every [`Pace::resync`] ([`Pace::retry`] while failing).
/// With no section yet it does nothing: a controller never changes the
/// host without a signed plan about it.
pub async fn drive<R: Reconcile>(
    r: &R,
    mut desired: watch::Receiver<Option<Versioned<Desired<R::Kind>>>>,
    tree: &TaskTree,
    pace: Pace,
    wake: Option<Arc<Notify>>,
) {
    let mut events = r.wakeups();
    let mut failing = false;
    let extra = wake.unwrap_or_default();
    loop {
        let current = desired.borrow_and_update().clone();
        if let Some(current) = current {
            let error = match round(r, &current.value).await {
                Ok(n) => {
                    if n > 0 {
                        info!(
                            section = R::Kind::NAME,
                            generation = current.generation,
                            actions = n,
                            "Host reconciled to the plan."
                        );
                    }
                    failing = false;
                    None
                }
                Err(error) => {
                    // Said once per failure streak, not every retry.
                    if !failing {
                        warn!(section = R::Kind::NAME, error = %error, "Reconcile failed; retrying.");
                    }
                    failing = true;
                    Some(error.to_string())
                }
            };
            r.after_round(&current, error).await;
        }
        let wait = if failing { pace.retry } else { pace.resync };
        tokio::select! {
            () = tree.cancelled() => return,
            changed = desired.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            event = events.next() => {
                if event.is_none() {
                    debug!(section = R::Kind::NAME, "Engine event stream ended; reopening.");
                    tokio::select! {
                        () = tree.cancelled() => return,
                        () = tokio::time::sleep(pace.retry) => {}
                    }
                    events = r.wakeups();
                }
            }
            () = extra.notified() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
}
