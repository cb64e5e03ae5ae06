//! Model-based tests of the stores: random sequences of operations run against a real store and
//! against a reference model of the contract ([`spec`]: a map, with time passed in) side by side;
//! every answer must match, and a failing sequence is shrunk to a minimal one.
//!
//! Operations ([`ops`]): claim (a fresh token each, one of three payloads, a lease, sometimes a
//! clock skew: another replica's clock), complete and release (by the owner, by a recent stale
//! claim, by a stranger), get, delete, sweep (a batch of 1, 2 or 1000, maybe skewed), time passing
//! (half-second steps that land leases and ttls exactly on "now", and jumps of the abandoned-claim
//! retention), and a reopen (the process is killed and started again: the backend is opened anew,
//! the cache starts empty). Four records (two routes, a scope, two keys) so that operations meet
//! and records must still be kept apart. Every case ends with the same epilogue: everything
//! expires, is claimed again, completed, replayed and swept at the exact boundaries.
//!
//! Checked after every operation: the claim's outcome field by field (claimed with `took_over`,
//! in flight with its fingerprint and lease end, completed with its response, fingerprint and
//! times), the decision `decide` takes on it against the semantics table, what complete answers,
//! get, delete, and how many records a sweep deleted (and that they were sweepable); after the
//! case and after the epilogue, every record. A run also fails if no case reached one of the
//! situations in [`coverage`] (a takeover, a replay, a mismatch, a fenced-out owner, ...), so
//! that a generator that drifted into easy cases cannot pass unnoticed.
//!
//! Backends: SQLite (a file per case in a temp dir) always; PostgreSQL (a schema per test, left
//! empty by each case) and Redis (a key prefix per case) when `IDEMGATE_TEST_POSTGRES_URL` /
//! `IDEMGATE_TEST_REDIS_URL` are set, else they say SKIPPED on stderr. Each both directly and
//! through `Records`, the cache the pipeline uses: a completed record answered from memory must be
//! what the backend would answer, including once its ttl has ended.
//!
//! Time is the test's: claims, completions and sweeps carry it, and nothing sleeps. SQLite and
//! PostgreSQL judge leases and ttls only by the times they are given, so time passes freely and
//! callers' clocks may differ. Through `Records` time only moves forward, as one process' clock
//! does (a claim from a clock behind one that already took over a completed key would get the
//! cached replay, as that clock has every right to). Redis ends leases and ttls by its own clock
//! (an in-flight key's lease runs while its PTTL exceeds the retention; a completed key's PEXPIRE
//! is counted from the real now), which the test's time cannot move. So Redis runs are timeless:
//! leases and ttls of a minute or more, no time passing within a case (which takes well under a
//! second), skews of a second that must change nothing, and a sweep must find nothing (Redis
//! expires keys itself). Lease takeover and ttl expiry on Redis are covered by tests/backends.rs,
//! which waits for Redis' clock.
//!
//! `PROPTEST_CASES` sets the number of cases (64 by default, of up to 30 operations each);
//! `--nocapture` shows how often each situation came up. Minimal failing cases worth keeping go
//! to [`regressions`], with the boundaries pinned there.

#[path = "model/backends.rs"]
mod backends;
#[path = "model/coverage.rs"]
mod coverage;
#[path = "model/harness.rs"]
mod harness;
#[path = "model/ops.rs"]
mod ops;
#[path = "model/regressions.rs"]
mod regressions;
#[path = "model/spec.rs"]
mod spec;

use backends::{Kind, Place};
use coverage::Coverage;
use harness::{Through, run_case};
use ops::Profile;
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};
use std::cell::{Cell, RefCell};

const MAX_OPS: usize = 30;

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(64)
}

/// Runs random cases until one fails (then panics with the shrunk sequence) or all pass.
fn check(kind: Kind, through: Through, profile: Profile) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    // Failures are kept as written regression tests (regressions.rs), not as proptest's files.
    let config = Config { cases: cases(), failure_persistence: None, ..Config::default() };
    let mut runner = TestRunner::new(config);
    let place = runtime.block_on(Place::new(&kind));
    let epilogue = ops::epilogue(profile);
    let (seen, cases) = (RefCell::new(Coverage::default()), Cell::new(0));
    let result = runner.run(&ops::case(profile, MAX_OPS), |ops| {
        cases.set(cases.get() + 1);
        let case =
            runtime.block_on(run_case(&place, cases.get(), through, &ops, &epilogue)).map_err(TestCaseError::fail)?;
        seen.borrow_mut().merge(&case);
        Ok(())
    });
    runtime.block_on(place.remove());
    match result {
        Ok(()) => {}
        Err(TestError::Fail(why, ops)) => {
            let listing: Vec<String> = ops.iter().enumerate().map(|(i, op)| format!("  {i:2}: {op:?}")).collect();
            panic!("{} through {through:?}: {why}\nminimal failing case:\n{}", kind.name(), listing.join("\n"));
        }
        Err(TestError::Abort(why)) => panic!("{} through {through:?}: aborted: {why}", kind.name()),
    }
    let mut required = coverage::ALWAYS.to_vec();
    if profile.advances {
        required.extend(coverage::WITH_TIME);
    }
    if through == Through::Records {
        required.extend(coverage::THROUGH_CACHE);
    }
    let seen = seen.into_inner();
    // Shown with --nocapture: how often each situation came up.
    println!("{} through {through:?}, {} cases:\n{seen}", kind.name(), cases.get());
    let missing = seen.missing(&required);
    assert!(missing.is_empty(), "{} through {through:?}: no case reached {missing:?}; reached:\n{seen}", kind.name());
}

#[test]
fn sqlite_matches_the_model() {
    check(Kind::Sqlite, Through::Store, Profile::TIMED);
}

#[test]
fn sqlite_through_the_cache_matches_the_model() {
    check(Kind::Sqlite, Through::Records, Profile::TIMED_MONOTONIC);
}

#[test]
fn postgres_matches_the_model() {
    if let Some(kind) = Kind::from_env("IDEMGATE_TEST_POSTGRES_URL", Kind::Postgres) {
        check(kind, Through::Store, Profile::TIMED);
    }
}

#[test]
fn postgres_through_the_cache_matches_the_model() {
    if let Some(kind) = Kind::from_env("IDEMGATE_TEST_POSTGRES_URL", Kind::Postgres) {
        check(kind, Through::Records, Profile::TIMED_MONOTONIC);
    }
}

#[test]
fn redis_matches_the_model_while_no_time_passes() {
    if let Some(kind) = Kind::from_env("IDEMGATE_TEST_REDIS_URL", Kind::Redis) {
        check(kind, Through::Store, Profile::TIMELESS);
    }
}

#[test]
fn redis_through_the_cache_matches_the_model_while_no_time_passes() {
    if let Some(kind) = Kind::from_env("IDEMGATE_TEST_REDIS_URL", Kind::Redis) {
        check(kind, Through::Records, Profile::TIMELESS_MONOTONIC);
    }
}
