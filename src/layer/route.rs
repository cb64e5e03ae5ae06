//! Stage `route`: the framing checks every request gets, then the first matching route.
//!
//! A matched request goes on to the protected stages (body, verify, the idempotency stage) with
//! its [`Route`] and [`Facts`] in its extensions; an unmatched one goes to the app untouched (or
//! gets 404 with `unmatched: reject`). This is the edge of the stages: every [`Problem`] they
//! raise becomes its problem+json answer here, through [`Problem::into_response`].

use crate::error::{Body, BoxError, Problem, SendFuture};
use crate::gate::Gate;
use crate::layer::report::Facts;
use crate::route::{Route, RouteMatch};
use http::{Request, Response, header};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::{Layer, Service, ServiceExt};

/// Routes requests between `protected` (the stages of a matched route) and `passthrough`.
/// `passthrough` is shared: the service is cloned for every request, but the app client only
/// for a request that goes to it unprotected.
pub struct RouteService<P, U> {
    gate: Arc<Gate>,
    protected: P,
    passthrough: Arc<U>,
}

impl<P: Clone, U> Clone for RouteService<P, U> {
    fn clone(&self) -> Self {
        RouteService {
            gate: self.gate.clone(),
            protected: self.protected.clone(),
            passthrough: self.passthrough.clone(),
        }
    }
}

/// Builds [`RouteService`] around the protected stages, given where unmatched requests go.
pub struct RouteLayer<U> {
    gate: Arc<Gate>,
    passthrough: Arc<U>,
}

impl<U> Clone for RouteLayer<U> {
    fn clone(&self) -> Self {
        RouteLayer { gate: self.gate.clone(), passthrough: self.passthrough.clone() }
    }
}

impl<U> RouteLayer<U> {
    pub fn new(gate: Arc<Gate>, passthrough: U) -> RouteLayer<U> {
        RouteLayer { gate, passthrough: Arc::new(passthrough) }
    }
}

impl<P, U> Layer<P> for RouteLayer<U> {
    type Service = RouteService<P, U>;
    fn layer(&self, protected: P) -> RouteService<P, U> {
        RouteService { gate: self.gate.clone(), protected, passthrough: self.passthrough.clone() }
    }
}

impl<B, P, U, UB> Service<Request<B>> for RouteService<P, U>
where
    B: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    P: Service<Request<B>, Response = Response<Body>, Error = Problem> + Clone + Send + 'static,
    P::Future: Send,
    U: Service<Request<Body>, Response = Response<UB>> + Clone + Send + 'static,
    U::Error: Into<BoxError>,
    U::Future: Send,
    UB: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
    UB::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Each request takes clones of both services and waits for their readiness itself.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let routes = self.gate.routes();
        let facts = Facts::new(routes.clone(), &req);
        // The pass-through's future is made and boxed here, where its service's bounds are in
        // scope; a matched request's is made and awaited in place (one allocation fewer).
        let branch = match route(&routes.router, &req) {
            Err(problem) => Branch::Answered(problem),
            Ok(RouteMatch::Unmatched) if routes.router.rejects_unmatched() => Branch::Answered(Problem::NoRoute),
            Ok(RouteMatch::Unmatched) => {
                let mut req = req.map(crate::replay::boxed);
                routes.strip_forged_keys(req.headers_mut());
                Branch::Passed(pass_through(U::clone(&self.passthrough), req, self.gate.upstream_timeout))
            }
            Ok(RouteMatch::Matched(route)) => {
                facts.route(&route.name, route.index);
                Branch::Protected(self.protected.clone(), route, req)
            }
        };
        Box::pin(async move {
            let answer = match branch {
                Branch::Answered(problem) => Err(problem),
                Branch::Passed(answer) => answer.await,
                // Made here, not above: a future moved out of an enum to be awaited takes its
                // room twice in this one.
                Branch::Protected(protected, route, req) => protect(protected, route, facts.clone(), req).await,
            };
            let mut response = answer.unwrap_or_else(Problem::into_response);
            response.extensions_mut().insert(facts);
            Ok(response)
        })
    }
}

/// What the route stage found, for the stages after it, in one request extension: each extension
/// is a box of its own, and past three the extensions' table grows, all per request.
#[derive(Clone)]
pub struct Matched {
    pub route: Arc<Route>,
    pub facts: Facts,
    /// The body's share of `server.max_buffered_bytes`, once read, held until the body has gone
    /// to the app (set by the body stage).
    pub reserved: Option<Arc<crate::budget::Reservation>>,
}

impl Matched {
    /// Keeps the body's reservation with the request until [`Matched::take_reserved`].
    pub fn keep_reserved(extensions: &mut http::Extensions, memory: crate::budget::Reservation) {
        if let Some(matched) = extensions.get_mut::<Matched>() {
            matched.reserved = Some(Arc::new(memory));
        }
    }

    pub fn take_reserved(extensions: &mut http::Extensions) -> Option<Arc<crate::budget::Reservation>> {
        extensions.get_mut::<Matched>().and_then(|m| m.reserved.take())
    }
}

/// Where a request goes.
enum Branch<P, B> {
    Answered(Problem),
    Passed(Answer),
    Protected(P, Arc<Route>, Request<B>),
}

type Answer = Pin<Box<dyn Future<Output = Result<Response<Body>, Problem>> + Send>>;

/// The framing checks, then the route. A path that cannot be normalized safely is 400, never a
/// pass-through.
fn route<B>(router: &crate::route::Router, req: &Request<B>) -> Result<RouteMatch, Problem> {
    check_framing(req)?;
    Ok(router.route(req.method(), req.uri().path())?)
}

/// What hyper accepts but a proxy must not pass on, for every request, routed or not: a request
/// with two Host headers, an HTTP/1.1 request without one (RFC 9112 3.2), a body chunked twice, or
/// a transfer coding other than chunked (idemgate would drop the coding and hand the app coded
/// bytes as content).
fn check_framing<B>(req: &Request<B>) -> Result<(), Problem> {
    // HTTP/1.0 may omit Host, but never carry two: the app and idemgate could each pick another.
    let hosts = req.headers().get_all(header::HOST).iter().count();
    if hosts > 1 || (req.version() == http::Version::HTTP_11 && hosts != 1) {
        return Err(Problem::BadRequest(format!(
            "a request carries one Host header (HTTP/1.0: at most one), not {hosts}"
        )));
    }
    let mut chunked = 0;
    for coding in
        req.headers().get_all(header::TRANSFER_ENCODING).iter().flat_map(|v| v.as_bytes().split(|b| *b == b','))
    {
        let coding = String::from_utf8_lossy(coding).trim().to_ascii_lowercase();
        match coding.as_str() {
            "chunked" => chunked += 1,
            "" => {}
            other => return Err(Problem::UnsupportedTransferCoding(other.to_string())),
        }
    }
    if chunked > 1 {
        return Err(Problem::BadRequest("the body is chunked more than once".into()));
    }
    Ok(())
}

/// A matched route: the protected stages, with the route and the facts in the extensions.
async fn protect<B, P>(
    protected: P,
    route: Arc<Route>,
    facts: Facts,
    mut req: Request<B>,
) -> Result<Response<Body>, Problem>
where
    P: Service<Request<B>, Response = Response<Body>, Error = Problem>,
{
    // A tunnel would carry requests idemgate never sees, past the route's protection.
    if req.headers().contains_key(header::UPGRADE) || req.method() == http::Method::CONNECT {
        return Err(Problem::UpgradeRefused);
    }
    req.extensions_mut().insert(Matched { route, facts, reserved: None });
    protected.oneshot(req).await
}

/// No route matched: the request goes to the app as it is, streamed both ways.
fn pass_through<U, UB>(passthrough: U, req: Request<Body>, timeout: std::time::Duration) -> Answer
where
    U: Service<Request<Body>, Response = Response<UB>> + Send + 'static,
    U::Error: Into<BoxError>,
    U::Future: Send,
    UB: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
    UB::Error: Into<BoxError>,
{
    // Boxed outside the async block: there the compiler proves `U::Future: Send` from the bound.
    let call: SendFuture<Result<Response<UB>, U::Error>> = Box::pin(passthrough.oneshot(req));
    Box::pin(async move {
        let response = call.await.map_err(|e| Problem::from_app(e.into(), timeout))?;
        Ok(crate::replay::stream(response))
    })
}
