//! Shadow mode: a route with `mode: shadow` forwards every request as it arrived and returns the
//! app's answer unchanged, while it claims and completes keys as an enforcing route would and
//! counts what enforcing would have done. The same request sequence goes to an enforcing and a
//! shadow route side by side; the counters of one must match the answers of the other.

mod common;

use common::{Reply, TestApp, TestClient, TestProxy, config_yaml, sign};
use std::sync::Arc;

const SECRET: &[u8] = b"shadow-test-secret";

fn routes(secret_file: &std::path::Path, shadow_mode: &str) -> String {
    format!(
        "routes:
  - name: enforce
    match: {{ path: /hooks/enforce }}
    preset: github
    verify: {{ secret: file:{secret} }}
    fingerprint: body
  - name: shadow
    match: {{ path: /hooks/shadow }}
    preset: github
    verify: {{ secret: file:{secret} }}
    fingerprint: body
    mode: {shadow_mode}
",
        secret = secret_file.display()
    )
}

async fn start(app: &TestApp) -> TestProxy {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("github.secret");
    std::fs::write(&secret, SECRET).unwrap();
    let db = dir.path().join("idemgate.db");
    let body = routes(&secret, "shadow");
    TestProxy::start_in(dir, db, &app.url(), &body).await
}

/// A GitHub delivery: `delivery` as `X-GitHub-Delivery` (none: no key), signed unless `forged`.
fn github(delivery: Option<&str>, body: &str, forged: bool) -> Vec<(String, String)> {
    let signed_with: &[u8] = if forged { b"not-the-secret" } else { SECRET };
    let mut headers = sign::github(signed_with, body.as_bytes(), 0, "");
    headers.push(("X-GitHub-Hook-ID".into(), "42".into()));
    headers.push(("content-type".into(), "application/json".into()));
    if let Some(delivery) = delivery {
        headers.push(("X-GitHub-Delivery".into(), delivery.into()));
    }
    headers
}

async fn post(client: &TestClient, path: &str, headers: &[(String, String)], body: &str) -> Reply {
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    client.post(path, &headers, body).await
}

/// The sequence that makes enforcing answer each way once (except `forwarded`, twice), with the
/// key `in-flight` held in flight for the conflict. Returns the answers in order.
async fn sequence(proxy: &Arc<TestProxy>, app: &TestApp, path: &'static str) -> Vec<Reply> {
    let client = &proxy.client;
    let mut replies = vec![
        post(client, path, &github(Some("d-1"), r#"{"n":1}"#, false), r#"{"n":1}"#).await,
        post(client, path, &github(Some("d-1"), r#"{"n":1}"#, false), r#"{"n":1}"#).await,
        post(client, path, &github(Some("d-1"), r#"{"n":2}"#, false), r#"{"n":2}"#).await,
        post(client, path, &github(None, r#"{"n":3}"#, false), r#"{"n":3}"#).await,
        post(client, path, &github(Some("d-2"), r#"{"n":4}"#, true), r#"{"n":4}"#).await,
    ];
    // The app holds the first delivery of `in-flight` (the enforcing route forwards its key;
    // the shadow route forwards none, so there the app sees the key "").
    let held = if path == "/hooks/enforce" { "in-flight" } else { "" };
    app.hold(held);
    let spawn = |proxy: &Arc<TestProxy>| {
        let proxy = proxy.clone();
        tokio::spawn(async move {
            let body = r#"{"n":5}"#;
            post(&proxy.client, path, &github(Some("in-flight"), body, false), body).await
        })
    };
    let before = app.total();
    let first = spawn(proxy);
    until_total(app, before + 1).await;
    let second = spawn(proxy);
    if path == "/hooks/shadow" {
        // Shadow forwards the duplicate too, while the first is still in the app.
        until_total(app, before + 2).await;
        app.release(held);
        replies.push(first.await.unwrap());
        replies.push(second.await.unwrap());
    } else {
        replies.push(second.await.unwrap());
        app.release(held);
        replies.push(first.await.unwrap());
    }
    replies
}

/// Until the app has received `n` requests in all.
async fn until_total(app: &TestApp, n: usize) {
    while app.total() < n {
        app.arrival().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_forwards_everything_and_counts_what_enforcing_answered() {
    let app = TestApp::start().await;
    let proxy = Arc::new(start(&app).await);

    let enforced = sequence(&proxy, &app, "/hooks/enforce").await;
    let statuses: Vec<u16> = enforced.iter().map(|r| r.status.as_u16()).collect();
    assert_eq!(statuses, [200, 200, 422, 400, 401, 409, 200]);
    assert!(enforced[1].replayed());
    let enforced_deliveries = app.total();
    assert_eq!(enforced_deliveries, 2, "enforcing forwards d-1 and in-flight once each");

    let shadowed = sequence(&proxy, &app, "/hooks/shadow").await;
    assert_eq!(shadowed.len(), 7);
    for reply in &shadowed {
        assert_eq!(reply.status, 200, "the app's answer, whatever enforcing would do: {:?}", reply.body);
        assert!(reply.header("idempotent-replayed").is_none());
        assert!(reply.body.starts_with(br#"{"key":"""#), "the app's own body: {:?}", reply.body);
    }
    let shadow_deliveries: Vec<_> = app.deliveries().into_iter().skip(enforced_deliveries).collect();
    assert_eq!(shadow_deliveries.len(), 7, "every request reached the app");
    for delivery in &shadow_deliveries {
        assert!(!delivery.headers.contains_key("x-idempotency-key"), "no key header in shadow mode");
        assert!(delivery.headers.contains_key("x-hub-signature-256"), "forwarded as it arrived");
    }

    for (outcome, would) in [
        ("forwarded", "forwarded"),
        ("replayed", "replayed"),
        ("mismatch", "mismatch"),
        ("rejected", "rejected"),
        ("unverified", "unverified"),
        ("conflict", "conflict"),
    ] {
        let enforced =
            proxy.metric(&format!(r#"idemgate_requests_total{{route="enforce",outcome="{outcome}"}}"#)).await;
        let counted = proxy.metric(&format!(r#"idemgate_shadow_total{{route="shadow",would="{would}"}}"#)).await;
        assert_eq!(counted, enforced, "would={would}: shadow counted {counted}, enforcing answered {enforced}");
        assert!(enforced >= 1.0, "the sequence covers {outcome}");
    }
    assert_eq!(proxy.metric(r#"idemgate_requests_total{route="shadow",outcome="shadow"}"#).await, 7.0);

    let listed = proxy.admin.get("/admin/routes").await.json();
    assert_eq!(listed[0]["name"], "enforce");
    assert_eq!(listed[0]["mode"], "enforce");
    assert_eq!(listed[1]["name"], "shadow");
    assert_eq!(listed[1]["mode"], "shadow");
    assert_eq!(listed[1]["would"]["forwarded"], 2);
    assert_eq!(listed[1]["would"]["replayed"], 1);
    assert_eq!(listed[1]["would"]["unverified"], 1);
    assert_eq!(listed[0]["would"]["forwarded"], 0, "enforcing routes count nothing there");
}

/// The store is warm when the route switches: a duplicate of an event first seen in shadow mode
/// is replayed once the route enforces, after a live reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_to_enforce_replays_an_event_first_seen_in_shadow() {
    let app = TestApp::start().await;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("github.secret");
    std::fs::write(&secret, SECRET).unwrap();
    let (file, db) = (dir.path().join("idemgate.yaml"), dir.path().join("idemgate.db"));
    let write = |mode: &str| std::fs::write(&file, config_yaml(&app.url(), &db, &routes(&secret, mode))).unwrap();
    write("shadow");
    let config = idemgate::config::load(&file).unwrap();
    let running = idemgate::server::start(config.clone()).await.unwrap();
    let reloader = running.reloader(file.clone(), config, None);
    let client = TestClient::new(running.proxy_addr);
    let body = r#"{"event":"push"}"#;
    let headers = github(Some("seen-in-shadow"), body, false);

    let first = post(&client, "/hooks/shadow", &headers, body).await;
    assert_eq!(first.status, 200);
    let again = post(&client, "/hooks/shadow", &headers, body).await;
    assert!(!again.replayed(), "shadow mode forwards the duplicate");
    assert_eq!(app.total(), 2);

    write("enforce");
    reloader.reload(idemgate::reload::Trigger::Signal);
    let enforced = post(&client, "/hooks/shadow", &headers, body).await;
    assert!(enforced.replayed(), "the completion stored in shadow mode replays");
    assert_eq!(enforced.body, first.body, "the first delivery's stored answer");
    assert_eq!(app.total(), 2, "the app is not called again");
    let listed = TestClient::new(running.admin_addr).get("/admin/routes").await.json();
    assert_eq!(listed[1]["mode"], "enforce");
    running.shutdown().await;
}

/// What enforcing would refuse before reading the body whole (over `max_body`, declared or
/// chunked) still reaches the app whole on a shadow route, and counts as `rejected`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_max_body_are_forwarded_whole() {
    let app = TestApp::start().await;
    let routes = "routes:
  - name: shadow
    match: { path: /hooks/shadow }
    key: { header: Idempotency-Key }
    scope: none
    max_body: 1KiB
    mode: shadow
";
    let proxy = TestProxy::start(&app, routes).await;
    let big = "x".repeat(4096);
    let reply = proxy.post("/hooks/shadow", &[("idempotency-key", "big")], &big).await;
    assert_eq!(reply.status, 200);
    assert_eq!(app.deliveries()[0].body.len(), 4096, "declared length over max_body: forwarded whole");

    // Chunked: the proxy finds out mid-body, after it has read past max_body.
    let chunk = "y".repeat(800);
    let raw = format!(
        "POST /hooks/shadow HTTP/1.1\r\nhost: t\r\nidempotency-key: chunked\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n\
         320\r\n{chunk}\r\n320\r\n{chunk}\r\n320\r\n{chunk}\r\n0\r\n\r\n"
    );
    let answer = common::raw_exchange(proxy.proxy_addr, raw.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(app.deliveries()[1].body.len(), 2400, "chunked body over max_body: forwarded whole");
    assert_eq!(proxy.metric(r#"idemgate_shadow_total{route="shadow",would="rejected"}"#).await, 2.0);
    assert_eq!(proxy.metric(r#"idemgate_shadow_total{route="shadow",would="forwarded"}"#).await, 0.0);
}

/// A client's own copy of the key header is stripped, as on an unmatched request: the app can
/// never take a forged header for idemgate's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_key_header_is_stripped() {
    let app = TestApp::start().await;
    let routes = "routes:
  - name: shadow
    match: { path: /hooks/shadow }
    key: { header: Idempotency-Key }
    scope: none
    mode: shadow
";
    let proxy = TestProxy::start(&app, routes).await;
    let reply = proxy.post("/hooks/shadow", &[("idempotency-key", "k"), ("x-idempotency-key", "forged")], "{}").await;
    assert_eq!(reply.status, 200);
    assert!(!app.deliveries()[0].headers.contains_key("x-idempotency-key"));
    let record = proxy.admin.get("/admin/keys/shadow/k").await.json();
    assert_eq!(record["state"], "completed", "claimed and completed on the side: {record}");
}

/// Each request enforcing would not have forwarded is logged with route, key, what enforcing
/// would have done and why; one it would have forwarded is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_enforcing_would_not_forward_is_logged_with_its_reason() {
    use common::child::{ChildProxy, write_config};
    let app = TestApp::start().await;
    let dir = tempfile::tempdir().unwrap();
    let routes = "routes:
  - name: shadow
    match: { path: /hooks/shadow }
    key: { header: Idempotency-Key }
    scope: none
    mode: shadow
";
    let config = write_config(dir.path(), &app.url(), routes);
    let child = tokio::task::block_in_place(|| ChildProxy::spawn(&config));
    let client = TestClient::new(child.proxy_addr);
    client.post("/hooks/shadow", &[("idempotency-key", "logged")], "{}").await;
    client.post("/hooks/shadow", &[("idempotency-key", "logged")], "{}").await;
    let line = tokio::task::block_in_place(|| {
        child.wait_for_log("shadow: enforcing would not forward", std::time::Duration::from_secs(10))
    });
    assert_eq!(line["route"], "shadow");
    assert_eq!(line["key"], "logged");
    assert_eq!(line["would"], "replayed");
    assert!(line["reason"].as_str().is_some_and(|r| !r.is_empty()), "{line}");
    assert_eq!(app.total(), 2);
    child.signal("TERM");
    assert!(tokio::task::block_in_place(|| child.wait_exit(std::time::Duration::from_secs(10))).success());
}
