//! The statements on entity versions (`idemgate_versions`), sent as [`Db`] sends every statement
//! (unnamed, or prepared with `store.postgres.prepared_statements`). Comparisons are on
//! [`Version::encoded`] under `COLLATE "C"`: byte order, which within a kind is the versions'.

use super::sql::{Db, Failure, Sql};
use crate::store::RecordId;
use crate::version::Version;
use tokio_postgres::types::Type;

const VERSION: Sql = Sql {
    text: "SELECT version FROM idemgate_versions WHERE route = $1 AND scope = $2 AND entity = $3 AND expires_ms > $4",
    types: &[Type::TEXT, Type::TEXT, Type::TEXT, Type::INT8],
};

/// An entity's version unless it expired at `now_ms`. A damaged value is an error, as a damaged
/// record is: read as absent, it would let every delivery of the entity through as fresh.
pub(super) async fn get(db: &Db<'_>, id: &RecordId, now_ms: i64) -> Result<Option<Version>, Failure> {
    let route: &str = &id.route;
    let Some(row) = db.query_opt(&VERSION, &[&route, &id.scope, &id.key, &now_ms]).await? else { return Ok(None) };
    let stored: &str = row.try_get(0)?;
    match Version::decode(stored) {
        Some(version) => Ok(Some(version)),
        None => Err(Failure::Store(format!("idemgate_versions holds {stored:?}, which is no version"))),
    }
}

/// One statement: the upsert takes the row's lock before it evaluates the `WHERE` on the row's
/// latest committed version (READ COMMITTED), and concurrent inserts of a new entity meet at the
/// primary key, so of any raises at once the highest version is the one left. The row is written
/// unless it holds a higher version of the same kind that has not expired.
const RAISE: Sql = Sql {
    text: r#"
INSERT INTO idemgate_versions (route, scope, entity, version, expires_ms) VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (route, scope, entity) DO UPDATE SET version = excluded.version, expires_ms = excluded.expires_ms
WHERE idemgate_versions.expires_ms <= $6
   OR substr(idemgate_versions.version, 1, 1) <> substr(excluded.version, 1, 1)
   OR idemgate_versions.version COLLATE "C" <= excluded.version COLLATE "C""#,
    types: &[Type::TEXT, Type::TEXT, Type::TEXT, Type::TEXT, Type::INT8, Type::INT8],
};

pub(super) async fn raise(
    db: &Db<'_>,
    id: &RecordId,
    version: &Version,
    expires_ms: i64,
    now_ms: i64,
) -> Result<(), Failure> {
    let route: &str = &id.route;
    db.execute(&RAISE, &[&route, &id.scope, &id.key, &version.encoded(), &expires_ms, &now_ms]).await?;
    Ok(())
}

/// As the records' sweep: `SKIP LOCKED` so that replicas sweeping at once take different rows,
/// and a row a raise holds right now is left to it; the test is checked again on the row version
/// that is finally deleted.
const SWEEP: Sql = Sql {
    text: "DELETE FROM idemgate_versions
           WHERE ctid IN (SELECT ctid FROM idemgate_versions WHERE expires_ms <= $1 LIMIT $2 FOR UPDATE SKIP LOCKED)
             AND expires_ms <= $1",
    types: &[Type::INT8, Type::INT8],
};

/// Deletes up to `limit` versions that expired at `now_ms`; returns how many.
pub(super) async fn sweep(db: &Db<'_>, now_ms: i64, limit: usize) -> Result<usize, Failure> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let deleted = db.execute(&SWEEP, &[&now_ms, &limit]).await?;
    Ok(usize::try_from(deleted).unwrap_or(usize::MAX))
}
