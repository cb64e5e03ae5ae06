//! The database schema, its version, and the migrations between versions.

use rusqlite::Connection;

pub(super) const SCHEMA_VERSION: i64 = 2;

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

pub(super) fn migrate(conn: &Connection) -> rusqlite::Result<()> {
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
