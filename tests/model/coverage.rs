//! What the cases reached, so that a test whose generator stopped reaching a situation fails
//! instead of passing on easy cases.

use std::collections::BTreeMap;

#[derive(Debug, Default, Clone)]
pub struct Coverage(BTreeMap<&'static str, u64>);

impl Coverage {
    pub fn note(&mut self, event: &'static str) {
        *self.0.entry(event).or_default() += 1;
    }

    pub fn add(&mut self, event: &'static str, n: u64) {
        if n > 0 {
            *self.0.entry(event).or_default() += n;
        }
    }

    pub fn merge(&mut self, other: &Coverage) {
        for (event, n) in &other.0 {
            self.add(event, *n);
        }
    }

    pub fn missing(&self, required: &[&'static str]) -> Vec<&'static str> {
        required.iter().copied().filter(|event| !self.0.contains_key(event)).collect()
    }
}

impl std::fmt::Display for Coverage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (event, n) in &self.0 {
            writeln!(f, "  {n:5}  {event}")?;
        }
        Ok(())
    }
}

pub const CLAIMED_NEW: &str = "claimed a key not held";
pub const CLAIMED_AFTER_TTL: &str = "claimed a key whose ttl ended";
pub const TOOK_OVER: &str = "took over a claim whose lease ended";
pub const IN_FLIGHT: &str = "found a key in flight";
pub const REPLAYED: &str = "replayed a completed key";
pub const MISMATCH: &str = "refused another payload";
pub const COMPLETED: &str = "completed";
pub const FENCED: &str = "refused the completion of a former owner";
pub const REFUSED: &str = "refused another completion";
pub const RELEASED: &str = "released";
pub const DELETED: &str = "deleted";
pub const SWEPT: &str = "swept a completed record";
pub const SWEPT_ABANDONED: &str = "swept an abandoned claim";
pub const SWEPT_PART: &str = "swept a batch smaller than the sweepable";
pub const REOPENED: &str = "reopened the store";
pub const CACHE_HITS: &str = "answered a claim from the cache";

/// What every run must reach.
pub const ALWAYS: &[&str] =
    &[CLAIMED_NEW, IN_FLIGHT, REPLAYED, MISMATCH, COMPLETED, FENCED, REFUSED, RELEASED, DELETED, REOPENED];
/// What runs in which time passes must reach besides.
pub const WITH_TIME: &[&str] = &[CLAIMED_AFTER_TTL, TOOK_OVER, SWEPT, SWEPT_ABANDONED, SWEPT_PART];
/// What runs through the cache must reach besides.
pub const THROUGH_CACHE: &[&str] = &[CACHE_HITS];
