//! The idempotency stage as a tower layer: [`IdempotencyLayer`].
//!
//! The sidecar puts it in front of its client to the app ([`crate::stack`]); a Rust service puts it
//! in front of its own handlers and gets the same semantics in-process, from the same route
//! config. Behind it, in the order a request meets them: `route` (first matching route; others
//! go straight to the service), `body` (the route's `max_body`, the memory budget), `verify`
//! (the provider's signature), and the [`stage`] (identify, claim, forward, capture, commit).
//!
//! ```
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use tower::{Layer, ServiceExt};
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let dir = tempfile::tempdir().unwrap();
//! let layer = idemgate::IdempotencyLayer::from_yaml(&format!(
//!     "store: {{ sqlite: {{ path: {} }} }}
//! routes:
//!   - name: orders
//!     match: {{ path: /orders, methods: [POST] }}
//!     key: {{ header: Idempotency-Key }}
//! ",
//!     dir.path().join("idemgate.db").display()
//! ))
//! .await
//! .unwrap();
//!
//! // The service counts its calls: a replayed duplicate never reaches it.
//! static CALLS: AtomicU64 = AtomicU64::new(0);
//! let orders = layer.layer(tower::service_fn(|_req: Request<idemgate::error::Body>| async {
//!     let n = CALLS.fetch_add(1, Ordering::SeqCst) + 1;
//!     Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(format!("order {n}")))))
//! }));
//! let order = || Request::post("/orders").header("host", "shop").header("idempotency-key", "k1").body(Full::new(Bytes::new())).unwrap();
//!
//! let first = orders.clone().oneshot(order()).await.unwrap();
//! assert_eq!(first.into_body().collect().await.unwrap().to_bytes(), "order 1");
//! let again = orders.clone().oneshot(order()).await.unwrap();
//! assert_eq!(again.headers()["idempotent-replayed"], "true");
//! assert_eq!(again.into_body().collect().await.unwrap().to_bytes(), "order 1");
//! assert_eq!(CALLS.load(Ordering::SeqCst), 1);
//! # });
//! ```
//!
//! With axum, `Router::new().route("/orders", post(handler)).layer(layer)`: see
//! `examples/embed_axum.rs`.

mod accept;
mod detach;
mod lease;
pub mod shadow;
pub mod stage;
mod stale;

pub use lease::{Claimed, Lease};

use crate::error::{Body, Problem};
use crate::gate::{Gate, GateOptions};
use crate::layer::body::{BodyLayer, BodyService};
use crate::layer::route::{RouteLayer, RouteService};
use crate::layer::verify::{VerifyLayer, VerifyService};
use crate::store::{CompletedCache, Records};
use http::Response;
use shadow::{ShadowLayer, ShadowService};
use stage::{Stage, StageLayer};
use std::sync::Arc;
use tower::util::MapResponse;
use tower::{Layer, ServiceBuilder};
use tower_http::limit::{RequestBodyLimit, RequestBodyLimitLayer, ResponseBody};

/// Makes the service it wraps idempotent for the requests its routes match: a first-seen key is
/// passed on and its response stored durably; a duplicate gets the stored response with
/// `Idempotent-Replayed: true` and never reaches the service. Requests on no route pass through
/// (or get 404 with `unmatched: reject`). Clones share one store.
#[derive(Clone)]
pub struct IdempotencyLayer {
    gate: Arc<Gate>,
}

/// Why an [`IdempotencyLayer`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot open the store: {0}")]
    Store(#[from] crate::store::StoreError),
}

impl IdempotencyLayer {
    /// From YAML with the sidecar's sections (`store`, `server`, `defaults`, `routes`,
    /// `unmatched`); `upstream` is not needed, the wrapped service is the app.
    pub async fn from_yaml(yaml: &str) -> Result<IdempotencyLayer, EmbedError> {
        let config = crate::config::parse_embedded(yaml)?;
        Self::from_config(&config).await
    }

    /// From a config built in code or loaded with [`crate::config::load`]. Opens its store and
    /// starts sweeping expired records from it.
    pub async fn from_config(config: &crate::config::Config) -> Result<IdempotencyLayer, EmbedError> {
        if let Some(route) = config
            .routes
            .iter()
            .find(|r| r.delivery.as_ref().or(config.defaults.delivery.as_ref()).is_some_and(|d| d.is_async()))
        {
            // Nothing would deliver what the layer acknowledged: the worker is the sidecar's.
            return Err(EmbedError::Config(crate::config::ConfigError(format!(
                "routes ({}).delivery.mode: async needs the idemgate sidecar; the embedded layer delivers synchronously",
                route.name
            ))));
        }
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let gate = build_gate(config, metrics).await?;
        crate::store::spawn_sweeper(gate.records.backend().clone(), SWEEP_EVERY, gate.metrics.clone());
        Ok(IdempotencyLayer { gate })
    }

    pub(crate) fn from_gate(gate: Arc<Gate>) -> IdempotencyLayer {
        IdempotencyLayer { gate }
    }

    /// The shared state behind the layer: routes, records, metrics.
    pub fn gate(&self) -> &Arc<Gate> {
        &self.gate
    }
}

const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// Opens the configured store and builds the state every request shares.
pub(crate) async fn build_gate(
    config: &crate::config::Config,
    metrics: Arc<crate::metrics::Metrics>,
) -> Result<Arc<Gate>, EmbedError> {
    let router = crate::route::Router::from_config(config).map_err(crate::config::ConfigError)?;
    let backend = crate::store::open(&config.store).await?;
    let cache = CompletedCache::new(config.store.cache.max_bytes.0);
    metrics.watch_cache(cache.clone());
    let records = Records::new(backend, cache, metrics.clone());
    let legacy = crate::scope::LegacyScope::load(&records, crate::store::now_ms()).await?;
    let options = GateOptions {
        server: &config.server,
        key_logging: config.log.keys,
        upstream_timeout: config.upstream.timeout.0,
        legacy,
    };
    Ok(Arc::new(Gate::new(router, records, metrics, options)))
}

/// The stages of a matched route, around `app`.
pub type Protected<S> =
    ShadowService<MapResponse<RequestBodyLimit<BodyService<VerifyService<Stage<S>>>>, LimitAnswer>, S>;
type LimitAnswer = fn(Response<ResponseBody<Body>>) -> Response<Body>;

impl<S: Clone> Layer<S> for IdempotencyLayer {
    type Service = RouteService<Protected<S>, S>;

    fn layer(&self, app: S) -> Self::Service {
        let gate = &self.gate;
        let stage = StageLayer::new(gate.clone());
        let protected = ServiceBuilder::new()
            // Shadow routes: everything forwarded as it arrived, the rest done on the side.
            .layer(ShadowLayer::new(stage.layer(app.clone())))
            // tower-http answers a body over the cap in plain text: as problem+json here.
            .map_response(limit_answer as LimitAnswer)
            // No one body may take the whole memory budget (every route's max_body is below it).
            .layer(RequestBodyLimitLayer::new(gate.max_body_cap))
            .layer(BodyLayer::new(gate.clone()))
            .layer(VerifyLayer)
            .layer(stage)
            .service(app.clone());
        RouteLayer::new(gate.clone(), app).layer(protected)
    }
}

fn limit_answer(response: Response<ResponseBody<Body>>) -> Response<Body> {
    let staged = response.extensions().get::<crate::layer::body::Staged>().is_some();
    if response.status() == http::StatusCode::PAYLOAD_TOO_LARGE && !staged {
        return Problem::BodyOverCap.into_response();
    }
    response.map(crate::replay::boxed)
}
