//! The coordinator's and the tool's own memory and CPU time, read from
//! `/proc`, and the check that the open-file limit can hold every link.

use std::path::PathBuf;
use std::time::Instant;

/// /proc reports CPU times in USER_HZ, which the kernel fixes at 100 on
/// every architecture Linux exposes to user space through /proc.
pub(crate) const USER_HZ: f64 = 100.0;

/// Refuses to start when the soft limit on open files cannot hold N links.
pub(crate) fn check_fd_limit(agents: usize) -> Result<(), String> {
    let limits = std::fs::read_to_string("/proc/self/limits")
        .map_err(|e| format!("cannot read /proc/self/limits: {e}"))?;
    let soft = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse::<usize>().ok());
    match soft {
        Some(soft) if soft < agents + 64 => Err(format!(
            "the open-file limit is {soft}, too low for {agents} links; raise it first \
             (`ulimit -n $(ulimit -Hn)`), or use fewer --agents"
        )),
        _ => Ok(()),
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Sample {
    pub(crate) at: Instant,
    pub(crate) rss_kib: Option<u64>,
    pub(crate) cpu_ticks: Option<u64>,
}

/// Where to find the coordinator's process.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) pid: Option<u32>,
    pub(crate) pid_file: Option<PathBuf>,
}

impl Target {
    fn pid(&self) -> Option<u32> {
        if let Some(file) = &self.pid_file
            && let Ok(text) = std::fs::read_to_string(file)
            && let Ok(pid) = text.trim().parse()
        {
            return Some(pid);
        }
        self.pid
    }

    pub(crate) fn sample(&self) -> Sample {
        match self.pid() {
            Some(pid) => sample_proc(&pid.to_string()),
            None => Sample {
                at: Instant::now(),
                rss_kib: None,
                cpu_ticks: None,
            },
        }
    }
}

/// VmRSS and utime+stime of `/proc/<pid>`.
fn sample_proc(pid: &str) -> Sample {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok();
    let rss_kib = status.as_deref().and_then(|s| status_kib(s, "VmRSS:"));
    let cpu_ticks = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| stat_cpu_ticks(&s));
    Sample {
        at: Instant::now(),
        rss_kib,
        cpu_ticks,
    }
}

fn status_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// utime + stime from a /proc/PID/stat line. The command name (field 2) may
/// hold spaces, so fields are counted after its closing parenthesis.
fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// CPU used between two samples, as a percentage of one core.
pub(crate) fn cpu_percent(a: &Sample, b: &Sample) -> Option<f64> {
    let ticks = b.cpu_ticks?.checked_sub(a.cpu_ticks?)?;
    let wall = b.at.duration_since(a.at).as_secs_f64();
    (wall > 0.0).then(|| ticks as f64 / USER_HZ / wall * 100.0)
}

pub(crate) fn cpu_seconds(a: &Sample, b: &Sample) -> Option<f64> {
    Some(b.cpu_ticks?.checked_sub(a.cpu_ticks?)? as f64 / USER_HZ)
}

pub(crate) fn self_sample() -> Sample {
    sample_proc("self")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_stat_with_spaces_in_the_name() {
        let line = "42 (skiff coord) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 1 2 3";
        assert_eq!(stat_cpu_ticks(line), Some(300));
    }
}
