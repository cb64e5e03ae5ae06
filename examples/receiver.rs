//! A small webhook receiver to try idemgate with.
//!
//! `cargo run --example receiver [ADDR]` listens on 127.0.0.1:3000 by default (`127.0.0.1:0` picks
//! a free port; the first line printed names the address it got). It prints every delivery it gets
//! with the key idemgate forwarded (`X-Idempotency-Key`), and answers with how many times it has
//! seen that key, so a replay is easy to tell from a second delivery:
//!
//! ```text
//! POST /webhooks/stripe key=evt_1 deliveries=1 body_bytes=38
//! ```
//!
//! Two extras, for `examples/demo` and for trying things by hand:
//! - `GET /_seen` answers what it has seen so far, as JSON:
//!   `{"deliveries":3,"keys":{"evt_1":1,"evt_2":2}}` (this request itself is not counted);
//! - a delivery with `X-Receiver-Delay-Ms: 1500` is answered that much later (at most 30 s), to
//!   play an app that is slower than its sender's timeout. The delivery counts when it arrives.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;

/// Deliveries per key. A BTreeMap so that `/_seen` lists keys in a stable order.
type Seen = Arc<Mutex<BTreeMap<String, u64>>>;

/// A header value that is not a number must not make a copy-pasted receiver hang for ages either.
const MAX_DELAY: Duration = Duration::from_secs(30);

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:3000".into());
    let listener = TcpListener::bind(&addr).await?;
    println!("receiver listening on http://{}", listener.local_addr()?);
    let seen: Seen = Arc::default();
    // As PID 1 in a container a process has no default action for SIGTERM: stop on it explicitly.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = term.recv() => return Ok(()),
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, for instance: wait rather than spin or exit.
                eprintln!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let seen = seen.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| answer(req, seen.clone()));
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

async fn answer(req: Request<hyper::body::Incoming>, seen: Seen) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() == Method::GET && req.uri().path() == "/_seen" {
        return Ok(report(&seen));
    }
    Ok(receive(req, &seen).await)
}

async fn receive(req: Request<hyper::body::Incoming>, seen: &Seen) -> Response<Full<Bytes>> {
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let key = header("x-idempotency-key").unwrap_or_else(|| "-".into());
    let delay = header("x-receiver-delay-ms").and_then(|v| v.parse().ok()).map(Duration::from_millis);
    let line = format!("{} {}", req.method(), req.uri().path());
    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let count = {
        let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
        let n = seen.entry(key.clone()).or_default();
        *n += 1;
        *n
    };
    println!("{line} key={key} deliveries={count} body_bytes={}", body.len());
    if let Some(delay) = delay {
        tokio::time::sleep(delay.min(MAX_DELAY)).await;
    }
    json(StatusCode::OK, serde_json::json!({ "received": true, "key": key, "deliveries": count }))
}

fn report(seen: &Seen) -> Response<Full<Bytes>> {
    let keys = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let deliveries: u64 = keys.values().sum();
    json(StatusCode::OK, serde_json::json!({ "deliveries": deliveries, "keys": keys }))
}

fn json(status: StatusCode, value: serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(format!("{value}\n"))));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    response
}
