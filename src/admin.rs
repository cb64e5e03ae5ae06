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
            (&Method::GET, "/admin/dead-letters") => self.dead_letters(req.uri().query(), req.headers()).await,
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
        if let Some(rest) = path.strip_prefix("/admin/dead-letters/") {
            return self.dead_letter(method, rest, query).await;
        }
        let rest =
            path.strip_prefix("/admin/keys/").ok_or_else(|| Problem::NotFound(format!("no admin endpoint {path}")))?;
        let (route, id) = self.record_id(rest, query)?;
        let route_name = &*route.name;
        match (method, route.is_async()) {
            (&Method::GET, false) => match self.gate.records.get(&id).await? {
                Some(record) => Ok(json(&record_json(&id, &record))),
                None => Err(Problem::NotFound(format!("no record for key {:?} on route {route_name:?}", id.key))),
            },
            (&Method::GET, true) => match self.gate.records.backend().event(id.clone()).await? {
                Some(event) => Ok(json(&event_json(&event))),
                None => Err(Problem::NotFound(format!("no event for key {:?} on route {route_name:?}", id.key))),
            },
            (&Method::DELETE, is_async) => {
                let deleted = if is_async {
                    self.gate.records.backend().forget_event(id.clone()).await?
                } else {
                    self.gate.records.delete(&id).await?
                };
                tracing::info!(route = %id.route, key = %id.key, deleted, "key deleted by an operator");
                Ok(empty(StatusCode::NO_CONTENT))
            }
            _ => Err(Problem::NotFound(format!("{method} is not supported here; use GET or DELETE"))),
        }
    }

    /// `GET /admin/dead-letters?route=NAME`: the route's dead letters, oldest first.
    async fn dead_letters(&self, query: Option<&str>, headers: &http::HeaderMap) -> Result<Response<Body>, Problem> {
        self.authorize(headers)?;
        let name = param(query, "route").ok_or_else(|| Problem::BadRequest("add ?route=NAME".into()))?;
        let route = self.async_route(&name)?;
        let dead = self.gate.records.backend().dead_letters(&route.name, DEAD_LETTERS_LISTED).await?;
        Ok(json(&serde_json::Value::Array(dead.iter().map(event_json).collect())))
    }

    /// `POST /admin/dead-letters/{route}/{key}/retry` (queued again, 202) and
    /// `DELETE /admin/dead-letters/{route}/{key}` (forgotten with its key, 204).
    async fn dead_letter(&self, method: &Method, rest: &str, query: Option<&str>) -> Result<Response<Body>, Problem> {
        let (rest, retry) = match rest.strip_suffix("/retry") {
            Some(rest) => (rest, true),
            None => (rest, false),
        };
        let (route, id) = self.record_id(rest, query)?;
        if !route.is_async() {
            return Err(Problem::NotFound(format!("route {:?} is not an async route", route.name)));
        }
        let backend = self.gate.records.backend();
        match (method, retry) {
            (&Method::POST, true) => {
                if !backend.retry_dead(id.clone(), crate::store::now_ms()).await? {
                    return Err(Problem::NotFound(format!(
                        "no dead letter for key {:?} on route {:?}",
                        id.key, route.name
                    )));
                }
                tracing::info!(route = %id.route, key = %id.key, "dead letter queued again by an operator");
                self.gate.deliveries.wake();
                Ok(empty(StatusCode::ACCEPTED))
            }
            (&Method::DELETE, false) => {
                // One statement: a dead letter retried a moment ago is queued again, not forgotten.
                if !backend.forget_dead(id.clone()).await? {
                    return Err(Problem::NotFound(format!(
                        "no dead letter for key {:?} on route {:?}",
                        id.key, route.name
                    )));
                }
                tracing::info!(route = %id.route, key = %id.key, "dead letter forgotten by an operator");
                Ok(empty(StatusCode::NO_CONTENT))
            }
            _ => Err(Problem::NotFound("use POST .../{key}/retry or DELETE .../{key}".into())),
        }
    }

    fn async_route(&self, name: &str) -> Result<Arc<crate::route::Route>, Problem> {
        let routes = self.gate.routes();
        let route = routes.router.get(name).ok_or_else(|| Problem::NotFound(format!("no route named {name:?}")))?;
        if !route.is_async() {
            return Err(Problem::NotFound(format!("route {name:?} is not an async route")));
        }
        Ok(route.clone())
    }

    /// The route and the record id of `{route}/{key}`, its scope from the query
    /// (`?scope=VALUE` on scoped routes, `?authorization=&cookie=` on credential-scoped ones).
    fn record_id(&self, rest: &str, query: Option<&str>) -> Result<(Arc<crate::route::Route>, RecordId), Problem> {
        let (route_name, raw_key) =
            rest.split_once('/').ok_or_else(|| Problem::NotFound("use .../{route}/{key}".into()))?;
        let routes = self.gate.routes();
        let route =
            routes.router.get(route_name).ok_or_else(|| Problem::NotFound(format!("no route named {route_name:?}")))?;
        let key = percent_encoding::percent_decode_str(raw_key)
            .decode_utf8()
            .map_err(|_| Problem::BadRequest("the key is not valid UTF-8".into()))?
            .into_owned();
        let scope = match (&route.scope, param(query, "scope")) {
            (None, _) if route.credentials_scoped => {
                credentials_scope(param(query, "authorization"), param(query, "cookie"))?
            }
            (None, _) => crate::scope::SHARED.to_string(),
            (Some(_), Some(v)) => hex(&Sha256::digest(v.as_bytes())),
            (Some(_), None) => {
                return Err(Problem::BadRequest(format!("route {route_name:?} is scoped: add ?scope=VALUE")));
            }
        };
        Ok((route.clone(), RecordId { route: route.name.clone(), scope, key }))
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

/// Dead letters listed at most per request.
const DEAD_LETTERS_LISTED: usize = 1000;

fn param(query: Option<&str>, name: &str) -> Option<String> {
    query.and_then(|q| form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v.into_owned()))
}

fn event_json(event: &crate::store::queue::QueuedEvent) -> serde_json::Value {
    serde_json::json!({
        "route": &*event.id.route,
        "key": event.id.key,
        "state": event.state.as_str(),
        "attempts": event.attempts,
        "status": event.response.as_ref().map(|r| r.status).or(event.last_status),
        "error": event.last_error,
        "first_seen": rfc3339(event.first_seen_ms),
        "last_attempt": event.last_attempt_ms.map(rfc3339),
        "next_attempt": (event.state == crate::store::queue::EventState::Queued).then(|| rfc3339(event.next_attempt_ms)),
    })
}

fn empty(status: StatusCode) -> Response<Body> {
    let mut response = Response::new(full(Bytes::new()));
    *response.status_mut() = status;
    response
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

/// `GET /healthz` on the admin listener at `listen`, for `idemgate health`.
pub fn probe(listen: std::net::SocketAddr, timeout: Duration) -> Result<(), String> {
    match call(listen, "GET", "/healthz", None, timeout)? {
        (200, _) => Ok(()),
        (status, _) => Err(format!("/healthz answered {status}")),
    }
}

/// One request to the admin listener at `listen` (for the command line: `health`,
/// `dead-letters`); the status and body. An unspecified address (0.0.0.0, ::) is reached on
/// loopback, where a listener on it also answers.
pub fn call(
    listen: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    timeout: Duration,
) -> Result<(u16, String), String> {
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
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let head =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).map_err(|e| format!("{addr}: {e}"))?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).map_err(|e| format!("{addr}: {e}"))?;
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("{addr}{path}: not an HTTP answer: {head:?}"))?;
    Ok((status, body.to_string()))
}
