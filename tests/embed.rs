//! `idemgate::IdempotencyLayer` around plain tower services and an axum app, in-process: the same
//! semantics as the sidecar, and leases that never outlive their request's failure.

mod common;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use idemgate::IdempotencyLayer;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tower::{Layer, Service, ServiceExt};

type AppBody = idemgate::error::Body;

async fn layer(dir: &tempfile::TempDir) -> IdempotencyLayer {
    IdempotencyLayer::from_yaml(&format!(
        "store: {{ sqlite: {{ path: {} }} }}
defaults: {{ lease: 60s }}
routes:
  - name: orders
    match: {{ path: /orders, methods: [POST] }}
    key: {{ header: Idempotency-Key }}
",
        dir.path().join("idemgate.db").display()
    ))
    .await
    .unwrap()
}

fn order(key: &str) -> Request<Full<Bytes>> {
    Request::post("/orders").header("idempotency-key", key).header("host", "x").body(Full::new(Bytes::new())).unwrap()
}

async fn body(response: Response<AppBody>) -> (StatusCode, bool, Bytes) {
    let replayed = response.headers().get("idempotent-replayed").is_some();
    let status = response.status();
    (status, replayed, response.into_body().collect().await.unwrap().to_bytes())
}

/// A handler that counts its calls and answers `{"order":N}`.
fn counting(
    calls: Arc<AtomicUsize>,
) -> impl Service<Request<AppBody>, Response = Response<Full<Bytes>>, Error = Infallible, Future: Send>
+ Clone
+ Send
+ Sync
+ 'static {
    tower::service_fn(move |_req: Request<AppBody>| {
        let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
        async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!("{{\"order\":{n}}}"))))) }
    })
}

#[tokio::test]
async fn a_duplicate_is_replayed_around_a_plain_service_fn() {
    let dir = tempfile::tempdir().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let service = layer(&dir).await.layer(counting(calls.clone()));
    let (status, replayed, first) = body(service.clone().oneshot(order("k1")).await.unwrap()).await;
    assert_eq!((status, replayed, &first[..]), (StatusCode::OK, false, &b"{\"order\":1}"[..]));
    let (_, replayed, again) = body(service.clone().oneshot(order("k1")).await.unwrap()).await;
    assert!(replayed);
    assert_eq!(again, first);
    let (_, _, other) = body(service.clone().oneshot(order("k2")).await.unwrap()).await;
    assert_eq!(&other[..], b"{\"order\":2}");
    // No route: straight to the service, unprotected.
    let get = Request::get("/orders").header("host", "x").body(Full::new(Bytes::new())).unwrap();
    assert_eq!(service.clone().oneshot(get).await.unwrap().status(), StatusCode::OK);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    // A missing key is the same 400 problem as on the sidecar.
    let keyless = Request::post("/orders").header("host", "x").body(Full::new(Bytes::new())).unwrap();
    let (status, _, problem) = body(service.oneshot(keyless).await.unwrap()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&problem).contains("missing-key"));
}

/// A service that fails (an error, or a panic) leaves no claim behind: the next delivery of the
/// key reaches the service again, not a 409 until the lease runs out.
#[tokio::test]
async fn the_lease_is_released_after_an_error_and_after_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let panicked = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flaky = {
        let calls = calls.clone();
        tower::service_fn(move |req: Request<AppBody>| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            let key = req.headers()["x-idempotency-key"].to_str().unwrap().to_string();
            let first_panic = key == "panic" && !panicked.swap(true, Ordering::SeqCst);
            async move {
                match (key.as_str(), n) {
                    ("error", 0) => Err::<Response<Full<Bytes>>, _>(std::io::Error::other("the app failed")),
                    ("panic", _) if first_panic => panic!("the handler panicked"),
                    _ => Ok(Response::new(Full::new(Bytes::from_static(b"done")))),
                }
            }
        })
    };
    let service = layer(&dir).await.layer(flaky);
    let (status, _, _) = body(service.clone().oneshot(order("error")).await.unwrap()).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let (status, replayed, _) = body(service.clone().oneshot(order("error")).await.unwrap()).await;
    assert_eq!((status, replayed), (StatusCode::OK, false), "released at once after the error");

    let (status, _, _) = body(service.clone().oneshot(order("panic")).await.unwrap()).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    // The dropped lease gives the key back on a task of its own: the next delivery may meet the
    // claim for a moment, never for the 60 s lease.
    let forwarded = common::eventually(Duration::from_secs(5), || {
        let service = service.clone();
        async move { body(service.oneshot(order("panic")).await.unwrap()).await.0 == StatusCode::OK }
    })
    .await;
    assert!(forwarded, "the panicked request's claim was not released");
    assert_eq!(calls.load(Ordering::SeqCst), 4);
}

/// Once forwarded, the exchange runs to the end although the caller's future is dropped: the
/// response is stored, and the retry gets it without a second call.
#[tokio::test]
async fn a_caller_that_goes_away_does_not_cancel_the_call_and_its_retry_is_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let (reached, mut arrived) = tokio::sync::mpsc::unbounded_channel();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let slow = {
        let (calls, gate) = (calls.clone(), gate.clone());
        tower::service_fn(move |_req: Request<AppBody>| {
            let (calls, gate, reached) = (calls.clone(), gate.clone(), reached.clone());
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                let _ = reached.send(());
                let _ = gate.acquire().await;
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"slow but done"))))
            }
        })
    };
    let service = layer(&dir).await.layer(slow);
    let caller = tokio::spawn(service.clone().oneshot(order("gone")));
    arrived.recv().await.unwrap();
    caller.abort();
    assert!(caller.await.unwrap_err().is_cancelled());
    gate.add_permits(1);
    let stored = common::eventually(Duration::from_secs(5), || {
        let service = service.clone();
        async move { body(service.oneshot(order("gone")).await.unwrap()).await.1 }
    })
    .await;
    assert!(stored, "the abandoned call's response was not stored");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

/// The example's shape: an axum router with the layer, served on a real socket.
#[tokio::test]
async fn an_axum_app_with_the_layer_counts_each_order_once() {
    use axum::routing::post;
    let dir = tempfile::tempdir().unwrap();
    let orders = Arc::new(AtomicUsize::new(0));
    let app = axum::Router::new()
        .route(
            "/orders",
            post(move || {
                let n = orders.fetch_add(1, Ordering::SeqCst) + 1;
                async move { axum::Json(serde_json::json!({ "order": n })) }
            }),
        )
        .layer(layer(&dir).await);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let client = common::TestClient::new(addr);
    let first = client.post("/orders", &[("idempotency-key", "a")], "").await;
    assert_eq!(first.json(), serde_json::json!({ "order": 1 }));
    let again = client.post("/orders", &[("idempotency-key", "a")], "").await;
    assert!(again.replayed());
    assert_eq!(again.json(), serde_json::json!({ "order": 1 }));
    assert_eq!(client.post("/orders", &[("idempotency-key", "b")], "").await.json(), serde_json::json!({ "order": 2 }));
}
