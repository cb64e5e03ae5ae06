//! The statements on entity versions (the `versions` table), run on the writer thread like the
//! others. Comparisons are on [`Version::encoded`]: SQLite compares text byte by byte (`BINARY`,
//! the default collation), which within a kind is the versions' order.

use crate::store::RecordId;
use crate::version::Version;
use rusqlite::{Connection, OptionalExtension, params};

/// An entity's version unless it expired at `now_ms`.
pub(super) fn get(conn: &Connection, id: &RecordId, now_ms: i64) -> rusqlite::Result<Option<Version>> {
    let stored: Option<String> = conn
        .prepare_cached(
            "SELECT version FROM versions WHERE route = ?1 AND scope = ?2 AND entity = ?3 AND expires_ms > ?4",
        )?
        .query_row(params![&*id.route, id.scope, id.key, now_ms], |r| r.get(0))
        .optional()?;
    stored.map(|stored| decode(&stored)).transpose()
}

/// A damaged value is an error, as a damaged record is: read as absent, it would let every
/// delivery of the entity through as fresh without anyone knowing.
fn decode(stored: &str) -> rusqlite::Result<Version> {
    Version::decode(stored).ok_or_else(|| {
        let message = format!("the versions table holds {stored:?}, which is no version");
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, message.into())
    })
}

/// One statement, so the comparison and the write cannot be split by anything (the writer
/// thread runs one job at a time anyway; this keeps the rule in one place). The row is written
/// unless it holds a higher version of the same kind that has not expired.
pub(super) fn raise(
    conn: &Connection,
    id: &RecordId,
    version: &Version,
    expires_ms: i64,
    now_ms: i64,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO versions (route, scope, entity, version, expires_ms) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (route, scope, entity) DO UPDATE SET
             version = excluded.version, expires_ms = excluded.expires_ms
         WHERE versions.expires_ms <= ?6
            OR substr(versions.version, 1, 1) <> substr(excluded.version, 1, 1)
            OR versions.version <= excluded.version",
    )?
    .execute(params![&*id.route, id.scope, id.key, version.encoded(), expires_ms, now_ms])?;
    Ok(())
}

/// Deletes up to `limit` versions that expired at `now_ms`; returns how many.
pub(super) fn sweep(conn: &Connection, now_ms: i64, limit: usize) -> rusqlite::Result<usize> {
    conn.prepare_cached(
        "DELETE FROM versions WHERE (route, scope, entity) IN
             (SELECT route, scope, entity FROM versions WHERE expires_ms <= ?1 LIMIT ?2)",
    )?
    .execute(params![now_ms, i64::try_from(limit).unwrap_or(i64::MAX)])
}
