//! idemgate: a sidecar reverse proxy that makes a webhook or event receiver idempotent.
//!
//! Every request that matches a route has its idempotency key extracted. A key seen for the first
//! time is claimed and forwarded to the local app; the app's response is stored durably before it
//! is returned. A duplicate of a completed key gets the stored response replayed and never reaches
//! the app; a duplicate of a key still in flight is refused (409) or waits for the first to end.
//! Requests that match no route pass through untouched.
//!
//! # The request path
//! [`stack`] composes it as one `tower::ServiceBuilder` chain; `docs/architecture.md` draws it.
//!
//! | stage | where | what |
//! |---|---|---|
//! | catch-panic, request id, sensitive headers | [`stack`] (tower-http) | a bug answers 500; `x-request-id`; credentials never logged |
//! | trace | [`layer::report`] | the request's span, its one log line, its metrics |
//! | route | [`layer::route`], [`route`] | framing checks, normalize the path, first matching route wins |
//! | body | [`layer::body`], [`budget`] | the route's `max_body`, the body deadline, the memory budget |
//! | shadow | [`idempotency::shadow`] | `mode: shadow` routes: everything forwarded as it arrived, the rest done on the side |
//! | verify | [`layer::verify`], [`verify`] | the provider's signature, before anything is claimed (401 if wrong) |
//! | identify, fingerprint | [`idempotency::stage`], [`key`], [`fingerprint`] | the key, its scope ([`scope`]), the payload digest |
//! | claim | [`idempotency::stage`], [`decide`], [`store`] | cache, then one atomic claim: replay, 409/wait, 422, or a [`idempotency::Lease`] |
//! | accept | `idempotency::accept` | async routes: stored durably and acknowledged; [`delivery`] delivers later |
//! | stale | `idempotency::stale` | routes with `stale`: one delivery per entity at a time, older versions not applied |
//! | forward | [`upstream`] | the app client: timeout, concurrency limit, load shedding |
//! | capture, commit | [`replay`], [`idempotency::Lease`] | the response, stored durably (or the key released) |
//! | respond | [`replay`], [`error`] | the app's response, a replay, or problem+json |
//!
//! [`IdempotencyLayer`] is the route-to-commit part as one tower layer: the sidecar puts it in
//! front of its app client, and a Rust service can put it in front of its own handlers.
//!
//! # Modules
//! [`preset`] holds what each provider's route needs; [`config`] parses and validates the YAML; [`server`] owns listeners, limits and the drain;
//! [`admin`] serves health, readiness, metrics and key administration; [`metrics`] and
//! [`telemetry`] say what happened. [`store`] holds the backends: SQLite for one pod,
//! PostgreSQL or Redis shared by several replicas, behind one trait and one behavioural suite.
//! [`gate`] is the state every request shares. [`version`] orders an entity's events for a route's
//! stale guard. On async routes ([`idempotency::stage`] acknowledges, stores the request), [`delivery`]
//! is the worker that delivers queued events to the app, with retries and dead letters.

pub mod admin;
pub mod budget;
pub mod clock;
pub mod config;
pub mod decide;
pub mod delivery;
pub mod error;
pub mod fingerprint;
pub mod gate;
pub mod idempotency;
pub mod json;
pub mod key;
pub mod layer;
pub mod metrics;
pub mod preset;
pub mod reload;
pub mod replay;
pub mod route;
pub mod scope;
pub mod server;
pub mod stack;
pub mod store;
pub mod telemetry;
pub mod upstream;
pub mod verify;
pub mod version;
pub mod waiters;

pub use idempotency::IdempotencyLayer;

/// A mutex's guard, even if a thread panicked while it held it: a panic is answered where it
/// happened (500), and the data behind every mutex here stays whole between statements, so
/// refusing it would fail every later request for nothing.
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
