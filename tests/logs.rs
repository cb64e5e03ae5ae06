//! The log: one JSON object per line, one line per request with route, outcome, status, the
//! trace id and the key as configured; never a secret or a body.

mod common;

use common::child::ChildProxy;
use common::{TestApp, TestClient, config_yaml};
use std::time::Duration;

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

async fn lines_for(keys: &str) -> Vec<serde_json::Value> {
    let app = TestApp::start().await;
    let dir = tempfile::tempdir().unwrap();
    let routes = "routes:
  - name: api
    match: { path_prefix: /api/ }
    key: { header: Idempotency-Key }
    scope: { header: Authorization }
";
    let yaml = config_yaml(&app.url(), &dir.path().join("db"), routes)
        .replace("log: { level: warn }", &format!("log: {{ level: info, keys: {keys} }}"));
    let file = dir.path().join("idemgate.yaml");
    std::fs::write(&file, yaml).unwrap();
    let proxy = ChildProxy::spawn(&file);
    let client = TestClient::new(proxy.proxy_addr);
    let headers = [
        ("idempotency-key", "order-4711"),
        ("authorization", "Bearer sk_live_secret_token"),
        ("traceparent", TRACEPARENT),
    ];
    client.post("/api/orders", &headers, "{\"card\":\"4242424242424242\"}").await;
    client.post("/api/orders", &headers, "{\"card\":\"4242424242424242\"}").await;
    client.post("/api/orders", &[("idempotency-key", "no-scope")], "{}").await;
    proxy.signal("TERM");
    let mut lines = Vec::new();
    while let Ok(line) = proxy.lines.recv_timeout(Duration::from_secs(10)) {
        assert!(!line.contains("sk_live_secret_token"), "a credential was logged: {line}");
        assert!(!line.contains("4242424242424242"), "a body was logged: {line}");
        lines.push(serde_json::from_str(&line).unwrap_or_else(|e| panic!("not one JSON object ({e}): {line}")));
    }
    lines
}

fn requests(lines: &[serde_json::Value]) -> Vec<&serde_json::Value> {
    lines.iter().filter(|l| l["message"] == "request").collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_json_line_per_request_with_route_outcome_status_and_trace() {
    let lines = lines_for("shown").await;
    let reqs = requests(&lines);
    assert_eq!(reqs.len(), 3, "{lines:?}");
    let outcomes: Vec<_> = reqs.iter().map(|l| l["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, ["forwarded", "replayed", "rejected"]);
    for l in &reqs[..2] {
        assert_eq!(l["route"], "api");
        assert_eq!(l["status"], 200);
        assert_eq!(l["key"], "order-4711");
        assert_eq!(l["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(l["duration_ms"].as_f64().is_some() && l["timestamp"].is_string() && l["level"] == "INFO");
    }
    assert_eq!(reqs[2]["status"], 400);
    assert!(reqs[2]["error"].as_str().unwrap().contains("scope"), "the cause is on the same line");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_can_be_hashed_or_hidden() {
    let hashed = lines_for("hashed").await;
    let reqs = requests(&hashed);
    let key = reqs[0]["key"].as_str().unwrap();
    assert_eq!(key.len(), 16);
    assert!(key.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(reqs[1]["key"], key, "lines of one key still match each other");
    assert!(hashed.iter().all(|l| !l.to_string().contains("order-4711")));

    let hidden = lines_for("hidden").await;
    assert!(requests(&hidden).iter().all(|l| l.get("key").is_none()));
    assert!(hidden.iter().all(|l| !l.to_string().contains("order-4711")));
}
