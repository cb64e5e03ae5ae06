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
    /// What the protected stages' `poll_ready` failed with, for the next matched request.
    unready: Option<Problem>,
}

impl<P: Clone, U> Clone for RouteService<P, U> {
    fn clone(&self) -> Self {
        RouteService {
            gate: self.gate.clone(),
            protected: self.protected.clone(),
            passthrough: self.passthrough.clone(),
            unready: None,
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
        RouteService { gate: self.gate.clone(), protected, passthrough: self.passthrough.clone(), unready: None }
    }
}

impl<B, P, U, UB> Service<Request<B>> for RouteService<P, U>
where
    B: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    P: Service<Request<B>, Response = Response<Body>, Error = Problem> + Clone + Send + 'static,
    // The stages box their own future (see `BodyService`), so it is `Unpin`.
    P::Future: Send + Unpin + 'static,
    U: Service<Request<Body>, Response = Response<UB>> + Clone + Send + 'static,
    U::Error: Into<BoxError>,
    U::Future: Send,
    UB: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
    UB::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = RouteFuture<P::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The protected stages are called in place (see `call`), so they must be ready; a
        // pass-through takes a clone of its service and waits for that itself.
        self.protected.poll_ready(cx).map(|ready| {
            self.unready = ready.err();
            Ok(())
        })
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let routes = self.gate.routes();
        let facts = Facts::new(routes.clone(), &req);
        let routed = match route(&routes.router, &req) {
            Err(problem) => Routed::Answered(Some(problem)),
            Ok(RouteMatch::Unmatched) if routes.router.rejects_unmatched() => Routed::Answered(Some(Problem::NoRoute)),
            Ok(RouteMatch::Unmatched) => {
                let mut req = req.map(crate::replay::boxed);
                routes.strip_forged_keys(req.headers_mut());
                Routed::Passed(pass_through(U::clone(&self.passthrough), req, self.gate.upstream_timeout))
            }
            Ok(RouteMatch::Matched(route)) => {
                facts.route(&route.name, route.index);
                match (admit(req, route, facts.clone()), self.unready.take()) {
                    (Err(problem), _) | (Ok(_), Some(problem)) => Routed::Answered(Some(problem)),
                    // Called in place: no clone of the stages (each holds shared handles, whose
                    // counts every request would raise and lower from every worker) and no
                    // `oneshot` state around them.
                    (Ok(req), None) => Routed::Protected(self.protected.call(req)),
                }
            }
        };
        RouteFuture { routed, facts: Some(facts) }
    }
}

/// A routed request's answer: every [`Problem`] becomes its answer here, and the facts go into
/// the response's extensions for the report. Named, not an `async` block: that was a box per
/// request.
pub struct RouteFuture<F> {
    routed: Routed<F>,
    facts: Option<Facts>,
}

/// Where a request went: `F` is the protected stages' future.
enum Routed<F> {
    Answered(Option<Problem>),
    Passed(Answer),
    Protected(F),
}

impl<F> Future for RouteFuture<F>
where
    F: Future<Output = Result<Response<Body>, Problem>> + Unpin,
{
    type Output = Result<Response<Body>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let answer = match &mut this.routed {
            Routed::Answered(problem) => {
                Err(problem.take().unwrap_or_else(|| Problem::Internal("a routed request was polled again".into())))
            }
            Routed::Passed(answer) => std::task::ready!(answer.as_mut().poll(cx)),
            Routed::Protected(answer) => std::task::ready!(Pin::new(answer).poll(cx)),
        };
        let mut response = answer.unwrap_or_else(Problem::into_response);
        if let Some(facts) = this.facts.take() {
            response.extensions_mut().insert(facts);
        }
        Poll::Ready(Ok(response))
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

/// A matched route's request, made ready for the protected stages: the route and the facts in
/// its extensions.
fn admit<B>(mut req: Request<B>, route: Arc<Route>, facts: Facts) -> Result<Request<B>, Problem> {
    // A tunnel would carry requests idemgate never sees, past the route's protection.
    if req.headers().contains_key(header::UPGRADE) || req.method() == http::Method::CONNECT {
        return Err(Problem::UpgradeRefused);
    }
    req.extensions_mut().insert(Matched { route, facts, reserved: None });
    Ok(req)
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
