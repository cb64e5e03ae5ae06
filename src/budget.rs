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
use std::sync::atomic::Ordering;

/// The bytes held are counted in the `idemgate_buffered_bytes` gauge's own atomic, and only
/// there: reserving is one compare-and-swap, giving back one subtraction. (A tokio semaphore did
/// this before, and its release takes a mutex, on every protected request's path.)
#[derive(Clone)]
pub struct Budget {
    held: Gauge,
    limit: usize,
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
    held: Gauge,
    limit: usize,
    bytes: usize,
}

impl Budget {
    /// `held` is `idemgate_buffered_bytes`.
    pub fn new(limit: usize, held: Gauge, refusals: Counter) -> Budget {
        let limit = limit.min(i64::MAX as usize);
        Budget { held, limit, refusals }
    }

    /// An empty reservation, to grow as a body arrives.
    pub fn reservation(&self) -> Reservation {
        Reservation { held: self.held.clone(), limit: self.limit, bytes: 0 }
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
        let over = OverBudget { limit: self.limit };
        // At most `limit` (below i64::MAX) is ever held, so neither sum can overflow.
        let more = i64::try_from(more).map_err(|_| over)?;
        let limit = self.limit as i64;
        self.held
            .inner()
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| (more <= limit - held).then_some(held + more))
            .map_err(|_| over)?;
        self.bytes = total;
        Ok(())
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.held.dec_by(self.bytes as i64);
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
        assert_eq!(budget.held.get(), 100);
        drop(a);
        assert_eq!(budget.held.get(), 40);
        assert_eq!(b.grow_to(101), Err(OverBudget { limit: 100 }));
        b.grow_to(100).unwrap();
        drop(b);
        assert_eq!(budget.held.get(), 0);
        let mut c = budget.reservation();
        c.grow_to(100).unwrap();
    }
}
