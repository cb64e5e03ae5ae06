//! With the `otel` feature: one span per request, continuing the client's trace, with child spans
//! for claim, forward and commit and a `replay` event, exported over OTLP/HTTP to a receiver of
//! the test's own on loopback.
#![cfg(feature = "otel")]

mod common;

use bytes::Bytes;
use common::child::{ChildProxy, write_config};
use common::{HEADER_ROUTE, TestApp, TestClient};
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

/// An OTLP/HTTP receiver: keeps every JSON export it is sent.
async fn receiver() -> (std::net::SocketAddr, Arc<Mutex<Vec<Value>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let exports: Arc<Mutex<Vec<Value>>> = Arc::default();
    let kept = exports.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let kept = kept.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let kept = kept.clone();
                    async move {
                        let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                        if let Ok(json) = serde_json::from_slice::<Value>(&body) {
                            kept.lock().unwrap().push(json);
                        }
                        Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(b"{}"))))
                    }
                });
                let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    (addr, exports)
}

fn spans(exports: &[Value]) -> Vec<Value> {
    let mut out = Vec::new();
    for export in exports {
        for rs in export["resourceSpans"].as_array().into_iter().flatten() {
            for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                out.extend(ss["spans"].as_array().into_iter().flatten().cloned());
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_exported_as_spans_continuing_the_clients_trace() {
    let (otlp, exports) = receiver().await;
    let app = TestApp::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &app.url(), HEADER_ROUTE);
    let endpoint = format!("http://{otlp}");
    let proxy = ChildProxy::spawn_with(
        &config,
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint), ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")],
    );
    let client = TestClient::new(proxy.proxy_addr);
    let traceparent = format!("00-{TRACE}-{PARENT}-01");
    let headers = [("idempotency-key", "traced"), ("traceparent", traceparent.as_str())];
    assert_eq!(client.post("/hooks/a", &headers, "{}").await.status, 200);
    assert!(client.post("/hooks/a", &headers, "{}").await.replayed());
    assert_eq!(app.deliveries()[0].headers["traceparent"], traceparent.as_str(), "passed to the app unchanged");
    proxy.signal("TERM");
    assert!(proxy.wait_exit(Duration::from_secs(15)).success(), "spans are flushed at exit");

    let spans = spans(&exports.lock().unwrap());
    let requests: Vec<&Value> = spans.iter().filter(|s| s["name"] == "request").collect();
    assert_eq!(requests.len(), 2, "one span per request: {spans:#?}");
    for request in &requests {
        assert_eq!(request["traceId"].as_str().unwrap().to_ascii_lowercase(), TRACE, "the client's trace continues");
        assert_eq!(request["parentSpanId"].as_str().unwrap().to_ascii_lowercase(), PARENT);
    }
    let children = |name: &str, parent: &Value| {
        spans.iter().filter(|s| s["name"] == name && s["parentSpanId"] == parent["spanId"]).count()
    };
    let (first, second) = (
        requests.iter().find(|r| children("forward", r) == 1).unwrap(),
        requests.iter().find(|r| children("forward", r) == 0).unwrap(),
    );
    for stage in ["claim", "forward", "commit"] {
        assert_eq!(children(stage, first), 1, "{stage} is a child of the first request's span");
    }
    let events: Vec<&str> =
        second["events"].as_array().into_iter().flatten().filter_map(|e| e["name"].as_str()).collect();
    assert!(events.contains(&"replay"), "the duplicate's span carries a replay event: {second:#}");
}
