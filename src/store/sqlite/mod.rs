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
//!
//! Async routes' events (see [`super::queue`]) live in the `events` table and go through the same
//! thread. An enqueue is answered like a completion, after the sync: its answer acknowledges the
//! sender, who will not send it again. The ends of attempts are answered at commit: a delivery
//! that a power loss takes back is only made again (at least once).

mod events;
mod schema;
mod sql;
mod versions;
mod writer;

use super::queue::{Attempted, Enqueued, NewEvent, QueueStats, QueuedEvent};
use super::record::{Claim, ClaimOutcome, Completed, Record, RecordId};
use super::{Store, StoreError, StoreFuture};
use crate::version::Version;
use rusqlite::Connection;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Past this many WAL pages (about 40 MiB) the writer checkpoints at commit after all, so the
/// WAL stays bounded if the background checkpointer cannot keep up.
const WAL_AUTOCHECKPOINT_PAGES: u32 = 10_000;
const QUEUE_DEPTH: usize = 4096;
const STATEMENT_CACHE: usize = 64;
/// How long a statement waits for a lock held by another process before the store counts as
/// unavailable (503) rather than slow.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// A lookup is a fallback for a slow writer: it must not be slow itself.
const READ_BUSY_TIMEOUT: Duration = Duration::from_millis(500);

/// The operations the writer thread performs.
enum Op {
    Claim(Claim),
    Complete(RecordId, u64, Arc<Completed>),
    Release(RecordId, u64),
    Get(RecordId),
    Delete(RecordId),
    Sweep(i64, usize),
    /// An entity's version unless expired at the time given.
    Version(RecordId, i64),
    /// Answered once committed, like a claim: a lost raise only lets a stale event through.
    RaiseVersion {
        id: RecordId,
        version: Version,
        expires_ms: i64,
        now_ms: i64,
    },
    /// Answered after the WAL sync that covers it, as a completion is.
    Enqueue(Box<NewEvent>),
    TakeDue {
        route: String,
        now_ms: i64,
        max: usize,
        token: u64,
        lease_ms: i64,
    },
    FinishAttempt(RecordId, u64, Attempted),
    Event(RecordId),
    DeadLetters(String, usize),
    RetryDead(RecordId, i64),
    /// Only a dead letter when `.1`.
    ForgetEvent(RecordId, bool),
    QueueStats(String),
    Ping,
    /// Stop taking jobs; those already queued still run.
    Close,
}

enum Outcome {
    Claim(ClaimOutcome),
    Flag(bool),
    Record(Option<Record>),
    Count(usize),
    Version(Option<Version>),
    Enqueued(Enqueued),
    Events(Vec<QueuedEvent>),
    Event(Option<Box<QueuedEvent>>),
    QueueStats(QueueStats),
    Unit,
}

impl Op {
    /// Whether what this op committed must be synced before it is answered: a completion, or an
    /// event newly queued. (Refused or duplicate enqueues wrote nothing.)
    fn needs_sync(&self, outcome: &Outcome) -> bool {
        matches!((self, outcome), (Op::Complete(..), _) | (Op::Enqueue(_), Outcome::Enqueued(Enqueued::Queued)))
    }
}

struct Job {
    op: Op,
    reply: oneshot::Sender<(Op, Result<Outcome, StoreError>)>,
}

impl Job {
    /// A completion's answer waits for the WAL to be synced, and so does a claim that found a
    /// completed record while some completion is not synced yet: a replay must never go out of a
    /// record that a power loss could still take back. Likewise an enqueue (the sender is
    /// acknowledged on its answer), and a duplicate of an event that may not be synced yet.
    /// Everything else is answered now.
    fn answer(self, result: Result<Outcome, StoreError>, syncer: &std::sync::mpsc::Sender<Synced>, sync: &SyncState) {
        let wait = match (&self.op, &result) {
            (op, Ok(outcome)) if op.needs_sync(outcome) => true,
            (Op::Claim(_), Ok(Outcome::Claim(ClaimOutcome::Completed(_)))) => sync.pending(),
            (Op::Enqueue(_), Ok(Outcome::Enqueued(Enqueued::Duplicate(_)))) => sync.pending(),
            _ => false,
        };
        match result {
            Ok(outcome) if wait => {
                let seq = sync.committed.load(Ordering::Acquire);
                if let Err(std::sync::mpsc::SendError((job, ..))) = syncer.send((self, outcome, seq)) {
                    job.send(Err(StoreError::Closed));
                }
            }
            result => self.send(result),
        }
    }

    /// The op goes back with its answer, to be freed by the thread that built it: glibc's `free`
    /// of a chunk from another thread's arena takes that arena's lock, and under load the worker
    /// threads allocating in it made every such free a futex wait (about a third of idemgate's
    /// futex calls per first-seen request, docs/performance.md).
    fn send(self, result: Result<Outcome, StoreError>) {
        let _ = self.reply.send((self.op, result));
    }
}

/// A committed answer waiting for the WAL sync that covers commit number `.2`.
type Synced = (Job, Outcome, u64);

/// How far the WAL is synced: transactions that committed a completion or a new event are
/// numbered, and the syncer records the highest number its last sync covered.
#[derive(Default)]
pub(crate) struct SyncState {
    committed: AtomicU64,
    synced: AtomicU64,
}

impl SyncState {
    /// Whether a committed completion or enqueue may not be on disk yet.
    fn pending(&self) -> bool {
        self.synced.load(Ordering::Acquire) < self.committed.load(Ordering::Acquire)
    }
}

#[derive(Clone)]
pub struct SqliteStore {
    jobs: mpsc::Sender<Job>,
    writer: Arc<std::sync::Mutex<Option<std::thread::JoinHandle<()>>>>,
    path: Arc<std::path::PathBuf>,
    /// A read-only connection for [`Store::lookup`]: WAL readers wait neither for the writer
    /// thread's queue nor for another process's write lock.
    reader: Arc<std::sync::Mutex<Connection>>,
    sync: Arc<SyncState>,
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
        let reader = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .and_then(|reader| reader.busy_timeout(READ_BUSY_TIMEOUT).map(|()| reader))
            .map_err(|e| StoreError::Unavailable(format!("{}: {e}", path.display())))?;
        let (jobs, rx) = mpsc::channel(QUEUE_DEPTH);
        let sync = Arc::new(SyncState::default());
        let writer_sync = sync.clone();
        let (prepared, ready) = std::sync::mpsc::sync_channel(1);
        let writer = std::thread::Builder::new()
            .name("idemgate-sqlite".into())
            .spawn(move || writer::run_writer(conn, wal, checkpoints, rx, writer_sync, prepared))
            .map_err(|e| StoreError::Unavailable(format!("cannot start the writer thread: {e}")))?;
        // The writer prepares its statements first: a schema they do not fit fails the open, by path.
        ready
            .recv()
            .unwrap_or_else(|_| Err("the writer thread ended before it was ready".into()))
            .map_err(|e| StoreError::Unavailable(format!("{}: {e}", path.display())))?;
        Ok(SqliteStore {
            jobs,
            writer: Arc::new(std::sync::Mutex::new(Some(writer))),
            path: Arc::new(path.to_path_buf()),
            reader: Arc::new(std::sync::Mutex::new(reader)),
            sync,
        })
    }

    /// Transactions with a completion or an enqueue committed, and how many of them the WAL sync
    /// covers.
    pub fn sync_progress(&self) -> (u64, u64) {
        (self.sync.committed.load(Ordering::Acquire), self.sync.synced.load(Ordering::Acquire))
    }

    fn submit(&self, op: Op) -> StoreFuture<Outcome> {
        let jobs = self.jobs.clone();
        Box::pin(async move {
            let (reply, rx) = oneshot::channel();
            jobs.send(Job { op, reply }).await.map_err(|_| StoreError::Closed)?;
            // `_op` is dropped here, on this thread (see `Job::send`).
            let (_op, result) = rx.await.map_err(|_| StoreError::Closed)?;
            result
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
    // A statement with `LIMIT ?` would otherwise be compiled again on every run: SQLite plans
    // such a LIMIT for its bound value, and rusqlite's statement cache clears the bindings of
    // every statement handed back to it, which expires the plan. The async inbox's `take_due`
    // runs per delivery; re-preparing it took a fifth of the writer thread (docs/performance.md).
    conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    conn.execute_batch(&format!("PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES};"))?;
    // Room for every statement the writer runs (about 25), so none is evicted and compiled again.
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    schema::migrate(&conn)?;
    events::recover(&conn)?;
    Ok(conn)
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
    fn complete(&self, id: RecordId, token: u64, completed: Arc<Completed>) -> StoreFuture<bool> {
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
    fn version(&self, id: RecordId) -> StoreFuture<Option<Version>> {
        expect_outcome!(self.submit(Op::Version(id, super::now_ms())), Version)
    }
    fn raise_version(&self, id: RecordId, version: Version, expires_ms: i64) -> StoreFuture<()> {
        let fut = self.submit(Op::RaiseVersion { id, version, expires_ms, now_ms: super::now_ms() });
        Box::pin(async move { fut.await.map(drop) })
    }
    fn check_writable(&self) -> StoreFuture<()> {
        let fut = self.submit(Op::Ping);
        Box::pin(async move { fut.await.map(drop) })
    }
    fn supports_queue(&self) -> bool {
        true
    }
    fn enqueue(&self, event: NewEvent) -> StoreFuture<Enqueued> {
        expect_outcome!(self.submit(Op::Enqueue(Box::new(event))), Enqueued)
    }
    fn take_due(
        &self,
        route: &str,
        now_ms: i64,
        max: usize,
        token: u64,
        lease_ms: i64,
    ) -> StoreFuture<Vec<QueuedEvent>> {
        let route = route.to_string();
        expect_outcome!(self.submit(Op::TakeDue { route, now_ms, max, token, lease_ms }), Events)
    }
    fn finish_attempt(&self, id: RecordId, token: u64, attempted: Attempted) -> StoreFuture<bool> {
        expect_outcome!(self.submit(Op::FinishAttempt(id, token, attempted)), Flag)
    }
    fn event(&self, id: RecordId) -> StoreFuture<Option<QueuedEvent>> {
        let found: StoreFuture<Option<Box<QueuedEvent>>> = expect_outcome!(self.submit(Op::Event(id)), Event);
        Box::pin(async move { Ok(found.await?.map(|event| *event)) })
    }
    fn dead_letters(&self, route: &str, limit: usize) -> StoreFuture<Vec<QueuedEvent>> {
        expect_outcome!(self.submit(Op::DeadLetters(route.to_string(), limit)), Events)
    }
    fn retry_dead(&self, id: RecordId, now_ms: i64) -> StoreFuture<bool> {
        expect_outcome!(self.submit(Op::RetryDead(id, now_ms)), Flag)
    }
    fn forget_event(&self, id: RecordId) -> StoreFuture<bool> {
        expect_outcome!(self.submit(Op::ForgetEvent(id, false)), Flag)
    }
    fn forget_dead(&self, id: RecordId) -> StoreFuture<bool> {
        expect_outcome!(self.submit(Op::ForgetEvent(id, true)), Flag)
    }
    fn queue_stats(&self, route: &str) -> StoreFuture<QueueStats> {
        expect_outcome!(self.submit(Op::QueueStats(route.to_string())), QueueStats)
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
    fn can_lookup(&self) -> bool {
        true
    }
    fn lookup(&self, id: RecordId) -> StoreFuture<Option<Arc<Completed>>> {
        let reader = self.reader.clone();
        // The reader sees what is committed, synced or not: while a completion awaits its sync,
        // the answer must come from the writer, which holds replays back until the sync.
        let sync = self.sync.clone();
        let committed = sync.committed.load(Ordering::Acquire);
        if sync.synced.load(Ordering::Acquire) < committed {
            return Box::pin(async { Ok(None) });
        }
        Box::pin(async move {
            let found = tokio::task::spawn_blocking(move || {
                let conn = crate::lock(&reader);
                sql::completed(&conn, &id)
            });
            match found.await {
                // A completion committed while this read ran may be what it found, unsynced.
                Ok(Ok(_)) if sync.committed.load(Ordering::Acquire) != committed => Ok(None),
                Ok(Ok(found)) => Ok(found),
                Ok(Err(e)) => Err(StoreError::Unavailable(e.to_string())),
                Err(e) => Err(StoreError::Unavailable(e.to_string())),
            }
        })
    }
    /// Counted on a connection of its own, off the writer thread: WAL readers never block it.
    fn stats(&self) -> StoreFuture<Option<super::StoreStats>> {
        let path = self.path.clone();
        Box::pin(async move {
            let count = tokio::task::spawn_blocking(move || {
                let conn = Connection::open_with_flags(&*path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
                let records: i64 = conn.query_row("SELECT count(*) FROM records", [], |r| r.get(0))?;
                let size = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
                let wal_bytes = size(std::path::Path::new(&format!("{}-wal", path.display())));
                Ok::<_, rusqlite::Error>(super::StoreStats {
                    records: records as u64,
                    bytes: size(&path) + wal_bytes,
                    wal_bytes,
                })
            });
            match count.await {
                Ok(Ok(stats)) => Ok(Some(stats)),
                Ok(Err(e)) => Err(StoreError::Unavailable(e.to_string())),
                Err(e) => Err(StoreError::Unavailable(e.to_string())),
            }
        })
    }
}
