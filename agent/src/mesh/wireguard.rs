//! WireGuard for the mesh: the host's key, and the two ways to run it.
//!
//! - The key pair is made once and kept at `<data_dir>/mesh/wireguard.key`
//!   (base64, as `wg` reads it; mode 0600 in a 0700 folder). The private key
//!   is never logged or sent; only the public key is reported.
//! - Kernel WireGuard: `ip link add skw0 type wireguard`, configured and
//!   read with `wg` (wireguard-tools).
//! - Userspace WireGuard: gotatun in the agent over the persistent TUN
//!   device `skw0`. The device, its address and routes stay when the agent
//!   stops; when it is back it opens `skw0` again and new handshakes resume
//!   the traffic (TCP streams retransmit across the gap).

use std::net::{SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use gotatun::device::{DefaultDeviceTransports, Device, DeviceBuilder, Peer};
use gotatun::x25519::{PublicKey, StaticSecret};
use ipnet::Ipv4Net;
use skiff_shared::sections::mesh::WIREGUARD_DEVICE;

use super::MeshError;
use super::diff::{WgPeer, WgState};
use super::ip::run;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// The host's WireGuard key pair.
pub struct Keys {
    secret: StaticSecret,
    pub public: String,
    /// The file holding the private key (what `wg` is given).
    pub path: PathBuf,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl Keys {
    /// Loads the key pair from `<data_dir>/mesh/wireguard.key`, making it
    /// the first time.
    ///
    /// # Errors
    /// The file cannot be read or written, or does not hold a key.
    pub fn load_or_create(data_dir: &Path) -> Result<Self, MeshError> {
        use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
        let dir = data_dir.join("mesh");
        let path = dir.join("wireguard.key");
        let err = |what: &str, e: std::io::Error| {
            MeshError::Key(format!("{what} {}: {e}", path.display()))
        };
        let bytes: [u8; 32] = match std::fs::read_to_string(&path) {
            Ok(text) => B64
                .decode(text.trim())
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| {
                    MeshError::Key(format!(
                        "{} does not hold a WireGuard private key (32 bytes, base64); remove it to make a new one",
                        path.display()
                    ))
                })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&dir)
                    .map_err(|e| err("making the folder of", e))?;
                let mut bytes = [0u8; 32];
                ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
                    .map_err(|_| MeshError::Key("the system's random source failed".into()))?;
                let tmp = dir.join("wireguard.key.tmp");
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&tmp)
                    .map_err(|e| err("writing", e))?;
                std::io::Write::write_all(&mut f, format!("{}\n", B64.encode(bytes)).as_bytes())
                    .and_then(|()| f.sync_all())
                    .map_err(|e| err("writing", e))?;
                std::fs::rename(&tmp, &path).map_err(|e| err("writing", e))?;
                tracing::info!(public_key = %B64.encode(PublicKey::from(&StaticSecret::from(bytes)).as_bytes()), "Made this host's WireGuard key pair.");
                bytes
            }
            Err(e) => return Err(err("reading", e)),
        };
        // Tighten a key file someone loosened.
        let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
        let secret = StaticSecret::from(bytes);
        let public = B64.encode(PublicKey::from(&secret).as_bytes());
        Ok(Self {
            secret,
            public,
            path,
        })
    }
}

/// One peer's counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCounters {
    pub key: String,
    pub handshake_age: Option<Duration>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

fn key_bytes(key: &str) -> Result<PublicKey, MeshError> {
    skiff_shared::sections::mesh::public_key_bytes(key)
        .map(PublicKey::from)
        .map_err(MeshError::Command)
}

fn to_peer(p: &WgPeer) -> Result<Peer, MeshError> {
    let mut peer = Peer::new(key_bytes(&p.key)?)
        .with_allowed_ips(p.allowed_ips.iter().map(|n| gotatun_net(*n)));
    peer.endpoint = p.endpoint.map(SocketAddr::V4);
    peer.keepalive = p.keepalive;
    Ok(peer)
}

fn gotatun_net(n: Ipv4Net) -> ipnetwork::IpNetwork {
    ipnetwork::IpNetwork::V4(
        ipnetwork::Ipv4Network::new(n.addr(), n.prefix_len())
            .unwrap_or_else(|_| ipnetwork::Ipv4Network::from(n.addr())),
    )
}

fn from_gotatun(n: &ipnetwork::IpNetwork) -> Option<Ipv4Net> {
    match n {
        ipnetwork::IpNetwork::V4(v4) => Ipv4Net::new(v4.ip(), v4.prefix()).ok(),
        ipnetwork::IpNetwork::V6(_) => None,
    }
}

fn from_socket(a: Option<SocketAddr>) -> Option<SocketAddrV4> {
    match a {
        Some(SocketAddr::V4(v4)) => Some(v4),
        _ => None,
    }
}

/// WireGuard in the agent, over the TUN device `skw0`.
pub struct Userspace {
    device: Device<DefaultDeviceTransports>,
    port: u16,
    /// Whether its socket is open: gotatun opens it when the first peers
    /// come.
    connected: bool,
}

impl std::fmt::Debug for Userspace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Userspace")
            .field("port", &self.port)
            .field("connected", &self.connected)
            .finish_non_exhaustive()
    }
}

impl Userspace {
    /// Opens `skw0` (which must exist) and starts WireGuard on it with no
    /// peers.
    ///
    /// # Errors
    /// The TUN device cannot be opened.
    pub async fn start(keys: &Keys, port: u16) -> Result<Self, MeshError> {
        let device = DeviceBuilder::new()
            .with_default_udp()
            .create_tun(WIREGUARD_DEVICE)
            .map_err(|e| {
                let e = e.to_string();
                let hint = if e.contains("ermission") || e.contains("not permitted") {
                    ": the agent needs CAP_NET_ADMIN and access to /dev/net/tun (run it as root, or give its container --cap-add NET_ADMIN --device /dev/net/tun)"
                } else {
                    ""
                };
                MeshError::Tun(format!("opening the TUN device {WIREGUARD_DEVICE}: {e}{hint}"))
            })?
            .with_private_key(keys.secret.clone())
            .build()
            .await
            .map_err(|e| MeshError::Tun(e.to_string()))?;
        Ok(Self {
            device,
            port,
            connected: false,
        })
    }

    pub async fn state(&self) -> WgState {
        let peers = self.device.peers().await;
        WgState {
            port: self.port,
            peers: peers
                .into_iter()
                .map(|p| {
                    let mut allowed_ips: Vec<Ipv4Net> =
                        p.peer.allowed_ips.iter().filter_map(from_gotatun).collect();
                    allowed_ips.sort();
                    WgPeer {
                        key: B64.encode(p.peer.public_key.as_bytes()),
                        endpoint: from_socket(p.peer.endpoint),
                        allowed_ips,
                        keepalive: p.peer.keepalive,
                    }
                })
                .collect(),
        }
    }

    pub async fn counters(&self) -> Vec<PeerCounters> {
        self.device
            .peers()
            .await
            .into_iter()
            .map(|p| PeerCounters {
                key: B64.encode(p.peer.public_key.as_bytes()),
                handshake_age: p.stats.last_handshake,
                rx_bytes: u64::try_from(p.stats.rx_bytes).unwrap_or(u64::MAX),
                tx_bytes: u64::try_from(p.stats.tx_bytes).unwrap_or(u64::MAX),
            })
            .collect()
    }

    pub async fn set_port(&mut self, port: u16) -> Result<(), MeshError> {
        self.port = port;
        if self.connected {
            self.device
                .set_listen_port(port)
                .await
                .map_err(|e| MeshError::Tun(e.to_string()))?;
        }
        Ok(())
    }

    pub async fn set_peer(&mut self, p: &WgPeer) -> Result<(), MeshError> {
        let peer = to_peer(p)?;
        let (connect, port) = (!self.connected, self.port);
        self.device
            .write(async |d| {
                d.add_or_update_peer(peer).await;
                if connect {
                    // From 0 (unbound) to the mesh's port: opens the socket.
                    d.set_listen_port(port);
                }
            })
            .await
            .map_err(|e| MeshError::Tun(format!("listening on UDP port {port}: {e}")))?;
        self.connected = true;
        Ok(())
    }

    pub async fn remove_peer(&mut self, key: &str) -> Result<(), MeshError> {
        let key = key_bytes(key)?;
        self.device
            .remove_peer(&key)
            .await
            .map(drop)
            .map_err(|e| MeshError::Tun(e.to_string()))
    }

    pub async fn stop(self) {
        self.device.stop().await;
    }
}

/// Kernel WireGuard through `wg`.
pub mod kernel {
    use super::*;

    async fn wg(args: &[&str]) -> Result<String, MeshError> {
        run("wg", args).await
    }

    /// `wg show skw0 dump`: the running state, and each peer's counters;
    /// none when the device runs with another key (it is then set anew).
    pub async fn state(keys: &Keys) -> Result<Option<(WgState, Vec<PeerCounters>)>, MeshError> {
        Ok(parse_dump(
            &wg(&["show", WIREGUARD_DEVICE, "dump"]).await?,
            &keys.public,
        ))
    }

    /// Parses `wg show <dev> dump`.
    pub fn parse_dump(text: &str, public: &str) -> Option<(WgState, Vec<PeerCounters>)> {
        let mut lines = text.lines();
        let head: Vec<&str> = lines.next()?.split('\t').collect();
        if head.get(1) != Some(&public) {
            return None;
        }
        let port = head.get(2)?.parse().ok()?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let mut peers = Vec::new();
        let mut counters = Vec::new();
        for line in lines {
            let f: Vec<&str> = line.split('\t').collect();
            let [
                key,
                _psk,
                endpoint,
                allowed,
                handshake,
                rx,
                tx,
                keepalive,
                ..,
            ] = f.as_slice()
            else {
                continue;
            };
            let mut allowed_ips: Vec<Ipv4Net> =
                allowed.split(',').filter_map(|a| a.parse().ok()).collect();
            allowed_ips.sort();
            peers.push(WgPeer {
                key: (*key).to_owned(),
                endpoint: endpoint.parse().ok(),
                allowed_ips,
                keepalive: keepalive.parse().ok().filter(|k| *k != 0),
            });
            let handshake: u64 = handshake.parse().unwrap_or(0);
            counters.push(PeerCounters {
                key: (*key).to_owned(),
                handshake_age: (handshake != 0)
                    .then(|| now.saturating_sub(Duration::from_secs(handshake))),
                rx_bytes: rx.parse().unwrap_or(0),
                tx_bytes: tx.parse().unwrap_or(0),
            });
        }
        Some((WgState { port, peers }, counters))
    }

    /// Sets the key and port, and removes every peer.
    pub async fn start(keys: &Keys, port: u16) -> Result<(), MeshError> {
        let path = keys.path.to_string_lossy().into_owned();
        let port = port.to_string();
        wg(&[
            "set",
            WIREGUARD_DEVICE,
            "listen-port",
            &port,
            "private-key",
            &path,
        ])
        .await?;
        let peers = wg(&["show", WIREGUARD_DEVICE, "peers"]).await?;
        for key in peers.lines().filter(|l| !l.is_empty()) {
            remove_peer(key).await?;
        }
        Ok(())
    }

    pub async fn set_port(port: u16) -> Result<(), MeshError> {
        wg(&["set", WIREGUARD_DEVICE, "listen-port", &port.to_string()])
            .await
            .map(drop)
    }

    pub async fn set_peer(p: &WgPeer) -> Result<(), MeshError> {
        let allowed: Vec<String> = p.allowed_ips.iter().map(ToString::to_string).collect();
        let allowed = allowed.join(",");
        let keepalive = p.keepalive.unwrap_or(0).to_string();
        let mut args = vec![
            "set",
            WIREGUARD_DEVICE,
            "peer",
            &p.key,
            "persistent-keepalive",
            &keepalive,
            "allowed-ips",
            &allowed,
        ];
        let endpoint = p.endpoint.map(|e| e.to_string());
        if let Some(e) = &endpoint {
            args.extend(["endpoint", e.as_str()]);
        }
        wg(&args).await.map(drop)
    }

    pub async fn remove_peer(key: &str) -> Result<(), MeshError> {
        wg(&["set", WIREGUARD_DEVICE, "peer", key, "remove"])
            .await
            .map(drop)
    }

    /// Whether this host can run kernel WireGuard: `wg` is installed and
    /// the kernel makes a WireGuard device (a probe device, removed at once).
    pub async fn available() -> bool {
        if run("wg", &["--version"]).await.is_err() {
            return false;
        }
        const PROBE: &str = "skw-probe";
        if run("ip", &["link", "add", PROBE, "type", "wireguard"])
            .await
            .is_err()
        {
            return false;
        }
        let _ = run("ip", &["link", "del", "dev", PROBE]).await;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_made_once_private_and_reused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let a = Keys::load_or_create(dir.path()).unwrap();
        let b = Keys::load_or_create(dir.path()).unwrap();
        assert_eq!(a.public, b.public);
        assert_eq!(B64.decode(&a.public).unwrap().len(), 32);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&a.path), 0o600);
        assert_eq!(mode(&dir.path().join("mesh")), 0o700);
        assert!(
            !format!("{a:?}")
                .contains(&std::fs::read_to_string(&a.path).unwrap().trim().to_owned())
        );
    }

    /// The `wg` side against wireguard-go (which `wg` drives as it drives
    /// the kernel's): a peer set reads back equal, so the diff settles.
    /// Run as root in a scratch network namespace:
    /// `ip netns add t; ip netns exec t cargo test -p skiff-agent -- --ignored wg_commands`.
    #[tokio::test]
    #[ignore = "needs root, wireguard-go and wireguard-tools"]
    async fn wg_commands_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let keys = Keys::load_or_create(dir.path()).unwrap();
        let mut go = tokio::process::Command::new("wireguard-go")
            .args(["-f", WIREGUARD_DEVICE])
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while run("wg", &["show", WIREGUARD_DEVICE]).await.is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "wireguard-go did not start"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        kernel::start(&keys, 51999).await.unwrap();
        let (state, _) = kernel::state(&keys).await.unwrap().unwrap();
        assert_eq!(
            state,
            WgState {
                port: 51999,
                peers: vec![]
            }
        );
        let peer = WgPeer {
            key: B64.encode([7u8; 32]),
            endpoint: Some("192.0.2.9:51999".parse().unwrap()),
            allowed_ips: vec![
                "10.66.0.9/32".parse().unwrap(),
                "10.66.12.0/26".parse().unwrap(),
            ],
            keepalive: Some(25),
        };
        kernel::set_peer(&peer).await.unwrap();
        let (state, counters) = kernel::state(&keys).await.unwrap().unwrap();
        assert_eq!(state.peers, vec![peer.clone()]);
        assert_eq!(counters[0].handshake_age, None);
        kernel::remove_peer(&peer.key).await.unwrap();
        assert!(
            kernel::state(&keys)
                .await
                .unwrap()
                .unwrap()
                .0
                .peers
                .is_empty()
        );
        go.kill().await.unwrap();
        let _ = run("ip", &["link", "del", "dev", WIREGUARD_DEVICE]).await;
    }

    #[test]
    fn reads_wg_dump() {
        let text = "PRIV\tPUB\t51820\toff\nK1\t(none)\t192.0.2.2:51820\t10.66.0.2/32,10.66.4.0/26\t0\t10\t20\t25\n";
        let (state, counters) = kernel::parse_dump(text, "PUB").unwrap();
        assert_eq!(state.port, 51820);
        assert_eq!(state.peers[0].allowed_ips.len(), 2);
        assert_eq!(state.peers[0].keepalive, Some(25));
        assert_eq!(counters[0].handshake_age, None);
        assert_eq!(counters[0].rx_bytes, 10);
        assert!(kernel::parse_dump(text, "OTHER").is_none());
    }
}
