//! The threads behind the store: the writer (group commit), the syncer (WAL fdatasync before
//! completions are answered) and the checkpointer (WAL pages into the database file).

use super::sql::{Hot, apply};
use super::{Job, Op, Outcome, SyncState, Synced};
use crate::store::StoreError;
use rusqlite::Connection;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::mpsc;

const MAX_BATCH: usize = 256;
/// At most one background checkpoint this often.
const CHECKPOINT_PACE: Duration = Duration::from_millis(100);

pub(super) fn run_writer(
    conn: Connection,
    wal: std::fs::File,
    checkpoints: Connection,
    mut rx: mpsc::Receiver<Job>,
    sync: Arc<SyncState>,
    prepared: std::sync::mpsc::SyncSender<Result<(), String>>,
) {
    // Prepared once, on the thread that runs them (a statement borrows its connection), before
    // anything else starts; `open` waits for the answer.
    let mut hot = match Hot::prepare(&conn) {
        Ok(hot) => hot,
        Err(e) => {
            let _ = prepared.send(Err(e.to_string()));
            return;
        }
    };
    let _ = prepared.send(Ok(()));
    let (synced, pending) = std::sync::mpsc::channel();
    let syncer_state = sync.clone();
    let syncer = std::thread::Builder::new()
        .name("idemgate-sync".into())
        .spawn(move || run_syncer(&wal, pending, &syncer_state));
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
        run_batch(&conn, &mut hot, &mut batch, &synced, &sync);
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
    drop(hot);
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
fn run_syncer(wal: &std::fs::File, pending: std::sync::mpsc::Receiver<Synced>, sync: &SyncState) {
    while let Ok(first) = pending.recv() {
        let mut group = vec![first];
        group.extend(pending.try_iter());
        // Every commit numbered up to the highest here was made before this sync starts.
        let covers = group.iter().map(|(_, _, seq)| *seq).max().unwrap_or(0);
        let result = wal.sync_data().map_err(|e| StoreError::Unavailable(format!("syncing the WAL: {e}")));
        if result.is_ok() {
            sync.synced.fetch_max(covers, Ordering::AcqRel);
        }
        for (job, outcome, _) in group {
            job.send(result.clone().map(|()| outcome));
        }
    }
}

/// Runs the batch in one transaction. If a job fails for a reason of its own, the transaction is
/// rolled back and each job runs in a transaction of its own, so that one bad job cannot fail its
/// neighbours. A store-wide failure (locked too long, disk full, I/O) fails the whole batch at
/// once: retrying each job would only hold every caller for another lock timeout.
fn run_batch(
    conn: &Connection,
    hot: &mut Hot<'_>,
    batch: &mut Vec<Job>,
    synced: &std::sync::mpsc::Sender<Synced>,
    sync: &SyncState,
) {
    match apply_all(conn, hot, batch) {
        Ok(outcomes) => {
            committed(batch.iter().zip(&outcomes), sync);
            for (job, outcome) in batch.drain(..).zip(outcomes) {
                job.answer(Ok(outcome), synced, sync);
            }
        }
        Err(e) if batch.len() > 1 && !store_wide(&e) => {
            for job in batch.drain(..) {
                let result = apply_all(conn, hot, std::slice::from_ref(&job)).map(|mut v| v.remove(0));
                if let Ok(outcome) = &result {
                    committed([(&job, outcome)], sync);
                }
                job.answer(result.map_err(unavailable), synced, sync);
            }
        }
        Err(e) => {
            let e = unavailable(e);
            for job in batch.drain(..) {
                job.answer(Err(e.clone()), synced, sync);
            }
        }
    }
}

/// Numbers a committed transaction that holds a completion or a newly queued event (see
/// [`SyncState`]).
fn committed<'a>(done: impl IntoIterator<Item = (&'a Job, &'a Outcome)>, sync: &SyncState) {
    if done.into_iter().any(|(job, outcome)| job.op.needs_sync(outcome)) {
        sync.committed.fetch_add(1, Ordering::AcqRel);
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

/// BEGIN and COMMIT as prepared statements: `execute_batch` would parse them again for every batch.
fn apply_all(conn: &Connection, hot: &mut Hot<'_>, jobs: &[Job]) -> rusqlite::Result<Vec<Outcome>> {
    hot.begin.execute([])?;
    let applied = jobs
        .iter()
        .map(|job| apply(conn, hot, &job.op))
        .collect::<Result<Vec<_>, _>>()
        .and_then(|outcomes| hot.commit.execute([]).map(|_| outcomes));
    if applied.is_err() && !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    applied
}

fn unavailable(e: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode::*;
    match e.sqlite_error_code() {
        Some(DatabaseBusy | DatabaseLocked) => StoreError::Busy(e.to_string()),
        Some(DatabaseCorrupt | NotADatabase) => StoreError::Corrupt(e.to_string()),
        _ => StoreError::Unavailable(e.to_string()),
    }
}
