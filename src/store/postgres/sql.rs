//! The schema and the statements, one function per operation, each statement autocommitted in
//! one round trip. How a statement is sent is [`Db`]'s choice (`store.postgres.prepared_statements`):
//!
//! - unnamed (the default): Parse, Bind, Describe, Execute and Sync of the unnamed statement with
//!   its parameter types (`query_typed` / `execute_typed`). The server parses, analyses and plans
//!   it every time; no prepared statement is left on the server, so pgbouncer in transaction mode
//!   is fine.
//! - prepared: the first use on a pooled connection prepares it by name (Parse, Describe, Sync:
//!   one more round trip, once per statement and connection; deadpool-postgres caches the
//!   statement with the connection); every later use is Bind, Execute and Sync of that statement.
//!   The server reuses the parse tree, and after five executions a generic plan, when it costs no
//!   more than the custom ones. Safe on a direct connection, or through pgbouncer 1.21+ with
//!   `max_prepared_statements`.

use crate::store::record::{Claim, ClaimOutcome, Completed, Record, RecordId, State, StoredResponse};
use crate::store::{ABANDONED_CLAIM_RETENTION_MS, StoreError};
use bytes::Bytes;
use deadpool_postgres::ClientWrapper;
use std::sync::Arc;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Row};

/// A statement and the types of its parameters, as both ways of sending it need them.
pub(super) struct Sql {
    pub(super) text: &'static str,
    pub(super) types: &'static [Type],
}

/// A pooled connection and how statements are sent on it (see the module's documentation).
pub(super) struct Db<'c> {
    pub(super) client: &'c mut ClientWrapper,
    pub(super) prepared: bool,
}

impl Db<'_> {
    /// At most one row, as `query_typed_opt` / `query_opt`.
    pub(super) async fn query_opt(&self, sql: &Sql, params: &[&(dyn ToSql + Sync)]) -> Result<Option<Row>, Failure> {
        if self.prepared {
            let statement = self.client.prepare_typed_cached(sql.text, sql.types).await?;
            Ok(self.client.query_opt(&statement, params).await?)
        } else {
            Ok(self.client.query_typed_opt(sql.text, &typed(sql, params)).await?)
        }
    }

    /// Every row, as `query_typed` / `query`.
    pub(super) async fn query(&self, sql: &Sql, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, Failure> {
        if self.prepared {
            let statement = self.client.prepare_typed_cached(sql.text, sql.types).await?;
            Ok(self.client.query(&statement, params).await?)
        } else {
            Ok(self.client.query_typed(sql.text, &typed(sql, params)).await?)
        }
    }

    /// The number of rows changed, as `execute_typed` / `execute`.
    pub(super) async fn execute(&self, sql: &Sql, params: &[&(dyn ToSql + Sync)]) -> Result<u64, Failure> {
        if self.prepared {
            let statement = self.client.prepare_typed_cached(sql.text, sql.types).await?;
            Ok(self.client.execute(&statement, params).await?)
        } else {
            Ok(self.client.execute_typed(sql.text, &typed(sql, params)).await?)
        }
    }
}

/// Whether a server error means that the connection's prepared statements are no longer what its
/// cache says: one dropped or never there (pgbouncer without `max_prepared_statements` switched
/// server connections, or a `DISCARD ALL` ran), a name taken, or a cached plan whose result
/// columns changed under it (the table altered). The connection is then closed rather than pooled,
/// and its cache with it; the next one prepares afresh.
pub(super) fn spoils_prepared(code: &tokio_postgres::error::SqlState) -> bool {
    use tokio_postgres::error::SqlState;
    [SqlState::INVALID_SQL_STATEMENT_NAME, SqlState::DUPLICATE_PSTATEMENT, SqlState::FEATURE_NOT_SUPPORTED]
        .contains(code)
}

/// Each parameter with its type, for the unnamed statement.
fn typed<'a>(sql: &Sql, params: &[&'a (dyn ToSql + Sync)]) -> Vec<(&'a (dyn ToSql + Sync), Type)> {
    debug_assert_eq!(sql.types.len(), params.len(), "{}", sql.text);
    params.iter().copied().zip(sql.types.iter().cloned()).collect()
}

/// Why an operation failed: the server or the connection, or something the store itself refuses.
pub(super) enum Failure {
    Pg(tokio_postgres::Error),
    Store(String),
}

impl From<tokio_postgres::Error> for Failure {
    fn from(e: tokio_postgres::Error) -> Failure {
        Failure::Pg(e)
    }
}

impl Failure {
    pub(super) fn into_store_error(self) -> StoreError {
        StoreError::Unavailable(match self {
            Failure::Pg(e) => format!("PostgreSQL: {}", describe(&e)),
            Failure::Store(message) => message,
        })
    }
}

/// The error and its causes on one line ("db error: ERROR: <message>", "error connecting to
/// server: Connection refused (os error 111)"): tokio-postgres' `Display` shows only the first.
pub(super) fn describe(e: &tokio_postgres::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string().replace('\n', "; "));
        source = cause.source();
    }
    text
}

pub(super) const SCHEMA_VERSION: i32 = 3;

/// The key of the transaction-level advisory lock that serialises migrations across replicas
/// ("idemgate" in ASCII).
pub(super) const MIGRATION_LOCK: i64 = 0x6964_656d_6761_7465;

/// Version 1. `expires_ms` is the lease end while in flight (state 0) and the ttl end once
/// completed (state 1); a record with `expires_ms <= now` is gone as far as claims are concerned,
/// and the sweeper deletes it.
pub(super) const SCHEMA_V1: &str = "
CREATE TABLE IF NOT EXISTS idemgate_records (
    route        text     NOT NULL,
    scope        text     NOT NULL,          -- sha-256 of the scope value, '' on unscoped routes
    key          text     NOT NULL,
    state        smallint NOT NULL,          -- 0 in flight, 1 completed
    token        bigint   NOT NULL,          -- the claim that owns the record (the fence)
    fingerprint  bytea,
    created_ms   bigint   NOT NULL,
    expires_ms   bigint   NOT NULL,
    status       integer,
    headers      bytea,
    body         bytea,
    body_omitted boolean  NOT NULL DEFAULT false,
    PRIMARY KEY (route, scope, key)
);
CREATE INDEX IF NOT EXISTS idemgate_records_expiry ON idemgate_records (expires_ms);
";

/// Version 2: each entity's highest version for the stale guard ([`crate::version::Version`]'s
/// encoding). `COLLATE "C"`: text compares byte by byte, which is the versions' order, whatever
/// the database's default collation.
pub(super) const SCHEMA_V2: &str = r#"
CREATE TABLE IF NOT EXISTS idemgate_versions (
    route      text   NOT NULL,
    scope      text   NOT NULL,              -- as in idemgate_records
    entity     text   NOT NULL,
    version    text   COLLATE "C" NOT NULL,  -- Version::encoded
    expires_ms bigint NOT NULL,
    PRIMARY KEY (route, scope, entity)
);
CREATE INDEX IF NOT EXISTS idemgate_versions_expiry ON idemgate_versions (expires_ms);
"#;

/// Version 3: async routes' events (see [`crate::store::queue`]). `seq` is the arrival order, as
/// the identity hands it out (in insertion order; two inserts at once may commit the other way
/// round, and arrivals that close together have no order to keep anyway).
///
/// The indexes other than the key's are partial, each over the events one operation looks for,
/// so that none of them wades through a route's completed events (a day's worth, on a busy
/// route): `waiting` holds the queued and delivering events of a route in arrival order, so that
/// `take_due` walks it from the oldest and stops after `max`; the queue's length is counted on
/// it. `ordered` holds the waiting events of each order key, for the test of an earlier one;
/// `dead` the dead letters in the order they are listed; `expiry` what the sweep may delete.
/// Statements name the states as literals, as these predicates do: a prepared statement's generic
/// plan could not prove a predicate from a parameter.
pub(super) const SCHEMA_V3: &str = "
CREATE TABLE IF NOT EXISTS idemgate_events (
    seq                   bigint   GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    route                 text     NOT NULL,
    scope                 text     NOT NULL,          -- as in idemgate_records
    key                   text     NOT NULL,
    state                 smallint NOT NULL,          -- 0 queued, 1 delivering, 2 completed, 3 dead
    order_key             text,                       -- order_by's value: one at a time per value
    method                text     NOT NULL,
    target                text     NOT NULL,
    headers               bytea    NOT NULL,          -- name:value lines
    body                  bytea    NOT NULL,
    attempts              integer  NOT NULL,
    first_seen_ms         bigint   NOT NULL,          -- max_age counts from here
    next_attempt_ms       bigint   NOT NULL,
    last_attempt_ms       bigint,
    last_status           integer,
    last_error            text,
    token                 bigint,                     -- the worker leasing it, while delivering
    lease_until_ms        bigint,
    expires_ms            bigint   NOT NULL,          -- swept after this once completed or dead
    response_status       integer,
    response_headers      bytea,
    response_body         bytea,
    response_body_omitted boolean  NOT NULL DEFAULT false,
    UNIQUE (route, scope, key)
);
CREATE INDEX IF NOT EXISTS idemgate_events_waiting ON idemgate_events (route, seq) WHERE state IN (0, 1);
CREATE INDEX IF NOT EXISTS idemgate_events_ordered ON idemgate_events (route, scope, order_key, seq)
    WHERE order_key IS NOT NULL AND state IN (0, 1);
CREATE INDEX IF NOT EXISTS idemgate_events_dead ON idemgate_events (route, first_seen_ms, seq) WHERE state = 3;
CREATE INDEX IF NOT EXISTS idemgate_events_expiry ON idemgate_events (expires_ms) WHERE state IN (2, 3);
";

/// Each version's step: a schema at version `v` runs the steps after the first `v`.
const STEPS: [&str; SCHEMA_VERSION as usize] = [SCHEMA_V1, SCHEMA_V2, SCHEMA_V3];

/// Creates or migrates the schema in one transaction that holds [`MIGRATION_LOCK`], so replicas
/// starting together migrate once. A schema already current is only read, so a role with no
/// `CREATE` privilege can run idemgate once an administrator's role has migrated it. Returns the
/// server's `synchronous_commit`.
pub(super) async fn migrate(client: &mut Client) -> Result<String, Failure> {
    let tx = client.transaction().await?;
    tx.execute_typed("SELECT pg_advisory_xact_lock($1)", &[(&MIGRATION_LOCK, Type::INT8)]).await?;
    let exists: bool =
        tx.query_typed_one("SELECT to_regclass('idemgate_schema') IS NOT NULL", &[]).await?.try_get(0)?;
    let version: Option<i32> = if exists {
        tx.query_typed_one("SELECT max(version) FROM idemgate_schema", &[]).await?.try_get(0)?
    } else {
        tx.batch_execute("CREATE TABLE idemgate_schema (version integer NOT NULL)").await?;
        None
    };
    match version {
        Some(v) if v > SCHEMA_VERSION => {
            return Err(Failure::Store(format!(
                "the PostgreSQL schema is at version {v}, newer than this idemgate understands ({SCHEMA_VERSION})"
            )));
        }
        Some(v) if v == SCHEMA_VERSION => {}
        _ => {
            let done = version.map_or(0, |v| usize::try_from(v).unwrap_or(0));
            for step in &STEPS[done.min(STEPS.len())..] {
                tx.batch_execute(step).await?;
            }
            let record = match version {
                None => "INSERT INTO idemgate_schema (version) VALUES ($1)",
                Some(_) => "UPDATE idemgate_schema SET version = $1",
            };
            tx.execute_typed(record, &[(&SCHEMA_VERSION, Type::INT4)]).await?;
        }
    }
    let synchronous_commit: String =
        tx.query_typed_one("SELECT current_setting('synchronous_commit')", &[]).await?.try_get(0)?;
    tx.commit().await?;
    Ok(synchronous_commit)
}

/// Inserts the key, or takes over a record whose lease or ttl has ended (`RETURNING token`: the
/// claim is ours); otherwise the second branch reads the holder in the same statement.
///
/// `status` means nothing while a record is in flight, so a takeover of an abandoned claim (one
/// whose lease ended) marks itself there with 0: `RETURNING` sees only the new row, and this is
/// how it tells that takeover, a possible second delivery, from a fresh insert.
///
/// The second branch reads with the statement's snapshot, so it can miss a holder that committed
/// after the statement began (the `ON CONFLICT` arbiter sees it, the snapshot does not), or see a
/// version that has since expired and been taken over by another claim: it then returns no row,
/// and the claim is simply sent again, with a fresh snapshot.
pub(super) const CLAIM: Sql = Sql {
    text: "
WITH taken AS (
    INSERT INTO idemgate_records (route, scope, key, state, token, fingerprint, created_ms, expires_ms)
    VALUES ($1, $2, $3, 0, $4, $5, $6, $7)
    ON CONFLICT (route, scope, key) DO UPDATE SET
        state = 0, token = excluded.token, fingerprint = excluded.fingerprint,
        created_ms = excluded.created_ms, expires_ms = excluded.expires_ms,
        status = CASE WHEN idemgate_records.state = 0 THEN 0 END,
        headers = NULL, body = NULL, body_omitted = false
    WHERE idemgate_records.expires_ms <= excluded.created_ms
    RETURNING token, status
)
SELECT token, NULL::smallint AS state, NULL::bytea AS fingerprint, NULL::bigint AS created_ms,
       NULL::bigint AS expires_ms, status, NULL::bytea AS headers, NULL::bytea AS body,
       NULL::boolean AS body_omitted
FROM taken
UNION ALL
SELECT NULL, state, fingerprint, created_ms, expires_ms, status, headers, body, body_omitted
FROM idemgate_records
WHERE route = $1 AND scope = $2 AND key = $3 AND expires_ms > $6 AND NOT EXISTS (SELECT 1 FROM taken)",
    types: &[Type::TEXT, Type::TEXT, Type::TEXT, Type::INT8, Type::BYTEA, Type::INT8, Type::INT8],
};

/// Each attempt but the first follows a concurrent change of the same key; this many in a row
/// does not happen in practice, and the operation's timeout bounds them anyway.
const CLAIM_ATTEMPTS: usize = 16;

pub(super) async fn claim(db: &Db<'_>, c: &Claim) -> Result<ClaimOutcome, Failure> {
    let route: &str = &c.id.route;
    let token = c.token as i64;
    let fingerprint = c.fingerprint.as_ref().map(|f| &f[..]);
    let expires_ms = c.now_ms.saturating_add(c.lease_ms);
    let params: [&(dyn ToSql + Sync); 7] =
        [&route, &c.id.scope, &c.id.key, &token, &fingerprint, &c.now_ms, &expires_ms];
    for _ in 0..CLAIM_ATTEMPTS {
        if let Some(row) = db.query_opt(&CLAIM, &params).await? {
            return holder(&row, c.token);
        }
    }
    Err(Failure::Store(format!("the claim of key {:?} kept racing with other changes of it", c.id.key)))
}

/// The answer of [`CLAIM`]: our token, or the record that holds the key.
fn holder(row: &Row, ours: u64) -> Result<ClaimOutcome, Failure> {
    if let Some(token) = row.try_get::<_, Option<i64>>(0)? {
        // RETURNING only yields the row this statement wrote, which carries our token.
        return if token as u64 == ours {
            Ok(ClaimOutcome::Claimed { token: ours, took_over: row.try_get::<_, Option<i32>>(5)? == Some(0) })
        } else {
            Err(Failure::Store("the claim returned another token".into()))
        };
    }
    let fingerprint = row.try_get::<_, Option<Vec<u8>>>(2)?.and_then(|f| f.try_into().ok());
    let expires_ms: i64 = row.try_get(4)?;
    if row.try_get::<_, i16>(1)? == 0 {
        return Ok(ClaimOutcome::InFlight { fingerprint, expires_ms });
    }
    let status: Option<i32> = row.try_get(5)?;
    let headers = row.try_get::<_, Option<Vec<u8>>>(6)?.unwrap_or_default();
    let body = row.try_get::<_, Option<Vec<u8>>>(7)?.unwrap_or_default();
    Ok(ClaimOutcome::Completed(Arc::new(Completed {
        fingerprint,
        created_ms: row.try_get(3)?,
        expires_ms,
        response: StoredResponse {
            status: status.and_then(|s| u16::try_from(s).ok()).unwrap_or(500),
            headers: StoredResponse::decode_headers(&headers),
            body: Bytes::from(body),
            body_omitted: row.try_get::<_, Option<bool>>(8)?.unwrap_or(false),
        },
    })))
}

/// The claim token is the fence: only the claim that still owns the key, in flight, completes it.
const COMPLETE: Sql = Sql {
    text: "UPDATE idemgate_records
           SET state = 1, status = $5, headers = $6, body = $7, body_omitted = $8, expires_ms = $9,
               created_ms = $10, fingerprint = $11
           WHERE route = $1 AND scope = $2 AND key = $3 AND token = $4 AND state = 0",
    types: &[
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::INT8,
        Type::INT4,
        Type::BYTEA,
        Type::BYTEA,
        Type::BOOL,
        Type::INT8,
        Type::INT8,
        Type::BYTEA,
    ],
};

pub(super) async fn complete(db: &Db<'_>, id: &RecordId, token: u64, done: &Completed) -> Result<bool, Failure> {
    let route: &str = &id.route;
    let token = token as i64;
    let status = i32::from(done.response.status);
    let headers = done.response.encode_headers();
    let body: &[u8] = &done.response.body;
    let fingerprint = done.fingerprint.as_ref().map(|f| &f[..]);
    let changed = db
        .execute(
            &COMPLETE,
            &[
                &route,
                &id.scope,
                &id.key,
                &token,
                &status,
                &headers,
                &body,
                &done.response.body_omitted,
                &done.expires_ms,
                &done.created_ms,
                &fingerprint,
            ],
        )
        .await?;
    Ok(changed == 1)
}

const RELEASE: Sql = Sql {
    text: "DELETE FROM idemgate_records WHERE route = $1 AND scope = $2 AND key = $3 AND token = $4 AND state = 0",
    types: &[Type::TEXT, Type::TEXT, Type::TEXT, Type::INT8],
};

pub(super) async fn release(db: &Db<'_>, id: &RecordId, token: u64) -> Result<(), Failure> {
    let route: &str = &id.route;
    let token = token as i64;
    db.execute(&RELEASE, &[&route, &id.scope, &id.key, &token]).await?;
    Ok(())
}

const GET: Sql = Sql {
    text: "SELECT state, status, created_ms, expires_ms FROM idemgate_records
           WHERE route = $1 AND scope = $2 AND key = $3",
    types: &[Type::TEXT, Type::TEXT, Type::TEXT],
};

pub(super) async fn get(db: &Db<'_>, id: &RecordId) -> Result<Option<Record>, Failure> {
    let route: &str = &id.route;
    let row = db.query_opt(&GET, &[&route, &id.scope, &id.key]).await?;
    let Some(row) = row else { return Ok(None) };
    let completed = row.try_get::<_, i16>(0)? != 0;
    let status = if completed { row.try_get::<_, Option<i32>>(1)? } else { None };
    Ok(Some(Record {
        state: if completed { State::Completed } else { State::InFlight },
        status: status.and_then(|s| u16::try_from(s).ok()),
        created_ms: row.try_get(2)?,
        expires_ms: row.try_get(3)?,
    }))
}

const DELETE: Sql = Sql {
    text: "DELETE FROM idemgate_records WHERE route = $1 AND scope = $2 AND key = $3",
    types: &[Type::TEXT, Type::TEXT, Type::TEXT],
};

pub(super) async fn delete(db: &Db<'_>, id: &RecordId) -> Result<bool, Failure> {
    let route: &str = &id.route;
    let deleted = db.execute(&DELETE, &[&route, &id.scope, &id.key]).await?;
    Ok(deleted > 0)
}

/// Deletes at most `batch` expired records (abandoned claims only once they are older than
/// [`ABANDONED_CLAIM_RETENTION_MS`]). `SKIP LOCKED`: replicas sweeping at once take different
/// rows, and a row a claim is taking over right now is left to that claim. The outer test is
/// checked again on the row version that is finally deleted.
const SWEEP: Sql = Sql {
    text: "DELETE FROM idemgate_records
           WHERE ctid IN (SELECT ctid FROM idemgate_records
                          WHERE expires_ms <= $1 AND (state = 1 OR expires_ms <= $2)
                          LIMIT $3 FOR UPDATE SKIP LOCKED)
             AND expires_ms <= $1 AND (state = 1 OR expires_ms <= $2)",
    types: &[Type::INT8, Type::INT8, Type::INT8],
};

pub(super) async fn sweep(db: &Db<'_>, now_ms: i64, batch: usize) -> Result<usize, Failure> {
    let limit = i64::try_from(batch).unwrap_or(i64::MAX);
    let abandoned_before = now_ms.saturating_sub(ABANDONED_CLAIM_RETENTION_MS);
    let deleted = db.execute(&SWEEP, &[&now_ms, &abandoned_before, &limit]).await?;
    Ok(usize::try_from(deleted).unwrap_or(usize::MAX))
}

/// A write that changes nothing: it fails on a read-only server (a standby, or
/// `default_transaction_read_only`), without the table, or without the privilege to write it.
const CHECK_WRITABLE: Sql = Sql { text: "UPDATE idemgate_records SET state = state WHERE false", types: &[] };

pub(super) async fn check_writable(db: &Db<'_>) -> Result<(), Failure> {
    db.execute(&CHECK_WRITABLE, &[]).await?;
    Ok(())
}
