//! idemgate: a sidecar reverse proxy that makes a webhook or event receiver idempotent.
//!
//! Every request that matches a route has its idempotency key extracted. A key seen for the first
//! time is claimed and forwarded to the local app; the app's response is stored durably before it
//! is returned. A duplicate of a completed key gets the stored response replayed and never reaches
//! the app; a duplicate of a key still in flight is refused (409) or waits for the first to end.
//! Requests that match no route pass through untouched.
//!
//! # Stages, in the order a request meets them
//! | stage | where | what |
//! |---|---|---|
//! | route | [`route`] | normalize the path, first matching route wins |
//! | verify | [`verify`] | the provider's signature, before anything is claimed (401 if wrong) |
//! | identify | [`key`] | the idempotency key and scope from header, JSON, query or form |
//! | fingerprint | [`fingerprint`] | a digest of the payload, to refuse reuse with another payload |
//! | claim | [`pipeline`], [`decide`], [`store`] | cache, then one atomic store claim; replay, 409/wait, 422 or forward |
//! | forward | [`upstream`] | the pooled client to the app, with the key in `forward_key_header` |
//! | capture | [`replay`] | the response, its body kept up to `max_response_body` |
//! | commit | [`pipeline`], [`store`] | complete (synced to disk) or release |
//! | respond | [`replay`], [`error`] | the app's response, a replay, or problem+json |
//!
//! # Modules
//! [`preset`] holds what each provider's route needs; [`config`] parses and validates the YAML; [`server`] owns listeners, limits and the drain;
//! [`admin`] serves health, readiness, metrics and key administration; [`metrics`] and
//! [`telemetry`] say what happened. [`store`] holds the backends: SQLite for one pod,
//! PostgreSQL or Redis shared by several replicas, behind one trait and one behavioural suite.

pub mod admin;
pub mod budget;
pub mod clock;
pub mod config;
pub mod decide;
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
pub mod waiters;

pub use idempotency::IdempotencyLayer;
