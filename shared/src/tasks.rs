//! The task tree both daemons run their long-lived tasks in.
//!
//! A [`TaskTree`] is a cancellation token and a tracker. [`TaskTree::child`]
//! makes a subtree whose token is a child of its parent's: cancelling a
//! subtree (a rollout, a session, a controller) stops it alone; cancelling
//! the root stops everything. Every task is spawned through
//! [`TaskTree::spawn`], on the one tracker the whole tree shares, so
//! nothing is detached and shutdown is "cancel the root, then
//! [`TaskTree::wait`]" with no polling.

use std::future::Future;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// A node of the task tree.
#[derive(Debug, Clone, Default)]
pub struct TaskTree {
    token: CancellationToken,
    tracker: TaskTracker,
}

impl TaskTree {
    /// A new root.
    pub fn root() -> Self {
        Self::default()
    }

    /// A subtree: cancelled when this tree is (or on its own), its tasks
    /// tracked with this tree's.
    pub fn child(&self) -> Self {
        Self {
            token: self.token.child_token(),
            tracker: self.tracker.clone(),
        }
    }

    /// Runs `task` on the tree, in a span named `name`. The task should
    /// end soon after [`TaskTree::cancelled`] fires.
    pub fn spawn<F>(&self, name: &'static str, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker
            .spawn(task.instrument(tracing::info_span!("task", name)))
    }

    /// Cancels this tree and every subtree of it.
    pub fn cancel(&self) {
        self.token.cancel();
    }

    pub fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves once this tree is cancelled.
    pub async fn cancelled(&self) {
        self.token.cancelled().await;
    }

    /// The tree's cancellation token, for APIs that take one.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// Waits until every task spawned on the tree has ended. Call it after
    /// cancelling the root; no task may be spawned afterwards.
    pub async fn wait(&self) {
        self.tracker.close();
        self.tracker.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn cancelling_the_root_stops_every_subtree_and_wait_sees_them_end() {
        let root = TaskTree::root();
        let a = root.child();
        let b = a.child();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for (tree, name) in [(a.clone(), "a"), (b.clone(), "b")] {
            let tx = tx.clone();
            let t = tree.clone();
            tree.spawn("test", async move {
                t.cancelled().await;
                let _ = tx.send(name);
            });
        }
        drop(tx);
        b.cancel();
        assert_eq!(rx.recv().await, Some("b"), "a subtree stops alone");
        assert!(!a.is_cancelled());
        root.cancel();
        root.wait().await;
        assert_eq!(rx.recv().await, Some("a"));
        assert_eq!(
            rx.recv().await,
            None,
            "every task ended before wait returned"
        );
    }
}
