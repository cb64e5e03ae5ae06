//! Async delivery (`delivery: { mode: async }`): an event is acknowledged once stored durably and
//! delivered to the app by a worker, with retries, dead letters, per-entity order and bounded
//! concurrency; nothing acknowledged is lost across a restart.

mod common;

use common::{TestApp, TestClient, TestProxy, config_yaml, eventually};
use std::sync::Arc;
use std::time::Duration;

/// An async route on `/hooks/async`, key `Idempotency-Key`, with `delivery` fields added.
fn route(delivery: &str) -> String {
    format!(
        "routes:
  - name: async
    match: {{ path: /hooks/async }}
    key: {{ header: Idempotency-Key }}
    scope: none
    delivery: {{ mode: async, backoff: {{ initial: 20ms, max: 50ms }}{delivery} }}
"
    )
}

async fn post(proxy: &TestProxy, key: &str, extra: &[(&str, &str)], body: &str) -> common::Reply {
    let mut headers = vec![("idempotency-key", key), ("content-type", "application/json")];
    headers.extend_from_slice(extra);
    proxy.post("/hooks/async", &headers, body).await
}

async fn event(proxy: &TestProxy, key: &str) -> serde_json::Value {
    proxy.admin.get(&format!("/admin/keys/async/{key}")).await.json()
}

/// Until the event of `key` is in `state` (10 s at most): polled, as an operator would.
async fn until_state(proxy: &TestProxy, key: &str, state: &str) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let last = event(proxy, key).await;
        if last["state"] == state {
            return last;
        }
        assert!(tokio::time::Instant::now() < deadline, "{key} never became {state}: {last}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_is_acknowledged_then_delivered_once_with_its_key_and_attempt() {
    let app = TestApp::start().await;
    let proxy = TestProxy::start(&app, &route("")).await;
    assert_eq!(proxy.metric(r#"idemgate_queue_depth{route="async"}"#).await, 0.0);

    let ack = post(&proxy, "evt-1", &[("x-custom", "kept")], r#"{"n":1}"#).await;
    assert_eq!(ack.status, 202);
    assert_eq!(ack.json(), serde_json::json!({ "key": "evt-1" }));
    assert!(!ack.replayed());
    assert_eq!(app.arrival().await, "evt-1");
    let delivered = &app.deliveries()[0];
    assert_eq!(delivered.headers["idempotency-attempt"], "1");
    assert_eq!(delivered.headers["x-custom"], "kept", "delivered as it arrived");
    assert_eq!(delivered.body, r#"{"n":1}"#);
    assert_eq!(delivered.path_and_query, "/hooks/async");
    assert_eq!(delivered.headers["x-forwarded-for"], "127.0.0.1", "the sender's address, as on a sync route");

    let completed = until_state(&proxy, "evt-1", "completed").await;
    assert_eq!(completed["attempts"], 1);
    assert_eq!(completed["status"], 200);
    let again = post(&proxy, "evt-1", &[], r#"{"n":1}"#).await;
    assert_eq!((again.status.as_u16(), again.replayed()), (202, true));
    assert_eq!(again.json(), serde_json::json!({ "key": "evt-1" }));
    assert_eq!(app.count("evt-1"), 1);
    assert_eq!(proxy.metric(r#"idemgate_requests_total{route="async",outcome="queued"}"#).await, 1.0);
    assert_eq!(proxy.metric(r#"idemgate_requests_total{route="async",outcome="replayed"}"#).await, 1.0);
    assert_eq!(proxy.metric(r#"idemgate_delivery_attempts_total{route="async",result="ok"}"#).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_while_queued_or_delivering_is_acknowledged_and_not_queued_twice() {
    let app = TestApp::start().await;
    let proxy = TestProxy::start(&app, &route("")).await;
    app.hold("evt-2");
    post(&proxy, "evt-2", &[], "{}").await;
    assert_eq!(app.arrival().await, "evt-2");
    assert_eq!(event(&proxy, "evt-2").await["state"], "delivering");
    let again = post(&proxy, "evt-2", &[], "{}").await;
    assert_eq!((again.status.as_u16(), again.replayed()), (202, true));
    app.release("evt-2");
    until_state(&proxy, "evt-2", "completed").await;
    assert_eq!(app.count("evt-2"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_attempts_are_retried_until_one_completes() {
    let app = TestApp::start().await;
    let proxy = TestProxy::start(&app, &route("")).await;
    post(&proxy, "evt-3", &[("x-test-fail-times", "2")], "{}").await;
    let done = until_state(&proxy, "evt-3", "completed").await;
    assert_eq!(done["attempts"], 3);
    let attempts: Vec<String> =
        app.deliveries().iter().map(|d| d.headers["idempotency-attempt"].to_str().unwrap().to_string()).collect();
    assert_eq!(attempts, ["1", "2", "3"]);
    assert_eq!(proxy.metric(r#"idemgate_delivery_attempts_total{route="async",result="retry"}"#).await, 2.0);
    assert_eq!(proxy.metric(r#"idemgate_delivery_attempts_total{route="async",result="ok"}"#).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spent_attempts_make_a_dead_letter_that_an_operator_can_retry_or_forget() {
    let app = TestApp::start().await;
    let proxy = TestProxy::start(&app, &route(", attempts: 2")).await;
    post(&proxy, "evt-4", &[("x-test-fail-times", "2")], "{}").await;
    let dead = until_state(&proxy, "evt-4", "dead").await;
    assert_eq!((dead["attempts"].as_u64(), dead["status"].as_u64()), (Some(2), Some(500)));
    let listed = proxy.admin.get("/admin/dead-letters?route=async").await.json();
    assert_eq!(listed[0]["key"], "evt-4");
    assert_eq!(listed[0]["attempts"], 2);
    assert!(listed[0]["first_seen"].is_string() && listed[0]["last_attempt"].is_string(), "{listed}");
    assert!(
        eventually(Duration::from_secs(5), || async {
            proxy.metric(r#"idemgate_dead_letters{route="async"}"#).await == 1.0
        })
        .await
    );
    assert_eq!(proxy.metric(r#"idemgate_delivery_attempts_total{route="async",result="dead"}"#).await, 1.0);

    // Retried: fresh attempts, and the app (now answering 200) completes it.
    let retried = proxy.admin.send("POST", "/admin/dead-letters/async/evt-4/retry", &[], "").await;
    assert_eq!(retried.status, 202);
    let done = until_state(&proxy, "evt-4", "completed").await;
    assert_eq!(done["attempts"], 1, "a retried dead letter starts again at attempt 1");
    assert_eq!(app.deliveries().last().unwrap().headers["idempotency-attempt"], "1");

    // Forgotten: the key with it, so the provider's next redelivery is queued anew.
    post(&proxy, "evt-5", &[("x-test-status", "500")], "{}").await;
    until_state(&proxy, "evt-5", "dead").await;
    let forgotten = proxy.admin.send("DELETE", "/admin/dead-letters/async/evt-5", &[], "").await;
    assert_eq!(forgotten.status, 204);
    assert_eq!(proxy.admin.get("/admin/keys/async/evt-5").await.status, 404);
    let anew = post(&proxy, "evt-5", &[], "{}").await;
    assert_eq!((anew.status.as_u16(), anew.replayed()), (202, false));
    assert_eq!(proxy.admin.send("POST", "/admin/dead-letters/async/evt-1/retry", &[], "").await.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_age_makes_a_dead_letter_of_an_event_the_app_never_took() {
    let dead_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("idemgate.db");
    let body = route(", attempts: 1000, max_age: 300ms");
    let proxy = TestProxy::start_in(dir, db, &format!("http://127.0.0.1:{dead_port}"), &body).await;
    assert_eq!(post(&proxy, "evt-6", &[], "{}").await.status, 202);
    let dead = until_state(&proxy, "evt-6", "dead").await;
    assert!(dead["attempts"].as_u64().unwrap() >= 1);
    assert!(dead["error"].as_str().is_some_and(|e| !e.is_empty()), "the last error is kept: {dead}");
}

/// Events that share an `order_by` value reach the app one at a time, in arrival order; a
/// failing head holds back only its own entity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_by_holds_back_only_the_failing_heads_entity() {
    let app = TestApp::start().await;
    let proxy = TestProxy::start(&app, &route(", attempts: 3, order_by: { json: /entity }")).await;
    post(&proxy, "a-1", &[("x-test-status", "500")], r#"{"entity":"a"}"#).await;
    post(&proxy, "a-2", &[], r#"{"entity":"a"}"#).await;
    post(&proxy, "b-1", &[], r#"{"entity":"b"}"#).await;
    until_state(&proxy, "a-1", "dead").await;
    until_state(&proxy, "a-2", "completed").await;
    until_state(&proxy, "b-1", "completed").await;
    let order: Vec<String> = app.deliveries().iter().map(|d| d.key.clone()).collect();
    let a2 = order.iter().position(|k| k == "a-2").unwrap();
    let b1 = order.iter().position(|k| k == "b-1").unwrap();
    let last_a1 = order.iter().rposition(|k| k == "a-1").unwrap();
    assert_eq!(order.iter().filter(|k| *k == "a-1").count(), 3);
    assert!(a2 > last_a1, "a-2 waited for a-1 to run out of attempts: {order:?}");
    assert!(b1 < last_a1, "b-1 was not held back by a-1: {order:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_route_concurrency_is_never_exceeded() {
    let app = TestApp::start().await;
    let proxy = TestProxy::start(&app, &route(", concurrency: 2")).await;
    let keys: Vec<String> = (0..6).map(|i| format!("c-{i}")).collect();
    for key in &keys {
        app.hold(key);
        assert_eq!(post(&proxy, key, &[], "{}").await.status, 202);
    }
    // Each arrival is let go only once it arrived: at most 2 are ever inside the app together.
    for _ in &keys {
        let key = app.arrival().await;
        app.release(&key);
    }
    for key in &keys {
        until_state(&proxy, key, "completed").await;
    }
    assert_eq!(app.max_in_flight(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_new_events_with_503() {
    let app = TestApp::start().await;
    let proxy = TestProxy::start(&app, &route(", concurrency: 1, queue_limit: 2")).await;
    app.hold("q-1");
    post(&proxy, "q-1", &[], "{}").await;
    post(&proxy, "q-2", &[], "{}").await;
    let full = post(&proxy, "q-3", &[], "{}").await;
    assert!(full.assert_problem(503).ends_with("queue-full"));
    assert!(full.header("retry-after").is_some());
    app.release("q-1");
    until_state(&proxy, "q-2", "completed").await;
    assert_eq!(post(&proxy, "q-3", &[], "{}").await.status, 202, "room again once the queue drained");
}

/// Acknowledged events are in the store, not in memory: after a stop, the next process delivers
/// what was still queued, and delivers again what was interrupted mid-call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_and_interrupted_events_are_delivered_after_a_restart() {
    let app = TestApp::start().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("idemgate.db");
    // One call at a time, and a stop that does not wait for it.
    let body = format!("server: {{ shutdown_grace: 100ms }}\n{}", route(", concurrency: 1"));
    let proxy = TestProxy::start_in(dir, db, &app.url(), &body).await;
    app.hold("r-1");
    for key in ["r-1", "r-2"] {
        assert_eq!(post(&proxy, key, &[], "{}").await.status, 202);
    }
    assert_eq!(app.arrival().await, "r-1");
    assert_eq!(event(&proxy, "r-2").await["state"], "queued");
    let (dir, db) = proxy.stop().await;

    let proxy = TestProxy::start_in(dir, db, &app.url(), &body).await;
    app.release("r-1");
    let again = until_state(&proxy, "r-1", "completed").await;
    until_state(&proxy, "r-2", "completed").await;
    assert_eq!(app.count("r-1"), 2, "the interrupted delivery was made again");
    assert_eq!(again["attempts"], 2);
    assert_eq!(app.count("r-2"), 1);
    let attempts: Vec<_> =
        app.deliveries().iter().filter(|d| d.key == "r-1").map(|d| d.headers["idempotency-attempt"].clone()).collect();
    assert_eq!(attempts, ["1", "2"], "the same key, the next attempt");
}

#[test]
fn redis_is_refused_for_async_routes() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("idemgate.yaml");
    let body = format!("store: {{ redis: {{ url: \"redis://127.0.0.1:6379\" }} }}\n{}", route(""));
    std::fs::write(&file, config_yaml("http://127.0.0.1:9", &dir.path().join("db"), &body)).unwrap();
    let error = idemgate::config::load(&file).unwrap_err().to_string();
    assert!(error.contains("routes[0].delivery.mode") && error.contains("redis"), "{error}");
}

#[test]
fn delivery_fields_are_validated_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let load = |delivery: &str| {
        let file = dir.path().join("idemgate.yaml");
        std::fs::write(&file, config_yaml("http://127.0.0.1:9", &dir.path().join("db"), &route(delivery))).unwrap();
        idemgate::config::load(&file).map(|_| ()).map_err(|e| e.to_string())
    };
    assert!(load(", ack_status: 404").unwrap_err().contains("delivery.ack_status"));
    assert!(load(", attempts: 0").unwrap_err().contains("delivery.attempts"));
    assert!(load(", concurrency: 0").unwrap_err().contains("delivery.concurrency"));
    assert!(load(", retries: 3").unwrap_err().contains("retries"));
    let file = dir.path().join("fingerprinted.yaml");
    let body = route("").replace("    scope: none\n", "    scope: none\n    fingerprint: body\n");
    std::fs::write(&file, config_yaml("http://127.0.0.1:9", &dir.path().join("db"), &body)).unwrap();
    let refused = idemgate::config::load(&file).unwrap_err().to_string();
    assert!(refused.contains("fingerprint: cannot be used with delivery"), "{refused}");
    assert_eq!(load(", ack_status: 200, attempts: 3, max_age: 1h, queue_limit: 10"), Ok(()));
}

/// The command line reaches the same endpoints through the config's admin listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dead_letters_command_lists_retries_and_purges() {
    let app = TestApp::start().await;
    let proxy = Arc::new(TestProxy::start(&app, &route(", attempts: 1")).await);
    post(&proxy, "cli-1", &[("x-test-fail-times", "1")], "{}").await;
    until_state(&proxy, "cli-1", "dead").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("idemgate.yaml");
    let yaml = config_yaml(&app.url(), &dir.path().join("db"), &route(""))
        .replace("admin: { listen: 127.0.0.1:0 }", &format!("admin: {{ listen: {} }}", proxy.admin_addr));
    std::fs::write(&file, yaml).unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_idemgate"))
            .arg("dead-letters")
            .args(args)
            .arg("--config")
            .arg(&file)
            .env_remove("IDEMGATE_CONFIG")
            .output()
            .unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr))
    };
    let (ok, listed) = tokio::task::block_in_place(|| run(&["list", "--route", "async"]));
    assert!(ok && listed.contains("\"cli-1\""), "{listed}");
    let (ok, said) = tokio::task::block_in_place(|| run(&["retry", "--route", "async", "--key", "cli-1"]));
    assert!(ok, "{said}");
    until_state(&proxy, "cli-1", "completed").await;
    post(&proxy, "cli-2", &[("x-test-status", "500")], "{}").await;
    until_state(&proxy, "cli-2", "dead").await;
    let (ok, said) = tokio::task::block_in_place(|| run(&["purge", "--route", "async", "--key", "cli-2"]));
    assert!(ok, "{said}");
    assert_eq!(proxy.admin.get("/admin/keys/async/cli-2").await.status, 404);
    let (ok, said) = tokio::task::block_in_place(|| run(&["purge", "--route", "async", "--key", "cli-2"]));
    assert!(!ok && said.contains("404"), "{said}");
    let _ = TestClient::new(proxy.proxy_addr);
}

/// Two replicas on one PostgreSQL store drain one queue: each event is leased to one replica at
/// a time, so with an app that always answers, no event reaches it twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_postgres_never_deliver_one_event_twice() {
    let Ok(url) = std::env::var("IDEMGATE_TEST_POSTGRES_URL") else {
        eprintln!("SKIPPED: IDEMGATE_TEST_POSTGRES_URL not set");
        return;
    };
    let app = TestApp::start().await;
    // A route of its own: the shared database may hold other runs' events.
    let name = format!("async-{:x}", idemgate::store::now_ms());
    let body = format!("store: {{ postgres: {{ url: \"{url}\" }} }}\n{}", route(", concurrency: 4"))
        .replace("name: async", &format!("name: {name}"));
    let replicas = [TestProxy::start(&app, &body).await, TestProxy::start(&app, &body).await];
    let keys: Vec<String> = (0..60).map(|i| format!("{name}-{i}")).collect();
    for (i, key) in keys.iter().enumerate() {
        let reply = replicas[i % 2]
            .post("/hooks/async", &[("idempotency-key", key), ("content-type", "application/json")], "{}")
            .await;
        assert_eq!(reply.status, 202);
    }
    let all_completed = eventually(Duration::from_secs(20), || async {
        let mut done = 0;
        for key in &keys {
            let event = replicas[0].admin.get(&format!("/admin/keys/{name}/{key}")).await.json();
            done += usize::from(event["state"] == "completed");
        }
        done == keys.len()
    })
    .await;
    assert!(all_completed, "every event completed");
    for key in &keys {
        assert_eq!(app.count(key), 1, "{key} delivered by one replica only");
    }
    let delivered_by = |replica: &TestProxy| {
        let replica = replica.admin.clone();
        let name = name.clone();
        async move { replica.metric(&format!(r#"idemgate_delivery_attempts_total{{route="{name}",result="ok"}}"#)).await }
    };
    let (a, b) = (delivered_by(&replicas[0]).await, delivered_by(&replicas[1]).await);
    assert_eq!(a + b, keys.len() as f64, "each delivery counted once, on the replica that made it ({a} + {b})");
}

/// A 429 or 503 with a `Retry-After` longer than the backoff sets the next attempt's time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_longer_retry_after_sets_the_next_attempt() {
    let app = TestApp::start().await;
    let proxy = TestProxy::start(&app, &route("")).await;
    let asks = [("x-test-fail-times", "1"), ("x-test-status", "503"), ("x-test-header", "retry-after=2")];
    post(&proxy, "ra-1", &asks, "{}").await;
    assert_eq!(app.arrival().await, "ra-1");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let waiting = loop {
        let event = event(&proxy, "ra-1").await;
        if event["state"] == "queued" && event["attempts"] == 1 {
            break event;
        }
        assert!(tokio::time::Instant::now() < deadline, "never queued for a retry: {event}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let at = |field: &str| humantime::parse_rfc3339(waiting[field].as_str().unwrap()).unwrap();
    let wait = at("next_attempt").duration_since(at("last_attempt")).unwrap();
    assert!(wait >= Duration::from_millis(1900), "Retry-After: 2 beats a 50 ms backoff: {wait:?} ({waiting})");
    assert_eq!(waiting["status"], 503);
    let done = until_state(&proxy, "ra-1", "completed").await;
    assert_eq!(done["attempts"], 2);
}

/// The real binary: SIGTERM with events still queued exits 0 and says, at error level, how many
/// are left on which route; a SIGKILL right after the acknowledgements loses none of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_reports_what_is_left_and_sigkill_loses_nothing_acknowledged() {
    use common::child::{ChildProxy, write_config};
    let app = TestApp::start().await;
    let dir = tempfile::tempdir().unwrap();
    let body = format!("server: {{ shutdown_grace: 200ms }}\n{}", route(", concurrency: 1"));
    let config = write_config(dir.path(), &app.url(), &body);
    let child = tokio::task::block_in_place(|| ChildProxy::spawn(&config));
    let client = TestClient::new(child.proxy_addr);
    app.hold("t-1");
    for key in ["t-1", "t-2", "t-3"] {
        let reply = client.post("/hooks/async", &[("idempotency-key", key)], "{}").await;
        assert_eq!(reply.status, 202);
    }
    assert_eq!(app.arrival().await, "t-1");
    child.signal("TERM");
    let left = tokio::task::block_in_place(|| {
        child.wait_for_log("stopping with events not yet delivered", Duration::from_secs(10))
    });
    assert_eq!(left["level"], "ERROR");
    assert_eq!(left["route"], "async");
    assert!(left["queued"].as_u64().unwrap() >= 2, "{left}");
    assert!(tokio::task::block_in_place(|| child.wait_exit(Duration::from_secs(10))).success());

    // Restarted and killed at once after more acknowledgements: they are all delivered later.
    app.release("t-1");
    let child = tokio::task::block_in_place(|| ChildProxy::spawn(&config));
    let client = TestClient::new(child.proxy_addr);
    for key in ["k-1", "k-2", "k-3"] {
        let reply = client.post("/hooks/async", &[("idempotency-key", key)], "{}").await;
        assert_eq!(reply.status, 202);
    }
    tokio::task::block_in_place(|| child.kill());
    let child = tokio::task::block_in_place(|| ChildProxy::spawn(&config));
    let admin = TestClient::new(child.admin_addr);
    let all = eventually(Duration::from_secs(20), || async {
        let mut done = true;
        for key in ["t-1", "t-2", "t-3", "k-1", "k-2", "k-3"] {
            done &= admin.get(&format!("/admin/keys/async/{key}")).await.json()["state"] == "completed";
        }
        done
    })
    .await;
    assert!(all, "every acknowledged event was delivered");
    for key in ["t-2", "t-3", "k-1", "k-2", "k-3"] {
        assert!(app.count(key) >= 1, "{key} reached the app");
    }
    child.signal("TERM");
    assert!(tokio::task::block_in_place(|| child.wait_exit(Duration::from_secs(10))).success());
}
