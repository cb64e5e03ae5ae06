//! The admin listener: health, readiness, metrics and key administration.

use crate::error::{Body, Problem};
use crate::gate::{Gate, hex};
use crate::metrics::Metrics;
use crate::replay::full;
use crate::store::{Record, RecordId};
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, UNIX_EPOCH};

pub struct Admin {
    gate: Arc<Gate>,
    metrics: Arc<Metrics>,
    token: Option<String>,
    /// Set at shutdown, so that readiness fails while requests drain.
    draining: AtomicBool,
}

impl Admin {
    pub fn new(gate: Arc<Gate>, metrics: Arc<Metrics>, token: Option<String>) -> Admin {
        Admin { gate, metrics, token, draining: AtomicBool::new(false) }
    }

    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().to_string();
        let result = match (req.method(), path.as_str()) {
            (&Method::GET, "/healthz") => Ok(text(StatusCode::OK, "ok\n")),
            (&Method::GET, "/readyz") => Ok(self.ready().await),
            (&Method::GET, "/metrics") => Ok(self.metrics()),
            (&Method::GET, "/admin/routes") => self.authorize(req.headers()).map(|()| self.routes()),
            (method, p) if p.starts_with("/admin/") => self.keys(method, p, req.uri().query(), req.headers()).await,
            _ => Err(Problem::NotFound(format!("no admin endpoint {} {path}", req.method()))),
        };
        result.unwrap_or_else(Problem::into_response)
    }

    async fn ready(&self) -> Response<Body> {
        if self.draining.load(Ordering::Relaxed) {
            return text(StatusCode::SERVICE_UNAVAILABLE, "draining\n");
        }
        // A store that does not answer at all is the admin stack's timeout (503).
        match self.gate.records.backend().check_writable().await {
            Ok(()) => text(StatusCode::OK, "ready\n"),
            Err(e) => text(StatusCode::SERVICE_UNAVAILABLE, &format!("{e}\n")),
        }
    }

    fn metrics(&self) -> Response<Body> {
        let mut response = Response::new(full(Bytes::from(self.metrics.encode())));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        );
        response
    }

    /// `GET /admin/routes`: each route's name and mode, and what enforcing would have done with
    /// its requests since start (counted on shadow routes only).
    fn routes(&self) -> Response<Body> {
        let routes = self.gate.routes();
        let list: Vec<_> = routes
            .router
            .routes()
            .iter()
            .map(|route| {
                let would: serde_json::Map<_, _> = routes
                    .metrics(Some(route.index))
                    .would_counts()
                    .map(|(would, n)| (would.as_str().to_string(), n.into()))
                    .collect();
                serde_json::json!({
                    "name": &*route.name,
                    "mode": if route.shadow() { "shadow" } else { "enforce" },
                    "would": would,
                })
            })
            .collect();
        json(&serde_json::Value::Array(list))
    }

    /// `GET` and `DELETE /admin/keys/{route}/{key}[?scope=VALUE]`.
    async fn keys(
        &self,
        method: &Method,
        path: &str,
        query: Option<&str>,
        headers: &http::HeaderMap,
    ) -> Result<Response<Body>, Problem> {
        self.authorize(headers)?;
        let rest =
            path.strip_prefix("/admin/keys/").ok_or_else(|| Problem::NotFound(format!("no admin endpoint {path}")))?;
        let (route_name, raw_key) =
            rest.split_once('/').ok_or_else(|| Problem::NotFound("use /admin/keys/{route}/{key}".into()))?;
        let routes = self.gate.routes();
        let route =
            routes.router.get(route_name).ok_or_else(|| Problem::NotFound(format!("no route named {route_name:?}")))?;
        let key = percent_encoding::percent_decode_str(raw_key)
            .decode_utf8()
            .map_err(|_| Problem::BadRequest("the key is not valid UTF-8".into()))?
            .into_owned();
        let param = |name: &str| {
            query.and_then(|q| {
                form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
            })
        };
        let scope = match (&route.scope, param("scope")) {
            (None, _) if route.credentials_scoped => credentials_scope(param("authorization"), param("cookie"))?,
            (None, _) => crate::scope::SHARED.to_string(),
            (Some(_), Some(v)) => hex(&Sha256::digest(v.as_bytes())),
            (Some(_), None) => {
                return Err(Problem::BadRequest(format!("route {route_name:?} is scoped: add ?scope=VALUE")));
            }
        };
        let id = RecordId { route: route.name.clone(), scope, key };
        match *method {
            Method::GET => match self.gate.records.get(&id).await? {
                Some(record) => Ok(json(&record_json(&id, &record))),
                None => Err(Problem::NotFound(format!("no record for key {:?} on route {route_name:?}", id.key))),
            },
            Method::DELETE => {
                let deleted = self.gate.records.delete(&id).await?;
                tracing::info!(route = %id.route, key = %id.key, deleted, "key deleted by an operator");
                let mut response = Response::new(full(Bytes::new()));
                *response.status_mut() = StatusCode::NO_CONTENT;
                Ok(response)
            }
            _ => Err(Problem::NotFound(format!("{method} is not supported here; use GET or DELETE"))),
        }
    }

    fn authorize(&self, headers: &http::HeaderMap) -> Result<(), Problem> {
        let Some(expected) = &self.token else {
            return Ok(());
        };
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if constant_time_eq(given.as_bytes(), expected.as_bytes()) { Ok(()) } else { Err(Problem::Unauthorized) }
    }
}

/// The scope of a key on a credential-scoped route, from the credentials its requests carried
/// (`?authorization=...&cookie=...`; neither: an anonymous client's key).
fn credentials_scope(authorization: Option<String>, cookie: Option<String>) -> Result<String, Problem> {
    let mut headers = http::HeaderMap::new();
    for (name, value) in [(header::AUTHORIZATION, authorization), (header::COOKIE, cookie)] {
        if let Some(value) = value {
            let value = HeaderValue::from_str(&value)
                .map_err(|_| Problem::BadRequest(format!("?{name}= is not a valid header value")))?;
            headers.insert(name, value);
        }
    }
    Ok(crate::scope::of_credentials(&headers))
}

/// Compares digests, so the time taken says nothing about how much of the token was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let (a, b) = (Sha256::digest(a), Sha256::digest(b));
    a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn rfc3339(ms: i64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)).to_string()
}

fn record_json(id: &RecordId, r: &Record) -> serde_json::Value {
    serde_json::json!({
        "route": &*id.route,
        "key": id.key,
        "state": r.state,
        "status": r.status,
        "created": rfc3339(r.created_ms),
        "expires": rfc3339(r.expires_ms),
    })
}

fn json(value: &serde_json::Value) -> Response<Body> {
    let mut response = Response::new(full(Bytes::from(value.to_string())));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn text(status: StatusCode, body: &str) -> Response<Body> {
    let mut response = Response::new(full(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

/// `GET /healthz` on the admin listener at `listen`, for `idemgate health`. An unspecified
/// address (0.0.0.0, ::) is probed on loopback, where a listener on it also answers.
pub fn probe(listen: std::net::SocketAddr, timeout: Duration) -> Result<(), String> {
    use std::io::{Read, Write};
    let mut addr = listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("{addr}: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())
        .map_err(|e| format!("{addr}: {e}"))?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).map_err(|e| format!("{addr}: {e}"))?;
    match &head {
        b"HTTP/1.1 200" => Ok(()),
        other => Err(format!("{addr}/healthz answered {:?}", String::from_utf8_lossy(other))),
    }
}
