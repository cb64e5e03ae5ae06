//! The statements: one function per operation, run on the writer thread inside its transaction.

use super::{Op, Outcome, events, versions};
use crate::store::ABANDONED_CLAIM_RETENTION_MS;
use crate::store::record::{Claim, ClaimOutcome, Completed, Record, RecordId, State, StoredResponse};
use bytes::Bytes;
use rusqlite::{Connection, OptionalExtension, Statement, params};
use std::sync::Arc;

/// The statements every first-seen key runs, prepared once for the writer's life. rusqlite's
/// statement cache hashes a statement's whole text (SipHash) when it is taken and again when it
/// is given back: about 1,000 instructions a statement, five statements a key
/// (docs/performance.md). Everything rarer goes through the cache.
pub(super) struct Hot<'c> {
    pub begin: Statement<'c>,
    pub commit: Statement<'c>,
    insert_claim: Statement<'c>,
    holder: Statement<'c>,
    complete: Statement<'c>,
}

impl<'c> Hot<'c> {
    pub(super) fn prepare(conn: &'c Connection) -> rusqlite::Result<Hot<'c>> {
        Ok(Hot {
            begin: conn.prepare("BEGIN IMMEDIATE")?,
            commit: conn.prepare("COMMIT")?,
            insert_claim: conn.prepare(INSERT_CLAIM)?,
            holder: conn.prepare(HOLDER)?,
            complete: conn.prepare(COMPLETE)?,
        })
    }
}

pub(super) fn apply(conn: &Connection, hot: &mut Hot<'_>, op: &Op) -> rusqlite::Result<Outcome> {
    Ok(match op {
        Op::Claim(c) => Outcome::Claim(claim(conn, hot, c)?),
        Op::Complete(id, token, done) => Outcome::Flag(complete(hot, id, *token, done)?),
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
        Op::Sweep(now_ms, limit) => Outcome::Count(sweep_all(conn, *now_ms, *limit)?),
        Op::Version(id, now_ms) => Outcome::Version(versions::get(conn, id, *now_ms)?),
        Op::RaiseVersion { id, version, expires_ms, now_ms } => {
            versions::raise(conn, id, version, *expires_ms, *now_ms)?;
            Outcome::Unit
        }
        Op::Enqueue(event) => Outcome::Enqueued(events::enqueue(conn, event)?),
        Op::TakeDue { route, now_ms, max, token, lease_ms } => {
            Outcome::Events(events::take_due(conn, route, *now_ms, *max, *token, *lease_ms)?)
        }
        Op::FinishAttempt(id, token, attempted) => Outcome::Flag(events::finish_attempt(conn, id, *token, attempted)?),
        Op::Event(id) => Outcome::Event(events::event(conn, id)?.map(Box::new)),
        Op::DeadLetters(route, limit) => Outcome::Events(events::dead_letters(conn, route, *limit)?),
        Op::RetryDead(id, now_ms) => Outcome::Flag(events::retry_dead(conn, id, *now_ms)?),
        Op::ForgetEvent(id, only_dead) => Outcome::Flag(events::forget(conn, id, *only_dead)?),
        Op::QueueStats(route) => Outcome::QueueStats(events::stats(conn, route)?),
        Op::Close => Outcome::Unit,
        Op::Ping => {
            // A write that changes nothing still needs the write lock and a writable file.
            conn.execute("UPDATE records SET state = state WHERE 0", [])?;
            Outcome::Unit
        }
    })
}

/// Records first, then entity versions, then finished events, within one budget of `limit` rows.
fn sweep_all(conn: &Connection, now_ms: i64, limit: usize) -> rusqlite::Result<usize> {
    let mut swept = sweep(conn, now_ms, limit)?;
    swept += versions::sweep(conn, now_ms, limit.saturating_sub(swept))?;
    swept += events::sweep(conn, now_ms, limit.saturating_sub(swept))?;
    Ok(swept)
}

/// Deletes up to `limit` expired records (abandoned claims only once they are older than
/// [`ABANDONED_CLAIM_RETENTION_MS`]); returns how many.
fn sweep(conn: &Connection, now_ms: i64, limit: usize) -> rusqlite::Result<usize> {
    conn.prepare_cached(
        "DELETE FROM records WHERE id IN
             (SELECT id FROM records WHERE expires_ms <= ?1 AND (state = 1 OR expires_ms <= ?2) LIMIT ?3)",
    )?
    .execute(params![now_ms, now_ms.saturating_sub(ABANDONED_CLAIM_RETENTION_MS), limit as i64])
}

/// A claim is decided in at most three statements, the two common cases in one or two: insert
/// the key (`DO NOTHING` on a conflict: no statement journal, no `RETURNING` table, as cheap as
/// an insert gets); else read the holder, which answers a replay or an in-flight key as it is;
/// only a holder whose lease or ttl has ended is taken over. Each claim runs alone on the writer
/// thread, inside its batch's transaction, so the three are one decision.
///
/// `status` means nothing while a record is in flight, so a takeover of an abandoned claim
/// (one whose lease ended) marks itself there with 0: `RETURNING` sees only the new row, and
/// this is how it tells that takeover, a possible second delivery, from a takeover of an expired
/// completed record.
fn claim(conn: &Connection, hot: &mut Hot<'_>, c: &Claim) -> rusqlite::Result<ClaimOutcome> {
    let fingerprint = c.fingerprint.as_ref().map(|f| &f[..]);
    let expires_ms = c.now_ms.saturating_add(c.lease_ms);
    let inserted = hot.insert_claim.execute(params![
        &*c.id.route,
        c.id.scope,
        c.id.key,
        c.token as i64,
        fingerprint,
        c.now_ms,
        expires_ms
    ])?;
    if inserted == 1 {
        return Ok(ClaimOutcome::Claimed { token: c.token, took_over: false });
    }
    // Decoded only if it is the answer: a holder about to be taken over needs no copy of its
    // headers and body.
    let live = hot.holder.query_row(params![&*c.id.route, c.id.scope, c.id.key], |r| {
        if r.get::<_, i64>(3)? > c.now_ms { holder(r).map(Some) } else { Ok(None) }
    })?;
    if let Some(holder) = live {
        return Ok(holder);
    }
    let status: Option<i64> = conn
        .prepare_cached(
            "UPDATE records SET
                 state = 0, token = ?4, fingerprint = ?5, created_ms = ?6, expires_ms = ?7,
                 status = CASE WHEN state = 0 THEN 0 END,
                 headers = NULL, body = NULL, body_omitted = 0
             WHERE route = ?1 AND scope = ?2 AND key = ?3
             RETURNING status",
        )?
        .query_row(
            params![&*c.id.route, c.id.scope, c.id.key, c.token as i64, fingerprint, c.now_ms, expires_ms],
            |r| r.get(0),
        )?;
    Ok(ClaimOutcome::Claimed { token: c.token, took_over: status == Some(0) })
}

const INSERT_CLAIM: &str = "INSERT INTO records (route, scope, key, state, token, fingerprint, created_ms, expires_ms)
                            VALUES (?1, ?2, ?3, 0, ?4, ?5, ?6, ?7)
                            ON CONFLICT (route, scope, key) DO NOTHING";

const HOLDER: &str = "SELECT state, fingerprint, created_ms, expires_ms, status, headers, body, body_omitted
                      FROM records WHERE route=?1 AND scope=?2 AND key=?3";

/// A row of [`HOLDER`]: what holds the key.
fn holder(r: &rusqlite::Row) -> rusqlite::Result<ClaimOutcome> {
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
}

/// The completed record of `id`, if any: for [`super::SqliteStore::lookup`], on a read-only
/// connection of its own.
pub(super) fn completed(conn: &Connection, id: &RecordId) -> rusqlite::Result<Option<Arc<Completed>>> {
    let found = conn.prepare_cached(HOLDER)?.query_row(params![&*id.route, id.scope, id.key], holder).optional()?;
    Ok(match found {
        Some(ClaimOutcome::Completed(done)) => Some(done),
        _ => None,
    })
}

const COMPLETE: &str =
    "UPDATE records SET state = 1, status = ?5, headers = ?6, body = ?7, body_omitted = ?8, expires_ms = ?9,
         created_ms = ?10, fingerprint = ?11
     WHERE route = ?1 AND scope = ?2 AND key = ?3 AND token = ?4 AND state = 0";

fn complete(hot: &mut Hot<'_>, id: &RecordId, token: u64, done: &Completed) -> rusqlite::Result<bool> {
    let changed = hot.complete.execute(params![
        &*id.route,
        id.scope,
        id.key,
        token as i64,
        done.response.status,
        done.response.encode_headers(),
        &done.response.body[..],
        done.response.body_omitted,
        done.expires_ms,
        done.created_ms,
        done.fingerprint.as_ref().map(|f| &f[..])
    ])?;
    Ok(changed == 1)
}

fn get(conn: &Connection, id: &RecordId) -> rusqlite::Result<Option<Record>> {
    conn.prepare_cached(
        "SELECT state, status, created_ms, expires_ms FROM records WHERE route=?1 AND scope=?2 AND key=?3",
    )?
    .query_row(params![&*id.route, id.scope, id.key], |r| {
        let completed = r.get::<_, i64>(0)? != 0;
        Ok(Record {
            state: if completed { State::Completed } else { State::InFlight },
            status: if completed { r.get(1)? } else { None },
            created_ms: r.get(2)?,
            expires_ms: r.get(3)?,
        })
    })
    .optional()
}
