//! What the networks controller reads and writes on the host beside the
//! engine: the IPv4 routes (`/proc/net/route`) and each cluster bridge's
//! proxy ARP (`/proc/sys`).

use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnet::Ipv4Net;

use super::diff::Route;

/// The engine's option naming a bridge network's Linux bridge.
pub const OPTION_BRIDGE: &str = "com.docker.network.bridge.name";

/// The host's IPv4 routes, the default route left out; none where they
/// cannot be read.
pub fn routes() -> Vec<Route> {
    std::fs::read_to_string("/proc/net/route")
        .map(|t| parse_routes(&t))
        .unwrap_or_default()
}

/// The flag of a reject route in `/proc/net/route`.
const RTF_REJECT: u32 = 0x0200;

/// Parses `/proc/net/route`: device, then destination and mask in hex
/// (host byte order).
fn parse_routes(text: &str) -> Vec<Route> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let hex = |i: usize| -> Option<Ipv4Addr> {
                let n = u32::from_str_radix(f.get(i)?, 16).ok()?;
                Some(Ipv4Addr::from(u32::from_be(n)))
            };
            let net = Ipv4Net::with_netmask(hex(1)?, hex(7)?).ok()?;
            let device = (*f.first()?).to_owned();
            // A reject route (unreachable, prohibit, blackhole; the mesh's
            // own guard of the cluster range is one) uses no address on
            // any link: a bridge's subnet does not clash with it.
            let flags = u32::from_str_radix(f.get(3)?, 16).ok()?;
            if flags & RTF_REJECT != 0 {
                return None;
            }
            (net.prefix_len() > 0).then(|| Route {
                net: net.trunc(),
                device,
            })
        })
        .collect()
}

/// A bridge name that is safe in a `/proc/sys` path.
fn safe(bridge: &str) -> bool {
    !bridge.is_empty()
        && bridge.len() <= 15
        && bridge
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn sysctls(bridge: &str) -> [(PathBuf, &'static str); 2] {
    [
        (
            PathBuf::from(format!("/proc/sys/net/ipv4/conf/{bridge}/proxy_arp")),
            "1",
        ),
        (
            PathBuf::from(format!("/proc/sys/net/ipv4/neigh/{bridge}/proxy_delay")),
            "0",
        ),
    ]
}

/// Whether proxy ARP is on, without delay, on `bridge`.
pub fn proxy_arp_on(bridge: &str) -> bool {
    safe(bridge)
        && sysctls(bridge)
            .iter()
            .all(|(path, want)| std::fs::read_to_string(path).is_ok_and(|v| v.trim() == *want))
}

/// Why proxy ARP could not be turned on.
#[derive(Debug, thiserror::Error)]
pub enum SysctlError {
    #[error("bridge name {0:?} is not one the agent makes")]
    Name(String),
    #[error("writing {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

/// Turns proxy ARP on on `bridge`, with no delay: containers then reach
/// the members of their subnet on other hosts (the host answers for them
/// and routes them through the mesh).
///
/// # Errors
/// A sysctl could not be written (the bridge is gone, or `/proc/sys` is
/// read-only here).
pub fn set_proxy_arp(bridge: &str) -> Result<(), SysctlError> {
    if !safe(bridge) {
        return Err(SysctlError::Name(bridge.to_owned()));
    }
    for (path, value) in sysctls(bridge) {
        std::fs::write(&path, value).map_err(|source| SysctlError::Write {
            path: path.display().to_string(),
            source,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_read_from_proc() {
        let text =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t0100A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0
eth0\t0000A8C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0
sk-3\t0008420A\t00000000\t0001\t0\t0\t0\t00FCFFFF\t0\t0\t0
*\t0000420A\t00000000\t0201\t0\t0\t4242\t0000FFFF\t0\t0\t0
bad line
";
        assert_eq!(
            parse_routes(text),
            vec![
                Route {
                    net: "192.168.0.0/24".parse().unwrap(),
                    device: "eth0".into()
                },
                Route {
                    net: "10.66.8.0/22".parse().unwrap(),
                    device: "sk-3".into()
                },
            ]
        );
    }

    #[test]
    fn only_plain_bridge_names_reach_proc_sys() {
        assert!(safe("sk-12"));
        assert!(!safe("../all"));
        assert!(!safe(""));
        assert!(!safe("a-very-long-bridge-name"));
        assert!(matches!(set_proxy_arp("../x"), Err(SysctlError::Name(_))));
    }
}
