//! The embedded store: one SQLite file in WAL mode, written by one thread, synced by another.
//!
//! The writer thread owns the only connection. Requests reach it over a bounded queue, so the
//! async runtime never blocks on disk and a burst waits in line instead of piling up memory.
//!
//! Group commit, pipelined: the writer takes every job already waiting (up to `MAX_BATCH`) into
//! one transaction and commits it to the WAL; a lone job is committed at once, no timer. Claims,
//! releases and reads are answered right after that commit: they are recorded and survive the
//! process being killed. Completions are handed to the syncer thread, which `fdatasync`s the WAL
//! and only then answers them, so a completed record is on disk before its response leaves. One
//! sync covers every commit made before it started, and while it runs the writer goes on with the
//! next batch: the disk's sync latency bounds each request's wait, not the proxy's throughput.
//! (This is `synchronous=FULL`'s guarantee for completions, with the sync moved off the writer.)
//! Each claim stays atomic: it is one upsert, and jobs run one after another on the one thread.

use super::record::{Claim, ClaimOutcome, Completed, Record, RecordId, State, StoredResponse};
use super::{Store, StoreError, StoreFuture};
use bytes::Bytes;
use rusqlite::{Connection, OptionalExtension, params};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

const SCHEMA_VERSION: i64 = 2;
const MAX_BATCH: usize = 256;
/// At most one background checkpoint this often.
const CHECKPOINT_PACE: Duration = Duration::from_millis(100);
/// Past this many WAL pages (about 40 MiB) the writer checkpoints at commit after all, so the
/// WAL stays bounded if the background checkpointer cannot keep up.
const WAL_AUTOCHECKPOINT_PAGES: u32 = 10_000;
const QUEUE_DEPTH: usize = 4096;
/// How long a statement waits for a lock held by another process before the store counts as
/// unavailable (503) rather than slow.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Version 2. Rows live in rowid order, so the records a batch creates, and soon completes,
/// share the table's last pages; only the small key index is written at random. (Version 1
/// clustered rows by key, which wrote about four random pages per request.)
const SCHEMA: &str = "
CREATE TABLE records (
    id           INTEGER PRIMARY KEY,       -- insertion order
    route        TEXT    NOT NULL,
    scope        TEXT    NOT NULL,          -- sha-256 of the scope value, '' on unscoped routes
    key          TEXT    NOT NULL,
    state        INTEGER NOT NULL,          -- 0 in flight, 1 completed
    token        INTEGER NOT NULL,          -- the claim that owns the record
    fingerprint  BLOB,
    created_ms   INTEGER NOT NULL,
    expires_ms   INTEGER NOT NULL,          -- lease end while in flight, ttl end once completed
    status       INTEGER,
    headers      BLOB,
    body         BLOB,
    body_omitted INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX records_key ON records (route, scope, key);
CREATE INDEX records_expiry ON records (expires_ms);
";

/// From version 1 (clustered by key) to 2: the same columns, copied into the rowid table.
const MIGRATE_1_TO_2: &str = "
DROP INDEX records_expiry;
ALTER TABLE records RENAME TO records_v1;
{SCHEMA}
INSERT INTO records (route, scope, key, state, token, fingerprint, created_ms, expires_ms, status, headers, body, body_omitted)
    SELECT route, scope, key, state, token, fingerprint, created_ms, expires_ms, status, headers, body, body_omitted
    FROM records_v1 ORDER BY created_ms;
DROP TABLE records_v1;
";

/// The operations the writer thread performs.
enum Op {
    Claim(Claim),
    Complete(RecordId, u64, Completed),
    Release(RecordId, u64),
    Get(RecordId),
    Delete(RecordId),
    Sweep(i64, usize),
    Ping,
    /// Stop taking jobs; those already queued still run.
    Close,
}

enum Outcome {
    Claim(ClaimOutcome),
    Flag(bool),
    Record(Option<Record>),
    Count(usize),
    Unit,
}

struct Job {
    op: Op,
    reply: oneshot::Sender<Result<Outcome, StoreError>>,
}

impl Job {
    /// A completion's answer waits for the WAL to be synced; everything else is answered now.
    fn answer(self, result: Result<Outcome, StoreError>, syncer: &std::sync::mpsc::Sender<Synced>) {
        match (&self.op, result) {
            (Op::Complete(..), Ok(outcome)) => {
                if let Err(std::sync::mpsc::SendError((reply, _))) = syncer.send((self.reply, outcome)) {
                    let _ = reply.send(Err(StoreError::Closed));
                }
            }
            (_, result) => {
                let _ = self.reply.send(result);
            }
        }
    }
}

/// A committed completion waiting for the WAL sync.
type Synced = (oneshot::Sender<Result<Outcome, StoreError>>, Outcome);

#[derive(Clone)]
pub struct SqliteStore {
    jobs: mpsc::Sender<Job>,
    writer: Arc<std::sync::Mutex<Option<std::thread::JoinHandle<()>>>>,
}

impl SqliteStore {
    /// Opens (creating the file and its folder if missing) and migrates the database.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let conn = open_connection(path).map_err(|e| StoreError::Unavailable(format!("{}: {e}", path.display())))?;
        // The connection keeps the WAL file open (and so in place) for as long as the store runs.
        let wal_path = format!("{}-wal", path.display());
        let wal = std::fs::File::open(&wal_path).map_err(|e| StoreError::Unavailable(format!("{wal_path}: {e}")))?;
        let checkpoints =
            Connection::open(path).map_err(|e| StoreError::Unavailable(format!("{}: {e}", path.display())))?;
        let (jobs, rx) = mpsc::channel(QUEUE_DEPTH);
        let writer = std::thread::Builder::new()
            .name("idemgate-sqlite".into())
            .spawn(move || run_writer(conn, wal, checkpoints, rx))
            .map_err(|e| StoreError::Unavailable(format!("cannot start the writer thread: {e}")))?;
        Ok(SqliteStore { jobs, writer: Arc::new(std::sync::Mutex::new(Some(writer))) })
    }

    fn submit(&self, op: Op) -> StoreFuture<Outcome> {
        let jobs = self.jobs.clone();
        Box::pin(async move {
            let (reply, rx) = oneshot::channel();
            jobs.send(Job { op, reply }).await.map_err(|_| StoreError::Closed)?;
            rx.await.map_err(|_| StoreError::Closed)?
        })
    }
}

fn open_connection(path: &Path) -> rusqlite::Result<Connection> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
    }
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(rusqlite::Error::InvalidParameterName(format!("journal_mode is {mode}, WAL is required")));
    }
    // NORMAL: a commit writes the WAL without syncing it; the syncer thread syncs it before any
    // completion is answered (see the module docs). Checkpoints still sync as they always do.
    conn.execute_batch("PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=OFF;")?;
    conn.execute_batch(&format!("PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES};"))?;
    migrate(&conn)?;
    Ok(conn)
}

fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(rusqlite::Error::InvalidParameterName(format!(
            "database schema version {version} is newer than this idemgate understands ({SCHEMA_VERSION})"
        )));
    }
    let steps = match version {
        0 => SCHEMA.to_string(),
        1 => MIGRATE_1_TO_2.replace("{SCHEMA}", SCHEMA),
        _ => return Ok(()),
    };
    conn.execute_batch(&format!("BEGIN IMMEDIATE; {steps} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"))
}

fn run_writer(mut conn: Connection, wal: std::fs::File, checkpoints: Connection, mut rx: mpsc::Receiver<Job>) {
    let (synced, pending) = std::sync::mpsc::channel();
    let syncer = std::thread::Builder::new().name("idemgate-sync".into()).spawn(move || run_syncer(&wal, pending));
    let (wrote, written) = std::sync::mpsc::sync_channel(1);
    let checkpointer =
        std::thread::Builder::new().name("idemgate-ckpt".into()).spawn(move || run_checkpointer(&checkpoints, written));
    if checkpointer.is_err() {
        // Without the thread, SQLite's own checkpoints at commit keep the WAL bounded.
        let _ = conn.execute_batch("PRAGMA wal_autocheckpoint=1000;");
    }
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let closing = batch.iter().any(|job| matches!(job.op, Op::Close));
        run_batch(&mut conn, &mut batch, &synced);
        // A full channel means a checkpoint is already due: the signals coalesce.
        let _ = wrote.try_send(());
        if closing {
            rx.close();
        }
    }
    // The queue is closed and drained; once the last completions are synced, checkpoint so the
    // WAL does not outlive a clean stop.
    drop(synced);
    drop(wrote);
    for thread in [syncer, checkpointer].into_iter().flatten() {
        let _ = thread.join();
    }
    let _ = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);");
}

/// Copies committed WAL frames into the database file off the writer thread. A checkpoint run
/// by the writer at commit (SQLite's default) stalls every queued request while it writes and
/// syncs the database file; a PASSIVE checkpoint on its own connection waits for no one.
/// Paced, so that a busy writer does not turn into a continuous stream of database syncs.
fn run_checkpointer(conn: &Connection, written: std::sync::mpsc::Receiver<()>) {
    while written.recv().is_ok() {
        if let Err(e) = conn.execute_batch("PRAGMA wal_checkpoint(PASSIVE);") {
            tracing::warn!(error = %e, "background checkpoint failed; SQLite will checkpoint at commit");
        }
        // Not listening meanwhile: the writer's signals wait in the channel without waking us.
        std::thread::sleep(CHECKPOINT_PACE);
    }
}

/// Syncs the WAL for every completion committed before the sync started, then answers them.
/// If the thread could not be started, completions are answered with an error: never unsynced.
fn run_syncer(wal: &std::fs::File, pending: std::sync::mpsc::Receiver<Synced>) {
    while let Ok(first) = pending.recv() {
        let mut group = vec![first];
        group.extend(pending.try_iter());
        let result = wal.sync_data().map_err(|e| StoreError::Unavailable(format!("syncing the WAL: {e}")));
        for (reply, outcome) in group {
            let _ = reply.send(result.clone().map(|()| outcome));
        }
    }
}

/// Runs the batch in one transaction. If a job fails for a reason of its own, the transaction is
/// rolled back and each job runs in a transaction of its own, so that one bad job cannot fail its
/// neighbours. A store-wide failure (locked too long, disk full, I/O) fails the whole batch at
/// once: retrying each job would only hold every caller for another lock timeout.
fn run_batch(conn: &mut Connection, batch: &mut Vec<Job>, synced: &std::sync::mpsc::Sender<Synced>) {
    match apply_all(conn, batch) {
        Ok(outcomes) => {
            for (job, outcome) in batch.drain(..).zip(outcomes) {
                job.answer(Ok(outcome), synced);
            }
        }
        Err(e) if batch.len() > 1 && !store_wide(&e) => {
            for job in batch.drain(..) {
                let result = apply_all(conn, std::slice::from_ref(&job)).map(|mut v| v.remove(0));
                job.answer(result.map_err(unavailable), synced);
            }
        }
        Err(e) => {
            let e = unavailable(e);
            for job in batch.drain(..) {
                job.answer(Err(e.clone()), synced);
            }
        }
    }
}

fn store_wide(e: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode::*;
    matches!(
        e.sqlite_error_code(),
        Some(
            DatabaseBusy
                | DatabaseLocked
                | DiskFull
                | SystemIoFailure
                | DatabaseCorrupt
                | NotADatabase
                | ReadOnly
                | CannotOpen
        )
    )
}

fn apply_all(conn: &mut Connection, jobs: &[Job]) -> rusqlite::Result<Vec<Outcome>> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let outcomes = jobs.iter().map(|job| apply(&tx, &job.op)).collect::<Result<Vec<_>, _>>()?;
    tx.commit()?;
    Ok(outcomes)
}

fn unavailable(e: rusqlite::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn apply(conn: &Connection, op: &Op) -> rusqlite::Result<Outcome> {
    Ok(match op {
        Op::Claim(c) => Outcome::Claim(claim(conn, c)?),
        Op::Complete(id, token, done) => Outcome::Flag(complete(conn, id, *token, done)?),
        Op::Release(id, token) => {
            conn.prepare_cached("DELETE FROM records WHERE route=?1 AND scope=?2 AND key=?3 AND token=?4 AND state=0")?
                .execute(params![&*id.route, id.scope, id.key, *token as i64])?;
            Outcome::Unit
        }
        Op::Get(id) => Outcome::Record(get(conn, id)?),
        Op::Delete(id) => Outcome::Flag(
            conn.prepare_cached("DELETE FROM records WHERE route=?1 AND scope=?2 AND key=?3")?
                .execute(params![&*id.route, id.scope, id.key])?
                > 0,
        ),
        Op::Sweep(now_ms, limit) => Outcome::Count(
            conn.prepare_cached(
                "DELETE FROM records WHERE id IN (SELECT id FROM records WHERE expires_ms <= ?1 LIMIT ?2)",
            )?
            .execute(params![now_ms, *limit as i64])?,
        ),
        Op::Close => Outcome::Unit,
        Op::Ping => {
            // A write that changes nothing still needs the write lock and a writable file.
            conn.execute("UPDATE records SET state = state WHERE 0", [])?;
            Outcome::Unit
        }
    })
}

/// One statement decides the claim: insert the key, or take over a record whose lease or ttl
/// has ended. Only if that did not happen is the holder read, to tell replay from in-flight.
fn claim(conn: &Connection, c: &Claim) -> rusqlite::Result<ClaimOutcome> {
    let taken: Option<i64> = conn
        .prepare_cached(
            "INSERT INTO records (route, scope, key, state, token, fingerprint, created_ms, expires_ms)
             VALUES (?1, ?2, ?3, 0, ?4, ?5, ?6, ?7)
             ON CONFLICT (route, scope, key) DO UPDATE SET
                 state = 0, token = excluded.token, fingerprint = excluded.fingerprint,
                 created_ms = excluded.created_ms, expires_ms = excluded.expires_ms,
                 status = NULL, headers = NULL, body = NULL, body_omitted = 0
             WHERE records.expires_ms <= excluded.created_ms
             RETURNING token",
        )?
        .query_row(
            params![
                &*c.id.route,
                c.id.scope,
                c.id.key,
                c.token as i64,
                c.fingerprint.as_ref().map(|f| &f[..]),
                c.now_ms,
                c.now_ms.saturating_add(c.lease_ms)
            ],
            |r| r.get(0),
        )
        .optional()?;
    if taken == Some(c.token as i64) {
        return Ok(ClaimOutcome::Claimed { token: c.token });
    }
    let holder = conn
        .prepare_cached(
            "SELECT state, fingerprint, created_ms, expires_ms, status, headers, body, body_omitted
             FROM records WHERE route=?1 AND scope=?2 AND key=?3",
        )?
        .query_row(params![&*c.id.route, c.id.scope, c.id.key], |r| {
            let fingerprint: Option<Vec<u8>> = r.get(1)?;
            let fingerprint = fingerprint.and_then(|f| f.try_into().ok());
            if r.get::<_, i64>(0)? == 0 {
                return Ok(ClaimOutcome::InFlight { fingerprint, expires_ms: r.get(3)? });
            }
            let headers: Vec<u8> = r.get::<_, Option<Vec<u8>>>(5)?.unwrap_or_default();
            let body: Vec<u8> = r.get::<_, Option<Vec<u8>>>(6)?.unwrap_or_default();
            Ok(ClaimOutcome::Completed(Arc::new(Completed {
                fingerprint,
                created_ms: r.get(2)?,
                expires_ms: r.get(3)?,
                response: StoredResponse {
                    status: r.get::<_, Option<u16>>(4)?.unwrap_or(500),
                    headers: StoredResponse::decode_headers(&headers),
                    body: Bytes::from(body),
                    body_omitted: r.get::<_, i64>(7)? != 0,
                },
            })))
        })?;
    Ok(holder)
}

fn complete(conn: &Connection, id: &RecordId, token: u64, done: &Completed) -> rusqlite::Result<bool> {
    let changed = conn
        .prepare_cached(
            "UPDATE records SET state = 1, status = ?5, headers = ?6, body = ?7, body_omitted = ?8, expires_ms = ?9
             WHERE route = ?1 AND scope = ?2 AND key = ?3 AND token = ?4 AND state = 0",
        )?
        .execute(params![
            &*id.route,
            id.scope,
            id.key,
            token as i64,
            done.response.status,
            done.response.encode_headers(),
            &done.response.body[..],
            done.response.body_omitted,
            done.expires_ms
        ])?;
    Ok(changed == 1)
}

fn get(conn: &Connection, id: &RecordId) -> rusqlite::Result<Option<Record>> {
    conn.prepare_cached(
        "SELECT state, status, created_ms, expires_ms FROM records WHERE route=?1 AND scope=?2 AND key=?3",
    )?
    .query_row(params![&*id.route, id.scope, id.key], |r| {
        Ok(Record {
            state: if r.get::<_, i64>(0)? == 0 { State::InFlight } else { State::Completed },
            status: r.get(1)?,
            created_ms: r.get(2)?,
            expires_ms: r.get(3)?,
        })
    })
    .optional()
}

macro_rules! expect_outcome {
    ($fut:expr, $variant:ident) => {{
        let fut = $fut;
        Box::pin(async move {
            match fut.await? {
                Outcome::$variant(v) => Ok(v),
                _ => Err(StoreError::Unavailable("the writer answered another operation".into())),
            }
        })
    }};
}

impl Store for SqliteStore {
    fn claim(&self, claim: Claim) -> StoreFuture<ClaimOutcome> {
        expect_outcome!(self.submit(Op::Claim(claim)), Claim)
    }
    fn complete(&self, id: RecordId, token: u64, completed: Completed) -> StoreFuture<bool> {
        expect_outcome!(self.submit(Op::Complete(id, token, completed)), Flag)
    }
    fn release(&self, id: RecordId, token: u64) -> StoreFuture<()> {
        let fut = self.submit(Op::Release(id, token));
        Box::pin(async move { fut.await.map(drop) })
    }
    fn get(&self, id: RecordId) -> StoreFuture<Option<Record>> {
        expect_outcome!(self.submit(Op::Get(id)), Record)
    }
    fn delete(&self, id: RecordId) -> StoreFuture<bool> {
        expect_outcome!(self.submit(Op::Delete(id)), Flag)
    }
    fn sweep(&self, now_ms: i64, batch: usize) -> StoreFuture<usize> {
        expect_outcome!(self.submit(Op::Sweep(now_ms, batch)), Count)
    }
    fn check_writable(&self) -> StoreFuture<()> {
        let fut = self.submit(Op::Ping);
        Box::pin(async move { fut.await.map(drop) })
    }
    /// Waits for the writer to finish every queued job, checkpoint and close the file.
    fn close(&self) -> StoreFuture<()> {
        let closed = self.submit(Op::Close);
        let writer = self.writer.clone();
        Box::pin(async move {
            closed.await?;
            let handle = writer.lock().map_err(|_| StoreError::Closed)?.take();
            if let Some(handle) = handle {
                let _ = tokio::task::spawn_blocking(move || handle.join()).await;
            }
            Ok(())
        })
    }
}
