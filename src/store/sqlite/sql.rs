//! The statements: one function per operation, run on the writer thread inside its transaction.

use super::{Op, Outcome};
use crate::store::record::{Claim, ClaimOutcome, Completed, Record, RecordId, State, StoredResponse};
use bytes::Bytes;
use rusqlite::{Connection, OptionalExtension, params};
use std::sync::Arc;

pub(super) fn apply(conn: &Connection, op: &Op) -> rusqlite::Result<Outcome> {
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
