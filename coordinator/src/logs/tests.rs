use std::collections::BTreeMap;

use skiff_shared::sections::logs::{FullPolicy, SinkFormat};

use super::*;
use crate::store::sqlite::SqliteStore;

fn sink(name: &str, url: &str) -> SinkSpec {
    SinkSpec {
        name: name.into(),
        url: url.into(),
        format: SinkFormat::Syslog,
        ca_pem: None,
        buffer_bytes: 8 << 20,
        when_full: FullPolicy::Block,
    }
}

fn container(stack: &str) -> ContainerSpec {
    serde_json::from_value(serde_json::json!({
        "stack": stack, "service": "web", "slot": 1, "image": "x"
    }))
    .unwrap()
}

#[test]
fn a_host_gets_the_cluster_sinks_and_the_own_sinks_of_the_stacks_it_runs() {
    let cluster = vec![sink("central", "tcp://logs:601")];
    let stacks = BTreeMap::from([
        (
            "shop".to_owned(),
            vec![sink("shop-logs", "udp://shop-logs:514")],
        ),
        ("quiet".to_owned(), Vec::new()),
        ("elsewhere".to_owned(), vec![sink("x", "udp://x:514")]),
    ]);
    let files = FileSettings::default();
    let s = section(
        "node-a",
        &files,
        &cluster,
        &stacks,
        &[
            container("shop"),
            container("shop"),
            container("quiet"),
            container("plain"),
        ],
    );
    assert_eq!(s.host, "node-a");
    assert_eq!(s.files, files);
    assert_eq!(s.sinks, cluster);
    assert_eq!(
        s.stack_sinks.keys().collect::<Vec<_>>(),
        ["quiet", "shop"],
        "only stacks with containers on the host, and a stack that ships nowhere keeps its empty list"
    );
    assert!(s.sinks_for("quiet").is_empty());
    assert_eq!(s.sinks_for("plain"), cluster.as_slice());
    assert_eq!(s.sinks_for("shop")[0].name, "shop-logs");
    s.check().unwrap();

    let empty = section("node-b", &files, &cluster, &stacks, &[]);
    assert!(empty.stack_sinks.is_empty());
}

async fn book(dir: &std::path::Path) -> LogBook {
    let store = SqliteStore::open(&dir.join("skiff.db")).await.unwrap();
    LogBook::load(Arc::new(store), FileSettings::default())
        .await
        .unwrap()
}

#[tokio::test]
async fn sinks_are_checked_kept_and_announced() {
    let dir = tempfile::tempdir().unwrap();
    let b = book(dir.path()).await;
    let mut changes = b.watch();
    assert!(b.sinks().is_empty());

    // Refused: nothing stored, nothing announced.
    let bad = b.put(sink("central", "http://logs:80")).await.unwrap_err();
    assert!(bad.to_string().contains("syslog"), "{bad}");
    assert!(b.sinks().is_empty());
    assert!(!changes.has_changed().unwrap());

    assert!(
        b.put(sink("central", "tcp://logs:601"))
            .await
            .unwrap()
            .is_none()
    );
    assert!(changes.has_changed().unwrap());
    changes.borrow_and_update();
    let old = b.put(sink("central", "tls://logs:6514")).await.unwrap();
    assert_eq!(old.unwrap().url, "tcp://logs:601");
    b.put(sink("backup", "udp://backup:514")).await.unwrap();
    assert_eq!(
        b.sinks()
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>(),
        ["backup", "central"]
    );
    drop(b);

    let b = book(dir.path()).await;
    assert_eq!(b.sinks().len(), 2, "kept in the store");
    assert_eq!(b.remove("backup").await.unwrap().unwrap().name, "backup");
    assert!(b.remove("backup").await.unwrap().is_none());
    drop(b);
    assert_eq!(book(dir.path()).await.sinks().len(), 1);
}

#[tokio::test]
async fn a_stacks_own_sinks_and_node_names_change_the_section() {
    let dir = tempfile::tempdir().unwrap();
    let b = book(dir.path()).await;
    let mut changes = b.watch();
    let shop = [container("shop")];
    assert_eq!(
        b.section("n1", &shop).host,
        "n1",
        "the id until the name is known"
    );
    b.set_name("n1", "alpha");
    assert!(changes.has_changed().unwrap());
    changes.borrow_and_update();
    b.set_name("n1", "alpha");
    assert!(
        !changes.has_changed().unwrap(),
        "the same name changes nothing"
    );
    assert_eq!(b.section("n1", &shop).host, "alpha");

    b.set_stack("shop", Some(Vec::new()));
    assert!(changes.has_changed().unwrap());
    changes.borrow_and_update();
    assert!(b.section("n1", &shop).sinks_for("shop").is_empty());
    b.set_stack("shop", Some(Vec::new()));
    assert!(!changes.has_changed().unwrap());
    b.set_stack("shop", None);
    assert!(changes.has_changed().unwrap());
    assert!(b.section("n1", &shop).stack_sinks.is_empty());
}
