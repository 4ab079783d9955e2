use skiff_shared::sections::networks::ClusterNet;

use super::*;

const NODE: &str = "n1";

fn section(attach: Attachment) -> NetworksSection {
    let mut front = NetworkSpec::local("shop", "front", false);
    front.id = 3;
    front.subnet = Some("10.66.12.0/22".into());
    let mut back = NetworkSpec::local("bank", "default", false);
    back.id = 4;
    back.subnet = Some("10.66.16.0/22".into());
    NetworksSection {
        networks: vec![front, back],
        cluster: Some(ClusterNet {
            range: "10.66.0.0/16".into(),
            hosts: "10.66.0.0/22".into(),
            mtu: 1500,
            attach,
        }),
    }
}

fn running(id: &str, pid: u32, nets: &[&str]) -> Container {
    Container {
        id: id.into(),
        pid: Some(pid),
        networks: nets.iter().map(|n| format!("skiff.{n}.{NODE}")).collect(),
    }
}

fn host(containers: Vec<Container>) -> Observed {
    Observed {
        containers,
        bridge_mtu: Some(1376),
        ..Observed::default()
    }
}

fn attached(o: &mut Observed, id: &str, name: &str, address: Option<&str>) {
    o.interfaces.entry(id.into()).or_default().push(Interface {
        name: name.into(),
        address: address.map(|a| a.parse().unwrap()),
    });
}

fn attach_targets(actions: &[Action]) -> Vec<(String, String, String)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Attach { target, mtu } => {
                assert_eq!(*mtu, 1376, "the weave bridge's MTU");
                Some((
                    target.container.clone(),
                    target.interface.clone(),
                    target.subnet.to_string(),
                ))
            }
            Action::Release { .. } => None,
        })
        .collect()
}

#[test]
fn a_running_container_is_attached_once_per_weave_network() {
    let s = section(Attachment::Weave);
    let mut o = host(vec![
        running("c1", 10, &["shop.front"]),
        running("c2", 20, &["shop.front", "bank.default"]),
        Container {
            id: "stopped".into(),
            pid: None,
            networks: vec![format!("skiff.shop.front.{NODE}")],
        },
        running("other", 30, &["shop.elsewhere"]),
    ]);
    assert_eq!(
        attach_targets(&diff(&s, NODE, &o)),
        vec![
            ("c1".into(), "ethwe3".into(), "10.66.12.0/22".into()),
            ("c2".into(), "ethwe4".into(), "10.66.16.0/22".into()),
            ("c2".into(), "ethwe3".into(), "10.66.12.0/22".into()),
        ]
    );
    // Attached with an address of the subnet: left alone, and reported.
    attached(&mut o, "c1", "ethwe3", Some("10.66.12.1/22"));
    attached(&mut o, "c2", "ethwe3", Some("10.66.12.2/22"));
    attached(&mut o, "c2", "ethwe4", Some("10.66.16.1/22"));
    assert_eq!(diff(&s, NODE, &o), vec![]);
    let by_container = addresses(&s, NODE, &o);
    assert_eq!(
        by_container["c2"],
        vec![
            ContainerAddress {
                network: "default".into(),
                address: "10.66.16.1".into()
            },
            ContainerAddress {
                network: "front".into(),
                address: "10.66.12.2".into()
            },
        ]
    );
}

#[test]
fn a_half_made_or_wrong_interface_is_made_again() {
    let s = section(Attachment::Weave);
    let mut o = host(vec![running("c1", 10, &["shop.front"])]);
    attached(&mut o, "c1", "ethwe3", None);
    assert_eq!(attach_targets(&diff(&s, NODE, &o)).len(), 1, "no address");
    o.interfaces.clear();
    attached(&mut o, "c1", "ethwe3", Some("10.66.16.9/22"));
    assert_eq!(
        attach_targets(&diff(&s, NODE, &o)).len(),
        1,
        "another subnet's address"
    );
    assert!(addresses(&s, NODE, &o).is_empty());
}

#[test]
fn a_gone_container_is_released_and_a_stopped_one_keeps_its_address() {
    let s = section(Attachment::Weave);
    let mut o = host(vec![Container {
        id: "stopped".into(),
        pid: None,
        networks: vec![format!("skiff.shop.front.{NODE}")],
    }]);
    o.allocated = ["stopped".to_owned(), "gone".to_owned()].into();
    assert_eq!(
        diff(&s, NODE, &o),
        vec![Action::Release {
            container: "gone".into()
        }]
    );
    // Releases go on without the bridge, and whatever the mode.
    o.bridge_mtu = None;
    assert_eq!(diff(&section(Attachment::Bridge), NODE, &o).len(), 1);
}

#[test]
fn nothing_is_tried_while_weave_is_missing_and_each_network_says_why() {
    let s = section(Attachment::Weave);
    let mut o = host(vec![running("c1", 10, &["shop.front"])]);
    o.allocated = ["gone".to_owned()].into();
    o.api_error = Some("connection refused".into());
    assert_eq!(diff(&s, NODE, &o), vec![]);
    let p = problems(&s, &o, "http://127.0.0.1:6784");
    assert_eq!(p.len(), 2);
    assert!(
        p[0].error.contains("http://127.0.0.1:6784"),
        "{}",
        p[0].error
    );
    assert!(p[0].error.contains("is Weave Net running on this host?"));
    o.api_error = None;
    o.bridge_mtu = None;
    assert_eq!(
        diff(&s, NODE, &o),
        vec![Action::Release {
            container: "gone".into()
        }],
        "no attachment without the bridge"
    );
    let p = problems(&s, &o, "http://127.0.0.1:6784");
    assert!(p[1].error.contains("bridge \"weave\""), "{}", p[1].error);
    o.bridge_mtu = Some(1376);
    assert!(problems(&s, &o, "http://127.0.0.1:6784").is_empty());
}

#[test]
fn bridge_mode_attaches_nothing_and_reports_nothing() {
    let s = section(Attachment::Bridge);
    let mut o = host(vec![running("c1", 10, &["shop.front"])]);
    assert_eq!(diff(&s, NODE, &o), vec![]);
    o.api_error = Some("down".into());
    assert!(problems(&s, &o, "http://127.0.0.1:6784").is_empty());
}

#[test]
fn only_weave_networks_are_named_as_attached_through_weave() {
    let names: Vec<String> = engine_names(&section(Attachment::Weave), NODE)
        .into_iter()
        .collect();
    assert_eq!(
        names,
        [
            format!("skiff.bank.default.{NODE}"),
            format!("skiff.shop.front.{NODE}")
        ]
    );
    assert!(engine_names(&section(Attachment::Bridge), NODE).is_empty());
}
