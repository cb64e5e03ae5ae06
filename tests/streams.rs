//! Seeded delivery streams against idemgate in-process (SQLite), checked end to end: every event
//! reaches the app, none twice except after a release or after its ttl, every replay is the
//! stored response, a changed payload gets 422 and never reaches the app.
//!
//! A few fixed seeds run always, and one random seed (printed). To rerun a seed, or a part of it:
//! `IDEMGATE_TEST_STREAM_SEED=<n> [IDEMGATE_TEST_STREAM_EVENTS=3,17] cargo test --test streams given_or_random -- --nocapture`.
//! The stream is the same for a seed; the interleaving of its concurrent parts is the machine's.

mod common;
mod stream;

use common::TestProxy;
use std::sync::Arc;
use std::time::Duration;
use stream::app::App;
use stream::check::{Stats, check_stream};
use stream::drive::{Target, drive};
use stream::history::Violation;
use stream::model::{Profile, Stream};
use stream::record::{Attempt, Clock, Forward};
use stream::report::{failing_events, report};

/// 40 events; the ttl is 1500 ms and stands for 7 days (one day = 214 ms).
fn profile() -> Profile {
    Profile {
        events: 40,
        spread_ms: 400,
        day_ms: 1500.0 / 7.0,
        late: true,
        redeliver_days: 3.5,
        tries: 10,
        max_backoff_ms: 300,
        timeout_ms: 3000,
        impatient_ms: 120,
    }
}

struct Run {
    attempts: Vec<Attempt>,
    forwards: Vec<Forward>,
    violations: Vec<Violation>,
    stats: Stats,
}

async fn run(stream: &Stream) -> Run {
    let clock = Clock::start();
    let app = App::start(Arc::new(stream.clone()), clock).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("idemgate.db");
    let ttl = stream.profile.ttl_ms();
    let proxy = TestProxy::start_in(dir, db, &app.url(), &stream::routes(&format!("ttl: {ttl}ms"))).await;
    let attempts = drive(stream, Target::new(proxy.proxy_addr), clock, 20_000.0).await;
    // Requests whose clients gave up may still be with the app; their answers count too.
    assert!(app.idle(Duration::from_secs(5)).await, "the app still holds requests 5 s after the stream ended");
    proxy.stop().await;
    let forwards = app.forwards();
    let (violations, stats) = check_stream(stream, &attempts, &forwards);
    Run { attempts, forwards, violations, stats }
}

/// Runs the seed's stream; on a failure, prints the report and a shrunk stream, then panics.
async fn check_seed(seed: u64) {
    let mut stream = Stream::generate(seed, &profile());
    if let Some(events) = std::env::var("IDEMGATE_TEST_STREAM_EVENTS").ok().filter(|v| !v.is_empty()) {
        let only: Vec<usize> =
            events.split(',').map(|e| e.trim().parse().expect("IDEMGATE_TEST_STREAM_EVENTS: e.g. 3,17")).collect();
        stream = stream.only(&only);
    }
    if std::env::var_os("IDEMGATE_TEST_STREAM_PRINT").is_some() {
        eprintln!("{stream}");
    }
    let outcome = run(&stream).await;
    eprintln!("seed {seed}: {}", outcome.stats);
    if outcome.violations.is_empty() {
        assert!(outcome.stats.within_ttl > 0, "seed {seed}: no attempt was checked as a replay within the ttl");
        return;
    }
    let mut message = report(&stream, &outcome.violations, &outcome.attempts, &outcome.forwards);
    message.push_str(&shrink(&stream, failing_events(&outcome.violations)).await);
    panic!("{message}");
}

/// A smaller stream that still fails: the failing events alone, else the whole stream with
/// halves of the other events left out while it still fails (a few reruns at most).
async fn shrink(stream: &Stream, failing: Vec<usize>) -> String {
    let rerun = |s: Stream| async move {
        let outcome = run(&s).await;
        (!outcome.violations.is_empty()).then_some((s, outcome))
    };
    let mut found = rerun(stream.only(&failing)).await;
    if found.is_none() {
        let mut keep: Vec<usize> = stream.events.iter().map(|e| e.index).collect();
        for _ in 0..6 {
            let others: Vec<usize> = keep.iter().copied().filter(|i| !failing.contains(i)).collect();
            if others.is_empty() {
                break;
            }
            let (a, b) = others.split_at(others.len().div_ceil(2));
            let mut progress = false;
            for half in [a, b] {
                let rest: Vec<usize> = keep.iter().copied().filter(|i| !half.contains(i)).collect();
                if let Some(smaller) = rerun(stream.only(&rest)).await {
                    (keep, found, progress) = (rest, Some(smaller), true);
                    break;
                }
            }
            if !progress {
                break;
            }
        }
    }
    let Some((small, outcome)) = found else {
        return format!("\nno smaller stream failed again (a race): the whole stream was\n{stream}");
    };
    let events: Vec<String> = small.events.iter().map(|e| e.index.to_string()).collect();
    format!(
        "\nshrunk to {} event(s); rerun with IDEMGATE_TEST_STREAM_SEED={} IDEMGATE_TEST_STREAM_EVENTS={} cargo test --test streams given_or_random -- --nocapture\n{small}\n{}",
        small.events.len(),
        stream.seed,
        events.join(","),
        report(&small, &outcome.violations, &outcome.attempts, &outcome.forwards)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_1() {
    check_seed(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_2() {
    check_seed(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_3() {
    check_seed(0x1de_6a7e).await;
}

/// `IDEMGATE_TEST_STREAM_SEED`, or a seed drawn now (printed, so that a failure can be rerun).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_or_random() {
    let seed = match std::env::var("IDEMGATE_TEST_STREAM_SEED") {
        Ok(seed) => seed.parse().expect("IDEMGATE_TEST_STREAM_SEED is a u64"),
        Err(_) => {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
            now.as_nanos() as u64 ^ u64::from(std::process::id())
        }
    };
    eprintln!("stream seed {seed} (rerun: IDEMGATE_TEST_STREAM_SEED={seed} cargo test --test streams given_or_random)");
    check_seed(seed).await;
}

#[test]
fn the_same_seed_gives_the_same_stream() {
    let (a, b) = (Stream::generate(42, &profile()), Stream::generate(42, &profile()));
    assert_eq!(a.events, b.events);
    assert_eq!(a.to_string(), b.to_string());
    assert_ne!(a.events, Stream::generate(43, &profile()).events);
}

#[test]
fn streams_hold_every_kind_of_delivery() {
    use stream::model::{FlowKind, Payload, Provider};
    let s = Stream::generate(1, &profile());
    let flows = || s.events.iter().flat_map(|e| e.flows.iter());
    for kind in [FlowKind::Concurrent, FlowKind::Duplicate, FlowKind::Redelivery, FlowKind::Late, FlowKind::Variant] {
        assert!(flows().any(|f| f.kind == kind), "no {kind:?} flow in seed 1");
    }
    assert!(
        s.events
            .iter()
            .any(|e| e.provider.differs(Payload::Changed) && e.flows.iter().any(|f| e.provider.differs(f.payload))),
        "no changed payload on a fingerprinted route"
    );
    assert!(s.events.iter().any(|e| e.app.iter().any(|a| a.status >= 500)), "no release by the app");
    for p in [Provider::Github, Provider::Stripe, Provider::Shopify, Provider::Twilio, Provider::Api] {
        assert!(s.events.iter().any(|e| e.provider == p), "no {p:?} event in seed 1");
    }
}
