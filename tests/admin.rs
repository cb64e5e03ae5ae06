//! The admin listener: health, readiness, metrics, key administration, the bearer token.

mod common;

use common::child::{ChildProxy, write_config};
use common::{HEADER_ROUTE, TestApp, TestProxy};

#[tokio::test]
async fn health_and_readiness() {
    let app = TestApp::start().await;
    let proxy = TestProxy::start(&app, HEADER_ROUTE).await;
    assert_eq!(proxy.admin.get("/healthz").await.status, 200);
    assert_eq!(proxy.admin.get("/readyz").await.status, 200);
    proxy.admin.get("/nope").await.assert_problem(404);
}

#[tokio::test]
async fn metrics_count_requests_by_route_and_outcome() {
    let app = TestApp::start().await;
    let proxy = TestProxy::start(&app, HEADER_ROUTE).await;
    proxy.post("/hooks/a", &[("idempotency-key", "m1")], "{}").await;
    proxy.post("/hooks/a", &[("idempotency-key", "m1")], "{}").await;
    proxy.post("/hooks/a", &[("idempotency-key", "m1")], "{}").await;
    proxy.post("/hooks/a", &[], "{}").await;
    proxy.post("/hooks/a", &[("idempotency-key", "m2"), ("x-test-status", "500")], "{}").await;
    proxy.client.get("/other").await;
    let counted = |outcome: &'static str, route: &'static str| {
        let proxy = &proxy;
        async move { proxy.metric(&format!("idemgate_requests_total{{route=\"{route}\",outcome=\"{outcome}\"}}")).await }
    };
    assert_eq!(counted("forwarded", "hooks").await, 2.0, "the 500 was forwarded too");
    assert_eq!(counted("replayed", "hooks").await, 2.0);
    assert_eq!(counted("rejected", "hooks").await, 1.0);
    assert_eq!(counted("passthrough", "-").await, 1.0);
    // The first duplicate reads the record from the store and keeps it in memory; the second
    // is answered from there.
    assert_eq!(proxy.metric("idemgate_cache_hits_total").await, 1.0, "the second replay came from memory");
    let class = |class: &'static str, route: &'static str| {
        let proxy = &proxy;
        async move { proxy.metric(&format!("idemgate_app_responses_total{{route=\"{route}\",class=\"{class}\"}}")).await }
    };
    assert_eq!(class("2xx", "hooks").await, 1.0, "replays are not the app's answers");
    assert_eq!(class("5xx", "hooks").await, 1.0, "the app's own 500");
    assert_eq!(class("2xx", "-").await, 1.0);
    let text = String::from_utf8(proxy.admin.get("/metrics").await.body.to_vec()).unwrap();
    for name in [
        "idemgate_request_duration_seconds_bucket",
        "idemgate_upstream_duration_seconds_bucket",
        "idemgate_store_duration_seconds_bucket",
        "idemgate_inflight_claims",
        "idemgate_cache_misses_total",
    ] {
        assert!(text.contains(name), "missing {name}");
    }
    assert!(!text.contains("m1"), "keys never appear in metrics");
}

#[tokio::test]
async fn keys_can_be_inspected_and_deleted() {
    let app = TestApp::start().await;
    let proxy = TestProxy::start(&app, HEADER_ROUTE).await;
    proxy.post("/hooks/a", &[("idempotency-key", "evt:1/x")], "{}").await;

    let record = proxy.admin.get("/admin/keys/hooks/evt%3A1%2Fx").await;
    assert_eq!(record.status, 200);
    let json = record.json();
    assert_eq!(json["state"], "completed");
    assert_eq!(json["status"], 200);
    assert!(json["created"].as_str().unwrap().ends_with('Z'));
    assert!(json["expires"].as_str().unwrap() > json["created"].as_str().unwrap());

    proxy.admin.get("/admin/keys/hooks/unknown").await.assert_problem(404);
    proxy.admin.get("/admin/keys/nosuchroute/x").await.assert_problem(404);

    let deleted = proxy.admin.send("DELETE", "/admin/keys/hooks/evt:1%2Fx", &[], "").await;
    assert_eq!(deleted.status, 204);
    proxy.admin.get("/admin/keys/hooks/evt:1%2Fx").await.assert_problem(404);
    let again = proxy.post("/hooks/a", &[("idempotency-key", "evt:1/x")], "{}").await;
    assert!(!again.replayed(), "a forgotten key is forwarded on its next delivery");
    assert_eq!(app.count("evt:1/x"), 2);
}

#[tokio::test]
async fn scoped_keys_need_the_scope_value() {
    let app = TestApp::start().await;
    let routes = "routes:
  - name: gh
    match: { path: /gh }
    key: { header: X-GitHub-Delivery }
    scope: { header: X-GitHub-Hook-ID }
";
    let proxy = TestProxy::start(&app, routes).await;
    proxy.post("/gh", &[("x-github-delivery", "d"), ("x-github-hook-id", "77")], "{}").await;
    proxy.admin.get("/admin/keys/gh/d").await.assert_problem(400);
    assert_eq!(proxy.admin.get("/admin/keys/gh/d?scope=77").await.status, 200);
    proxy.admin.get("/admin/keys/gh/d?scope=78").await.assert_problem(404);
}

#[tokio::test]
async fn the_admin_token_guards_key_administration_only() {
    let app = TestApp::start().await;
    let proxy =
        TestProxy::start(&app, &format!("admin: {{ listen: 127.0.0.1:0, token: s3cret }}\n{HEADER_ROUTE}")).await;
    proxy.post("/hooks/a", &[("idempotency-key", "t")], "{}").await;
    proxy.admin.get("/admin/keys/hooks/t").await.assert_problem(401);
    let wrong = proxy.admin.send("GET", "/admin/keys/hooks/t", &[("authorization", "Bearer s3cre")], "").await;
    wrong.assert_problem(401);
    proxy.admin.send("DELETE", "/admin/keys/hooks/t", &[], "").await.assert_problem(401);
    assert!(proxy.post("/hooks/a", &[("idempotency-key", "t")], "{}").await.replayed(), "nothing was deleted");
    let right = proxy.admin.send("GET", "/admin/keys/hooks/t", &[("authorization", "Bearer s3cret")], "").await;
    assert_eq!(right.status, 200);
    assert_eq!(proxy.admin.get("/healthz").await.status, 200, "probes need no token");
    assert_eq!(proxy.admin.get("/metrics").await.status, 200);
}

/// A completed record goes into memory once it is asked for again, not at its completion: most
/// deliveries are never repeated, and memory is for those that are.
#[tokio::test]
async fn a_record_is_cached_once_a_duplicate_asks_for_it() {
    let app = TestApp::start().await;
    let proxy = TestProxy::start(&app, HEADER_ROUTE).await;
    let entries = || proxy.metric("idemgate_cache_entries");
    assert_eq!(proxy.post("/hooks/a", &[("idempotency-key", "once")], "{}").await.status, 200);
    assert_eq!(entries().await, 0.0, "a first delivery's record stays in the store only");
    let first = proxy.post("/hooks/a", &[("idempotency-key", "once")], "{}").await;
    assert!(first.replayed());
    assert_eq!(proxy.metric("idemgate_cache_hits_total").await, 0.0, "the first duplicate read the store");
    assert_eq!(entries().await, 1.0, "and kept the record in memory");
    let second = proxy.post("/hooks/a", &[("idempotency-key", "once")], "{}").await;
    assert!(second.replayed());
    assert_eq!(second.body, first.body);
    assert_eq!(proxy.metric("idemgate_cache_hits_total").await, 1.0, "the next came from memory");
    assert_eq!(app.count("once"), 1);
}

#[tokio::test]
async fn metrics_show_the_build_the_store_size_and_the_cache_held_within_its_bound() {
    let app = TestApp::start().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("idemgate.db");
    let store = format!("store: {{ sqlite: {{ path: {} }}, cache: {{ max_bytes: 4KiB }} }}\n", db.display());
    let proxy = TestProxy::start_in(dir, db, &app.url(), &format!("{store}{HEADER_ROUTE}")).await;
    let text = String::from_utf8(proxy.admin.get("/metrics").await.body.to_vec()).unwrap();
    assert!(text.contains(&format!("idemgate_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"))), "{text}");
    for i in 0..20 {
        let key = format!("e{i}");
        proxy.post("/hooks/a", &[("idempotency-key", &key)], "{}").await;
        // Asked for again: the record goes into memory.
        assert!(proxy.post("/hooks/a", &[("idempotency-key", &key)], "{}").await.replayed());
    }
    // A 4 KiB cache holds a few of the 20 records: the others are evicted by the byte bound. The
    // store is measured by the sweeper, in the background: poll, bounded.
    let measured = common::eventually(std::time::Duration::from_secs(10), || async {
        proxy.post("/hooks/a", &[("idempotency-key", "e0")], "{}").await;
        proxy.metric("idemgate_store_bytes").await > 0.0
    })
    .await;
    assert!(measured, "store bytes {}", proxy.metric("idemgate_store_bytes").await);
    let (entries, bytes) = (proxy.metric("idemgate_cache_entries").await, proxy.metric("idemgate_cache_bytes").await);
    assert!((1.0..20.0).contains(&entries), "entries {entries}: some held, most evicted");
    assert!(bytes > 0.0 && bytes <= 4096.0, "bytes {bytes} within the 4 KiB bound");
    assert_eq!(app.count("e0"), 1, "an evicted record is still replayed, from the store");
}

/// `idemgate health --config FILE` probes the admin listener the file names (for container health
/// checks in images without curl): 0 while the proxy serves, 1 once it is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_command_probes_the_admin_listener() {
    let app = TestApp::start().await;
    let dir = tempfile::tempdir().unwrap();
    // The probe needs a known port: take a free one (unspecified, as in a container).
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let body = format!("admin: {{ listen: '0.0.0.0:{port}', token: t0ken }}\n{HEADER_ROUTE}");
    let config = write_config(dir.path(), &app.url(), &body);
    let health = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_idemgate"))
            .args(["health", "--config"])
            .arg(&config)
            .output()
            .unwrap()
    };
    let proxy = ChildProxy::spawn(&config);
    let up = health();
    assert!(up.status.success(), "{}", String::from_utf8_lossy(&up.stderr));
    proxy.kill();
    let down = health();
    assert_eq!(down.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&down.stderr).starts_with("unhealthy: 127.0.0.1:"), "{down:?}");
}
