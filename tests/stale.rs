//! The stale-event guard: per route and entity, a delivery older than one already completed
//! never reaches the app (`action: ack`) or reaches it flagged (`action: flag`), and the
//! deliveries of one entity reach the app one at a time.

mod common;

use common::{Reply, TestApp, TestProxy};
use std::sync::Arc;

fn routes(action: &str, extra: &str) -> String {
    format!(
        "{extra}routes:
  - name: orders
    match: {{ path: /hooks/orders }}
    key: {{ json: /id }}
    scope: none
    stale:
      entity: {{ json: /data/object/id }}
      version: {{ json: /created }}
      action: {action}
"
    )
}

/// A Stripe-like event: its own id (the key), the object it is about, and when it was created.
fn event(id: &str, entity: &str, created: serde_json::Value) -> String {
    serde_json::json!({ "id": id, "created": created, "data": { "object": { "id": entity } } }).to_string()
}

async fn send(proxy: &TestProxy, body: &str) -> Reply {
    proxy.post("/hooks/orders", &[("content-type", "application/json")], body).await
}

fn spawn_send(proxy: &Arc<TestProxy>, body: String) -> tokio::task::JoinHandle<Reply> {
    let proxy = proxy.clone();
    tokio::spawn(async move { send(&proxy, &body).await })
}

/// (entity, version) of every event the app received, in the order it received them.
fn applied(app: &TestApp) -> Vec<(String, i64)> {
    app.deliveries()
        .iter()
        .map(|d| {
            let event: serde_json::Value = serde_json::from_slice(&d.body).unwrap();
            (event["data"]["object"]["id"].as_str().unwrap().to_string(), event["created"].as_i64().unwrap())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_delivery_is_acknowledged_once_and_replayed_after() {
    let app = TestApp::start().await;
    let proxy = TestProxy::start(&app, &routes("ack", "")).await;

    assert_eq!(send(&proxy, &event("evt-5", "cus_1", 5.into())).await.status, 200);
    let stale = send(&proxy, &event("evt-3", "cus_1", 3.into())).await;
    assert_eq!(stale.status, 200);
    assert_eq!(stale.header("idempotent-stale"), Some("true"));
    assert!(!stale.replayed());
    assert_eq!(stale.json(), serde_json::json!({ "key": "evt-3", "stale": true }));
    assert_eq!(app.total(), 1, "the stale event never reached the app");

    let again = send(&proxy, &event("evt-3", "cus_1", 3.into())).await;
    assert!(again.replayed(), "a stale acknowledgement completes its key");
    assert_eq!(again.header("idempotent-stale"), Some("true"));
    assert_eq!(again.body, stale.body);

    // Equal versions are not stale; another entity is not compared; no version is not stale.
    assert!(send(&proxy, &event("evt-5b", "cus_1", 5.into())).await.header("idempotent-stale").is_none());
    assert!(send(&proxy, &event("evt-1", "cus_2", 1.into())).await.header("idempotent-stale").is_none());
    let unversioned = serde_json::json!({ "id": "evt-0", "data": { "object": { "id": "cus_1" } } }).to_string();
    assert!(send(&proxy, &unversioned).await.header("idempotent-stale").is_none());
    assert_eq!(app.total(), 4);
    assert_eq!(proxy.metric(r#"idemgate_requests_total{route="orders",outcome="stale"}"#).await, 1.0);
    assert_eq!(proxy.metric(r#"idemgate_requests_total{route="orders",outcome="replayed"}"#).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flag_forwards_a_stale_delivery_marked_and_strips_a_forged_mark() {
    let app = TestApp::start().await;
    let proxy = TestProxy::start(&app, &routes("flag", "")).await;

    send(&proxy, &event("evt-5", "cus_1", 5.into())).await;
    let reply = send(&proxy, &event("evt-3", "cus_1", 3.into())).await;
    assert_eq!(reply.status, 200);
    let flagged = &app.deliveries()[1];
    assert_eq!(flagged.headers.get("x-idempotency-stale").unwrap(), "true");

    let fresh = event("evt-6", "cus_1", 6.into());
    let forged = proxy
        .post(
            "/hooks/orders",
            &[
                ("content-type", "application/json"),
                ("x-idempotency-stale", "true"),
                ("connection", "x-idempotency-stale"),
            ],
            &fresh,
        )
        .await;
    assert_eq!(forged.status, 200);
    assert!(!app.deliveries()[2].headers.contains_key("x-idempotency-stale"), "a sender cannot mark a fresh event");
    assert_eq!(proxy.metric(r#"idemgate_requests_total{route="orders",outcome="stale"}"#).await, 1.0);
}

/// Versions as RFC 3339 timestamps compare as instants, offsets included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timestamps_compare_as_instants() {
    let app = TestApp::start().await;
    let proxy = TestProxy::start(&app, &routes("ack", "")).await;
    send(&proxy, &event("a", "ord_1", "2026-01-01T01:00:00+01:00".into())).await;
    let same_instant = send(&proxy, &event("b", "ord_1", "2026-01-01T00:00:00Z".into())).await;
    assert!(same_instant.header("idempotent-stale").is_none(), "the same instant is not stale");
    let earlier = send(&proxy, &event("c", "ord_1", "2025-12-31T23:59:59.5Z".into())).await;
    assert_eq!(earlier.header("idempotent-stale"), Some("true"));
    // An integer and a timestamp do not compare: not stale.
    let integer = send(&proxy, &event("d", "ord_1", 1.into())).await;
    assert!(integer.header("idempotent-stale").is_none());
    assert_eq!(app.total(), 3);
}

/// A seeded shuffled stream of versioned updates for a few entities, sent 8 at a time: per
/// entity, the app applies a non-decreasing sequence of versions that ends on the highest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shuffled_stream_is_applied_in_version_order_per_entity() {
    let app = TestApp::start().await;
    let proxy = Arc::new(TestProxy::start(&app, &routes("ack", "")).await);
    let mut events: Vec<(String, i64)> = (0..3).flat_map(|e| (1..=20).map(move |v| (format!("ent-{e}"), v))).collect();
    let mut seed: u64 = 0x5eed_0018;
    for i in (1..events.len()).rev() {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        events.swap(i, (seed >> 33) as usize % (i + 1));
    }
    for batch in events.chunks(8) {
        let sends: Vec<_> = batch
            .iter()
            .map(|(entity, version)| {
                spawn_send(&proxy, event(&format!("{entity}-v{version}"), entity, (*version).into()))
            })
            .collect();
        for sent in sends {
            assert_eq!(sent.await.unwrap().status, 200);
        }
    }
    let applied = applied(&app);
    for entity in ["ent-0", "ent-1", "ent-2"] {
        let versions: Vec<i64> = applied.iter().filter(|(e, _)| e == entity).map(|(_, v)| *v).collect();
        assert!(versions.windows(2).all(|w| w[0] <= w[1]), "{entity} applied out of order: {versions:?}");
        assert_eq!(versions.last(), Some(&20), "{entity} ends on its highest version: {versions:?}");
    }
    let stale = proxy.metric(r#"idemgate_requests_total{route="orders",outcome="stale"}"#).await;
    assert_eq!(stale as usize + applied.len(), 60, "every event was applied or acknowledged as stale");
}

/// Two versions of one entity at once, on every store: the second waits while the first is in
/// the app, and is then judged against it. Had it not waited, it would have found no version
/// yet and reached the app beside the first.
async fn concurrent_versions_of_one_entity(store: &str) {
    let app = TestApp::start().await;
    let run = format!("{:x}", idemgate::store::now_ms());
    let proxy = Arc::new(TestProxy::start(&app, &routes("ack", store)).await);
    let (newer, older) = (format!("{run}-newer"), format!("{run}-older"));
    let entity = format!("cus-{run}");

    app.hold(&newer);
    let first = spawn_send(&proxy, event(&newer, &entity, 2.into()));
    app.arrival().await;
    let second = spawn_send(&proxy, event(&older, &entity, 1.into()));
    app.release(&newer);
    assert_eq!(first.await.unwrap().status, 200);
    let second = second.await.unwrap();
    assert_eq!(second.header("idempotent-stale"), Some("true"), "judged after the newer one completed");
    assert_eq!(app.count(&older), 0);

    // In the other order, the newer one waits, then reaches the app after the older one.
    let (older2, newer2) = (format!("{run}-older2"), format!("{run}-newer2"));
    app.hold(&older2);
    let first = spawn_send(&proxy, event(&older2, &entity, 3.into()));
    app.arrival().await;
    let second = spawn_send(&proxy, event(&newer2, &entity, 4.into()));
    app.release(&older2);
    assert_eq!(first.await.unwrap().status, 200);
    assert!(second.await.unwrap().header("idempotent-stale").is_none());
    let order: Vec<String> = app.deliveries().iter().map(|d| d.key.clone()).collect();
    assert_eq!(order, [newer, older2, newer2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_versions_on_sqlite() {
    concurrent_versions_of_one_entity("").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_versions_on_postgres() {
    let Ok(url) = std::env::var("IDEMGATE_TEST_POSTGRES_URL") else {
        eprintln!("SKIPPED: IDEMGATE_TEST_POSTGRES_URL not set");
        return;
    };
    concurrent_versions_of_one_entity(&format!("store: {{ postgres: {{ url: \"{url}\" }} }}\n")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_versions_on_redis() {
    let Ok(url) = std::env::var("IDEMGATE_TEST_REDIS_URL") else {
        eprintln!("SKIPPED: IDEMGATE_TEST_REDIS_URL not set");
        return;
    };
    concurrent_versions_of_one_entity(&format!("store: {{ redis: {{ url: \"{url}\" }} }}\n")).await;
}

/// A delivery that waits for its entity longer than `wait_timeout` gets 409 with Retry-After,
/// and gives its key back: its retry is forwarded once the entity is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_for_the_entity_past_wait_timeout_is_409() {
    let app = TestApp::start().await;
    let proxy = Arc::new(TestProxy::start(&app, &routes("ack", "defaults: { wait_timeout: 300ms }\n")).await);
    app.hold("first");
    let first = spawn_send(&proxy, event("first", "cus_9", 1.into()));
    app.arrival().await;
    let waited = send(&proxy, &event("second", "cus_9", 2.into())).await;
    waited.assert_problem(409);
    assert!(waited.header("retry-after").is_some());
    app.release("first");
    assert_eq!(first.await.unwrap().status, 200);
    assert_eq!(send(&proxy, &event("second", "cus_9", 2.into())).await.status, 200);
    assert_eq!(app.count("second"), 1);
}

#[test]
fn check_validates_the_guard() {
    let app_url = "http://127.0.0.1:9";
    let dir = tempfile::tempdir().unwrap();
    let load = |routes: &str| {
        let file = dir.path().join("idemgate.yaml");
        std::fs::write(&file, common::config_yaml(app_url, &dir.path().join("db"), routes)).unwrap();
        idemgate::config::load(&file).map(|_| ()).map_err(|e| e.to_string())
    };
    let bad_pointer = routes("ack", "").replace("/created", "created");
    assert!(load(&bad_pointer).unwrap_err().contains("stale.version"), "{:?}", load(&bad_pointer));
    let bad_action = routes("drop", "");
    assert!(load(&bad_action).unwrap_err().contains("stale"), "{:?}", load(&bad_action));
    let no_suggestion = "routes:\n  - name: gh\n    match: { path: /gh }\n    preset: github\n    stale: preset\n";
    assert!(load(no_suggestion).unwrap_err().contains("stale: preset"), "{:?}", load(no_suggestion));
    let stripe = "routes:\n  - name: st\n    match: { path: /st }\n    preset: stripe\n    stale: preset\n";
    assert_eq!(load(stripe), Ok(()));
}
