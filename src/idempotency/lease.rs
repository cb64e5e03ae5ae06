//! Typed claims: what a claim found, and the [`Lease`] on a key this request now owns.
//!
//! A `Lease` ends in exactly one of two ways: [`Lease::complete`] stores the response, or
//! [`Lease::release`] gives the key back. One dropped unended (a panic, a cancelled future, an
//! early return) gives the key back on its own, so nothing can leave a key claimed until its lease
//! runs out but a process that dies.

use crate::store::{Completed, RecordId, Records, StoreError};
use crate::waiters::Held;
use std::sync::Arc;

/// What a claim found.
pub enum Claimed {
    /// Completed with the same payload: replay the stored response.
    Replay(Arc<Completed>),
    /// Another request holds the key until `expires_ms`: 409, or wait.
    InFlight { expires_ms: i64 },
    /// The key exists with another payload: 422.
    Mismatch,
    /// First seen (or its lease or ttl ended): this request owns the key.
    Owned(Box<Lease>),
}

/// A key this request owns until it completes or releases it.
pub struct Lease {
    records: Records,
    pub id: RecordId,
    token: u64,
    /// When the claim was made: the record's creation time, and the start of the lease.
    pub claimed_ms: i64,
    /// The claim took over a key whose previous claim's lease ended unfinished.
    pub took_over: bool,
    /// Wakes the key's waiters once the lease has ended (completed or released); `None` on a
    /// route whose duplicates do not wait (`concurrent: reject`).
    held: Option<Held>,
    ended: bool,
}

impl Lease {
    pub(crate) fn new(
        records: Records,
        id: RecordId,
        token: u64,
        claimed_ms: i64,
        took_over: bool,
        held: Option<Held>,
    ) -> Lease {
        Lease { records, id, token, claimed_ms, took_over, held, ended: false }
    }

    /// Stores the response if this lease still owns the key; false if another request took it
    /// over meanwhile (the lease ran out). An error leaves the lease open, to try again or release.
    pub async fn complete(&mut self, completed: Arc<Completed>) -> Result<bool, StoreError> {
        let awaited = self.held.as_ref().is_some_and(Held::awaited);
        let stored = self.records.complete(&self.id, self.token, completed, awaited).await?;
        self.end();
        Ok(stored)
    }

    /// Gives the key back, so the next delivery is forwarded.
    pub async fn release(mut self) {
        if let Err(e) = self.records.release(&self.id, self.token).await {
            tracing::warn!(route = %self.id.route, key = %self.id.key, error = %e, "release failed; the key is blocked until its lease ends");
        }
        self.end();
    }

    /// Leaves the key claimed until its lease runs out: for a response the app gave but the
    /// store could not take, where a release would have the next delivery forwarded at once.
    pub fn abandon(mut self) {
        tracing::warn!(route = %self.id.route, key = %self.id.key, "the response could not be stored; the key stays claimed until its lease ends");
        self.end();
    }

    fn end(&mut self) {
        self.ended = true;
        // The outcome is durable: the key's waiters may claim again.
        self.held = None;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        let (records, id, token, held) = (self.records.clone(), self.id.clone(), self.token, self.held.take());
        tracing::warn!(route = %id.route, key = %id.key, "a claim was dropped unended; releasing it");
        // Without a runtime (the process is ending) the key waits for its lease, as after a crash.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(e) = records.release(&id, token).await {
                    tracing::warn!(route = %id.route, key = %id.key, error = %e, "release failed; the key is blocked until its lease ends");
                }
                drop(held);
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::store::{Claim, ClaimOutcome, CompletedCache, SqliteStore, now_ms};
    use crate::waiters::Waiters;

    async fn records(dir: &tempfile::TempDir) -> Records {
        let store = Arc::new(SqliteStore::open(&dir.path().join("lease.db")).unwrap());
        let metrics = Arc::new(Metrics::new());
        Records::new(store, CompletedCache::new(1 << 20), metrics)
    }

    async fn claim(records: &Records, token: u64) -> ClaimOutcome {
        let id = RecordId { route: "r".into(), scope: String::new(), key: "k".into() };
        records.claim(Claim { id, token, fingerprint: None, now_ms: now_ms(), lease_ms: 60_000 }).await.unwrap()
    }

    /// A request future dropped while it owns a key (cancelled, or unwound by a panic) gives the
    /// key back: the next claim owns it, long before the 60 s lease would have run out.
    #[tokio::test]
    async fn a_lease_dropped_unended_releases_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let (records, waiters) = (records(&dir).await, Waiters::default());
        let ClaimOutcome::Claimed { token, .. } = claim(&records, 1).await else { panic!("first claim") };
        let id = RecordId { route: "r".into(), scope: String::new(), key: "k".into() };
        let lease = Lease::new(records.clone(), id.clone(), token, now_ms(), false, Some(waiters.hold(&id)));
        assert!(matches!(claim(&records, 2).await, ClaimOutcome::InFlight { .. }));
        drop(lease);
        // The release runs on a task of its own; the waiters' entry goes with it.
        while !waiters.is_empty() {
            tokio::task::yield_now().await;
        }
        assert!(matches!(claim(&records, 3).await, ClaimOutcome::Claimed { .. }));
    }
}
