//! Stage `verify`: a request that does not carry its provider's signature claims nothing, so a
//! forged delivery cannot occupy the key of a real one.

use crate::error::Problem;
use crate::layer::route::Matched;
use crate::route::Route;
use crate::store::now_ms;
use crate::verify::SignedRequest;
use bytes::Bytes;
use http::Request;
use std::task::{Context, Poll};
use tower::{Layer, Service};

#[derive(Clone, Copy, Default)]
pub struct VerifyLayer;

impl<S> Layer<S> for VerifyLayer {
    type Service = VerifyService<S>;
    fn layer(&self, inner: S) -> VerifyService<S> {
        VerifyService { inner }
    }
}

#[derive(Clone)]
pub struct VerifyService<S> {
    inner: S,
}

impl<S> Service<Request<Bytes>> for VerifyService<S>
where
    S: Service<Request<Bytes>, Error = Problem>,
{
    type Response = S::Response;
    type Error = Problem;
    /// The stage's own future when the check passes: no box of its own per request.
    type Future = futures_util::future::Either<S::Future, std::future::Ready<Result<S::Response, Problem>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Problem>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Bytes>) -> Self::Future {
        match verify(&req) {
            Ok(()) => futures_util::future::Either::Left(self.inner.call(req)),
            Err(problem) => futures_util::future::Either::Right(std::future::ready(Err(problem))),
        }
    }
}

fn verify(req: &Request<Bytes>) -> Result<(), Problem> {
    let Some(matched) = req.extensions().get::<Matched>() else { return Ok(()) };
    check(&matched.route, req.method(), req.uri(), req.headers(), req.body())
}

/// The route's signature check, if it has one.
pub(crate) fn check(
    route: &Route,
    method: &http::Method,
    uri: &http::Uri,
    headers: &http::HeaderMap,
    body: &Bytes,
) -> Result<(), Problem> {
    let Some(verifier) = &route.verifier else { return Ok(()) };
    let signed = SignedRequest { method, uri, headers, body, now_unix: now_ms() / 1000 };
    Ok(verifier.verify(&signed)?)
}
