//! Duplicates that arrive while the first delivery is still with the app.

mod common;

use common::{HEADER_ROUTE, TestApp, TestProxy, spawn_post};
use std::sync::Arc;

const WAIT_ROUTE: &str = "defaults: { concurrent: wait, wait_timeout: 10s }
routes:
  - name: hooks
    match: { path_prefix: /hooks/ }
    key: { header: Idempotency-Key }
";

/// Whether at least `n` claims reached the store (each one is a cache miss while the key is in
/// flight), polled because the claim itself has no event a test can await.
async fn claims_attempted(proxy: &TestProxy, n: usize) -> bool {
    common::eventually(std::time::Duration::from_secs(10), || async {
        proxy.metric("idemgate_cache_misses_total").await >= n as f64
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_deliveries_of_one_key_reach_the_app_once() {
    let app = TestApp::start().await;
    let proxy = Arc::new(TestProxy::start(&app, HEADER_ROUTE).await);
    let barrier = Arc::new(tokio::sync::Barrier::new(50));
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (proxy, barrier) = (proxy.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                proxy.post("/hooks/a", &[("idempotency-key", "storm")], "{}").await.status.as_u16()
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.unwrap());
    }
    assert_eq!(app.count("storm"), 1, "statuses: {statuses:?}");
    assert!(statuses.iter().all(|s| *s == 200 || *s == 409), "{statuses:?}");
    assert!(statuses.contains(&200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_deliveries_in_wait_mode_all_get_the_one_response() {
    let app = TestApp::start().await;
    let proxy = Arc::new(TestProxy::start(&app, WAIT_ROUTE).await);
    app.hold("storm");
    let tasks: Vec<_> = (0..50).map(|_| spawn_post(&proxy, &[("idempotency-key", "storm")], "{}")).collect();
    assert_eq!(app.arrival().await, "storm");
    assert!(claims_attempted(&proxy, 50).await, "all 50 reached the claim while the first was held");
    app.release("storm");
    let mut replayed = 0;
    for task in tasks {
        let reply = task.await.unwrap();
        assert_eq!(reply.status, 200);
        assert_eq!(reply.json()["n"], 1, "every client sees the first delivery's response");
        replayed += reply.replayed() as usize;
    }
    assert_eq!(app.count("storm"), 1);
    assert_eq!(replayed, 49);
    // Duplicates were waiting when the key completed: its record went into memory at once, and
    // every waiter was answered from there, none from the store.
    assert_eq!(proxy.metric("idemgate_cache_hits_total").await, 49.0);
    assert_eq!(proxy.metric("idemgate_cache_misses_total").await, 50.0);
}

#[tokio::test]
async fn a_key_in_flight_gets_409_with_retry_after() {
    let app = TestApp::start().await;
    let proxy = Arc::new(TestProxy::start(&app, HEADER_ROUTE).await);
    app.hold("busy");
    let first = spawn_post(&proxy, &[("idempotency-key", "busy")], "{}");
    app.arrival().await;
    let dup = proxy.post("/hooks/a", &[("idempotency-key", "busy")], "{}").await;
    assert_eq!(dup.assert_problem(409), "urn:idemgate:problem:key-in-flight");
    assert!(dup.header("retry-after").is_some());
    app.release("busy");
    assert_eq!(first.await.unwrap().status, 200);
    assert!(proxy.post("/hooks/a", &[("idempotency-key", "busy")], "{}").await.replayed());
    assert_eq!(app.count("busy"), 1);
    assert_eq!(proxy.metric("idemgate_requests_total{route=\"hooks\",outcome=\"conflict\"}").await, 1.0);
}

#[tokio::test]
async fn a_waiter_gets_the_stored_response_once_the_first_completes() {
    let app = TestApp::start().await;
    let proxy = Arc::new(TestProxy::start(&app, WAIT_ROUTE).await);
    app.hold("w");
    let first = spawn_post(&proxy, &[("idempotency-key", "w")], "{}");
    app.arrival().await;
    let waiter = spawn_post(&proxy, &[("idempotency-key", "w")], "{}");
    assert!(claims_attempted(&proxy, 2).await);
    app.release("w");
    let (first, waiter) = (first.await.unwrap(), waiter.await.unwrap());
    assert_eq!(first.status, 200);
    assert_eq!(waiter.status, 200);
    assert_eq!(waiter.body, first.body);
    assert_eq!(app.count("w"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn when_the_first_releases_the_key_exactly_one_waiter_is_forwarded() {
    let app = TestApp::start().await;
    let proxy = Arc::new(TestProxy::start(&app, WAIT_ROUTE).await);
    app.hold("r");
    let first = spawn_post(&proxy, &[("idempotency-key", "r"), ("x-test-status", "503")], "{}");
    assert_eq!(app.arrival().await, "r");
    let waiters: Vec<_> = (0..5).map(|_| spawn_post(&proxy, &[("idempotency-key", "r")], "{}")).collect();
    // Let the first answer 503 only after the waiters found the key in flight.
    assert!(claims_attempted(&proxy, 6).await);
    app.release("r");
    assert_eq!(first.await.unwrap().status, 503, "the first client gets the app's own 503");
    let mut bodies = Vec::new();
    for w in waiters {
        let reply = w.await.unwrap();
        assert_eq!(reply.status, 200, "a waiter never receives another request's non-stored outcome");
        bodies.push(reply.json()["n"].clone());
    }
    assert_eq!(app.count("r"), 2, "one waiter claimed the released key");
    assert!(bodies.iter().all(|n| *n == 2), "the others replay the new claimant's response: {bodies:?}");
}

#[tokio::test]
async fn a_waiter_gets_409_after_wait_timeout() {
    let app = TestApp::start().await;
    let routes = "defaults: { concurrent: wait, wait_timeout: 300ms }
routes:
  - name: hooks
    match: { path_prefix: /hooks/ }
    key: { header: Idempotency-Key }
";
    let proxy = Arc::new(TestProxy::start(&app, routes).await);
    app.hold("slow");
    let first = spawn_post(&proxy, &[("idempotency-key", "slow")], "{}");
    app.arrival().await;
    let waiter = proxy.post("/hooks/a", &[("idempotency-key", "slow")], "{}").await;
    waiter.assert_problem(409);
    app.release("slow");
    assert_eq!(first.await.unwrap().status, 200);
    assert_eq!(app.count("slow"), 1);
}

#[tokio::test]
async fn a_different_payload_while_in_flight_gets_422() {
    let app = TestApp::start().await;
    let routes = "routes:
  - name: hooks
    match: { path_prefix: /hooks/ }
    key: { header: Idempotency-Key }
    fingerprint: body
";
    let proxy = Arc::new(TestProxy::start(&app, routes).await);
    app.hold("fp");
    let first = spawn_post(&proxy, &[("idempotency-key", "fp")], "one");
    app.arrival().await;
    proxy.post("/hooks/a", &[("idempotency-key", "fp")], "two").await.assert_problem(422);
    proxy.post("/hooks/a", &[("idempotency-key", "fp")], "one").await.assert_problem(409);
    app.release("fp");
    assert_eq!(first.await.unwrap().status, 200);
}

#[tokio::test]
async fn a_client_that_disconnects_mid_flight_still_gets_its_key_completed() {
    let app = TestApp::start().await;
    let proxy = Arc::new(TestProxy::start(&app, HEADER_ROUTE).await);
    app.hold("gone");
    let first = spawn_post(&proxy, &[("idempotency-key", "gone")], "{}");
    app.arrival().await;
    first.abort();
    let _ = first.await;
    app.release("gone");
    // The exchange finishes on its own task; its completion wakes nobody here, so wait for the
    // store to show it (bounded).
    let completed = common::eventually(std::time::Duration::from_secs(5), || async {
        proxy.admin.get("/admin/keys/hooks/gone").await.body.windows(9).any(|w| w == b"completed")
    })
    .await;
    assert!(completed);
    assert!(proxy.post("/hooks/a", &[("idempotency-key", "gone")], "{}").await.replayed());
    assert_eq!(app.count("gone"), 1);
}
