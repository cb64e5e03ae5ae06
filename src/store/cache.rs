//! The in-memory tier: completed records only, bounded by bytes, each gone when its ttl ends.
//!
//! In-flight claims are never cached: their truth changes underneath (release, lease expiry),
//! and only the backend can arbitrate them.

use super::record::{Completed, RecordId, StoredResponse};
use moka::sync::Cache;
use std::cell::RefCell;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Clone)]
pub struct CompletedCache {
    /// foldhash: keys come from requests, so the hasher is seeded per process; SipHash, here
    /// and in metric label lookups, was about 5% of a first-seen request's CPU under perf.
    inner: Cache<String, Arc<Completed>, foldhash::fast::RandomState>,
    /// Which cache the threads' own copies ([`local`]) came from: a process may run several.
    id: u64,
    /// Raised after every removal: a thread's copy made before it is no longer served.
    removals: Arc<AtomicU64>,
    hasher: foldhash::fast::RandomState,
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
        static IDS: AtomicU64 = AtomicU64::new(0);
        CompletedCache {
            inner,
            id: IDS.fetch_add(1, Ordering::Relaxed),
            removals: Arc::default(),
            hasher: foldhash::fast::RandomState::default(),
        }
    }

    /// A hit only while the record has not expired, whatever moka's own clock says. The
    /// thread's own copy if it has one, else moka's entry, copied for the thread when small.
    pub fn get(&self, id: &RecordId, now_ms: i64) -> Option<Arc<Completed>> {
        with_cache_key(id, |key| {
            // Read before moka is: a copy made from an entry that a removal then takes out
            // carries an older count than the one the removal leaves.
            let removals = self.removals.load(Ordering::Acquire);
            let at = local::At { cache: self.id, removals, hash: self.hasher.hash_one(key) };
            if let Some(hit) = local::get(&at, key, now_ms) {
                return Some(hit);
            }
            let shared = self.inner.get(key).filter(|c| c.expires_ms > now_ms)?;
            Some(local::keep(at, key, &shared).unwrap_or(shared))
        })
    }

    pub fn insert(&self, id: &RecordId, completed: Arc<Completed>) {
        self.inner.insert(id.cache_key(), completed);
    }

    pub fn remove(&self, id: &RecordId) {
        with_cache_key(id, |key| self.inner.invalidate(key));
        self.removals.fetch_add(1, Ordering::AcqRel);
    }

    /// Entries held and their bytes (as weighed against `max_bytes`), once the cache's pending
    /// bookkeeping has run: for the metrics scrape, not the request path.
    pub fn usage(&self) -> CacheUsage {
        self.inner.run_pending_tasks();
        CacheUsage { entries: self.inner.entry_count(), bytes: self.inner.weighted_size() }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
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

/// Each thread's copies of the records it replayed last, in front of moka. A hot key's replay
/// then writes no memory that another thread writes too. moka's `get` pins an epoch, queues the
/// read for its eviction policy and clones an `Arc` whose count every replaying thread shares;
/// with two workers replaying the same keys, those cache lines moved between the cores on every
/// request (the cache was 4% of a replaying process's samples under perf, the most of any one
/// function of idemgate's). A copy owns its bytes, headers and body, for the same reason.
///
/// A key has one set of `WAYS` slots, and a new copy takes the set's oldest. Only records of
/// up to `MAX_WEIGHT` bytes are copied, so a thread holds at most `SETS` x `WAYS` x that beside
/// `store.cache.max_bytes`. A copy is never served past its record's expiry, nor after any
/// removal from its cache (a delete of any key: deletes are rare, and a copy is cheap to make).
/// Records are not replaced in place otherwise: a completed key is claimed again only once it
/// has expired or been deleted.
mod local {
    use super::Completed;
    use std::cell::RefCell;
    use std::sync::Arc;

    const SETS: usize = 128;
    const WAYS: usize = 4;
    pub const MAX_WEIGHT: usize = 4 * 1024;

    /// Where a key's copy is, and what it must have been made under.
    pub struct At {
        pub cache: u64,
        pub removals: u64,
        pub hash: u64,
    }

    struct Copy {
        cache: u64,
        removals: u64,
        hash: u64,
        key: Box<str>,
        record: Arc<Completed>,
    }

    #[derive(Default)]
    struct Set {
        ways: [Option<Copy>; WAYS],
        /// The way the next new copy takes: each in turn, so the oldest goes.
        next: usize,
    }

    thread_local! {
        static COPIES: RefCell<Vec<Set>> = const { RefCell::new(Vec::new()) };
    }

    fn set(hash: u64) -> usize {
        (hash as usize) % SETS
    }

    pub fn get(at: &At, key: &str, now_ms: i64) -> Option<Arc<Completed>> {
        COPIES
            .try_with(|copies| {
                let copies = copies.try_borrow().ok()?;
                let set = copies.get(set(at.hash))?;
                let copy =
                    set.ways.iter().flatten().find(|c| c.hash == at.hash && c.cache == at.cache && *c.key == *key)?;
                (copy.removals == at.removals && copy.record.expires_ms > now_ms).then(|| copy.record.clone())
            })
            .ok()
            .flatten()
    }

    /// A copy of `shared` for this thread, kept for the next replays of `key`; `None` if it is
    /// too large to copy.
    pub fn keep(at: At, key: &str, shared: &Completed) -> Option<Arc<Completed>> {
        if shared.response.weight() > MAX_WEIGHT {
            return None;
        }
        let record = Arc::new(Completed {
            fingerprint: shared.fingerprint,
            response: shared.response.detached(),
            created_ms: shared.created_ms,
            expires_ms: shared.expires_ms,
        });
        let copy =
            Copy { cache: at.cache, removals: at.removals, hash: at.hash, key: key.into(), record: record.clone() };
        let _ = COPIES.try_with(|copies| {
            if let Ok(mut copies) = copies.try_borrow_mut() {
                if copies.is_empty() {
                    copies.resize_with(SETS, Set::default);
                }
                let set = &mut copies[set(at.hash)];
                // The key's stale copy if it has one (expired, or made before a removal), else the oldest.
                let way = set.ways.iter().position(|c| c.as_ref().is_some_and(|c| c.hash == at.hash && *c.key == *key));
                let way = way.unwrap_or_else(|| {
                    set.next = (set.next + 1) % WAYS;
                    set.next
                });
                set.ways[way] = Some(copy);
            }
        });
        Some(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn id(key: &str) -> RecordId {
        RecordId { route: "orders".into(), scope: String::new(), key: key.into() }
    }

    fn record(body: &'static [u8], expires_ms: i64) -> Arc<Completed> {
        let headers = vec![(http::HeaderName::from_static("x-order"), http::HeaderValue::from_static("7"))];
        let response = StoredResponse { status: 201, headers, body: Bytes::from_static(body), body_omitted: false };
        Arc::new(Completed { fingerprint: None, response, created_ms: 0, expires_ms })
    }

    /// moka times entries by the clock, so records expire relative to it.
    fn now() -> i64 {
        super::super::now_ms()
    }

    #[test]
    fn a_replayed_record_is_served_from_the_threads_own_copy() {
        let cache = CompletedCache::new(1 << 20);
        let shared = record(b"order 7", now() + 60_000);
        cache.insert(&id("k1"), shared.clone());
        let first = cache.get(&id("k1"), now()).unwrap();
        let second = cache.get(&id("k1"), now()).unwrap();
        assert_eq!(*first, *shared);
        assert!(Arc::ptr_eq(&first, &second), "the second look-up is the thread's copy");
        assert!(!Arc::ptr_eq(&first, &shared));
        assert_ne!(first.response.body.as_ptr(), shared.response.body.as_ptr(), "the copy owns its body");
    }

    #[test]
    fn a_copy_is_not_served_after_its_key_is_removed() {
        let cache = CompletedCache::new(1 << 20);
        cache.insert(&id("k1"), record(b"order 7", now() + 60_000));
        cache.insert(&id("k2"), record(b"order 8", now() + 60_000));
        assert!(cache.get(&id("k1"), now()).is_some());
        assert!(cache.get(&id("k2"), now()).is_some());
        cache.remove(&id("k1"));
        assert_eq!(cache.get(&id("k1"), now()), None);
        // Any removal retires every copy; the others are found in moka again.
        assert_eq!(cache.get(&id("k2"), now()).unwrap().response.body, "order 8");
    }

    #[test]
    fn a_copy_is_not_served_past_its_records_expiry() {
        let cache = CompletedCache::new(1 << 20);
        let expires_ms = now() + 60_000;
        cache.insert(&id("k1"), record(b"order 7", expires_ms));
        assert!(cache.get(&id("k1"), expires_ms - 1).is_some());
        assert_eq!(cache.get(&id("k1"), expires_ms), None);
    }

    #[test]
    fn copies_are_per_cache() {
        let (a, b) = (CompletedCache::new(1 << 20), CompletedCache::new(1 << 20));
        a.insert(&id("k1"), record(b"from a", now() + 60_000));
        assert!(a.get(&id("k1"), now()).is_some());
        assert_eq!(b.get(&id("k1"), now()), None);
    }

    #[test]
    fn a_large_record_is_not_copied() {
        let cache = CompletedCache::new(1 << 20);
        let body: &'static [u8] = Box::leak(vec![b'x'; local::MAX_WEIGHT].into_boxed_slice());
        let shared = record(body, now() + 60_000);
        cache.insert(&id("big"), shared.clone());
        assert!(Arc::ptr_eq(&cache.get(&id("big"), now()).unwrap(), &shared));
    }

    #[test]
    fn more_keys_than_a_set_holds_are_all_still_served() {
        let cache = CompletedCache::new(64 << 20);
        let keys: Vec<String> = (0..2_000).map(|n| format!("k{n}")).collect();
        for key in &keys {
            cache.insert(&id(key), record(b"order", now() + 60_000));
        }
        for _ in 0..2 {
            for key in &keys {
                assert!(cache.get(&id(key), now()).is_some(), "{key}");
            }
        }
    }
}
