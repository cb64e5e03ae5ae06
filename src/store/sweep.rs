//! Background upkeep: delete expired records in bounded batches, then measure the store.
//!
//! Expired records are already ignored by claims (they are taken over), so sweeping only reclaims
//! space. Small batches keep each write transaction short, so requests queued behind the sweeper
//! wait for one batch at most, never for the whole backlog.

use super::Store;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

pub const SWEEP_BATCH: usize = 1000;

/// Sweeps every `every` until the returned handle is aborted.
pub fn spawn_sweeper(store: Arc<dyn Store>, every: Duration, metrics: Arc<crate::metrics::Metrics>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            loop {
                match store.sweep(super::now_ms(), SWEEP_BATCH).await {
                    Ok(n) => {
                        metrics.swept.inc_by(n as u64);
                        if n < SWEEP_BATCH {
                            break;
                        }
                        // Let queued requests in between batches.
                        tokio::task::yield_now().await;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "sweep failed; retrying at the next interval");
                        break;
                    }
                }
            }
            if let Ok(Some(stats)) = store.stats().await {
                metrics.store_records.set(stats.records as i64);
                metrics.store_bytes.set(stats.bytes as i64);
                metrics.store_wal_bytes.set(stats.wal_bytes as i64);
            }
        }
    })
}
