//! The decision after a claim: a pure function of what the store found and the request's
//! fingerprint, so that the semantics table can be tested as a table.

use crate::fingerprint::Fingerprint;
use crate::store::{ClaimOutcome, Completed};
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// First seen (or its lease or ttl ended): forward to the app under this claim token.
    Forward { token: u64, took_over: bool },
    /// Completed with the same payload: replay the stored response.
    Replay(Arc<Completed>),
    /// The key exists with another payload: 422.
    Mismatch,
    /// Another request holds the key until `expires_ms`: 409, or wait.
    InFlight { expires_ms: i64 },
}

/// Payloads differ only when both sides have a fingerprint: a record made before fingerprinting
/// was switched on cannot be compared, and is trusted.
fn differs(stored: Option<Fingerprint>, request: Option<Fingerprint>) -> bool {
    matches!((stored, request), (Some(a), Some(b)) if a != b)
}

pub fn decide(found: ClaimOutcome, fingerprint: Option<Fingerprint>) -> Decision {
    match found {
        ClaimOutcome::Claimed { token, took_over } => Decision::Forward { token, took_over },
        ClaimOutcome::Completed(done) if differs(done.fingerprint, fingerprint) => Decision::Mismatch,
        ClaimOutcome::Completed(done) => Decision::Replay(done),
        ClaimOutcome::InFlight { fingerprint: held, .. } if differs(held, fingerprint) => Decision::Mismatch,
        ClaimOutcome::InFlight { expires_ms, .. } => Decision::InFlight { expires_ms },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoredResponse;

    fn completed(fp: Option<Fingerprint>) -> ClaimOutcome {
        ClaimOutcome::Completed(Arc::new(Completed {
            fingerprint: fp,
            response: StoredResponse { status: 200, headers: vec![], body: Default::default(), body_omitted: false },
            created_ms: 0,
            expires_ms: 10,
        }))
    }

    #[test]
    fn decision_table() {
        let a = Some([1u8; 32]);
        let b = Some([2u8; 32]);
        let in_flight = |fp| ClaimOutcome::InFlight { fingerprint: fp, expires_ms: 5 };
        let cases: Vec<(ClaimOutcome, Option<Fingerprint>, &str)> = vec![
            (ClaimOutcome::Claimed { token: 7, took_over: false }, a, "forward"),
            (completed(a), a, "replay"),
            (completed(None), None, "replay"),
            (completed(None), a, "replay"),
            (completed(a), None, "replay"),
            (completed(a), b, "mismatch"),
            (in_flight(a), a, "in flight"),
            (in_flight(None), b, "in flight"),
            (in_flight(a), b, "mismatch"),
        ];
        for (found, fp, want) in cases {
            let got = match decide(found.clone(), fp) {
                Decision::Forward { token: 7, took_over: false } => "forward",
                Decision::Forward { .. } => "forward with another token",
                Decision::Replay(_) => "replay",
                Decision::Mismatch => "mismatch",
                Decision::InFlight { expires_ms: 5 } => "in flight",
                Decision::InFlight { .. } => "in flight with another expiry",
            };
            assert_eq!(got, want, "{found:?} with {fp:?}");
        }
    }
}
