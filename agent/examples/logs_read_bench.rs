//! How much CPU reading a container's output costs, two ways: through the
//! Docker API (`GET /containers/{id}/logs`, the agent's fallback) and by
//! reading the engine's json-file log directly (what the agent does). Not a test: run it by hand
//! on an idle machine (root, Docker Engine with the json-file driver, the
//! `skiff-test/busybox:1` image) and copy the figures to
//! docs/benchmarks.md ("Logs").
//!
//! `cargo run --release -p skiff-agent --example logs_read_bench -- [MiB] [runs]`

use std::io::BufRead;
use std::time::Instant;

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::query_parameters::{
    CreateContainerOptions, InspectContainerOptions, LogsOptions, RemoveContainerOptions,
    WaitContainerOptions,
};
use futures_util::StreamExt;

/// CPU seconds (user + system) a process used so far.
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which ends with the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 (1-based), 11 and 12 here.
    (ticks(11) + ticks(12)) / 100.0
}

fn dockerd_pid() -> String {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .find(|e| {
            std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == "dockerd")
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let mib: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(200);
    let runs: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(3);
    let docker = Docker::connect_with_local_defaults()?
        .negotiate_version()
        .await?;
    // 100-byte lines: a 90-character payload and a sequence number.
    let lines = mib * (1 << 20) / 100;
    let script = format!(
        "p=$(printf '%090d' 0); i=0; while [ $i -lt {lines} ]; do echo \"$p $i\"; i=$((i+1)); done"
    );
    let name = format!("skiff-logs-bench-{}", std::process::id());
    let body = bollard::models::ContainerCreateBody {
        image: Some("skiff-test/busybox:1".into()),
        cmd: Some(vec!["sh".into(), "-c".into(), script]),
        // All of it kept, whatever the engine's default rotation.
        host_config: Some(bollard::models::HostConfig {
            log_config: Some(bollard::models::HostConfigLogConfig {
                typ: Some("json-file".into()),
                config: Some(std::collections::HashMap::from([(
                    "max-size".to_owned(),
                    "4g".to_owned(),
                )])),
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    docker
        .create_container(
            Some(CreateContainerOptions {
                name: Some(name.clone()),
                ..Default::default()
            }),
            body,
        )
        .await?;
    docker.start_container(&name, None).await?;
    let mut wait = docker.wait_container(&name, None::<WaitContainerOptions>);
    while wait.next().await.is_some() {}
    let inspect = docker
        .inspect_container(&name, None::<InspectContainerOptions>)
        .await?;
    let log_path = inspect.log_path.unwrap_or_default();
    let size = std::fs::metadata(&log_path).map(|m| m.len()).unwrap_or(0);
    println!(
        "container wrote {lines} lines; json-file {:.1} MiB; {} cores",
        size as f64 / f64::from(1 << 20),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let dockerd = dockerd_pid();
    for run in 1..=runs {
        // Through the API, timestamps on, as the follower reads.
        let (me0, d0, t0) = (cpu_seconds("self"), cpu_seconds(&dockerd), Instant::now());
        let mut stream = docker.logs(
            &name,
            Some(LogsOptions {
                stdout: true,
                stderr: true,
                timestamps: true,
                ..Default::default()
            }),
        );
        let (mut n, mut bytes, mut ts_sum) = (0u64, 0u64, 0i64);
        while let Some(item) = stream.next().await {
            let msg = match item? {
                LogOutput::StdOut { message } | LogOutput::StdErr { message } => message,
                _ => continue,
            };
            let (ts, line) = msg.split_at(msg.iter().position(|b| *b == b' ').unwrap_or(0));
            let t = std::str::from_utf8(ts)
                .ok()
                .and_then(|t| humantime::parse_rfc3339(t).ok());
            ts_sum ^= t.map_or(0, |t| {
                t.duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.subsec_nanos().into())
            });
            n += 1;
            bytes += line.len() as u64;
        }
        let api = (
            cpu_seconds("self") - me0,
            cpu_seconds(&dockerd) - d0,
            t0.elapsed(),
        );
        // The json-file, one JSON object per line.
        let (me0, t0) = (cpu_seconds("self"), Instant::now());
        let mut reader =
            std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(&log_path)?);
        let (mut m, mut mbytes, mut buf) = (0u64, 0u64, String::new());
        loop {
            buf.clear();
            if reader.read_line(&mut buf)? == 0 {
                break;
            }
            // Decoded as the agent decodes it.
            let f = skiff_agent::logs::jsonfile::decode(buf.as_bytes())
                .ok_or("a line of the json-file does not decode")?;
            ts_sum ^= f.ts_ns % 1_000_000_000;
            m += u64::from(f.stream == skiff_agent::logs::record::Stream::Stdout);
            mbytes += f.text.len() as u64;
        }
        let file = (cpu_seconds("self") - me0, t0.elapsed());
        println!(
            "run {run}: API {n} lines {:.0} MiB in {:.2} s wall: reader {:.2} CPU s + dockerd {:.2} CPU s = {:.2} CPU s; \
             json-file {m} lines {:.0} MiB in {:.2} s wall: reader {:.2} CPU s ({ts_sum:x})",
            bytes as f64 / f64::from(1 << 20),
            api.2.as_secs_f64(),
            api.0,
            api.1,
            api.0 + api.1,
            mbytes as f64 / f64::from(1 << 20),
            file.1.as_secs_f64(),
            file.0,
        );
    }
    docker
        .remove_container(
            &name,
            Some(RemoveContainerOptions {
                force: true,
                ..Default::default()
            }),
        )
        .await?;
    Ok(())
}
