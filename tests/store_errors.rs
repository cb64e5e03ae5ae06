//! The store unavailable: 503 with Retry-After, nothing forwarded unprotected, completed keys in
//! memory still replayed, readiness failing, and recovery once the store is back.
//!
//! "Unavailable" here is another process holding the database's write lock for longer than the
//! store waits (5s): the same condition a stuck backup or a hand-opened `sqlite3` shell causes.

mod common;

use common::{HEADER_ROUTE, TestApp, TestProxy, spawn_post};
use std::sync::Arc;

fn lock_database(path: &std::path::Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch("BEGIN EXCLUSIVE").unwrap();
    conn
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_store_answers_503_and_never_forwards_unprotected() {
    let app = TestApp::start().await;
    let proxy = TestProxy::start(&app, HEADER_ROUTE).await;
    assert_eq!(proxy.post("/hooks/a", &[("idempotency-key", "done")], "{}").await.status, 200);
    assert_eq!(proxy.admin.get("/readyz").await.status, 200);

    let lock = lock_database(&proxy.db_path);
    let (fresh, replay, ready) = tokio::join!(
        proxy.post("/hooks/a", &[("idempotency-key", "fresh")], "{}"),
        proxy.post("/hooks/a", &[("idempotency-key", "done")], "{}"),
        proxy.admin.get("/readyz"),
    );
    assert_eq!(fresh.assert_problem(503), "urn:idemgate:problem:store-unavailable");
    assert_eq!(fresh.header("retry-after"), Some("1"));
    assert_eq!(app.count("fresh"), 0, "never forwarded without a claim");
    assert!(replay.replayed(), "a completed key in memory still replays");
    assert_eq!(ready.status, 503);
    assert_eq!(proxy.metric("idemgate_requests_total{route=\"hooks\",outcome=\"store_error\"}").await, 1.0);

    lock.execute_batch("COMMIT").unwrap();
    drop(lock);
    assert_eq!(proxy.admin.get("/readyz").await.status, 200);
    let recovered = proxy.post("/hooks/a", &[("idempotency-key", "fresh")], "{}").await;
    assert_eq!(recovered.status, 200);
    assert_eq!(app.count("fresh"), 1);
}

/// A completion the store refuses is retried while the lease allows (tests/gate.rs); one that
/// cannot be stored before the lease ends is answered 503, never released unstored. With an 8 s
/// lease, the first attempt's 5 s lock wait leaves no room for another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_that_cannot_be_stored_within_the_lease_is_not_released_to_the_client() {
    let app = TestApp::start().await;
    let proxy = Arc::new(TestProxy::start(&app, &format!("defaults: {{ lease: 8s }}\n{HEADER_ROUTE}")).await);
    app.hold("k");
    let first = spawn_post(&proxy, &[("idempotency-key", "k")], "{}");
    app.arrival().await;
    let lock = lock_database(&proxy.db_path);
    app.release("k");
    let reply = first.await.unwrap();
    assert_eq!(reply.assert_problem(503), "urn:idemgate:problem:store-unavailable");
    lock.execute_batch("COMMIT").unwrap();
    drop(lock);
    // The claim still stands (its lease has not ended): the retry is not forwarded a second time.
    proxy.post("/hooks/a", &[("idempotency-key", "k")], "{}").await.assert_problem(409);
    assert_eq!(app.count("k"), 1);
}
