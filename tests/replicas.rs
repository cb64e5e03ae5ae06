//! Two idemgate processes on one shared store (PostgreSQL or Redis, when their test URLs are
//! set): one truth across replicas.

mod common;

use common::child::{ChildProxy, write_config};
use common::{TestApp, TestClient};
use std::sync::Arc;
use std::time::Duration;

/// Says so on the terminal even though the test harness captures output: a skipped backend must
/// not pass silently.
fn skipped(why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "SKIPPED: {why}");
}

/// The store section for each shared backend whose test server is configured.
fn shared_stores() -> Vec<(&'static str, String)> {
    let run = format!("{:x}", idemgate::store::now_ms());
    let mut stores = Vec::new();
    match std::env::var("IDEMGATE_TEST_POSTGRES_URL") {
        Ok(url) => stores.push(("postgres", format!("store: {{ postgres: {{ url: \"{url}\" }} }}"))),
        Err(_) => skipped("postgres replicas: IDEMGATE_TEST_POSTGRES_URL not set"),
    }
    match std::env::var("IDEMGATE_TEST_REDIS_URL") {
        Ok(url) => {
            stores.push(("redis", format!("store: {{ redis: {{ url: \"{url}\", key_prefix: \"replicas-{run}:\" }} }}")))
        }
        Err(_) => skipped("redis replicas: IDEMGATE_TEST_REDIS_URL not set"),
    }
    stores
}

/// Starts two replicas on the same store in front of the same app.
fn replicas(dir: &std::path::Path, app: &TestApp, store: &str) -> (ChildProxy, ChildProxy) {
    let routes = format!(
        "{store}
routes:
  - name: hooks
    match: {{ path_prefix: /hooks/ }}
    key: {{ header: Idempotency-Key }}
    lease: 3s
"
    );
    let file = write_config(dir, &app.url(), &routes);
    (ChildProxy::spawn(&file), ChildProxy::spawn(&file))
}

fn run_prefix() -> String {
    format!("{:x}", idemgate::store::now_ms())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_copies_spread_over_two_replicas_reach_the_app_once() {
    for (name, store) in shared_stores() {
        let app = TestApp::start().await;
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = replicas(dir.path(), &app, &store);
        let clients = [TestClient::new(a.proxy_addr), TestClient::new(b.proxy_addr)];
        let run = run_prefix();
        // The 10 copies of a key are sent together, alternating between the replicas; 400 requests
        // at most are in flight, so that the burst tests the claim and not the app's accept backlog
        // (2,000 at once made connections to the app time out on a loaded machine).
        let in_flight = Arc::new(tokio::sync::Semaphore::new(400));
        let mut tasks = Vec::new();
        for k in 0..200 {
            for copy in 0..10 {
                let client = clients[(k + copy) % 2].clone();
                let key = format!("{run}-{k}");
                let permit = in_flight.clone().acquire_owned().await.unwrap();
                tasks.push(tokio::spawn(async move {
                    let status = client.post("/hooks/a", &[("idempotency-key", &key)], "{}").await.status.as_u16();
                    drop(permit);
                    status
                }));
            }
        }
        for task in tasks {
            let status = task.await.unwrap();
            assert!(status == 200 || status == 409, "{name}: {status}");
        }
        for k in 0..200 {
            assert_eq!(app.count(&format!("{run}-{k}")), 1, "{name}: key {k} reached the app once");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_paused_past_its_lease_cannot_overwrite_the_key() {
    for (name, store) in shared_stores() {
        let app = TestApp::start().await;
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = replicas(dir.path(), &app, &store);
        let (client_a, client_b) = (TestClient::new(a.proxy_addr), TestClient::new(b.proxy_addr));
        let key = format!("{}-paused", run_prefix());
        app.hold(&key);
        let first = {
            let (client, key) = (client_a.clone(), key.clone());
            tokio::spawn(async move { client.post("/hooks/a", &[("idempotency-key", &key)], "{}").await })
        };
        assert_eq!(app.arrival().await, key);
        a.signal("STOP");
        // B sees the key in flight until A's lease (3s) ends, then takes it over.
        let taken_over = common::eventually(Duration::from_secs(10), || {
            let (client, key) = (client_b.clone(), key.clone());
            let app = &app;
            async move {
                let headers = [("idempotency-key", key.as_str())];
                let reply = client.post("/hooks/a", &headers, "{}");
                // A taken-over delivery reaches the app (and waits there, held).
                tokio::select! {
                    r = reply => r.status == 200,
                    _ = tokio::time::sleep(Duration::from_millis(300)) => app.count(&key) == 2,
                }
            }
        })
        .await;
        assert!(taken_over, "{name}: B took the key over after A's lease");
        app.release(&key);
        // B's response is stored; A wakes up and can no longer complete the key.
        let stored = common::eventually(Duration::from_secs(10), || {
            let (client, key) = (client_b.clone(), key.clone());
            async move { client.post("/hooks/a", &[("idempotency-key", &key)], "{}").await.replayed() }
        })
        .await;
        assert!(stored, "{name}");
        a.signal("CONT");
        let _ = first.await;
        for client in [&client_a, &client_b] {
            let reply = client.post("/hooks/a", &[("idempotency-key", &key)], "{}").await;
            assert!(reply.replayed(), "{name}");
            assert_eq!(reply.json()["n"], 2, "{name}: B's record stands, whatever A did after waking");
        }
        assert_eq!(app.count(&key), 2);
    }
}
