//! Sequences worth keeping: the boundaries of the contract, pinned so that they run on every
//! backend every time rather than when the generator happens upon them, and what the model found.

use super::backends::{Kind, Place};
use super::harness::{Through, run_case};
use super::ops::{By, Op, Payload, Profile, epilogue};
use idemgate::metrics::Metrics;
use idemgate::store::{
    ABANDONED_CLAIM_RETENTION_MS, Claim, ClaimOutcome, Completed, CompletedCache, RecordId, Records, SqliteStore,
    Store, StoredResponse,
};
use std::sync::Arc;

/// Runs `ops`, then the epilogue, on every backend that judges time by the times it is given,
/// directly and through the cache, checking every answer against the model.
fn on_timed_backends(ops: &[Op]) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let postgres = Kind::from_env("IDEMGATE_TEST_POSTGRES_URL", Kind::Postgres);
    for kind in [Some(Kind::Sqlite), postgres].into_iter().flatten() {
        for through in [Through::Store, Through::Records] {
            let place = runtime.block_on(Place::new(&kind));
            let result = runtime.block_on(run_case(&place, 1, through, ops, &epilogue(Profile::TIMED)));
            runtime.block_on(place.remove());
            if let Err(why) = result {
                panic!("{} through {through:?}: {why}", kind.name());
            }
        }
    }
}

fn claim(payload: Payload, lease_ms: i64) -> Op {
    Op::Claim { slot: 0, payload, lease_ms, skew_ms: 0 }
}

fn complete(by: By, ttl_ms: i64) -> Op {
    Op::Complete { slot: 0, by, status: 200, body_len: 2, ttl_ms }
}

#[test]
fn a_lease_ends_exactly_at_its_expiry_and_fences_out_its_owner() {
    on_timed_backends(&[
        claim(Payload::A, 1_000),
        Op::Advance { ms: 999 },
        claim(Payload::A, 1_000),
        Op::Advance { ms: 1 },
        // Taken over, and said so; the first claim's completion is refused.
        claim(Payload::B, 1_000),
        complete(By::Issued(2), 1_000),
        complete(By::Owner, 1_000),
        claim(Payload::A, 1_000),
    ]);
}

#[test]
fn a_completed_key_is_first_seen_again_exactly_when_its_ttl_ends() {
    on_timed_backends(&[
        claim(Payload::A, 1_000),
        complete(By::Owner, 3_000),
        Op::Advance { ms: 2_999 },
        claim(Payload::A, 1_000),
        Op::Advance { ms: 1 },
        // No takeover: the record was finished, the app saw the key once.
        claim(Payload::A, 1_000),
    ]);
}

#[test]
fn an_abandoned_claim_is_swept_only_once_kept_the_retention_past_its_lease() {
    on_timed_backends(&[
        claim(Payload::Unmarked, 1_000),
        Op::Advance { ms: ABANDONED_CLAIM_RETENTION_MS + 999 },
        Op::Sweep { batch: 1000, skew_ms: 0 },
        Op::Get { slot: 0 },
        Op::Advance { ms: 1 },
        Op::Sweep { batch: 1000, skew_ms: 0 },
        Op::Get { slot: 0 },
    ]);
}

#[test]
fn a_completed_record_is_swept_exactly_when_its_ttl_ends() {
    on_timed_backends(&[
        claim(Payload::Unmarked, 1_000),
        complete(By::Owner, 1_000),
        Op::Advance { ms: 999 },
        Op::Sweep { batch: 1000, skew_ms: 0 },
        Op::Advance { ms: 1 },
        Op::Sweep { batch: 1000, skew_ms: 0 },
        Op::Get { slot: 0 },
    ]);
}

/// Found by the model: the pipeline completed a key with `created_ms` = the time of the completion,
/// which the cache kept, while every backend kept the time of the claim. So the same completed key,
/// replayed, said it was created at one time from memory and at another from the store (after a
/// restart, an eviction, or on another replica). Now the backends store what they are given, and
/// the pipeline gives the claim's time.
#[test]
fn a_replay_from_memory_carries_the_creation_time_a_replay_from_the_store_does() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(&dir.path().join("created.db")).unwrap());
        let metrics = Arc::new(Metrics::new());
        let records = Records::new(store.clone(), CompletedCache::new(1 << 20), metrics);
        let id = RecordId { route: "r".into(), scope: String::new(), key: "k".into() };
        let claimed_at = idemgate::store::now_ms();
        let claim = |token, now_ms| Claim { id: id.clone(), token, fingerprint: None, now_ms, lease_ms: 60_000 };
        records.claim(claim(1, claimed_at)).await.unwrap();
        // As `pipeline::commit` builds it, once the app has answered.
        let completed_at = claimed_at + 500;
        let response = StoredResponse { status: 200, headers: vec![], body: "ok".into(), body_omitted: false };
        let done =
            Completed { fingerprint: None, response, created_ms: completed_at, expires_ms: completed_at + 60_000 };
        // Awaited: kept in memory at once, as for a duplicate that waits for the key.
        assert!(records.complete(&id, 1, Arc::new(done), true).await.unwrap());
        let created = |found| match found {
            ClaimOutcome::Completed(done) => done.created_ms,
            other => panic!("expected a replay, got {other:?}"),
        };
        let from_memory = created(records.claim(claim(2, completed_at)).await.unwrap());
        let from_store = created(store.claim(claim(3, completed_at)).await.unwrap());
        assert_eq!(from_memory, from_store, "claimed at {claimed_at}, completed at {completed_at}");
    });
}
