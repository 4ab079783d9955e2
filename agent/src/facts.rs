//! Host facts: what the agent tells the coordinator about its server, from
//! sysinfo and the Docker Engine.

use std::time::Duration;

use skiff_shared::protocol::{Disk, HostFacts};
use sysinfo::{CpuRefreshKind, Disks, Networks, System};
use tracing::debug;

/// How long to wait for the Docker Engine before reporting it unavailable.
const DOCKER_TIMEOUT: Duration = Duration::from_secs(5);

/// Collects the host's facts, fitted into the bounds the coordinator
/// accepts ([`skiff_shared::bounds`]). Never fails: what cannot be read is
/// left empty.
pub async fn collect() -> HostFacts {
    let mut facts = tokio::task::spawn_blocking(host).await.unwrap_or_default();
    match tokio::time::timeout(DOCKER_TIMEOUT, docker_version()).await {
        Ok(Ok((version, api))) => {
            facts.docker_version = Some(version);
            facts.docker_api_version = Some(api);
        }
        Ok(Err(error)) => debug!(error = %error, "Docker Engine did not answer."),
        Err(_) => debug!("Docker Engine did not answer in time."),
    }
    facts.fit()
}

fn host() -> HostFacts {
    let mut facts = HostFacts {
        hostname: System::host_name().unwrap_or_default(),
        os: System::long_os_version().unwrap_or_default(),
        kernel: System::kernel_version().unwrap_or_default(),
        arch: System::cpu_arch(),
        ..HostFacts::default()
    };
    if let Ok(mut sys) = System::new() {
        sys.refresh_memory();
        sys.refresh_cpu_list(CpuRefreshKind::nothing());
        facts.cpus = u32::try_from(sys.cpus().len()).unwrap_or(u32::MAX);
        facts.memory_bytes = sys.total_memory();
    }
    if let Ok(disks) = Disks::new_with_refreshed_list() {
        facts.disks = disks
            .iter()
            .filter(|d| d.total_space() > 0)
            .map(|d| Disk {
                mount: d.mount_point().display().to_string(),
                filesystem: d.file_system().to_string_lossy().into_owned(),
                total_bytes: d.total_space(),
                available_bytes: d.available_space(),
            })
            .collect();
        facts.disks.sort_by(|a, b| a.mount.cmp(&b.mount));
        facts.disks.dedup_by(|a, b| a.mount == b.mount);
    }
    if let Ok(networks) = Networks::new_with_refreshed_list() {
        let mut addrs: Vec<String> = networks
            .values()
            .flat_map(|n| n.ip_networks().iter())
            .filter(|ip| !ip.addr.is_loopback())
            .map(|ip| ip.addr.to_string())
            .collect();
        addrs.sort();
        addrs.dedup();
        facts.addresses = addrs;
    }
    facts
}

/// The engine's version and the API version negotiated with it.
async fn docker_version() -> Result<(String, String), bollard::errors::Error> {
    let docker = bollard::Docker::connect_with_local_defaults()?
        .negotiate_version()
        .await?;
    let v = docker.version().await?;
    let api = docker.client_version().to_string();
    Ok((v.version.unwrap_or_default(), api))
}
