//! Crash tests: the real binary, SIGKILLed, restarted on the same SQLite file.

mod common;

use common::child::{ChildProxy, write_config};
use common::{TestApp, TestClient, eventually};
use std::time::Duration;

const ROUTES: &str = "routes:
  - name: hooks
    match: { path_prefix: /hooks/ }
    key: { header: Idempotency-Key }
    lease: 3s
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completed_keys_survive_sigkill_and_are_replayed_after_restart() {
    let app = TestApp::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &app.url(), ROUTES);

    let proxy = ChildProxy::spawn(&config);
    let client = TestClient::new(proxy.proxy_addr);
    // Concurrent deliveries, so that completions share group commits.
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move { client.post("/hooks/a", &[("idempotency-key", &format!("k{i}"))], "{}").await })
        })
        .collect();
    let mut first_bodies = Vec::new();
    for task in tasks {
        let reply = task.await.unwrap();
        assert_eq!(reply.status, 200);
        first_bodies.push(reply.body);
    }
    // Killed the moment the last response arrived: only what was synced can survive.
    proxy.kill();

    let proxy = ChildProxy::spawn(&config);
    let client = TestClient::new(proxy.proxy_addr);
    for (i, body) in first_bodies.iter().enumerate() {
        let key = format!("k{i}");
        let reply = client.post("/hooks/a", &[("idempotency-key", &key)], "{}").await;
        assert!(reply.replayed(), "{key} must be replayed after the crash");
        assert_eq!(&reply.body, body);
        assert_eq!(app.count(&key), 1);
    }
    let conn = rusqlite::Connection::open(dir.path().join("idemgate.db")).unwrap();
    let check: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(check, "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_killed_mid_flight_is_blocked_until_its_lease_ends_then_forwarded_once_more() {
    let app = TestApp::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &app.url(), ROUTES);

    let proxy = ChildProxy::spawn(&config);
    let client = TestClient::new(proxy.proxy_addr);
    app.hold("mid");
    let in_flight = tokio::spawn(async move { client.post("/hooks/a", &[("idempotency-key", "mid")], "{}").await });
    assert_eq!(app.arrival().await, "mid");
    proxy.kill();
    assert!(in_flight.await.is_err(), "the client lost its connection with the proxy");
    app.release("mid");

    let proxy = ChildProxy::spawn(&config);
    let client = TestClient::new(proxy.proxy_addr);
    let blocked = client.post("/hooks/a", &[("idempotency-key", "mid")], "{}").await;
    blocked.assert_problem(409);
    assert_eq!(app.count("mid"), 1);
    let forwarded = eventually(Duration::from_secs(10), || {
        let client = client.clone();
        async move { client.post("/hooks/a", &[("idempotency-key", "mid")], "{}").await.status == 200 }
    })
    .await;
    assert!(forwarded, "after the lease (3s) the key is forwarded once more");
    assert_eq!(app.count("mid"), 2);
    let deliveries = app.deliveries();
    assert!(deliveries.iter().all(|d| d.headers["x-idempotency-key"] == "mid"), "same key header both times");
    assert!(client.post("/hooks/a", &[("idempotency-key", "mid")], "{}").await.replayed());
    assert_eq!(app.count("mid"), 2);
}
