//! `skiff deploy`: parses a Compose file on this machine (errors are
//! reported before anything is sent), uploads its secrets, sends the file
//! with the variables and files it uses to the coordinator, which parses
//! and checks it again and records a new release, then follows the
//! rollout; [`follow`] also serves rollback and scale.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use skiff_api_types::{ComposeInputs, DeployRequest, DeployView, StackView, TaskView};

use super::path_segment;
use super::secrets::set_secret;
use crate::Failure;
use crate::client::{Client, ClientError, Method};
use crate::progress::{self, Screen};

#[derive(Debug, Args)]
pub struct DeployArgs {
    /// The Compose file.
    #[arg(short = 'f', long = "file", default_value = "compose.yml")]
    pub file: PathBuf,
    /// Stack name.
    pub stack: String,
    /// Print what would start, stop and change, and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Return once the release is recorded, without following progress.
    #[arg(long)]
    pub detach: bool,
    /// How long to follow progress before giving up.
    #[arg(long, default_value = "5m")]
    pub timeout: String,
}

/// Parses the Compose file here (the environment and referenced files are
/// this machine's), then sends it with what it used to the coordinator.
pub(crate) async fn run(
    client: &Client,
    args: DeployArgs,
    out: &mut impl Write,
) -> Result<(), Failure> {
    let timeout = humantime::parse_duration(&args.timeout).map_err(|e| {
        Failure::usage(format!(
            "invalid --timeout {:?} ({e}); write e.g. 5m",
            args.timeout
        ))
    })?;
    let text = std::fs::read_to_string(&args.file)
        .map_err(|e| Failure::usage(format!("cannot read {}: {e}", args.file.display())))?;
    let dir = args
        .file
        .parent()
        .map(|p| {
            if p.as_os_str().is_empty() {
                std::path::Path::new(".")
            } else {
                p
            }
        })
        .unwrap_or(std::path::Path::new("."))
        .to_owned();
    // As Compose does: the shell's environment, plus a `.env` file beside the
    // stack file for variables the shell does not set.
    let mut env: BTreeMap<String, String> = std::env::vars().collect();
    let dotenv = dir.join(".env");
    if let Ok(text) = std::fs::read_to_string(&dotenv) {
        let shown = dotenv.display().to_string();
        let vars = skiff_compose::stack::parse_env_file(&text, &shown, &env)
            .map_err(|e| Failure::usage(e.to_string()))?;
        for (k, v) in vars {
            env.entry(k).or_insert(v);
        }
    }
    let file_name = args.file.display().to_string();
    let input = skiff_compose::stack::Input::new(&text, &file_name, &dir, &env);
    let mut parsed =
        skiff_compose::stack::parse(&input).map_err(|e| Failure::usage(e.to_string()))?;
    skiff_compose::stack::inline_configs(&mut parsed, &input).map_err(Failure::usage)?;
    for w in &parsed.warnings {
        eprintln!("skiff: {}", w.render());
    }
    if !args.dry_run {
        upload_stack_secrets(client, &args.stack, &parsed.stack, &env).await?;
    }
    // The coordinator parses the file again with what it used here.
    let inputs = compose_inputs(&file_name, &dir, &parsed.uses);
    let request = DeployRequest {
        stack: None,
        compose: text,
        dry_run: args.dry_run,
        inputs,
    };
    let view: DeployView = client
        .call(
            Method::POST,
            &format!("/stacks/{}/deploy", path_segment(&args.stack)?),
            Some(&request),
        )
        .await?;
    for w in &view.warnings {
        eprintln!("skiff: warning: {w}");
    }
    if args.dry_run {
        if view.steps.is_empty() {
            let _ = writeln!(out, "Nothing to change.");
        }
        for s in &view.steps {
            let reason = s
                .reason
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default();
            let _ = writeln!(out, "{:<8} {} on {}{reason}", s.action, s.container, s.node);
        }
        return Ok(());
    }
    let release = view.release.unwrap_or_default();
    let _ = writeln!(
        out,
        "Release {release} of {} recorded: {} changes.",
        args.stack,
        view.steps.len()
    );
    if args.detach {
        return Ok(());
    }
    follow(client, &args.stack, release, timeout, out).await
}

/// Prints progress until release `release` is rolled out and every
/// replica runs it (healthy, where it has a health check); fails when the
/// rollout rolled back, paused or failed, or after `timeout`.
pub(crate) async fn follow(
    client: &Client,
    stack: &str,
    release: i64,
    timeout: Duration,
    out: &mut impl Write,
) -> Result<(), Failure> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = String::new();
    let mut screen = Screen::new(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    // A host's error that persists this long fails the deploy (a busy
    // engine can fail a round that the next one gets through).
    const PERSISTENT: Duration = Duration::from_secs(10);
    let mut failing_since: Option<tokio::time::Instant> = None;
    loop {
        // A coordinator briefly busy or restarting does not end the follow.
        let polled = async {
            let view: StackView = client
                .call(Method::GET, &format!("/stacks/{stack}"), None::<&()>)
                .await?;
            let tasks: Vec<TaskView> = client
                .call(Method::GET, &format!("/stacks/{stack}/tasks"), None::<&()>)
                .await?;
            Ok::<_, ClientError>((view, tasks))
        };
        let (view, tasks) = match polled.await {
            Ok(v) => v,
            Err(
                e @ (ClientError::Connect { .. }
                | ClientError::Http { .. }
                | ClientError::Api { status: 503, .. }),
            ) if tokio::time::Instant::now() < deadline => {
                if last != e.to_string() {
                    eprintln!("skiff: {e}; still following");
                    last = e.to_string();
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let rollout = view.rollout.filter(|r| r.release == release);
        if let Some(r) = &rollout
            && !matches!(r.state.as_str(), "in_progress" | "completed")
        {
            return Err(Failure {
                message: format!(
                    "release {release} of {stack} {}: {}",
                    r.state.replace('_', " "),
                    r.message
                ),
                code: 1,
            });
        }
        let ready = tasks.iter().filter(|t| t.is_ready()).count();
        let mut lines = progress::render(&progress::by_service(&tasks));
        if let Some(r) = rollout.as_ref().filter(|r| r.state == "in_progress") {
            let mut status = format!("release {release}: {}/{} replaced", r.replaced, r.total);
            if !r.message.is_empty() {
                status.push_str(&format!("; {}", r.message));
            }
            lines.push(status);
        }
        screen.show(out, lines);
        match tasks.iter().find_map(|t| t.error.as_ref().map(|e| (t, e))) {
            Some((t, e)) => {
                let since = *failing_since.get_or_insert_with(tokio::time::Instant::now);
                if since.elapsed() >= PERSISTENT {
                    return Err(Failure {
                        message: format!("deploy of {stack} failed: {} on {}: {e}", t.name, t.node),
                        code: 1,
                    });
                }
            }
            None => failing_since = None,
        }
        let rolled_out = rollout.as_ref().is_none_or(|r| r.state == "completed");
        if rolled_out && ready >= view.desired && tasks.iter().all(|t| t.up_to_date) {
            let _ = writeln!(out, "Deployed.");
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            let stuck: Vec<String> = tasks
                .iter()
                .filter(|t| !(t.up_to_date && t.state == "running"))
                .map(|t| format!("{} on {} is {}", t.name, t.node, t.state))
                .collect();
            return Err(Failure {
                message: format!(
                    "deploy of {stack} not ready after {}: {}",
                    humantime::format_duration(timeout),
                    stuck.join("; ")
                ),
                code: 1,
            });
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// What the coordinator needs to parse the file as it parsed here: the
/// variables and files it used (never a secret's value: those are
/// uploaded as secrets).
fn compose_inputs(
    file_name: &str,
    dir: &std::path::Path,
    uses: &skiff_compose::stack::Uses,
) -> ComposeInputs {
    let path = |p: &std::path::PathBuf| p.to_string_lossy().into_owned();
    ComposeInputs {
        file_name: file_name.to_owned(),
        dir: dir.to_string_lossy().into_owned(),
        variables: uses.variables.clone(),
        variables_set: uses.variables_set.iter().cloned().collect(),
        files: uses
            .files
            .iter()
            .map(|(p, text)| (path(p), text.clone()))
            .collect(),
        files_present: uses
            .files_present
            .iter()
            .filter(|p| !uses.files.contains_key(*p))
            .map(path)
            .collect(),
    }
}

/// Uploads the stack's `file:` and `environment:` secrets before a deploy
/// (a value equal to the stored one makes no new version).
async fn upload_stack_secrets(
    client: &Client,
    stack_name: &str,
    stack: &skiff_compose::stack::Stack,
    env: &BTreeMap<String, String>,
) -> Result<(), Failure> {
    for (name, def) in &stack.secrets {
        let value = match &def.source {
            skiff_compose::stack::SecretSource::File(path) => std::fs::read(path).map_err(|e| {
                Failure::usage(format!(
                    "secret {name}: cannot read {}: {e}",
                    path.display()
                ))
            })?,
            skiff_compose::stack::SecretSource::Environment(var) => env
                .get(var)
                .ok_or_else(|| {
                    Failure::usage(format!(
                        "secret {name}: environment variable {var} is not set"
                    ))
                })?
                .clone()
                .into_bytes(),
            skiff_compose::stack::SecretSource::External(_) => continue,
        };
        set_secret(client, stack_name, name, &value).await?;
    }
    Ok(())
}
