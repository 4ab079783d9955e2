use super::*;

#[test]
fn every_migration_file_is_registered() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let files = std::fs::read_dir(dir).unwrap().filter(|e| {
        e.as_ref()
            .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "sql"))
    });
    assert_eq!(files.count(), migrator().migrations.len());
}

#[tokio::test]
async fn migrates_a_fresh_database_and_reopens_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("skiff.db");
    let store = SqliteStore::open(&path).await.unwrap();
    assert_eq!(
        store
            .insert_release("web", "services: {}", "[]", 1)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .insert_release("web", "services: {}", "[]", 2)
            .await
            .unwrap(),
        2
    );
    drop(store);
    let store = SqliteStore::open(&path).await.unwrap();
    assert_eq!(store.stacks().await.unwrap()[0].current_release, 2);
    let mut plan = crate::store::NodePlanRow {
        node_id: "n1".into(),
        generation: 2,
        containers: vec![],
        sections: [(
            "networks".to_owned(),
            skiff_shared::plan::Section {
                generation: 2,
                body: serde_json::json!({"networks": []}),
            },
        )]
        .into(),
    };
    store.put_node_plan(&plan, 1).await.unwrap();
    plan.generation = 3;
    store.put_node_plan(&plan, 2).await.unwrap();
    let stored = store.node_plans().await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].generation, 3);
    assert_eq!(stored[0].sections, plan.sections);
}

#[tokio::test]
async fn a_join_token_is_checked_without_being_used_and_keeps_its_labels() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("skiff.db"))
        .await
        .unwrap();
    let labels = BTreeMap::from([("zone".to_owned(), "eu".to_owned())]);
    store
        .insert_join_token(&JoinTokenRow {
            id: "t1".into(),
            secret_hash: "h".repeat(64),
            created_at: 1,
            expires_at: 1_000,
            uses_allowed: 1,
            uses: 0,
            revoked_at: None,
            labels: labels.clone(),
        })
        .await
        .unwrap();
    let good = "h".repeat(64);
    assert_eq!(
        store
            .check_join_token("t1", &"x".repeat(64), "n1", 2)
            .await
            .unwrap()
            .unwrap_err(),
        JoinRefusal::Unknown
    );
    assert_eq!(
        store
            .check_join_token("nope", &good, "n1", 2)
            .await
            .unwrap()
            .unwrap_err(),
        JoinRefusal::Unknown
    );
    assert_eq!(
        store
            .check_join_token("t1", &good, "n1", 1_000)
            .await
            .unwrap()
            .unwrap_err(),
        JoinRefusal::Expired
    );
    let token = store
        .check_join_token("t1", &good, "n1", 2)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(token.labels, labels);
    assert_eq!(store.join_tokens().await.unwrap()[0].uses, 0, "not used");
}

#[tokio::test]
async fn the_cluster_network_never_hands_out_a_subnet_twice() {
    use crate::store::{LeaseRow, MeshHostRow, NetworkStore};
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("skiff.db"))
        .await
        .unwrap();
    let front = store
        .add_cluster_network("shop", "front", "10.66.4.0/22", 1)
        .await
        .unwrap();
    assert!(
        store
            .add_cluster_network("shop", "back", "10.66.4.0/22", 1)
            .await
            .is_err(),
        "a subnet is one network's"
    );
    assert!(
        store
            .add_cluster_network("shop", "front", "10.66.8.0/22", 1)
            .await
            .is_err(),
        "a network has one subnet"
    );
    let lease = |node: &str, subnet: &str| LeaseRow {
        network_id: front,
        node_id: node.into(),
        subnet: subnet.into(),
    };
    store
        .add_lease(&lease("a", "10.66.4.0/26"), 1)
        .await
        .unwrap();
    store
        .add_lease(&lease("a", "10.66.4.64/26"), 1)
        .await
        .unwrap();
    assert!(
        store
            .add_lease(&lease("b", "10.66.4.0/26"), 1)
            .await
            .is_err()
    );
    store
        .add_lease(&lease("b", "10.66.4.128/26"), 1)
        .await
        .unwrap();
    store.remove_leases(front, "a").await.unwrap();
    assert_eq!(
        store.leases().await.unwrap(),
        vec![lease("b", "10.66.4.128/26")]
    );
    let host = MeshHostRow {
        node_id: "a".into(),
        address: "10.66.0.1".into(),
        public_key: Some("k".into()),
        underlay_mtu: Some(1450),
    };
    store.put_mesh_host(&host, 1).await.unwrap();
    assert_eq!(store.mesh_hosts().await.unwrap(), vec![host]);
    store.remove_cluster_network(front).await.unwrap();
    assert!(store.leases().await.unwrap().is_empty());
    assert!(store.cluster_networks().await.unwrap().is_empty());
}
