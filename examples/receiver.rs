//! A small webhook receiver to try idemgate with.
//!
//! `cargo run --example receiver [ADDR]` listens on 127.0.0.1:3000 by default. It prints every
//! delivery it gets with the key idemgate forwarded (`X-Idempotency-Key`), and answers with how
//! many times it has seen that key, so a replay is easy to tell from a second delivery.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;

type Seen = Arc<Mutex<HashMap<String, u64>>>;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:3000".into());
    let listener = TcpListener::bind(&addr).await?;
    println!("receiver listening on http://{addr}");
    let seen: Seen = Arc::default();
    loop {
        let (stream, _) = listener.accept().await?;
        let seen = seen.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| receive(req, seen.clone()));
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

async fn receive(req: Request<hyper::body::Incoming>, seen: Seen) -> Result<Response<Full<Bytes>>, Infallible> {
    let key = req.headers().get("x-idempotency-key").and_then(|v| v.to_str().ok()).unwrap_or("-").to_string();
    let path = req.uri().path().to_string();
    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let count = {
        let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
        let n = seen.entry(key.clone()).or_default();
        *n += 1;
        *n
    };
    println!("{path} key={key} deliveries={count} body_bytes={}", body.len());
    let reply = format!("{{\"received\":true,\"key\":{key:?},\"deliveries\":{count}}}\n");
    let response = Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(reply)))
        .unwrap_or_default();
    Ok(response)
}
