//! Mesh `weave`: the agent's client of Weave Net's HTTP API against the
//! fake of that API (`skiff_tests::weave_fake`; Weave Net itself cannot
//! be installed here), over real HTTP.

use skiff_agent::weave::{ApiUrl, api};
use skiff_tests::weave_fake::FakeWeave;

#[tokio::test]
async fn addresses_are_allocated_once_per_container_and_released() {
    let fake = FakeWeave::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let url = ApiUrl::parse(&fake.url()).unwrap();
    api::status(&url).await.unwrap();
    let subnet = "10.66.12.0/22".parse().unwrap();
    let a = api::allocate(&url, "c1", subnet).await.unwrap();
    assert_eq!(a.to_string(), "10.66.12.1/22");
    assert_eq!(
        api::allocate(&url, "c1", subnet).await.unwrap(),
        a,
        "the same container keeps its address"
    );
    let b = api::allocate(&url, "c2", subnet).await.unwrap();
    assert_ne!(a, b);
    api::release(&url, "c1").await.unwrap();
    assert_eq!(fake.allocations().len(), 1, "{:?}", fake.allocations());
    assert_eq!(fake.allocations()[&b.addr()], "c2");

    // Weave gone: the errors say so.
    let addr = fake.addr;
    drop(fake);
    let gone = ApiUrl::parse(&format!("http://{addr}")).unwrap();
    skiff_tests::wait_until(
        "the fake to stop answering",
        std::time::Duration::from_secs(10),
        || async { api::status(&gone).await.is_err() },
    )
    .await
    .unwrap();
    assert!(api::allocate(&gone, "c3", subnet).await.is_err());
}
