//! Test harness: a real upstream app on 127.0.0.1:0, the proxy on port 0 with its SQLite file in
//! a temp dir, and a tiny HTTP client.
#![allow(dead_code)]

pub mod child;
pub mod sign;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc};

/// What the app received for one request.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub key: String,
    pub method: Method,
    pub path_and_query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

#[derive(Default)]
struct AppState {
    deliveries: Vec<Delivery>,
    /// Keys whose requests wait in the app until released.
    held: HashMap<String, Arc<Semaphore>>,
    /// Requests inside the app now, and the most there ever were at once.
    in_flight: usize,
    max_in_flight: usize,
}

/// The upstream app. Counts deliveries per forwarded key (`X-Idempotency-Key`) and answers as each
/// request asks through test headers:
/// - `x-test-status: 500` answer with that status (default 200)
/// - `x-test-delay-ms: 300` wait that long before answering (to exceed timeouts)
/// - `x-test-body-size: 5000` answer with a body of that many bytes
/// - `x-test-header: name=value` add that response header (repeatable)
/// - `x-test-fail-times: 2` the first 2 deliveries of the key get 500 (or `x-test-status`), later ones 200
///
/// The body otherwise is `{"key":K,"n":N}` with the key and how many times the app has seen it.
pub struct TestApp {
    pub addr: SocketAddr,
    state: Arc<Mutex<AppState>>,
    arrivals: tokio::sync::Mutex<mpsc::UnboundedReceiver<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestApp {
    pub async fn start() -> TestApp {
        Self::start_on("127.0.0.1:0").await
    }

    pub async fn start_on(addr: &str) -> TestApp {
        let listener = TcpListener::bind(addr).await.expect("bind test app");
        let addr = listener.local_addr().unwrap();
        let state: Arc<Mutex<AppState>> = Arc::default();
        let (tx, rx) = mpsc::unbounded_channel();
        let task = {
            let state = state.clone();
            tokio::spawn(async move {
                // The connections belong to this task: aborting it closes them all, as the end of
                // an app's process would.
                let mut connections = tokio::task::JoinSet::new();
                loop {
                    let Ok((stream, _)) = listener.accept().await else { continue };
                    while connections.try_join_next().is_some() {}
                    let state = state.clone();
                    let tx = tx.clone();
                    connections.spawn(async move {
                        let service = service_fn(move |req| answer(req, state.clone(), tx.clone()));
                        let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
                    });
                }
            })
        };
        TestApp { addr, state, arrivals: tokio::sync::Mutex::new(rx), task }
    }

    /// Stops the app as its process ending would: the listener and every connection closed.
    pub async fn kill(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// How many times the app received this key.
    pub fn count(&self, key: &str) -> usize {
        self.state.lock().unwrap().deliveries.iter().filter(|d| d.key == key).count()
    }

    /// The most requests that were inside the app at once.
    pub fn max_in_flight(&self) -> usize {
        self.state.lock().unwrap().max_in_flight
    }

    pub fn total(&self) -> usize {
        self.state.lock().unwrap().deliveries.len()
    }

    pub fn deliveries(&self) -> Vec<Delivery> {
        self.state.lock().unwrap().deliveries.clone()
    }

    /// Requests for `key` wait inside the app until [`TestApp::release`].
    pub fn hold(&self, key: &str) {
        self.state.lock().unwrap().held.insert(key.to_string(), Arc::new(Semaphore::new(0)));
    }

    /// Lets every held request for `key` (now and later) answer.
    pub fn release(&self, key: &str) {
        if let Some(gate) = self.state.lock().unwrap().held.remove(key) {
            gate.add_permits(Semaphore::MAX_PERMITS / 2);
        }
    }

    /// Waits until the app has received a request (any key); returns its key.
    pub async fn arrival(&self) -> String {
        let mut rx = self.arrivals.lock().await;
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("no request reached the app within 10s")
            .expect("app stopped")
    }
}

async fn answer(
    req: Request<Incoming>,
    state: Arc<Mutex<AppState>>,
    arrivals: mpsc::UnboundedSender<String>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let key = parts.headers.get("x-idempotency-key").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let (n, gate) = {
        let mut st = state.lock().unwrap();
        st.deliveries.push(Delivery {
            key: key.clone(),
            method: parts.method.clone(),
            path_and_query: parts.uri.path_and_query().map(|p| p.to_string()).unwrap_or_default(),
            headers: parts.headers.clone(),
            body,
        });
        let n = st.deliveries.iter().filter(|d| d.key == key).count();
        st.in_flight += 1;
        st.max_in_flight = st.max_in_flight.max(st.in_flight);
        (n, st.held.get(&key).cloned())
    };
    let _ = arrivals.send(key.clone());
    if let Some(gate) = gate {
        let _ = gate.acquire().await;
    }
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    if let Some(ms) = header("x-test-delay-ms").and_then(|v| v.parse().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let status = match header("x-test-fail-times").and_then(|v| v.parse::<usize>().ok()) {
        Some(times) if n > times => 200,
        Some(_) => header("x-test-status").and_then(|v| v.parse().ok()).unwrap_or(500),
        None => header("x-test-status").and_then(|v| v.parse().ok()).unwrap_or(200),
    };
    state.lock().unwrap().in_flight -= 1;
    let body = match header("x-test-body-size").and_then(|v| v.parse::<usize>().ok()) {
        Some(size) => Bytes::from((0..size).map(|i| b'a' + (i % 26) as u8).collect::<Vec<u8>>()),
        None => Bytes::from(format!("{{\"key\":{key:?},\"n\":{n}}}")),
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = StatusCode::from_u16(status).unwrap();
    response.headers_mut().insert("content-type", HeaderValue::from_static("application/json"));
    for value in parts.headers.get_all("x-test-header") {
        let (name, value) = value.to_str().unwrap().split_once('=').unwrap();
        response
            .headers_mut()
            .append(HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_str(value).unwrap());
    }
    Ok(response)
}

/// A response as the test sees it.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn replayed(&self) -> bool {
        self.header("idempotent-replayed") == Some("true")
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    /// Asserts a problem+json answer with this status, and returns its `type`.
    pub fn assert_problem(&self, status: u16) -> String {
        assert_eq!(self.status.as_u16(), status, "body: {:?}", self.body);
        assert_eq!(self.header("content-type"), Some("application/problem+json"));
        let p = self.json();
        assert_eq!(p["status"], status);
        assert!(p["title"].is_string() && p["detail"].is_string(), "{p}");
        p["type"].as_str().unwrap().to_string()
    }
}

/// A small client over a pooled hyper connection.
#[derive(Clone)]
pub struct TestClient {
    base: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl TestClient {
    pub fn new(addr: SocketAddr) -> TestClient {
        TestClient { base: format!("http://{addr}"), client: Client::builder(TokioExecutor::new()).build_http() }
    }

    pub async fn send(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
        let mut req = Request::builder().method(method).uri(format!("{}{path}", self.base));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(Bytes::from(body.to_string()))).unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(30), self.client.request(req))
            .await
            .expect("no answer within 30s")
            .expect("request failed");
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.expect("read body").to_bytes();
        Reply { status: parts.status, headers: parts.headers, body }
    }

    pub async fn post(&self, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
        self.send("POST", path, headers, body).await
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send("GET", path, &[], "").await
    }

    /// On an admin listener: a counter's value from `/metrics`, 0 when the series does not exist yet.
    pub async fn metric(&self, series: &str) -> f64 {
        let text = String::from_utf8(self.get("/metrics").await.body.to_vec()).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or(0.0)
    }
}

/// The proxy, in-process, on port 0, with its SQLite file in its own temp dir.
pub struct TestProxy {
    pub proxy_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub client: TestClient,
    pub admin: TestClient,
    pub db_path: PathBuf,
    pub dir: tempfile::TempDir,
    running: Option<idemgate::server::Running>,
}

/// The config around `body` (YAML with `defaults:`/`routes:` and any other sections; an `admin:`
/// or `store:` section in `body` replaces the harness's; an admin listener must use port 0 too).
pub fn config_yaml(upstream: &str, db_path: &std::path::Path, body: &str) -> String {
    let has = |section: &str| body.lines().any(|l| l.starts_with(section));
    let admin = if has("admin:") { String::new() } else { "admin: { listen: 127.0.0.1:0 }\n".to_string() };
    let store =
        if has("store:") { String::new() } else { format!("store: {{ sqlite: {{ path: {} }} }}\n", db_path.display()) };
    // `upstream_timeout: 10s` as the body's first line sets the app's timeout (2s unless given).
    let (timeout, body) = match body.strip_prefix("upstream_timeout: ") {
        Some(rest) => rest.split_once('\n').unwrap_or((rest, "")),
        None => ("2s", body),
    };
    format!(
        "listen: 127.0.0.1:0\n{admin}log: {{ level: warn }}\nupstream: {{ url: {upstream}, timeout: {timeout} }}\n{store}{body}"
    )
}

impl TestProxy {
    pub async fn start(app: &TestApp, body: &str) -> TestProxy {
        let dir = tempfile::tempdir().unwrap();
        let db_path = dir.path().join("data").join("idemgate.db");
        Self::start_in(dir, db_path, &app.url(), body).await
    }

    pub async fn start_in(dir: tempfile::TempDir, db_path: PathBuf, upstream: &str, body: &str) -> TestProxy {
        let file = dir.path().join("idemgate.yaml");
        std::fs::write(&file, config_yaml(upstream, &db_path, body)).unwrap();
        let config = idemgate::config::load(&file).unwrap_or_else(|e| panic!("test config invalid: {e}"));
        let running = idemgate::server::start(config).await.expect("proxy starts");
        TestProxy {
            proxy_addr: running.proxy_addr,
            admin_addr: running.admin_addr,
            client: TestClient::new(running.proxy_addr),
            admin: TestClient::new(running.admin_addr),
            db_path,
            dir,
            running: Some(running),
        }
    }

    pub async fn stop(mut self) -> (tempfile::TempDir, PathBuf) {
        if let Some(running) = self.running.take() {
            running.shutdown().await;
        }
        (self.dir, self.db_path)
    }

    pub async fn post(&self, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
        self.client.post(path, headers, body).await
    }

    /// A counter's value from `/metrics`, 0 when the series does not exist yet.
    pub async fn metric(&self, series: &str) -> f64 {
        self.admin.metric(series).await
    }
}

/// POSTs `body` to `/hooks/a` on a task of its own, for a request that must stay in flight while
/// the test goes on. `headers` are (name, value) pairs; `Idempotency-Key` is one of them or not.
pub fn spawn_post(proxy: &Arc<TestProxy>, headers: &[(&str, &str)], body: &str) -> tokio::task::JoinHandle<Reply> {
    let proxy = proxy.clone();
    let headers: Vec<(String, String)> = headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let body = body.to_string();
    tokio::spawn(async move {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        proxy.post("/hooks/a", &headers, &body).await
    })
}

/// The usual single route keyed by the `Idempotency-Key` header.
pub const HEADER_ROUTE: &str = "routes:
  - name: hooks
    match: { path_prefix: /hooks/ }
    key: { header: Idempotency-Key }
";

/// Polls `check` until it returns true or `limit` passes. Only for conditions that are a matter of
/// wall-clock time by contract (a lease or ttl running out), never to wait for an event.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Sends `request` as raw bytes on a new connection and reads until the proxy closes it (10 s at
/// most: a proxy that neither answers nor closes fails the test).
pub async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut buf))
        .await
        .expect("the proxy must answer and close, not hang")
        .ok();
    String::from_utf8_lossy(&buf).into_owned()
}
