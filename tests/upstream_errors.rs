//! The app unreachable or too slow: 502/504 with Retry-After, and the key released.

mod common;

use common::{HEADER_ROUTE, TestApp, TestProxy};

#[tokio::test]
async fn an_unreachable_app_gets_502_and_releases_the_key() {
    // Reserve a port, then free it: nothing listens there until the app starts on it.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("idemgate.db");
    let proxy = TestProxy::start_in(dir, db, &format!("http://127.0.0.1:{port}"), HEADER_ROUTE).await;

    let reply = proxy.post("/hooks/a", &[("idempotency-key", "k")], "{}").await;
    assert_eq!(reply.assert_problem(502), "urn:idemgate:problem:upstream-unreachable");
    assert_eq!(reply.header("retry-after"), Some("1"));
    assert_eq!(proxy.metric("idemgate_requests_total{route=\"hooks\",outcome=\"upstream_error\"}").await, 1.0);

    let app = TestApp::start_on(&format!("127.0.0.1:{port}")).await;
    let retry = proxy.post("/hooks/a", &[("idempotency-key", "k")], "{}").await;
    assert_eq!(retry.status, 200, "the released key is forwarded on the next delivery");
    assert!(!retry.replayed());
    assert_eq!(app.count("k"), 1);
}

#[tokio::test]
async fn a_slow_app_gets_504_and_releases_the_key() {
    let app = TestApp::start().await;
    // The harness sets upstream.timeout to 2s.
    let proxy = TestProxy::start(&app, HEADER_ROUTE).await;
    let slow = proxy.post("/hooks/a", &[("idempotency-key", "slow"), ("x-test-delay-ms", "2500")], "{}").await;
    assert_eq!(slow.assert_problem(504), "urn:idemgate:problem:upstream-timeout");
    assert!(slow.header("retry-after").is_some());
    let retry = proxy.post("/hooks/a", &[("idempotency-key", "slow")], "{}").await;
    assert_eq!(retry.status, 200);
    assert!(!retry.replayed());
    assert_eq!(app.count("slow"), 2, "tried once, then forwarded again after the release");
}

#[tokio::test]
async fn pass_through_to_an_unreachable_app_gets_502() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("idemgate.db");
    let proxy = TestProxy::start_in(dir, db, &format!("http://127.0.0.1:{port}"), HEADER_ROUTE).await;
    proxy.client.get("/elsewhere").await.assert_problem(502);
}
