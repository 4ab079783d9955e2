//! Join tokens: expired, used-up, revoked and forged tokens are refused
//! with a clear message, and nothing is joined.

use std::time::Duration;

use skiff_api_types::{JoinTokenStatus, JoinTokenView};
use skiff_cli::client::Method;
use skiff_tests::cluster::{Coordinator, CoordinatorOptions, run_join};
use skiff_tests::wait_until;

async fn join_fails(coord: &Coordinator, token: &str, want_code: i32, want: &str) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = run_join(&coord.agent.to_string(), token, &data, "n", &[])
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(want_code), "{stderr}");
    assert!(stderr.contains(want), "expected {want:?} in {stderr:?}");
    assert!(!data.join("node.toml").exists(), "nothing is half-joined");
}

async fn tokens(coord: &Coordinator) -> Vec<JoinTokenView> {
    coord
        .client()
        .call(Method::GET, "/tokens/join", None::<&()>)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_used_up_revoked_and_forged_tokens_are_refused() {
    let coord = Coordinator::launch(CoordinatorOptions::default())
        .await
        .unwrap();

    let expiring = coord.create_token(1, Some("1s")).await.unwrap();
    wait_until("the token to expire", Duration::from_secs(10), || async {
        tokens(&coord)
            .await
            .iter()
            .any(|t| t.id == expiring.id && t.status == JoinTokenStatus::Expired)
    })
    .await
    .unwrap();
    join_fails(&coord, &expiring.token, 5, "join token has expired").await;

    let once = coord.create_token(1, None).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = run_join(
        &coord.agent.to_string(),
        &once.token,
        &dir.path().join("a"),
        "first",
        &[],
    )
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    join_fails(&coord, &once.token, 5, "join token has been used up").await;

    let revoked = coord.create_token(5, None).await.unwrap();
    let view: JoinTokenView = coord
        .client()
        .call(
            Method::DELETE,
            &format!("/tokens/join/{}", revoked.id),
            None::<&()>,
        )
        .await
        .unwrap();
    assert_eq!(view.status, JoinTokenStatus::Revoked);
    join_fails(&coord, &revoked.token, 5, "join token has been revoked").await;

    // Right id, wrong secret.
    let good = coord.create_token(1, None).await.unwrap();
    let mut forged: skiff_shared::join::JoinToken = good.token.parse().unwrap();
    forged.secret = "0".repeat(40);
    join_fails(
        &coord,
        &forged.to_string(),
        5,
        "unknown or its secret is wrong",
    )
    .await;
    // Not a token at all.
    join_fails(&coord, "SKIFF-1-nope", 2, "invalid --token").await;

    let all = tokens(&coord).await;
    let good_view = all.iter().find(|t| t.id == good.id).unwrap();
    assert_eq!(
        good_view.uses, 0,
        "a forged secret does not use the token up"
    );
    assert_eq!(
        coord.nodes().await.unwrap().len(),
        1,
        "only the one good join made a node"
    );

    // Joining again with the same data dir is a no-op, not a second node.
    let again = run_join(
        &coord.agent.to_string(),
        &good.token,
        &dir.path().join("a"),
        "first",
        &[],
    )
    .await
    .unwrap();
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stdout).contains("Already joined"));
    assert_eq!(coord.nodes().await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn duplicate_node_names_are_refused() {
    let coord = Coordinator::launch(CoordinatorOptions::default())
        .await
        .unwrap();
    let token = coord.create_token(2, None).await.unwrap().token;
    let dir = tempfile::tempdir().unwrap();
    let out = run_join(
        &coord.agent.to_string(),
        &token,
        &dir.path().join("a"),
        "web-1",
        &[],
    )
    .await
    .unwrap();
    assert!(out.status.success());
    let out = run_join(
        &coord.agent.to_string(),
        &token,
        &dir.path().join("b"),
        "web-1",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(5));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("already in the cluster; pass another --name")
    );
    let out = run_join(
        &coord.agent.to_string(),
        &token,
        &dir.path().join("c"),
        "bad name",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = run_join(
        &coord.agent.to_string(),
        &token,
        &dir.path().join("c"),
        "ok",
        &["nolabel"],
    )
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected key=value"));
}
