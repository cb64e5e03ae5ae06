//! The reference model: the store contract as a plain map from record to what it holds, with time
//! passed in. It is written from CONTRACT.md and the `Store` trait's docs, not from any backend,
//! so that every backend is checked against one independent statement of the rules.

use idemgate::fingerprint::Fingerprint;
use idemgate::store::{ABANDONED_CLAIM_RETENTION_MS, ClaimOutcome, State, StoredResponse};
use std::collections::BTreeMap;

/// Which of the few records a case plays with (an index into the case's record ids).
pub type Slot = usize;

/// What the store holds for one record.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    /// The claim that owns the record: the fence of `complete` and `release`.
    token: u64,
    /// The payload digest of the claim that created the record; a completion keeps it.
    fingerprint: Option<Fingerprint>,
    /// When the record was claimed.
    created_ms: i64,
    /// The lease's end while in flight, the ttl's end once completed.
    expires_ms: i64,
    /// None while in flight.
    response: Option<StoredResponse>,
}

/// What a claim finds, in a form that compares field by field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    Claimed { token: u64, took_over: bool },
    InFlight { fingerprint: Option<Fingerprint>, expires_ms: i64 },
    Completed { fingerprint: Option<Fingerprint>, created_ms: i64, expires_ms: i64, response: StoredResponse },
}

impl From<&ClaimOutcome> for Found {
    fn from(outcome: &ClaimOutcome) -> Found {
        match outcome {
            ClaimOutcome::Claimed { token, took_over } => Found::Claimed { token: *token, took_over: *took_over },
            ClaimOutcome::InFlight { fingerprint, expires_ms } => {
                Found::InFlight { fingerprint: *fingerprint, expires_ms: *expires_ms }
            }
            ClaimOutcome::Completed(done) => Found::Completed {
                fingerprint: done.fingerprint,
                created_ms: done.created_ms,
                expires_ms: done.expires_ms,
                response: done.response.clone(),
            },
        }
    }
}

/// What the semantics table says a request does with what its claim found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Forward { token: u64, took_over: bool },
    Replay,
    Mismatch,
    InFlight { expires_ms: i64 },
}

/// A record as `get` shows it: state, status, created, expires.
pub type Shown = (State, Option<u16>, i64, i64);

/// The semantics table: another payload on a completed or in-flight key is a mismatch (422).
/// Payloads can only be told apart when both the record and the request carry a digest.
pub fn verdict(found: &Found, request: Option<Fingerprint>) -> Verdict {
    let differs = |held: &Option<Fingerprint>| held.is_some() && request.is_some() && *held != request;
    match found {
        Found::Claimed { token, took_over } => Verdict::Forward { token: *token, took_over: *took_over },
        Found::Completed { fingerprint, .. } if differs(fingerprint) => Verdict::Mismatch,
        Found::Completed { .. } => Verdict::Replay,
        Found::InFlight { fingerprint, .. } if differs(fingerprint) => Verdict::Mismatch,
        Found::InFlight { expires_ms, .. } => Verdict::InFlight { expires_ms: *expires_ms },
    }
}

#[derive(Debug, Default)]
pub struct Model {
    records: BTreeMap<Slot, Entry>,
}

impl Model {
    /// A record whose lease or ttl has not ended holds the key; any other is replaced by the new
    /// claim, which says `took_over` only if it replaces an unfinished claim (the app may have
    /// seen the key already), not a completed record whose ttl ended.
    pub fn claim(&mut self, slot: Slot, token: u64, fingerprint: Option<Fingerprint>, now: i64, lease: i64) -> Found {
        let previous = self.records.get(&slot);
        if let Some(held) = previous.filter(|e| e.expires_ms > now) {
            return match &held.response {
                None => Found::InFlight { fingerprint: held.fingerprint, expires_ms: held.expires_ms },
                Some(response) => Found::Completed {
                    fingerprint: held.fingerprint,
                    created_ms: held.created_ms,
                    expires_ms: held.expires_ms,
                    response: response.clone(),
                },
            };
        }
        let took_over = previous.is_some_and(|e| e.response.is_none());
        let entry = Entry { token, fingerprint, created_ms: now, expires_ms: now + lease, response: None };
        self.records.insert(slot, entry);
        Found::Claimed { token, took_over }
    }

    /// Only the owning claim completes, and only while in flight, even after its lease ended if
    /// no other claim took the key meanwhile. The record keeps its claim's fingerprint and time.
    pub fn complete(&mut self, slot: Slot, token: u64, response: StoredResponse, expires_ms: i64) -> bool {
        match self.records.get_mut(&slot) {
            Some(e) if e.token == token && e.response.is_none() => {
                e.response = Some(response);
                e.expires_ms = expires_ms;
                true
            }
            _ => false,
        }
    }

    /// Only the owning claim's unfinished record is forgotten.
    pub fn release(&mut self, slot: Slot, token: u64) {
        if self.records.get(&slot).is_some_and(|e| e.token == token && e.response.is_none()) {
            self.records.remove(&slot);
        }
    }

    /// Whatever is stored, ended or not, until it is swept or deleted.
    pub fn get(&self, slot: Slot) -> Option<Shown> {
        self.records.get(&slot).map(|e| match &e.response {
            None => (State::InFlight, None, e.created_ms, e.expires_ms),
            Some(r) => (State::Completed, Some(r.status), e.created_ms, e.expires_ms),
        })
    }

    pub fn delete(&mut self, slot: Slot) -> bool {
        self.records.remove(&slot).is_some()
    }

    /// The records a sweep at `now` may delete: completed ones past their ttl, and abandoned
    /// claims only once they are kept [`ABANDONED_CLAIM_RETENTION_MS`] past their lease.
    pub fn sweepable(&self, now: i64) -> Vec<Slot> {
        let abandoned_before = now - ABANDONED_CLAIM_RETENTION_MS;
        let ended = |e: &Entry| e.expires_ms <= now && (e.response.is_some() || e.expires_ms <= abandoned_before);
        self.records.iter().filter(|(_, e)| ended(e)).map(|(slot, _)| *slot).collect()
    }

    /// The token that owns the record, if any: the one a well-behaved caller completes with.
    pub fn owner(&self, slot: Slot) -> Option<u64> {
        self.records.get(&slot).map(|e| e.token)
    }
}
