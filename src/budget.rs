//! `server.max_buffered_bytes`: one bound on the request and response bodies held in memory by all
//! requests together.
//!
//! A protected route buffers its request body (to verify, identify and fingerprint it) and the
//! app's response (to store it). Each request's `max_body` bounds one body, not a storm of them: 200
//! concurrent 1 MiB deliveries would hold 200 MiB. Every buffered byte is reserved here first; a
//! request that would pass the bound is refused (503 with `Retry-After`) before anything is claimed,
//! and a response that would pass it is handled as one over `max_response_body` (streamed on, its
//! record without a body), so memory stays bounded and no answered key goes unstored.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Clone)]
pub struct Budget {
    /// One permit per byte.
    bytes: Arc<Semaphore>,
    limit: usize,
    /// `idemgate_buffered_bytes`.
    gauge: Gauge,
    /// `idemgate_buffer_refusals`.
    refusals: Counter,
}

/// The bound would be passed: the request is refused, or the response is not kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the bodies held in memory would exceed server.max_buffered_bytes ({limit} bytes)")]
pub struct OverBudget {
    pub limit: usize,
}

/// Bytes reserved for one body; given back when dropped.
pub struct Reservation {
    budget: Budget,
    permit: Option<OwnedSemaphorePermit>,
    bytes: usize,
}

impl Budget {
    pub fn new(limit: usize, gauge: Gauge, refusals: Counter) -> Budget {
        // tokio's semaphore holds at most usize::MAX >> 3 permits: far above any real budget.
        let limit = limit.min(Semaphore::MAX_PERMITS);
        Budget { bytes: Arc::new(Semaphore::new(limit)), limit, gauge, refusals }
    }

    /// An empty reservation, to grow as a body arrives.
    pub fn reservation(&self) -> Reservation {
        Reservation { budget: self.clone(), permit: None, bytes: 0 }
    }

    /// Counts a request refused for want of budget.
    pub fn refused(&self) {
        self.refusals.inc();
    }
}

impl Reservation {
    /// Makes this reservation cover `total` bytes, without waiting: either the bytes are free now
    /// or the caller must not buffer them.
    pub fn grow_to(&mut self, total: usize) -> Result<(), OverBudget> {
        let Some(more) = total.checked_sub(self.bytes).filter(|more| *more > 0) else { return Ok(()) };
        let over = OverBudget { limit: self.budget.limit };
        let more_u32 = u32::try_from(more).map_err(|_| over)?;
        let permit = self.budget.bytes.clone().try_acquire_many_owned(more_u32).map_err(|_| over)?;
        match &mut self.permit {
            Some(held) => held.merge(permit),
            None => self.permit = Some(permit),
        }
        self.bytes = total;
        self.budget.gauge.inc_by(more as i64);
        Ok(())
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.budget.gauge.dec_by(self.bytes as i64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_share_the_bound_and_give_it_back() {
        let budget = Budget::new(100, Gauge::default(), Counter::default());
        let mut a = budget.reservation();
        let mut b = budget.reservation();
        a.grow_to(60).unwrap();
        a.grow_to(40).unwrap();
        assert_eq!(a.bytes(), 60, "a reservation never shrinks while held");
        assert_eq!(b.grow_to(41), Err(OverBudget { limit: 100 }));
        b.grow_to(40).unwrap();
        assert_eq!(budget.gauge.get(), 100);
        drop(a);
        assert_eq!(budget.gauge.get(), 40);
        b.grow_to(100).unwrap();
        drop(b);
        assert_eq!(budget.gauge.get(), 0);
        assert_eq!(budget.bytes.available_permits(), 100);
    }
}
