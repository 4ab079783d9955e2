//! The kernel side of Weave attachment through iproute2 and `nsenter`:
//! the `weave` bridge's MTU, the Weave interfaces in a container's network
//! namespace, and the veth pair that attaches it. Only `ethwe*` interfaces
//! in containers and the agent's `vwe*` host ends are ever changed.

use ipnet::Ipv4Net;
use serde_json::Value;

use super::BRIDGE;
use super::diff::{Interface, Target};
use crate::mesh::ip::run;

/// The host end of a target's veth pair: `vwe<network id><container id>`,
/// cut to the 15 bytes Linux allows.
pub fn host_end(t: &Target) -> String {
    let id = t.interface.trim_start_matches("ethwe");
    let mut name = format!("vwe{id}{}", t.container);
    name.truncate(15);
    name
}

/// The `weave` bridge's MTU; none when there is no such bridge.
pub async fn bridge_mtu() -> Option<u32> {
    let text = run("ip", &["-j", "link", "show", "dev", BRIDGE])
        .await
        .ok()?;
    let list: Vec<Value> = serde_json::from_str(&text).ok()?;
    list.first()?
        .get("mtu")?
        .as_u64()
        .and_then(|m| u32::try_from(m).ok())
}

/// The Weave interfaces in the network namespace of process `pid`.
///
/// # Errors
/// The namespace could not be entered or read.
pub async fn interfaces(pid: u32) -> Result<Vec<Interface>, String> {
    let pid = pid.to_string();
    let text = run(
        "nsenter",
        &["-t", &pid, "-n", "ip", "-j", "-4", "addr", "show"],
    )
    .await
    .map_err(|e| e.to_string())?;
    Ok(parse_interfaces(&text))
}

/// The `ethwe*` interfaces among `ip -j -4 addr show` output.
pub fn parse_interfaces(text: &str) -> Vec<Interface> {
    let list: Vec<Value> = serde_json::from_str(text).unwrap_or_default();
    list.iter()
        .filter_map(|l| {
            let name = l.get("ifname")?.as_str()?;
            if !name.starts_with("ethwe") {
                return None;
            }
            let address = l
                .get("addr_info")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .find_map(|a| {
                    let local = a.get("local")?.as_str()?;
                    let prefix = a.get("prefixlen")?.as_u64()?;
                    format!("{local}/{prefix}").parse::<Ipv4Net>().ok()
                });
            Some(Interface {
                name: name.to_owned(),
                address,
            })
        })
        .collect()
}

/// Removes what an earlier try may have left: the interface in the
/// container and the host end (either takes its peer with it).
pub async fn remove(t: &Target) {
    let pid = t.pid.to_string();
    let _ = run(
        "nsenter",
        &["-t", &pid, "-n", "ip", "link", "del", &t.interface],
    )
    .await;
    let _ = run("ip", &["link", "del", &host_end(t)]).await;
}

/// Attaches the container: a veth pair whose host end is on the `weave`
/// bridge and whose other end, in the container, gets `address` (and so
/// the route to its subnet). Undone if any step fails: nothing is left
/// half-made.
///
/// # Errors
/// The step that failed.
pub async fn attach(t: &Target, address: Ipv4Net, mtu: u32) -> Result<(), String> {
    let host = host_end(t);
    let (pid, mtu, address) = (t.pid.to_string(), mtu.to_string(), address.to_string());
    run(
        "ip",
        &[
            "link",
            "add",
            &host,
            "mtu",
            &mtu,
            "type",
            "veth",
            "peer",
            "name",
            &t.interface,
            "mtu",
            &mtu,
            "netns",
            &pid,
        ],
    )
    .await
    .map_err(|e| e.to_string())?;
    let steps = async {
        run("ip", &["link", "set", &host, "master", BRIDGE, "up"]).await?;
        let inside = ["-t", pid.as_str(), "-n", "ip"];
        let with = |rest: &[&'static str]| {
            let mut a: Vec<String> = inside.iter().map(|s| (*s).to_owned()).collect();
            a.extend(rest.iter().map(|s| (*s).to_owned()));
            a
        };
        let mut add = with(&["addr", "add"]);
        add.extend([address.clone(), "dev".into(), t.interface.clone()]);
        let up = {
            let mut a = with(&["link", "set"]);
            a.extend([t.interface.clone(), "up".into()]);
            a
        };
        for args in [add, up] {
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            run("nsenter", &refs).await?;
        }
        Ok::<(), crate::mesh::MeshError>(())
    };
    if let Err(e) = steps.await {
        let _ = run("ip", &["link", "del", &host]).await;
        return Err(e.to_string());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weave_interfaces_are_read_with_their_address() {
        let text = r#"[{"ifindex":1,"ifname":"lo","addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8}]},
            {"ifindex":9,"ifname":"eth0","addr_info":[{"family":"inet","local":"172.18.0.2","prefixlen":16}]},
            {"ifindex":11,"ifname":"ethwe3","addr_info":[{"family":"inet","local":"10.66.12.1","prefixlen":22}]},
            {"ifindex":12,"ifname":"ethwe4","addr_info":[]}]"#;
        assert_eq!(
            parse_interfaces(text),
            vec![
                Interface {
                    name: "ethwe3".into(),
                    address: Some("10.66.12.1/22".parse().unwrap())
                },
                Interface {
                    name: "ethwe4".into(),
                    address: None
                },
            ]
        );
    }

    #[test]
    fn host_ends_fit_in_an_interface_name() {
        let t = Target {
            container: "0123456789abcdef0123".into(),
            pid: 1,
            stack: "s".into(),
            network: "n".into(),
            interface: "ethwe12".into(),
            subnet: "10.66.12.0/22".parse().unwrap(),
        };
        assert_eq!(host_end(&t), "vwe120123456789");
    }
}
