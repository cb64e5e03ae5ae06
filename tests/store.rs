//! What is SQLite's own: records surviving a reopen, the journal mode, the schema version and its
//! migration. The contract every backend keeps is in tests/backends.rs.

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use idemgate::store::{Claim, ClaimOutcome, Completed, RecordId, SqliteStore, State, Store, StoredResponse, now_ms};

fn id(key: &str) -> RecordId {
    RecordId { route: "r".into(), scope: "s".into(), key: key.into() }
}

fn claim(key: &str, token: u64) -> Claim {
    Claim { id: id(key), token, fingerprint: Some([7; 32]), now_ms: now_ms(), lease_ms: 60_000 }
}

fn response() -> std::sync::Arc<Completed> {
    std::sync::Arc::new(Completed {
        fingerprint: Some([7; 32]),
        response: StoredResponse {
            status: 201,
            headers: vec![
                (HeaderName::from_static("content-type"), HeaderValue::from_static("application/json")),
                (HeaderName::from_static("x-multi"), HeaderValue::from_static("a")),
                (HeaderName::from_static("x-multi"), HeaderValue::from_static("b")),
            ],
            body: Bytes::from_static(b"{\"ok\":true}\n\x00\xff"),
            body_omitted: false,
        },
        created_ms: now_ms(),
        expires_ms: now_ms() + 60_000,
    })
}

#[tokio::test]
async fn only_the_owning_token_completes_or_releases_and_the_record_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let store = SqliteStore::open(&path).unwrap();
    assert!(matches!(store.claim(claim("k", 1)).await.unwrap(), ClaimOutcome::Claimed { token: 1, took_over: false }));
    assert!(!store.complete(id("k"), 2, response()).await.unwrap(), "another token cannot complete");
    store.release(id("k"), 2).await.unwrap();
    assert!(matches!(store.claim(claim("k", 3)).await.unwrap(), ClaimOutcome::InFlight { .. }), "nor release");
    assert!(store.complete(id("k"), 1, response()).await.unwrap());
    assert!(!store.complete(id("k"), 1, response()).await.unwrap(), "a completed record is final");
    store.close().await.unwrap();

    let store = SqliteStore::open(&path).unwrap();
    match store.claim(claim("k", 4)).await.unwrap() {
        ClaimOutcome::Completed(done) => assert_eq!(done.response, response().response, "stored exactly"),
        other => panic!("expected the completed record, got {other:?}"),
    }
    let record = store.get(id("k")).await.unwrap().unwrap();
    assert_eq!(record.state, State::Completed);
    assert_eq!(record.status, Some(201));
    assert!(store.delete(id("k")).await.unwrap());
    assert!(store.get(id("k")).await.unwrap().is_none());
    store.close().await.unwrap();
}

#[tokio::test]
async fn the_database_is_wal_versioned_and_created_with_its_folder() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested").join("deeper").join("s.db");
    let store = SqliteStore::open(&path).unwrap();
    store.check_writable().await.unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
    assert_eq!(mode, "wal");
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    assert_eq!(version, 4);
    drop(conn);
    store.close().await.unwrap();

    // A database from a newer idemgate is refused, not rewritten.
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch("PRAGMA user_version = 99").unwrap();
    drop(conn);
    let err = SqliteStore::open(&path).err().expect("refused");
    assert!(err.to_string().contains("newer"), "{err}");
}

#[tokio::test]
async fn a_version_1_database_is_migrated_with_its_records() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v1.db");
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode=WAL;
         CREATE TABLE records (
             route TEXT NOT NULL, scope TEXT NOT NULL, key TEXT NOT NULL, state INTEGER NOT NULL,
             token INTEGER NOT NULL, fingerprint BLOB, created_ms INTEGER NOT NULL, expires_ms INTEGER NOT NULL,
             status INTEGER, headers BLOB, body BLOB, body_omitted INTEGER NOT NULL DEFAULT 0,
             PRIMARY KEY (route, scope, key)) WITHOUT ROWID;
         CREATE INDEX records_expiry ON records (expires_ms);
         PRAGMA user_version = 1;",
    )
    .unwrap();
    conn.execute(
        "INSERT INTO records VALUES ('r', 's', 'old', 1, 9, NULL, ?1, ?2, 202, CAST('x-a:1\n' AS BLOB), CAST('kept' AS BLOB), 0)",
        rusqlite::params![now_ms(), now_ms() + 60_000],
    )
    .unwrap();
    drop(conn);

    let store = SqliteStore::open(&path).unwrap();
    match store.claim(Claim { fingerprint: None, ..claim("old", 1) }).await.unwrap() {
        ClaimOutcome::Completed(done) => {
            assert_eq!(done.response.status, 202);
            assert_eq!(&done.response.body[..], b"kept");
            assert_eq!(done.response.headers[0].0, "x-a");
        }
        other => panic!("the v1 record must survive the migration, got {other:?}"),
    }
    assert!(matches!(store.claim(claim("new", 2)).await.unwrap(), ClaimOutcome::Claimed { .. }));
    store.close().await.unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    assert_eq!(version, 4);
}

/// A duplicate's claim that finds a completed record answers only once the WAL sync covering
/// that completion has finished: a replay that reached a client must survive a power loss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_never_answers_with_a_completion_that_is_not_synced() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("r.db")).unwrap();
    let mut replays = 0;
    for i in 0..200u64 {
        let key = format!("k{i}");
        assert!(matches!(store.claim(claim(&key, i)).await.unwrap(), ClaimOutcome::Claimed { .. }));
        let completing = {
            let store = store.clone();
            let key = key.clone();
            tokio::spawn(async move { store.complete(id(&key), i, response()).await })
        };
        // The duplicate races the completion's sync.
        loop {
            match store.claim(claim(&key, 1_000_000 + i)).await.unwrap() {
                ClaimOutcome::Completed(_) => {
                    // This completion's transaction is the (i+1)-th with a completion.
                    let (committed, synced) = store.sync_progress();
                    assert!(synced > i, "replayed from completion {} before its sync ({synced}/{committed})", i + 1);
                    replays += 1;
                    break;
                }
                // Claimed before the completion was committed: ask again.
                ClaimOutcome::InFlight { .. } => tokio::task::yield_now().await,
                other => panic!("{other:?}"),
            }
        }
        assert!(completing.await.unwrap().unwrap());
    }
    assert_eq!(replays, 200);
}
