//! Stage `stale` (routes with a `stale` guard): between claiming a key and forwarding it.
//!
//! Providers do not deliver in order, so a `customer.updated` from 10:00 can arrive after the
//! one from 10:05. Each delivery names an entity and a version; per route and entity the store
//! keeps the highest version completed. A delivery for an entity first waits until no other
//! delivery of that entity is at the app (a claim on the entity, as a key is claimed), so the
//! app never applies two versions of one thing at once and the version read below cannot be
//! overtaken before its delivery completes. A lower version than the stored one is stale.
//!
//! The entity's claim lives beside the keys, under a route name no config can spell
//! (`idemgate:entity:<route>`); the versions live in the store's own table, raised atomically.

use crate::decide::{Decision, decide};
use crate::error::Problem;
use crate::gate::Gate;
use crate::idempotency::Lease;
use crate::key::RequestView;
use crate::route::{Route, StaleGuard};
use crate::store::{Claim, RecordId, now_ms};
use crate::version::Version;
use crate::waiters::Backoff;
use bytes::Bytes;
use http::request::Parts;
use std::cmp::Ordering;
use tokio::time::Instant;

/// The header a stale delivery is forwarded with under `action: flag`; a client's own copy is
/// always removed on guarded routes, so a sender cannot mark a fresh event stale.
pub const FLAG_HEADER: &str = "x-idempotency-stale";

/// Entity values are keys of their own in the store; longer ones are not an entity.
const ENTITY_MAX: usize = 1024;

/// A delivery holding its entity: no other delivery of the entity reaches the app meanwhile.
pub(super) struct Entity {
    hold: Lease,
    /// Route, scope and entity value: where the entity's version is kept.
    pub(super) id: RecordId,
    pub(super) version: Version,
    /// The highest version completed before, when it is higher than this delivery's.
    pub(super) newer: Option<Version>,
}

/// The entity and version a delivery names, if the route has a guard and the request has both
/// values. A delivery without them is not stale: it is processed as on any route.
pub(super) fn identify(guard: &StaleGuard, parts: &Parts, body: &Bytes, key: &RecordId) -> Option<(RecordId, Version)> {
    let view = RequestView::new(&parts.headers, parts.uri.query(), body);
    let entity = guard.entity.extract(&view, ENTITY_MAX).ok().flatten()?;
    let version = guard.version.extract(&view, ENTITY_MAX).ok().flatten().and_then(|v| Version::parse(&v))?;
    let id = RecordId { route: key.route.clone(), scope: key.scope.clone(), key: entity };
    Some((id, version))
}

/// Waits (up to the route's `wait_timeout`) until this delivery holds its entity, then compares
/// its version with the highest completed one. A wait that runs out is 409, as on a key.
pub(super) async fn enter(gate: &Gate, route: &Route, id: RecordId, version: Version) -> Result<Entity, Problem> {
    let hold_id = RecordId {
        route: format!("idemgate:entity:{}", route.name).into(),
        scope: id.scope.clone(),
        key: id.key.clone(),
    };
    let deadline = Instant::now() + route.policy.wait_timeout.0;
    let mut backoff = Backoff::default();
    let hold = loop {
        // Subscribed before the claim, so a release between the claim and the wait is not lost.
        let waiting = gate.waiters.subscribe(&hold_id);
        let claimed_ms = now_ms();
        let claim = Claim {
            id: hold_id.clone(),
            token: gate.tokens.next(),
            fingerprint: None,
            now_ms: claimed_ms,
            lease_ms: route.policy.lease.0.as_millis() as i64,
        };
        match decide(gate.records.backend().claim(claim).await?, None) {
            Decision::Forward { token, took_over } => {
                let held = Some(gate.waiters.hold(&hold_id));
                break Lease::new(gate.records.clone(), hold_id, token, claimed_ms, took_over, held);
            }
            Decision::InFlight { expires_ms } => {
                if !gate.waiters.wait(waiting, deadline, expires_ms, &mut backoff).await {
                    return Err(Problem::in_flight(expires_ms, now_ms()));
                }
            }
            // Entity claims are only ever released, never completed.
            Decision::Replay(_) | Decision::Mismatch => {
                return Err(Problem::Internal(format!("entity {:?} has a completed claim", id.key)));
            }
        }
    };
    let stored = gate.records.version(&id).await?;
    let newer = stored.filter(|stored| stored.compare(&version) == Some(Ordering::Greater));
    Ok(Entity { hold, id, version, newer })
}

impl Entity {
    pub(super) fn stale(&self) -> bool {
        self.newer.is_some()
    }

    /// The delivery completed its key: the entity's version rises to this one (never falls:
    /// the store compares and sets in one step). A failure here is logged, not answered: the
    /// app's response is already stored, and the cost is one stale event not recognised.
    pub(super) async fn completed(&self, gate: &Gate, route: &Route) {
        let expires_ms = now_ms().saturating_add(route.policy.ttl.0.as_millis() as i64);
        if let Err(e) = gate.records.raise_version(&self.id, self.version.clone(), expires_ms).await {
            tracing::warn!(route = %route.name, entity = %self.id.key, error = %e, "the entity's version was not recorded");
        }
    }

    /// Lets the entity's next delivery through.
    pub(super) async fn leave(self) {
        self.hold.release().await;
    }
}

/// The answer to a stale delivery under `action: ack`: 200, stored as the key's response.
pub(super) fn ack_body(key: &str) -> Bytes {
    Bytes::from(serde_json::json!({ "key": key, "stale": true }).to_string())
}
