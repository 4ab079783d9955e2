//! The kernel side of the mesh through iproute2 (`ip`, `bridge`): reading
//! the mesh devices, the agent's routes (`proto 242`) and the VXLAN
//! forwarding entries as JSON, and changing them. Nothing here touches an
//! interface or route that is not the mesh's.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnet::Ipv4Net;
use serde_json::Value;
use skiff_shared::sections::mesh::{VXLAN_DEVICE, WIREGUARD_DEVICE};

use super::MeshError;
use super::diff::{Fdb, Link, LinkKind, LinkSpec, Neighbour, Route, Underlay};

/// The routing protocol number the agent's routes carry, so that it lists
/// and removes only its own.
pub const PROTO: &str = "242";

/// Runs a command; its stdout, or an error naming it with its stderr.
pub async fn run(program: &str, args: &[&str]) -> Result<String, MeshError> {
    let out = tokio::process::Command::new(program)
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| {
            let hint = if e.kind() == std::io::ErrorKind::NotFound {
                match program {
                    "wg" => ": install wireguard-tools",
                    _ => ": install iproute2",
                }
            } else {
                ""
            };
            MeshError::Command(format!("{program} {}: {e}{hint}", args.join(" ")))
        })?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    let hint = if stderr.contains("Operation not permitted") {
        " (the agent needs CAP_NET_ADMIN: run it as root, or give its container --cap-add NET_ADMIN and --network host)"
    } else {
        ""
    };
    Err(MeshError::Command(format!(
        "{program} {} failed ({}): {stderr}{hint}",
        args.join(" "),
        out.status
    )))
}

async fn ip(args: &[&str]) -> Result<String, MeshError> {
    run("ip", args).await
}

fn json(text: &str) -> Vec<Value> {
    serde_json::from_str::<Value>(text)
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

fn str_of<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// A `dst` as `ip -j` prints it: `a.b.c.d/n`, or `a.b.c.d` for a /32.
fn net_of(s: &str) -> Option<Ipv4Net> {
    s.parse::<Ipv4Net>()
        .ok()
        .or_else(|| s.parse::<Ipv4Addr>().ok().map(Ipv4Net::from))
}

/// The mesh devices among `ip -j -d addr show` output.
pub fn parse_links(text: &str) -> Vec<Link> {
    json(text)
        .iter()
        .filter_map(|l| {
            let name = str_of(l, "ifname")?;
            if name != WIREGUARD_DEVICE && name != VXLAN_DEVICE {
                return None;
            }
            let info = l.get("linkinfo");
            let kind_name = info.and_then(|i| str_of(i, "info_kind")).unwrap_or("");
            let data = info.and_then(|i| i.get("info_data"));
            let kind = match kind_name {
                "tun" => LinkKind::Tun,
                "wireguard" => LinkKind::Wireguard,
                "vxlan" => LinkKind::Vxlan {
                    vni: data
                        .and_then(|d| d.get("id"))
                        .and_then(Value::as_u64)
                        .and_then(|v| u32::try_from(v).ok())
                        .unwrap_or(0),
                    port: data
                        .and_then(|d| d.get("port"))
                        .and_then(Value::as_u64)
                        .and_then(|v| u16::try_from(v).ok())
                        .unwrap_or(0),
                    local: data
                        .and_then(|d| str_of(d, "local"))
                        .and_then(|s| s.parse().ok()),
                    dev: data.and_then(|d| str_of(d, "link")).map(str::to_owned),
                },
                other => LinkKind::Other(other.to_owned()),
            };
            let up = l
                .get("flags")
                .and_then(Value::as_array)
                .is_some_and(|f| f.iter().any(|f| f.as_str() == Some("UP")));
            let addresses = l
                .get("addr_info")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter(|a| str_of(a, "family") == Some("inet"))
                        .filter_map(|a| {
                            let local: Ipv4Addr = str_of(a, "local")?.parse().ok()?;
                            let len = u8::try_from(a.get("prefixlen")?.as_u64()?).ok()?;
                            Ipv4Net::new(local, len).ok()
                        })
                        .collect()
                })
                .unwrap_or_default();
            Some(Link {
                name: name.to_owned(),
                kind,
                mtu: l
                    .get("mtu")
                    .and_then(Value::as_u64)
                    .and_then(|v| u32::try_from(v).ok())
                    .unwrap_or(0),
                up,
                mac: (kind_name == "vxlan")
                    .then(|| str_of(l, "address").map(str::to_owned))
                    .flatten(),
                addresses,
                rp_filter: None,
            })
        })
        .collect()
}

/// The agent's routes among `ip -j route show proto 242` output.
pub fn parse_routes(text: &str) -> Vec<Route> {
    json(text)
        .iter()
        .filter_map(|r| {
            let dst = net_of(str_of(r, "dst")?)?;
            if str_of(r, "type") == Some("unreachable") {
                let metric = r
                    .get("metric")
                    .and_then(Value::as_u64)
                    .and_then(|v| u32::try_from(v).ok())
                    .unwrap_or(0);
                return Some(Route::Unreachable { dst, metric });
            }
            Some(Route::Unicast {
                dst,
                via: str_of(r, "gateway").and_then(|g| g.parse().ok()),
                dev: str_of(r, "dev")?.to_owned(),
            })
        })
        .collect()
}

/// The unicast forwarding entries among `bridge -j fdb show dev skv0`.
pub fn parse_fdb(text: &str) -> Vec<Fdb> {
    json(text)
        .iter()
        .filter_map(|f| {
            Some(Fdb {
                mac: str_of(f, "mac")?.to_owned(),
                dst: str_of(f, "dst")?.parse().ok()?,
            })
        })
        .collect()
}

/// The permanent neighbours among `ip -j neigh show dev skv0`.
pub fn parse_neighbours(text: &str) -> Vec<Neighbour> {
    json(text)
        .iter()
        .filter(|n| {
            n.get("state")
                .and_then(Value::as_array)
                .is_some_and(|s| s.iter().any(|s| s.as_str() == Some("PERMANENT")))
        })
        .filter_map(|n| {
            Some(Neighbour {
                address: str_of(n, "dst")?.parse().ok()?,
                mac: str_of(n, "lladdr")?.to_owned(),
            })
        })
        .collect()
}

fn rp_filter_path(dev: &str) -> PathBuf {
    PathBuf::from(format!("/proc/sys/net/ipv4/conf/{dev}/rp_filter"))
}

/// The mesh devices that exist, with their addresses and `rp_filter`.
pub async fn links() -> Result<Vec<Link>, MeshError> {
    let text = ip(&["-j", "-d", "addr", "show"]).await?;
    let mut links = parse_links(&text);
    for l in &mut links {
        l.rp_filter = tokio::fs::read_to_string(rp_filter_path(&l.name))
            .await
            .ok()
            .and_then(|s| s.trim().parse().ok());
    }
    Ok(links)
}

/// The agent's routes (main table, `proto 242`).
pub async fn routes() -> Result<Vec<Route>, MeshError> {
    Ok(parse_routes(
        &ip(&["-j", "-4", "route", "show", "proto", PROTO]).await?,
    ))
}

/// The forwarding entries and permanent neighbours of `skv0`, if it exists.
pub async fn vxlan_state(present: bool) -> Result<(Vec<Fdb>, Vec<Neighbour>), MeshError> {
    if !present {
        return Ok((Vec::new(), Vec::new()));
    }
    let fdb = parse_fdb(&run("bridge", &["-j", "fdb", "show", "dev", VXLAN_DEVICE]).await?);
    let neigh = parse_neighbours(&ip(&["-j", "-4", "neigh", "show", "dev", VXLAN_DEVICE]).await?);
    Ok((fdb, neigh))
}

/// The interface the mesh leaves by: the one holding `endpoint` (the
/// agent's `mesh_endpoint`) if set, else the one of the default route.
pub async fn underlay(endpoint: Option<Ipv4Addr>) -> Result<Option<Underlay>, MeshError> {
    let (dev, address) = match endpoint {
        Some(addr) => {
            let text = ip(&["-j", "-4", "addr", "show", "to", &format!("{addr}/32")]).await?;
            match json(&text).first().and_then(|l| str_of(l, "ifname")) {
                Some(dev) => (dev.to_owned(), addr),
                // Behind NAT the endpoint is not on this host.
                None => match default_route().await? {
                    Some(d) => d,
                    None => return Ok(None),
                },
            }
        }
        None => match default_route().await? {
            Some(d) => d,
            None => return Ok(None),
        },
    };
    let text = ip(&["-j", "link", "show", "dev", &dev]).await?;
    let mtu = json(&text)
        .first()
        .and_then(|l| l.get("mtu"))
        .and_then(Value::as_u64)
        .and_then(|v| u32::try_from(v).ok())
        .unwrap_or(0);
    Ok(Some(Underlay { dev, address, mtu }))
}

/// The default route's device and source address.
async fn default_route() -> Result<Option<(String, Ipv4Addr)>, MeshError> {
    let text = ip(&["-j", "-4", "route", "get", "192.0.2.1"]).await;
    // No default route: no underlay (the host is not networked yet).
    let Ok(text) = text else { return Ok(None) };
    let routes = json(&text);
    let Some(r) = routes.first() else {
        return Ok(None);
    };
    let (Some(dev), Some(src)) = (str_of(r, "dev"), str_of(r, "prefsrc")) else {
        return Ok(None);
    };
    Ok(src.parse().ok().map(|a| (dev.to_owned(), a)))
}

/// Makes a mesh device. A TUN device is made persistent, so that it, its
/// address and its routes outlive the agent.
pub async fn create_link(spec: &LinkSpec) -> Result<(), MeshError> {
    let name = spec.name.as_str();
    let mtu = spec.mtu.to_string();
    match &spec.kind {
        LinkKind::Tun => {
            ip(&["tuntap", "add", "dev", name, "mode", "tun"]).await?;
        }
        LinkKind::Wireguard => {
            ip(&["link", "add", name, "type", "wireguard"]).await?;
        }
        LinkKind::Vxlan {
            vni,
            port,
            local,
            dev,
        } => {
            let vni = vni.to_string();
            let port = port.to_string();
            let local = local.map(|l| l.to_string());
            let mut args = vec!["link", "add", name];
            if let Some(mac) = &spec.mac {
                args.extend(["address", mac.as_str()]);
            }
            args.extend(["type", "vxlan", "id", &vni, "dstport", &port, "nolearning"]);
            if let Some(local) = &local {
                args.extend(["local", local.as_str()]);
            }
            if let Some(dev) = dev {
                args.extend(["dev", dev.as_str()]);
            }
            ip(&args).await?;
        }
        LinkKind::Other(kind) => {
            return Err(MeshError::Command(format!("cannot make a {kind} device")));
        }
    }
    ip(&["link", "set", "dev", name, "mtu", &mtu]).await?;
    Ok(())
}

pub async fn remove_link(name: &str) -> Result<(), MeshError> {
    ip(&["link", "del", "dev", name]).await.map(drop)
}

pub async fn set_mtu(dev: &str, mtu: u32) -> Result<(), MeshError> {
    ip(&["link", "set", "dev", dev, "mtu", &mtu.to_string()])
        .await
        .map(drop)
}

pub async fn set_mac(dev: &str, mac: &str) -> Result<(), MeshError> {
    ip(&["link", "set", "dev", dev, "address", mac])
        .await
        .map(drop)
}

pub async fn set_up(dev: &str) -> Result<(), MeshError> {
    ip(&["link", "set", "dev", dev, "up"]).await.map(drop)
}

pub async fn set_rp_filter(dev: &str, value: u8) -> Result<(), MeshError> {
    let path = rp_filter_path(dev);
    tokio::fs::write(&path, format!("{value}\n"))
        .await
        .map_err(|e| MeshError::Command(format!("writing {}: {e}", path.display())))
}

pub async fn address(add: bool, dev: &str, address: Ipv4Net) -> Result<(), MeshError> {
    let verb = if add { "replace" } else { "del" };
    ip(&["addr", verb, &address.to_string(), "dev", dev])
        .await
        .map(drop)
}

/// Sets (`replace`, permanent) or removes (`del`) one forwarding entry.
pub async fn fdb(set: bool, f: &Fdb) -> Result<(), MeshError> {
    let dst = f.dst.to_string();
    let verb = if set { "replace" } else { "del" };
    let mut args = vec![
        "fdb",
        verb,
        &f.mac,
        "dst",
        &dst,
        "dev",
        VXLAN_DEVICE,
        "self",
    ];
    if set {
        args.push("permanent");
    }
    run("bridge", &args).await.map(drop)
}

pub async fn set_neighbour(n: &Neighbour) -> Result<(), MeshError> {
    ip(&[
        "neigh",
        "replace",
        &n.address.to_string(),
        "lladdr",
        &n.mac,
        "dev",
        VXLAN_DEVICE,
        "nud",
        "permanent",
    ])
    .await
    .map(drop)
}

pub async fn remove_neighbour(address: Ipv4Addr) -> Result<(), MeshError> {
    ip(&["neigh", "del", &address.to_string(), "dev", VXLAN_DEVICE])
        .await
        .map(drop)
}

fn route_args(r: &Route) -> Vec<String> {
    let mut args: Vec<String> = Vec::new();
    match r {
        Route::Unreachable { dst, metric } => {
            args.extend([
                "unreachable".into(),
                dst.to_string(),
                "metric".into(),
                metric.to_string(),
            ]);
        }
        Route::Unicast { dst, via, dev } => {
            args.push(dst.to_string());
            if let Some(via) = via {
                args.extend(["via".into(), via.to_string(), "onlink".into()]);
            }
            args.extend(["dev".into(), dev.clone()]);
        }
    }
    args.extend(["proto".into(), PROTO.into()]);
    args
}

pub async fn add_route(r: &Route) -> Result<(), MeshError> {
    let mut args = vec!["route".to_owned(), "replace".to_owned()];
    args.extend(route_args(r));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ip(&args).await.map(drop)
}

/// Removes one of the agent's routes; one already gone is fine.
pub async fn remove_route(r: &Route) -> Result<(), MeshError> {
    let mut args = vec!["route".to_owned(), "del".to_owned()];
    args.extend(route_args(r));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match ip(&args).await {
        Err(MeshError::Command(e)) if e.contains("No such process") => Ok(()),
        other => other.map(drop),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_mesh_devices_and_nothing_else() {
        let text = r#"[{"ifname":"eth0","mtu":1500,"flags":["UP"],"linkinfo":{"info_kind":"veth"}},
          {"ifname":"skv0","flags":["BROADCAST","UP","LOWER_UP"],"mtu":1450,"address":"02:73:0a:42:00:01",
           "linkinfo":{"info_kind":"vxlan","info_data":{"id":4242,"local":"192.168.1.5","link":"eth0","port":4789}},
           "addr_info":[{"family":"inet","local":"10.66.0.1","prefixlen":22},{"family":"inet6","local":"fe80::1","prefixlen":64}]},
          {"ifname":"skw0","flags":["POINTOPOINT"],"mtu":1500,"linkinfo":{"info_kind":"tun","info_data":{"persist":true}}}]"#;
        let links = parse_links(text);
        assert_eq!(links.len(), 2);
        assert_eq!(
            links[0].kind,
            LinkKind::Vxlan {
                vni: 4242,
                port: 4789,
                local: Some(Ipv4Addr::new(192, 168, 1, 5)),
                dev: Some("eth0".into())
            }
        );
        assert!(links[0].up);
        assert_eq!(links[0].addresses, vec!["10.66.0.1/22".parse().unwrap()]);
        assert_eq!(links[0].mac.as_deref(), Some("02:73:0a:42:00:01"));
        assert_eq!(links[1].kind, LinkKind::Tun);
        assert!(!links[1].up);
    }

    #[test]
    fn reads_routes_fdb_and_neighbours() {
        let routes = parse_routes(
            r#"[{"type":"unreachable","dst":"10.66.0.0/16","metric":4242,"flags":[]},
               {"dst":"10.66.4.0/26","gateway":"10.66.0.2","dev":"skv0","flags":["onlink"]},
               {"dst":"10.66.8.64/26","dev":"skw0","scope":"link","flags":[]},
               {"dst":"10.66.9.9","dev":"skw0","flags":[]}]"#,
        );
        assert_eq!(
            routes,
            vec![
                Route::Unreachable {
                    dst: "10.66.0.0/16".parse().unwrap(),
                    metric: 4242
                },
                Route::Unicast {
                    dst: "10.66.4.0/26".parse().unwrap(),
                    via: Some(Ipv4Addr::new(10, 66, 0, 2)),
                    dev: "skv0".into()
                },
                Route::Unicast {
                    dst: "10.66.8.64/26".parse().unwrap(),
                    via: None,
                    dev: "skw0".into()
                },
                Route::Unicast {
                    dst: "10.66.9.9/32".parse().unwrap(),
                    via: None,
                    dev: "skw0".into()
                },
            ]
        );
        assert_eq!(
            parse_fdb(
                r#"[{"mac":"02:73:0a:42:00:02","dst":"10.0.0.2","flags":["self"],"state":"permanent"},{"mac":"8a:72:97:20:c6:8e","flags":["self"]}]"#
            ),
            vec![Fdb {
                mac: "02:73:0a:42:00:02".into(),
                dst: Ipv4Addr::new(10, 0, 0, 2)
            }]
        );
        assert_eq!(
            parse_neighbours(
                r#"[{"dst":"10.66.0.2","lladdr":"02:73:0a:42:00:02","state":["PERMANENT"]},{"dst":"10.66.0.3","lladdr":"aa:bb:cc:dd:ee:ff","state":["REACHABLE"]}]"#
            ),
            vec![Neighbour {
                address: Ipv4Addr::new(10, 66, 0, 2),
                mac: "02:73:0a:42:00:02".into()
            }]
        );
    }
}
