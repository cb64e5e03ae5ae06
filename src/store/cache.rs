//! The in-memory tier: completed records only, bounded by bytes, each gone when its ttl ends.
//!
//! In-flight claims are never cached: their truth changes underneath (release, lease expiry),
//! and only the backend can arbitrate them.

use super::record::{Completed, RecordId, StoredResponse};
use moka::sync::Cache;
use std::cell::RefCell;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone)]
pub struct CompletedCache {
    /// foldhash: keys come from requests, so the hasher is seeded per process; SipHash, here
    /// and in metric label lookups, was about 5% of a first-seen request's CPU under perf.
    inner: Cache<String, Arc<Completed>, foldhash::fast::RandomState>,
}

/// Each entry lives until its record's own expiry, measured when it is inserted.
struct UntilRecordExpiry;

impl moka::Expiry<String, Arc<Completed>> for UntilRecordExpiry {
    fn expire_after_create(&self, _key: &String, value: &Arc<Completed>, _created_at: Instant) -> Option<Duration> {
        let left = value.expires_ms.saturating_sub(super::now_ms()).max(0);
        Some(Duration::from_millis(left as u64))
    }
}

impl CompletedCache {
    /// No eviction listener: with one, moka takes a lock per key on every insert and eviction
    /// (a concurrent map of its own, churned by every first-seen key), which cost first-seen keys
    /// about a fifth of their CPU under load. [`CompletedCache::usage`] says how full it is instead.
    pub fn new(max_bytes: u64) -> CompletedCache {
        let inner = Cache::builder()
            .max_capacity(max_bytes)
            // Sized for the entries the byte bound holds (at least PER_ENTRY bytes each), up to
            // a limit: growing the table while it fills cost first-seen keys a rehash now and
            // then (a fifth of moka's insert under load).
            .initial_capacity(initial_entries(max_bytes))
            .weigher(|k: &String, v: &Arc<Completed>| (k.len() + v.response.weight()).try_into().unwrap_or(u32::MAX))
            .expire_after(UntilRecordExpiry)
            .build_with_hasher(foldhash::fast::RandomState::default());
        CompletedCache { inner }
    }

    /// A hit only while the record has not expired, whatever moka's own clock says.
    pub fn get(&self, id: &RecordId, now_ms: i64) -> Option<Arc<Completed>> {
        with_cache_key(id, |key| self.inner.get(key)).filter(|c| c.expires_ms > now_ms)
    }

    pub fn insert(&self, id: &RecordId, completed: Arc<Completed>) {
        self.inner.insert(id.cache_key(), completed);
    }

    pub fn remove(&self, id: &RecordId) {
        with_cache_key(id, |key| self.inner.invalidate(key));
    }

    /// Entries held and their bytes (as weighed against `max_bytes`), once the cache's pending
    /// bookkeeping has run: for the metrics scrape, not the request path.
    pub fn usage(&self) -> CacheUsage {
        self.inner.run_pending_tasks();
        CacheUsage { entries: self.inner.entry_count(), bytes: self.inner.weighted_size() }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheUsage {
    pub entries: u64,
    pub bytes: u64,
}

fn initial_entries(max_bytes: u64) -> usize {
    const MAX_INITIAL: u64 = 1 << 16;
    (max_bytes / StoredResponse::PER_ENTRY as u64).min(MAX_INITIAL) as usize
}

/// Calls `f` with `id`'s cache key, written into a buffer of the thread's: a look-up (every
/// replay) allocates no key of its own.
fn with_cache_key<T>(id: &RecordId, f: impl FnOnce(&str) -> T) -> T {
    thread_local!(static KEY: RefCell<String> = const { RefCell::new(String::new()) });
    KEY.with_borrow_mut(|key| {
        key.clear();
        id.write_cache_key(key);
        f(key)
    })
}
