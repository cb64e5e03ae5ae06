//! The shared Redis store (work in progress: see issue 5).

use super::{Claim, ClaimOutcome, Completed, Record, RecordId, Store, StoreError, StoreFuture};
use crate::config::RedisConfig;

pub struct RedisStore {}

impl RedisStore {
    pub async fn open(_cfg: &RedisConfig) -> Result<RedisStore, StoreError> {
        Err(StoreError::Unavailable("the redis store is not built yet".into()))
    }
}

fn unbuilt<T: Send + 'static>() -> StoreFuture<T> {
    Box::pin(async { Err(StoreError::Unavailable("the redis store is not built yet".into())) })
}

impl Store for RedisStore {
    fn claim(&self, _claim: Claim) -> StoreFuture<ClaimOutcome> {
        unbuilt()
    }
    fn complete(&self, _id: RecordId, _token: u64, _completed: Completed) -> StoreFuture<bool> {
        unbuilt()
    }
    fn release(&self, _id: RecordId, _token: u64) -> StoreFuture<()> {
        unbuilt()
    }
    fn get(&self, _id: RecordId) -> StoreFuture<Option<Record>> {
        unbuilt()
    }
    fn delete(&self, _id: RecordId) -> StoreFuture<bool> {
        unbuilt()
    }
    fn sweep(&self, _now_ms: i64, _batch: usize) -> StoreFuture<usize> {
        unbuilt()
    }
    fn check_writable(&self) -> StoreFuture<()> {
        unbuilt()
    }
    fn close(&self) -> StoreFuture<()> {
        unbuilt()
    }
}
