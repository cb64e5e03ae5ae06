//! Durable records of claims and completed responses.
//!
//! The pipeline talks to [`Records`]: the byte-bounded in-memory tier of completed records in
//! front of a [`Store`] backend. The cache is never the only copy of anything: a record enters it
//! only after the backend has committed it.

mod cache;
mod event_row;
mod postgres;
pub mod queue;
mod record;
mod redis;
mod sqlite;
mod sweep;
pub mod tls;

pub use cache::{CacheUsage, CompletedCache};
pub use postgres::{PostgresStore, PostgresTls, SslMode, UrlError};
pub use record::{Claim, ClaimOutcome, Completed, Record, RecordId, State, StoredResponse, detach};
pub use redis::RedisStore;
pub use sqlite::SqliteStore;
pub use sweep::spawn_sweeper;

use crate::metrics::Histogram;
use crate::version::Version;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// A claim not answered within this is probably queued behind a lock or a stalled disk: a lookup
/// then checks whether the key is completed, so that its replay need not wait for the writer.
const LOOKUP_AFTER: std::time::Duration = std::time::Duration::from_millis(200);

/// How long a claim whose lease ended unfinished is kept before the sweeper deletes it. A
/// redelivery within this time takes it over and is counted as a lease expiry
/// (`idemgate_lease_expiries_total`): the sign that the key may reach the app twice. Later than
/// that, it would look like a first delivery.
pub const ABANDONED_CLAIM_RETENTION_MS: i64 = 24 * 60 * 60 * 1000;

/// Opens the configured backend. A shared store that cannot be reached at start is an error:
/// a proxy that cannot claim would answer every protected request 503.
pub async fn open(cfg: &crate::config::StoreConfig) -> Result<Arc<dyn Store>, StoreError> {
    use crate::config::Backend;
    Ok(match cfg.backend() {
        Backend::Sqlite(sqlite) => Arc::new(SqliteStore::open(&sqlite.path)?),
        Backend::Postgres(pg) => Arc::new(PostgresStore::open(pg).await?),
        Backend::Redis(redis) => Arc::new(RedisStore::open(redis).await?),
    })
}

/// A backend failure. The request gets 503 and nothing is forwarded.
/// Every one is answered 503 with `Retry-After` ([`crate::error::Problem::Store`]); the kinds say
/// to an operator what to look at.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// Locked by another process, or the writer's queue full: waiting longer may succeed.
    #[error("store busy: {0}")]
    Busy(String),
    /// Cannot be reached or written (disk full, I/O error, network, a timeout).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Closed by a shutdown in progress.
    #[error("store is closed")]
    Closed,
    /// The data itself is damaged: a person must look.
    #[error("store corrupt: {0}")]
    Corrupt(String),
}

pub type StoreFuture<T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send>>;

/// A storage backend. Every operation is atomic on its own; `claim` in particular either takes the
/// key (inserting it, or taking over a record whose lease or ttl has ended) or reports what holds it.
pub trait Store: Send + Sync + 'static {
    fn claim(&self, claim: Claim) -> StoreFuture<ClaimOutcome>;
    /// Stores the response if `token` still owns the key; false if it no longer does. Shared, not
    /// owned: the caller keeps the same record for the cache and for another try.
    fn complete(&self, id: RecordId, token: u64, completed: Arc<Completed>) -> StoreFuture<bool>;
    /// Forgets an unfinished claim if `token` still owns it.
    fn release(&self, id: RecordId, token: u64) -> StoreFuture<()>;
    fn get(&self, id: RecordId) -> StoreFuture<Option<Record>>;
    fn delete(&self, id: RecordId) -> StoreFuture<bool>;
    /// Deletes up to `batch` records, entity versions and finished (completed or dead) events that
    /// expired before `now_ms`, in that order; returns how many. Queued and delivering events
    /// are never swept.
    fn sweep(&self, now_ms: i64, batch: usize) -> StoreFuture<usize>;
    /// The highest version recorded for this entity (`id.key` is the entity value), unless
    /// expired at now.
    fn version(&self, id: RecordId) -> StoreFuture<Option<Version>>;
    /// Records `version` for the entity unless a higher version of the same kind is stored and
    /// not expired; sets `expires_ms` whenever it writes. Atomic: under any concurrency, a lower
    /// version never overwrites a higher one. A version of another kind, or a stored one that has
    /// expired, is replaced. An equal version is written again (its expiry refreshed).
    fn raise_version(&self, id: RecordId, version: Version, expires_ms: i64) -> StoreFuture<()>;
    /// Proves the store can be written now (for readiness).
    fn check_writable(&self) -> StoreFuture<()>;
    /// Whether this backend keeps async routes' events (`check` refuses `mode: async` otherwise).
    fn supports_queue(&self) -> bool {
        false
    }
    /// Keeps a first-seen event, durably before it answers `Queued` (SQLite: after the WAL sync);
    /// a known key answers `Duplicate` with its state and changes nothing; past `queue_limit`
    /// events queued or delivering on the route, `Full`.
    fn enqueue(&self, _event: queue::NewEvent) -> StoreFuture<queue::Enqueued> {
        unsupported()
    }
    /// Leases up to `max` events of `route` that are due to `token` until `now_ms + lease_ms`,
    /// marking them delivering and counting the attempt; returned in arrival order. Due: queued
    /// with `next_attempt_ms <= now_ms`, or delivering with a lease that ended (an interrupted
    /// delivery). An event with an `order_key` is due only if no earlier event with the same key
    /// is queued or delivering. On PostgreSQL each event is leased to one replica at a time
    /// (`FOR UPDATE SKIP LOCKED`).
    fn take_due(
        &self,
        _route: &str,
        _now_ms: i64,
        _max: usize,
        _token: u64,
        _lease_ms: i64,
    ) -> StoreFuture<Vec<queue::QueuedEvent>> {
        unsupported()
    }
    /// Records how an attempt ended, if `token` still holds the event; false if it does not.
    fn finish_attempt(&self, _id: RecordId, _token: u64, _attempted: queue::Attempted) -> StoreFuture<bool> {
        unsupported()
    }
    /// The event of a key on an async route, in any state.
    fn event(&self, _id: RecordId) -> StoreFuture<Option<queue::QueuedEvent>> {
        unsupported()
    }
    /// Up to `limit` dead letters of `route`, oldest first.
    fn dead_letters(&self, _route: &str, _limit: usize) -> StoreFuture<Vec<queue::QueuedEvent>> {
        unsupported()
    }
    /// Queues a dead letter again: attempt count 0, `first_seen_ms` now (a fresh `max_age`),
    /// due now. False if the key is not a dead letter.
    fn retry_dead(&self, _id: RecordId, _now_ms: i64) -> StoreFuture<bool> {
        unsupported()
    }
    /// Forgets an event and its key, whatever its state; false if there was none.
    fn forget_event(&self, _id: RecordId) -> StoreFuture<bool> {
        unsupported()
    }
    /// Forgets an event and its key only if it is a dead letter, in one statement: a retry that
    /// queued it again a moment before is not undone. False if the key is not a dead letter.
    fn forget_dead(&self, _id: RecordId) -> StoreFuture<bool> {
        unsupported()
    }
    fn queue_stats(&self, _route: &str) -> StoreFuture<queue::QueueStats> {
        unsupported()
    }
    /// Finishes queued work and closes the backend.
    fn close(&self) -> StoreFuture<()>;
    /// The completed record of `id`, read without waiting for writes, where the backend can (SQLite:
    /// a read-only connection beside the writer thread); `None` where it cannot, or if there is
    /// none. [`Records::claim`] asks it when a claim is slow, so that a completed key still replays
    /// while the store cannot be written (another process's lock, a stalled disk).
    fn lookup(&self, _id: RecordId) -> StoreFuture<Option<Arc<Completed>>> {
        Box::pin(async { Ok(None) })
    }
    /// Whether [`Store::lookup`] can find anything: if not, a slow claim is simply awaited.
    fn can_lookup(&self) -> bool {
        false
    }
    /// How many records, and how many bytes on disk, where the backend can tell cheaply.
    fn stats(&self) -> StoreFuture<Option<StoreStats>> {
        Box::pin(async { Ok(None) })
    }
}

fn unsupported<T: Send + 'static>() -> StoreFuture<T> {
    Box::pin(async { Err(StoreError::Unavailable("this store does not keep async routes' events".into())) })
}

/// The store's size, for the `idemgate_store_*` gauges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreStats {
    pub records: u64,
    /// The database with its write-ahead log.
    pub bytes: u64,
    pub wal_bytes: u64,
}

/// The store as the pipeline sees it: cache first for completed keys, backend for the rest.
///
/// With SQLite, a completed record goes into memory when it is asked for again: when a claim
/// finds it in the store, or at its completion if duplicates are already waiting for it. Most
/// deliveries are never repeated; cached at completion, every one of them took its place in
/// memory and, once the cache was full, pushed out one that was (a first-seen key cost ~11% more
/// CPU beside a full cache of them). The first duplicate of a key reads the file instead. With
/// Postgres or Redis every completed record goes in at once: the cache is what still replays
/// while the shared store is unreachable.
///
/// Clones share one allocation: every first-seen request's lease holds a clone, and one reference
/// count is all it touches (a clone of the fields was nine counts, each shared by both worker
/// threads, moved between their caches twice per request).
#[derive(Clone)]
pub struct Records(Arc<Shared>);

struct Shared {
    backend: Arc<dyn Store>,
    cache: CompletedCache,
    metrics: Arc<crate::metrics::Metrics>,
    timings: OpTimings,
    /// Counts deletes. A claim or completion that read a record before a delete and would cache it
    /// after must not: the delete would be undone in memory. Deletes are rare (the admin API), so
    /// one counter for all keys costs only a cache miss now and then.
    deletes: AtomicU64,
}

/// Each operation's latency histogram, resolved once.
#[derive(Clone)]
struct OpTimings {
    claim: Histogram,
    complete: Histogram,
    release: Histogram,
    get: Histogram,
    delete: Histogram,
}

impl Records {
    pub fn new(backend: Arc<dyn Store>, cache: CompletedCache, metrics: Arc<crate::metrics::Metrics>) -> Records {
        let op = |name| metrics.store_op(name);
        let timings = OpTimings {
            claim: op("claim"),
            complete: op("complete"),
            release: op("release"),
            get: op("get"),
            delete: op("delete"),
        };
        Records(Arc::new(Shared { backend, cache, metrics, timings, deletes: AtomicU64::new(0) }))
    }

    pub fn backend(&self) -> &Arc<dyn Store> {
        &self.0.backend
    }

    /// The completed record of `id` if it is in memory (counted as a cache hit), else `None`
    /// (not counted: a claim follows and counts the miss).
    pub fn cached(&self, id: &RecordId, now_ms: i64) -> Option<Arc<Completed>> {
        let hit = self.0.cache.get(id, now_ms)?;
        self.0.metrics.cache_hits.inc();
        Some(hit)
    }

    /// A completed key in memory is answered without touching the backend.
    pub async fn claim(&self, claim: Claim) -> Result<ClaimOutcome, StoreError> {
        if let Some(hit) = self.cached(&claim.id, claim.now_ms) {
            return Ok(ClaimOutcome::Completed(hit));
        }
        self.claim_in_store(claim).await
    }

    /// A claim in the backend, for a key [`Records::cached`] just did not find in memory.
    pub async fn claim_in_store(&self, claim: Claim) -> Result<ClaimOutcome, StoreError> {
        self.0.metrics.cache_misses.inc();
        let id = claim.id.clone();
        let deletes = self.0.deletes.load(Ordering::Acquire);
        let now_ms = claim.now_ms;
        let claimed = timed(&self.0.timings.claim, self.0.backend.claim(claim));
        tokio::pin!(claimed);
        if !self.0.backend.can_lookup() {
            return Ok(self.cache_completed(&id, claimed.await?, deletes));
        }
        let outcome = tokio::select! {
            outcome = &mut claimed => outcome?,
            () = tokio::time::sleep(LOOKUP_AFTER) => match self.0.backend.lookup(id.clone()).await {
                // Safe to stop waiting: a claim of a completed key changes nothing, whenever the
                // writer gets to it.
                Ok(Some(done)) if done.expires_ms > now_ms => ClaimOutcome::Completed(done),
                _ => claimed.await?,
            },
        };
        Ok(self.cache_completed(&id, outcome, deletes))
    }

    /// A completed key found by a claim goes into memory (see [`Records::cache_unless_deleted`]).
    fn cache_completed(&self, id: &RecordId, outcome: ClaimOutcome, deletes: u64) -> ClaimOutcome {
        if let ClaimOutcome::Completed(done) = &outcome {
            self.cache_unless_deleted(id, done.clone(), deletes);
        }
        outcome
    }

    /// `done` is shared with the caller, who may need it again to retry. With SQLite it goes into
    /// memory only if `awaited` (duplicates are waiting for it; see [`Records`]).
    pub async fn complete(
        &self,
        id: &RecordId,
        token: u64,
        done: Arc<Completed>,
        awaited: bool,
    ) -> Result<bool, StoreError> {
        let deletes = self.0.deletes.load(Ordering::Acquire);
        // A store that cannot be read beside its writer is a network away and can be out: there
        // memory is what answers duplicates of keys completed here while it is, so every record
        // goes in at once.
        let kept = (awaited || !self.0.backend.can_lookup()).then(|| done.clone());
        let stored = timed(&self.0.timings.complete, self.0.backend.complete(id.clone(), token, done)).await?;
        if let Some(done) = kept.filter(|_| stored) {
            self.cache_unless_deleted(id, done, deletes);
        }
        Ok(stored)
    }

    /// Caches a record read from the backend when `deletes` was the count, unless a delete may
    /// have run since. Checked again after the insert: a delete whose cache removal ran between
    /// the first check and the insert has counted by then, and the entry is taken out again.
    fn cache_unless_deleted(&self, id: &RecordId, done: Arc<Completed>, deletes: u64) {
        if self.0.deletes.load(Ordering::Acquire) != deletes {
            return;
        }
        self.0.cache.insert(id, done);
        if self.0.deletes.load(Ordering::Acquire) != deletes {
            self.0.cache.remove(id);
        }
    }

    /// The completed record of `id`, if any, changing nothing: from memory, else read beside the
    /// writer where the backend can, else by a claim that is given straight back.
    pub async fn peek_completed(&self, id: &RecordId, now_ms: i64) -> Result<Option<Arc<Completed>>, StoreError> {
        if let Some(hit) = self.0.cache.get(id, now_ms) {
            return Ok(Some(hit));
        }
        if self.0.backend.can_lookup() {
            return self.0.backend.lookup(id.clone()).await;
        }
        let token = crate::gate::random_u64();
        let claim = Claim { id: id.clone(), token, fingerprint: None, now_ms, lease_ms: 10_000 };
        match self.0.backend.claim(claim).await? {
            ClaimOutcome::Completed(done) => Ok(Some(done)),
            ClaimOutcome::Claimed { token, .. } => self.0.backend.release(id.clone(), token).await.map(|()| None),
            ClaimOutcome::InFlight { .. } => Ok(None),
        }
    }

    pub async fn release(&self, id: &RecordId, token: u64) -> Result<(), StoreError> {
        timed(&self.0.timings.release, self.0.backend.release(id.clone(), token)).await
    }

    pub async fn get(&self, id: &RecordId) -> Result<Option<Record>, StoreError> {
        timed(&self.0.timings.get, self.0.backend.get(id.clone())).await
    }

    pub async fn delete(&self, id: &RecordId) -> Result<bool, StoreError> {
        let deleted = timed(&self.0.timings.delete, self.0.backend.delete(id.clone())).await;
        // Counted after the backend delete and before the cache removal: see cache_unless_deleted.
        self.0.deletes.fetch_add(1, Ordering::AcqRel);
        self.0.cache.remove(id);
        let deleted = deleted?;
        Ok(deleted)
    }

    /// An entity's version, for the stale guard; never cached: other replicas raise it.
    pub async fn version(&self, id: &RecordId) -> Result<Option<Version>, StoreError> {
        self.0.backend.version(id.clone()).await
    }

    pub async fn raise_version(&self, id: &RecordId, version: Version, expires_ms: i64) -> Result<(), StoreError> {
        self.0.backend.raise_version(id.clone(), version, expires_ms).await
    }
}

async fn timed<T>(histogram: &Histogram, op: StoreFuture<T>) -> Result<T, StoreError> {
    let start = Instant::now();
    let result = op.await;
    histogram.observe(start.elapsed().as_secs_f64());
    result
}

/// Milliseconds since the Unix epoch, by the process clock ([`crate::clock`]). Records outlive the
/// process, so their times are wall-clock; the process clock keeps small or short-lived steps of
/// the system clock out of the leases and ttls it measures.
pub fn now_ms() -> i64 {
    crate::clock::now_ms()
}
