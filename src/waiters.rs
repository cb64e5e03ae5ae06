//! `concurrent: wait`: duplicates that arrive while a key is in flight wait for its end.
//!
//! The owner of a claim wakes the key's waiters once its outcome is durable (completed or
//! released); each waiter then claims again, so it sees only what the store says: a stored
//! response to replay, or a released key that exactly one of them wins. A waiter also looks
//! again every `POLL`, because the holder may be another process whose lease has ended.

use crate::store::RecordId;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::sync::futures::OwnedNotified;
use tokio::time::Instant;

const POLL: Duration = Duration::from_millis(200);

#[derive(Default)]
pub struct Waiters {
    keys: Mutex<HashMap<RecordId, Arc<Notify>>>,
}

pub type Subscription = Pin<Box<OwnedNotified>>;

impl Waiters {
    /// Registers interest in the key's next wake-up.
    pub fn subscribe(&self, id: &RecordId) -> Subscription {
        let notify = self.lock().entry(id.clone()).or_default().clone();
        let mut notified = Box::pin(notify.notified_owned());
        notified.as_mut().enable();
        notified
    }

    /// Wakes everyone waiting on the key.
    pub fn wake(&self, id: &RecordId) {
        if let Some(notify) = self.lock().remove(id) {
            notify.notify_waiters();
        }
    }

    /// Waits for a wake-up, the holder's lease end, or a poll interval; false once `deadline` passed.
    pub async fn wait(
        &self,
        id: &RecordId,
        subscription: Subscription,
        deadline: Instant,
        lease_expires_ms: i64,
    ) -> bool {
        let now = Instant::now();
        if now >= deadline {
            self.forget_if_unused(id);
            return false;
        }
        let lease_left = Duration::from_millis(lease_expires_ms.saturating_sub(crate::store::now_ms()).max(0) as u64);
        let until = deadline.min(now + POLL).min(now + lease_left);
        let _ = tokio::time::timeout_at(until, subscription).await;
        true
    }

    fn forget_if_unused(&self, id: &RecordId) {
        let mut keys = self.lock();
        if keys.get(id).is_some_and(|n| Arc::strong_count(n) == 1) {
            keys.remove(id);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<RecordId, Arc<Notify>>> {
        self.keys.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
