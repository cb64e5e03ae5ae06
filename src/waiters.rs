//! `concurrent: wait`: duplicates that arrive while a key is in flight wait for its end.
//!
//! The owner of a claim in this process holds the key ([`Waiters::hold`]) until its outcome is
//! durable (completed or released); dropping the [`Held`] guard wakes the key's waiters, who then
//! claim again and so see only what the store says: a stored response to replay, or a released
//! key that exactly one of them wins. A waiter whose key is held here waits for that wake-up alone
//! (or the holder's lease end); only a key held elsewhere (another replica, or a process that died
//! holding it) is looked at again, with a growing interval, since nothing here will announce its end.
//!
//! An entry lives exactly as long as someone holds or waits for its key: the last guard to go
//! removes it, so a storm of waited keys leaves nothing behind.

use crate::store::RecordId;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::sync::futures::OwnedNotified;
use tokio::time::Instant;

/// The first look again at a key held elsewhere; each later one waits twice as long, up to `POLL_MAX`.
const POLL_FIRST: Duration = Duration::from_millis(10);
const POLL_MAX: Duration = Duration::from_secs(1);

#[derive(Clone, Default)]
pub struct Waiters {
    keys: Arc<Shards>,
    /// `idemgate_wait_keys`: the entries of every shard.
    gauge: prometheus_client::metrics::gauge::Gauge,
}

/// Every first-seen request takes its key's shard twice (hold, then the guard's drop), from
/// every worker: one map behind one lock was a lock all of them took.
const SHARDS: usize = 16;

/// foldhash, seeded per process: keys come from requests, and SipHash cost a first-seen request
/// 1.5k instructions here (`bench/instructions.sh new`).
type Keys = HashMap<RecordId, Entry, foldhash::fast::RandomState>;

#[derive(Default)]
struct Shards {
    hasher: foldhash::fast::RandomState,
    shards: [Mutex<Keys>; SHARDS],
}

struct Entry {
    notify: Arc<Notify>,
    /// Claims of this key owned by this process now (more than one only after a lease takeover).
    held: u32,
    /// Subscriptions alive for this key.
    waiting: u32,
}

/// Interest in a key's next wake-up, registered before the claim that may find it in flight, so
/// that a wake-up between that claim and the wait is not lost.
pub struct Subscription {
    waiters: Waiters,
    id: RecordId,
    notify: Arc<Notify>,
    notified: Pin<Box<OwnedNotified>>,
}

/// A claim this process owns; dropping it (after the outcome is durable) wakes the waiters.
pub struct Held {
    waiters: Waiters,
    id: RecordId,
    notify: Arc<Notify>,
}

/// How often a waiter looks again at a key held elsewhere: ever less often.
#[derive(Debug)]
pub struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Self {
        Backoff(POLL_FIRST)
    }
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let now = self.0;
        self.0 = (self.0 * 2).min(POLL_MAX);
        now
    }
}

impl Waiters {
    pub fn new(gauge: prometheus_client::metrics::gauge::Gauge) -> Waiters {
        Waiters { keys: Arc::default(), gauge }
    }

    pub fn subscribe(&self, id: &RecordId) -> Subscription {
        let notify = {
            let mut keys = self.lock(id);
            let entry = self.entry(&mut keys, id);
            entry.waiting += 1;
            entry.notify.clone()
        };
        let mut notified = Box::pin(notify.clone().notified_owned());
        notified.as_mut().enable();
        Subscription { waiters: self.clone(), id: id.clone(), notify, notified }
    }

    /// Marks the key as held by this process until the guard drops.
    pub fn hold(&self, id: &RecordId) -> Held {
        let mut keys = self.lock(id);
        let entry = self.entry(&mut keys, id);
        entry.held += 1;
        Held { waiters: self.clone(), id: id.clone(), notify: entry.notify.clone() }
    }

    /// Waits for the key's holder to end, its lease to run out, or (for a key held elsewhere) the
    /// next look; false once `deadline` has passed.
    pub async fn wait(
        &self,
        subscription: Subscription,
        deadline: Instant,
        lease_expires_ms: i64,
        backoff: &mut Backoff,
    ) -> bool {
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        let lease_left = Duration::from_millis(lease_expires_ms.saturating_sub(crate::store::now_ms()).max(0) as u64);
        let mut until = deadline.min(now + lease_left);
        if !self.held_here(&subscription.id) {
            until = until.min(now + backoff.next());
        }
        let mut subscription = subscription;
        let _ = tokio::time::timeout_at(until, subscription.notified.as_mut()).await;
        true
    }

    /// Keys with a holder or a waiter now: 0 when nothing is in flight (the leak check).
    pub fn len(&self) -> usize {
        self.keys.shards.iter().map(|shard| crate::lock(shard).len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn held_here(&self, id: &RecordId) -> bool {
        self.lock(id).get(id).is_some_and(|e| e.held > 0)
    }

    /// Updates the key's entry and removes it once nobody holds or waits for it.
    fn leave(&self, id: &RecordId, notify: &Arc<Notify>, change: impl FnOnce(&mut Entry)) {
        let mut keys = self.lock(id);
        let Some(entry) = keys.get_mut(id) else { return };
        // An entry made anew after this guard's was removed is not this guard's to change.
        if !Arc::ptr_eq(&entry.notify, notify) {
            return;
        }
        change(entry);
        if entry.held == 0 && entry.waiting == 0 {
            keys.remove(id);
            self.gauge.dec();
        }
    }

    fn entry<'m>(&self, keys: &'m mut Keys, id: &RecordId) -> &'m mut Entry {
        // Looked up before it is cloned: a key already held or waited for costs no copy.
        if !keys.contains_key(id) {
            self.gauge.inc();
            keys.insert(id.clone(), Entry::new());
        }
        keys.get_mut(id).expect("inserted above")
    }

    /// The shard of `id`'s key.
    fn lock(&self, id: &RecordId) -> MutexGuard<'_, Keys> {
        use std::hash::BuildHasher;
        crate::lock(&self.keys.shards[self.keys.hasher.hash_one(id) as usize % SHARDS])
    }
}

impl Entry {
    fn new() -> Entry {
        Entry { notify: Arc::new(Notify::new()), held: 0, waiting: 0 }
    }
}

impl Held {
    /// Whether requests of this process wait for the key now (concurrent duplicates).
    pub fn awaited(&self) -> bool {
        self.waiters.lock(&self.id).get(&self.id).is_some_and(|e| e.waiting > 0)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.waiters.leave(&self.id, &self.notify, |e| e.waiting = e.waiting.saturating_sub(1));
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.waiters.leave(&self.id, &self.notify, |e| e.held = e.held.saturating_sub(1));
        self.notify.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(key: &str) -> RecordId {
        RecordId { route: "r".into(), scope: String::new(), key: key.into() }
    }

    #[tokio::test]
    async fn entries_go_with_their_last_guard() {
        let waiters = Waiters::default();
        let held = waiters.hold(&id("a"));
        let first = waiters.subscribe(&id("a"));
        let second = waiters.subscribe(&id("a"));
        let other = waiters.subscribe(&id("b"));
        assert_eq!(waiters.len(), 2);
        drop(other);
        assert_eq!(waiters.len(), 1, "a subscription that never waited leaves nothing behind");
        drop(held);
        drop(first);
        assert_eq!(waiters.len(), 1);
        drop(second);
        assert!(waiters.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_held_here_wakes_its_waiters_without_polling() {
        let waiters = Waiters::default();
        let held = waiters.hold(&id("a"));
        let subscription = waiters.subscribe(&id("a"));
        let far = crate::store::now_ms() + 60_000;
        let deadline = Instant::now() + Duration::from_secs(30);
        let waiter = {
            let waiters = waiters.clone();
            tokio::spawn(async move {
                let start = Instant::now();
                waiters.wait(subscription, deadline, far, &mut Backoff::default()).await;
                start.elapsed()
            })
        };
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!waiter.is_finished(), "a waiter on a key held here does not poll");
        drop(held);
        assert_eq!(waiter.await.unwrap(), Duration::from_secs(5));
        assert!(waiters.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_held_elsewhere_is_looked_at_ever_less_often() {
        let waiters = Waiters::default();
        let far = crate::store::now_ms() + 60_000;
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut backoff = Backoff::default();
        let mut waits = Vec::new();
        for _ in 0..9 {
            let start = Instant::now();
            assert!(waiters.wait(waiters.subscribe(&id("a")), deadline, far, &mut backoff).await);
            waits.push(start.elapsed().as_millis());
        }
        assert_eq!(waits, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        assert!(waiters.is_empty());
    }
}
