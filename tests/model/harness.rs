//! Runs a case against a real store and the model side by side, and says where they first part.

use super::backends::{CaseId, Place};
use super::coverage::{self as seen, Coverage};
use super::ops::{By, Op, Payload, SLOTS};
use super::spec::{Found, Model, Shown, Slot, Verdict, verdict};
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use idemgate::decide::{Decision, decide};
use idemgate::fingerprint::Fingerprint;
use idemgate::metrics::Metrics;
use idemgate::store::{
    Claim, ClaimOutcome, Completed, CompletedCache, RecordId, Records, State, Store, StoredResponse,
};
use std::sync::Arc;

/// A token no claim of a case carries: claims count up from 1.
const STRANGER: u64 = 0xdead_beef_0000;
const CACHE_BYTES: u64 = 64 << 20;

/// The store as the test talks to it: the backend itself, or through the pipeline's cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Through {
    Store,
    Records,
}

enum Subject {
    Store(Arc<dyn Store>),
    Records(Records, Arc<Metrics>),
}

impl Subject {
    async fn open(place: &Place, case: CaseId, through: Through) -> Subject {
        let store = place.open(case).await.expect("open the store");
        match through {
            Through::Store => Subject::Store(store),
            Through::Records => {
                let metrics = Arc::new(Metrics::new());
                let cache = CompletedCache::new(CACHE_BYTES);
                Subject::Records(Records::new(store, cache, metrics.clone()), metrics)
            }
        }
    }

    fn store(&self) -> &Arc<dyn Store> {
        match self {
            Subject::Store(store) => store,
            Subject::Records(records, _) => records.backend(),
        }
    }

    fn cache_hits(&self) -> u64 {
        match self {
            Subject::Store(_) => 0,
            Subject::Records(_, metrics) => metrics.cache_hits.get(),
        }
    }

    async fn claim(&self, claim: Claim) -> ClaimOutcome {
        match self {
            Subject::Store(store) => store.claim(claim).await,
            Subject::Records(records, _) => records.claim(claim).await,
        }
        .expect("claim")
    }

    async fn complete(&self, id: &RecordId, token: u64, done: Completed) -> bool {
        let done = Arc::new(done);
        match self {
            Subject::Store(store) => store.complete(id.clone(), token, done).await,
            // Both ways a completion meets the cache: kept at once (a duplicate waits for it), or
            // only once a claim finds it in the store.
            Subject::Records(records, _) => records.complete(id, token, done, token.is_multiple_of(2)).await,
        }
        .expect("complete")
    }

    async fn release(&self, id: &RecordId, token: u64) {
        match self {
            Subject::Store(store) => store.release(id.clone(), token).await,
            Subject::Records(records, _) => records.release(id, token).await,
        }
        .expect("release")
    }

    async fn get(&self, id: &RecordId) -> Option<Shown> {
        let record = match self {
            Subject::Store(store) => store.get(id.clone()).await,
            Subject::Records(records, _) => records.get(id).await,
        };
        record.expect("get").map(|r| (r.state, r.status, r.created_ms, r.expires_ms))
    }

    async fn delete(&self, id: &RecordId) -> bool {
        match self {
            Subject::Store(store) => store.delete(id.clone()).await,
            Subject::Records(records, _) => records.delete(id).await,
        }
        .expect("delete")
    }
}

/// A claim issued in this case: what a completion by its token carries.
struct Issued {
    token: u64,
    /// The record its claim won, if it won one.
    slot: Option<Slot>,
    fingerprint: Option<Fingerprint>,
    now: i64,
}

/// One case in progress.
struct Case<'p> {
    model: Model,
    /// The case's clock: starts at a round number ahead of the real clock, so that times in a
    /// failure read as offsets, and cached records stay in memory (their lifetime there is
    /// measured by the real clock).
    now: i64,
    start: i64,
    issued: Vec<Issued>,
    ids: Vec<RecordId>,
    place: &'p Place,
    case_id: CaseId,
    subject: Subject,
    through: Through,
    /// What the case reached; claims answered from memory are added from the metrics.
    seen: Coverage,
}

/// Runs `ops`; Ok with what the case reached, or the first disagreement.
pub async fn run_case(
    place: &Place,
    case_id: CaseId,
    through: Through,
    ops: &[Op],
    epilogue: &[Op],
) -> Result<Coverage, String> {
    let subject = Subject::open(place, case_id, through).await;
    let start = (idemgate::store::now_ms() / 1_000_000 + 1) * 1_000_000;
    let ids = (0..SLOTS).map(record_id).collect();
    let mut case = Case {
        model: Model::default(),
        now: start,
        start,
        issued: vec![],
        ids,
        place,
        case_id,
        subject,
        through,
        seen: Coverage::default(),
    };
    let result = case.run(ops, epilogue).await;
    let seen = case.finish().await;
    result.map(|()| seen)
}

/// Two routes, a scope, two keys: records that must never see each other's operations.
fn record_id(slot: Slot) -> RecordId {
    let (route, scope, key) = [("r1", "", "k1"), ("r1", "", "k2"), ("r2", "", "k1"), ("r1", "5c09e", "k1")][slot];
    RecordId { route: route.into(), scope: scope.into(), key: key.into() }
}

fn response(status: u16, body_len: usize) -> StoredResponse {
    StoredResponse {
        status,
        headers: vec![(HeaderName::from_static("x-model"), HeaderValue::from(body_len))],
        body: Bytes::from(vec![b'x'; body_len]),
        body_omitted: status == 201 && body_len == 0,
    }
}

fn agree<T: PartialEq + std::fmt::Debug>(what: &str, store: T, model: T) -> Result<(), String> {
    if store == model { Ok(()) } else { Err(format!("{what}: the store says {store:?}, the model {model:?}")) }
}

/// The decision the pipeline takes on what the store found, in the model's terms.
fn pipeline_verdict(found: ClaimOutcome, request: Option<Fingerprint>) -> Verdict {
    match decide(found, request) {
        Decision::Forward { token, took_over } => Verdict::Forward { token, took_over },
        Decision::Replay(_) => Verdict::Replay,
        Decision::Mismatch => Verdict::Mismatch,
        Decision::InFlight { expires_ms } => Verdict::InFlight { expires_ms },
    }
}

impl Case<'_> {
    /// The case's operations, every record, the epilogue, every record again.
    async fn run(&mut self, ops: &[Op], epilogue: &[Op]) -> Result<(), String> {
        for (i, op) in ops.iter().enumerate() {
            self.apply(op)
                .await
                .map_err(|why| format!("op {i} ({op:?}), {} ms into the case: {why}", self.elapsed()))?;
        }
        self.check_all().await.map_err(|why| format!("after the last op: {why}"))?;
        for op in epilogue {
            self.apply(op).await.map_err(|why| format!("epilogue ({op:?}): {why}"))?;
        }
        self.check_all().await.map_err(|why| format!("after the epilogue: {why}"))
    }

    fn elapsed(&self) -> i64 {
        self.now - self.start
    }

    async fn apply(&mut self, op: &Op) -> Result<(), String> {
        match *op {
            Op::Claim { slot, payload, lease_ms, skew_ms } => self.claim(slot, payload, lease_ms, skew_ms).await,
            Op::Complete { slot, ref by, status, body_len, ttl_ms } => {
                let token = self.token(slot, by);
                let (fingerprint, created_ms) = self.claimed_with(token);
                let done = Completed {
                    fingerprint,
                    response: response(status, body_len),
                    created_ms,
                    expires_ms: self.now + ttl_ms,
                };
                let stored = self.subject.complete(&self.ids[slot], token, done.clone()).await;
                let expected = self.model.complete(slot, token, done.response, done.expires_ms);
                self.seen.note(match expected {
                    true => seen::COMPLETED,
                    false if self.owned(slot, token) => seen::FENCED,
                    false => seen::REFUSED,
                });
                agree("complete", stored, expected)
            }
            Op::Release { slot, ref by } => {
                let token = self.token(slot, by);
                self.subject.release(&self.ids[slot], token).await;
                let before = self.model.get(slot);
                self.model.release(slot, token);
                if before != self.model.get(slot) {
                    self.seen.note(seen::RELEASED);
                }
                Ok(())
            }
            Op::Get { slot } => agree("get", self.subject.get(&self.ids[slot]).await, self.model.get(slot)),
            Op::Delete { slot } => {
                let expected = self.model.delete(slot);
                if expected {
                    self.seen.note(seen::DELETED);
                }
                agree("delete", self.subject.delete(&self.ids[slot]).await, expected)
            }
            Op::Sweep { batch, skew_ms } => self.sweep(batch, self.now + skew_ms).await,
            Op::Advance { ms } => {
                self.now += ms;
                Ok(())
            }
            Op::Reopen => {
                self.seen.note(seen::REOPENED);
                self.reopen().await;
                Ok(())
            }
        }
    }

    async fn claim(&mut self, slot: Slot, payload: Payload, lease_ms: i64, skew_ms: i64) -> Result<(), String> {
        let token = self.issued.len() as u64 + 1;
        let (fingerprint, now) = (payload.fingerprint(), self.now + skew_ms);
        let claim = Claim { id: self.ids[slot].clone(), token, fingerprint, now_ms: now, lease_ms };
        let found = self.subject.claim(claim).await;
        let before = self.model.get(slot);
        let expected = self.model.claim(slot, token, fingerprint, now, lease_ms);
        let won = matches!(expected, Found::Claimed { .. });
        self.issued.push(Issued { token, slot: won.then_some(slot), fingerprint, now });
        let expected_verdict = verdict(&expected, fingerprint);
        self.seen.note(match (&expected_verdict, before) {
            (Verdict::Forward { took_over: true, .. }, _) => seen::TOOK_OVER,
            (Verdict::Forward { .. }, Some((State::Completed, ..))) => seen::CLAIMED_AFTER_TTL,
            (Verdict::Forward { .. }, _) => seen::CLAIMED_NEW,
            (Verdict::Replay, _) => seen::REPLAYED,
            (Verdict::Mismatch, _) => seen::MISMATCH,
            (Verdict::InFlight { .. }, _) => seen::IN_FLIGHT,
        });
        agree("claim", Found::from(&found), expected)?;
        agree("decision", pipeline_verdict(found, fingerprint), expected_verdict)
    }

    /// The token a completion or release is sent with.
    fn token(&self, slot: Slot, by: &By) -> u64 {
        match by {
            By::Owner => self.model.owner(slot).unwrap_or(STRANGER),
            By::Issued(_) if self.issued.is_empty() => STRANGER,
            By::Issued(back) => self.issued[self.issued.len() - 1 - back % self.issued.len()].token,
            By::Stranger => STRANGER,
        }
    }

    /// Whether `token`'s claim once won `slot`.
    fn owned(&self, slot: Slot, token: u64) -> bool {
        self.issued.iter().any(|c| c.token == token && c.slot == Some(slot))
    }

    /// What the pipeline puts into a completion besides the response: its claim's fingerprint
    /// and time (a stranger's completion is refused whatever it carries).
    fn claimed_with(&self, token: u64) -> (Option<Fingerprint>, i64) {
        match self.issued.iter().find(|c| c.token == token) {
            Some(c) => (c.fingerprint, c.now),
            None => (None, self.now),
        }
    }

    /// A sweep deletes at most `batch` of the records the model calls sweepable, and nothing
    /// else; which ones, when there are more, is the backend's choice: the model learns it.
    async fn sweep(&mut self, batch: usize, now: i64) -> Result<(), String> {
        let sweepable = self.model.sweepable(now);
        let swept = self.subject.store().sweep(now, batch).await.expect("sweep");
        agree("sweep count", swept, sweepable.len().min(batch))?;
        if sweepable.len() > batch {
            self.seen.note(seen::SWEPT_PART);
        }
        let mut gone = 0;
        for slot in sweepable {
            if swept == batch && self.subject.get(&self.ids[slot]).await.is_some() {
                continue;
            }
            self.seen.note(match self.model.get(slot) {
                Some((State::InFlight, ..)) => seen::SWEPT_ABANDONED,
                _ => seen::SWEPT,
            });
            self.model.delete(slot);
            gone += 1;
        }
        agree("records the sweep deleted", gone, swept)
    }

    /// The process is killed and started again: the old store is dropped, not closed (which also
    /// keeps SQLite cases fast: its close waits for the paced checkpointer), and what it had
    /// acknowledged must all be there.
    async fn reopen(&mut self) {
        self.seen.add(seen::CACHE_HITS, self.subject.cache_hits());
        self.subject = Subject::open(self.place, self.case_id, self.through).await;
    }

    /// Every record, as stored, is what the model holds.
    async fn check_all(&self) -> Result<(), String> {
        for (slot, id) in self.ids.iter().enumerate() {
            agree(&format!("get {slot}"), self.subject.get(id).await, self.model.get(slot))?;
        }
        Ok(())
    }

    /// Leaves nothing behind on a shared server, nor in the test's PostgreSQL schema.
    async fn finish(mut self) -> Coverage {
        for id in &self.ids {
            let _ = self.subject.store().delete(id.clone()).await;
        }
        self.seen.add(seen::CACHE_HITS, self.subject.cache_hits());
        self.seen
    }
}
