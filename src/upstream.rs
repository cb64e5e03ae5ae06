//! Stage `forward`: the pooled client to the local app.
//!
//! hyper-util's client keeps keep-alive connections to the app; idemgate adds only what is its
//! own: the target address, hop-by-hop hygiene, and `X-Forwarded-For`.

use crate::config::UpstreamConfig;
use crate::error::{Body, Problem};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tower::Service;

/// The peer a request came from, for `X-Forwarded-For`; set by the listener.
#[derive(Clone, Copy, Debug)]
pub struct ClientAddr(pub SocketAddr);

/// The client to the app as a tower service: the target address, hop-by-hop hygiene and
/// `X-Forwarded-For`. Timeouts, the concurrency limit and load shedding are layers around it
/// ([`crate::stack`]).
#[derive(Clone)]
pub struct AppClient {
    client: Client<HttpConnector, Body>,
    authority: http::uri::Authority,
}

impl AppClient {
    pub fn new(cfg: &UpstreamConfig) -> Result<AppClient, String> {
        let url = cfg.url.as_deref().ok_or("upstream.url is required")?;
        let uri: Uri = url.parse().map_err(|e| format!("upstream.url: {e}"))?;
        let authority = uri.authority().cloned().ok_or("upstream.url: no host")?;
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(cfg.connect_timeout.0));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(256)
            .build(connector);
        Ok(AppClient { client, authority })
    }

    /// Points the request at the app, keeping its path and query as they arrived, and removes
    /// hop-by-hop headers (those belong to the client's connection, not to the app's).
    fn prepare(&self, req: &mut Request<Body>) -> Result<(), Problem> {
        // The parts as they are (reference-counted), not a URI text parsed again per request.
        let mut uri = http::uri::Parts::default();
        uri.scheme = Some(http::uri::Scheme::HTTP);
        uri.authority = Some(self.authority.clone());
        uri.path_and_query =
            Some(req.uri().path_and_query().cloned().unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")));
        *req.uri_mut() =
            Uri::from_parts(uri).map_err(|e| Problem::BadRequest(format!("cannot build the upstream URI: {e}")))?;
        *req.version_mut() = http::Version::HTTP_11;
        strip_hop_by_hop(req.headers_mut());
        if let Some(ClientAddr(client)) = req.extensions().get::<ClientAddr>().copied() {
            append_forwarded_for(req.headers_mut(), client);
        }
        Ok(())
    }
}

impl Service<Request<Body>> for AppClient {
    type Response = Response<Incoming>;
    type Error = Problem;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Incoming>, Problem>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Problem>> {
        // The pool opens connections as needed; the concurrency limit around it bounds them.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let prepared = self.prepare(&mut req);
        let client = self.client.clone();
        Box::pin(async move {
            prepared?;
            client.request(req).await.map_err(|e| Problem::UpstreamUnreachable(crate::error::describe(&e)))
        })
    }
}

const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Removes the RFC 9110 hop-by-hop headers and every header the `Connection` header names.
/// `Upgrade` goes too: idemgate does not tunnel protocols.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: one look at the names present costs less than nine removals,
    // each a hash and a probe. (A `Connection` header is one of them, so nominated names are
    // never missed.)
    if !headers.keys().any(|name| HOP_BY_HOP.contains(name) || name == header::UPGRADE) {
        return;
    }
    let nominated: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in nominated.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    headers.remove(header::UPGRADE);
}

/// A constant: a name given as `&str` is parsed (and checked for case) on every look-up.
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

pub(crate) fn append_forwarded_for(headers: &mut HeaderMap, client: SocketAddr) {
    let ip = client_ip(client.ip());
    let value = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.is_empty() => HeaderValue::from_str(&format!("{prev}, {}", ip.to_str().unwrap_or(""))),
        _ => Ok(ip),
    };
    if let Ok(v) = value {
        headers.insert(X_FORWARDED_FOR, v);
    }
}

/// The address as a header value, formatted once per thread for as long as requests keep coming
/// from it: a sidecar's peer is nearly always the same ingress or node address, and formatting
/// an address through `Display` cost about 1% of a forwarded request's instructions.
fn client_ip(ip: std::net::IpAddr) -> HeaderValue {
    thread_local!(static LAST: std::cell::RefCell<Option<(std::net::IpAddr, HeaderValue)>> = const { std::cell::RefCell::new(None) });
    LAST.with_borrow_mut(|last| match last {
        Some((seen, value)) if *seen == ip => value.clone(),
        _ => {
            // An address's text is always a valid header value.
            let value = HeaderValue::from_maybe_shared(bytes::Bytes::from(ip.to_string()))
                .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
            *last = Some((ip, value.clone()));
            value
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_nominated_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("close, X-Secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key(header::CONTENT_TYPE));
    }

    #[test]
    fn forwarded_for_names_each_client_and_keeps_the_chain() {
        let v4: SocketAddr = "10.1.2.3:5000".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::7]:443".parse().unwrap();
        let mut h = HeaderMap::new();
        append_forwarded_for(&mut h, v4);
        assert_eq!(h[&X_FORWARDED_FOR], "10.1.2.3");
        // The same thread, another client: the remembered text must not be reused.
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_FOR, HeaderValue::from_static("192.0.2.1"));
        append_forwarded_for(&mut h, v6);
        assert_eq!(h[&X_FORWARDED_FOR], "192.0.2.1, 2001:db8::7");
        let mut h = HeaderMap::new();
        append_forwarded_for(&mut h, v4);
        append_forwarded_for(&mut h, v4);
        assert_eq!(h[&X_FORWARDED_FOR], "10.1.2.3, 10.1.2.3");
    }
}
