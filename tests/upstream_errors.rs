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

/// A sidecar's app may stop before idemgate does (Kubernetes stops a pod's main containers before
/// its native sidecars): deliveries then get 502 with Retry-After, and their keys are released so
/// the provider's retry is forwarded once the app is back.
#[tokio::test]
async fn an_app_that_stops_gets_502_with_retry_after_and_the_key_is_released() {
    let app = TestApp::start().await;
    let addr = app.addr;
    let proxy = TestProxy::start(&app, HEADER_ROUTE).await;
    // A pooled connection to the app exists when it goes away.
    assert_eq!(proxy.post("/hooks/a", &[("idempotency-key", "before")], "{}").await.status, 200);
    app.kill().await;

    let reply = proxy.post("/hooks/a", &[("idempotency-key", "during")], "{}").await;
    assert_eq!(reply.assert_problem(502), "urn:idemgate:problem:upstream-unreachable");
    assert_eq!(reply.header("retry-after"), Some("1"));
    assert_eq!(proxy.admin.get("/admin/keys/hooks/during").await.status, 404, "released: no record");
    assert!(proxy.post("/hooks/a", &[("idempotency-key", "before")], "{}").await.replayed(), "replays go on");

    let app = TestApp::start_on(&addr.to_string()).await;
    let retry = proxy.post("/hooks/a", &[("idempotency-key", "during")], "{}").await;
    assert_eq!((retry.status, retry.replayed()), (http::StatusCode::OK, false), "forwarded once the app is back");
    assert_eq!(app.count("during"), 1);
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
