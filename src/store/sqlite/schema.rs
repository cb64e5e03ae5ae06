//! The database schema, its version, and the migrations between versions.

use rusqlite::Connection;

pub(super) const SCHEMA_VERSION: i64 = 3;

/// The records table, as of version 2. Rows live in rowid order, so the records a batch creates,
/// and soon completes, share the table's last pages; only the small key index is written at
/// random. (Version 1 clustered rows by key, which wrote about four random pages per request.)
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

/// Version 3: each entity's highest version for the stale guard ([`crate::version::Version`]'s
/// encoding, whose byte order, SQLite's default for text, is the versions' order). Clustered by
/// entity: a raise reads and writes one row in place.
const VERSIONS: &str = "
CREATE TABLE versions (
    route      TEXT    NOT NULL,
    scope      TEXT    NOT NULL,            -- as in records
    entity     TEXT    NOT NULL,
    version    TEXT    NOT NULL,            -- Version::encoded
    expires_ms INTEGER NOT NULL,
    PRIMARY KEY (route, scope, entity)
) WITHOUT ROWID;
CREATE INDEX versions_expiry ON versions (expires_ms);
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
        0 => format!("{SCHEMA}{VERSIONS}"),
        1 => format!("{}{VERSIONS}", MIGRATE_1_TO_2.replace("{SCHEMA}", SCHEMA)),
        2 => VERSIONS.to_string(),
        _ => return Ok(()),
    };
    conn.execute_batch(&format!("BEGIN IMMEDIATE; {steps} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Version 1's table, as tests/store.rs also builds it.
    const SCHEMA_V1: &str = "
        CREATE TABLE records (
            route TEXT NOT NULL, scope TEXT NOT NULL, key TEXT NOT NULL, state INTEGER NOT NULL,
            token INTEGER NOT NULL, fingerprint BLOB, created_ms INTEGER NOT NULL, expires_ms INTEGER NOT NULL,
            status INTEGER, headers BLOB, body BLOB, body_omitted INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (route, scope, key)) WITHOUT ROWID;
        CREATE INDEX records_expiry ON records (expires_ms);
        PRAGMA user_version = 1;";

    fn database_at(version: i64) -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        match version {
            0 => {}
            1 => conn.execute_batch(SCHEMA_V1).unwrap(),
            _ => conn.execute_batch(&format!("{SCHEMA} PRAGMA user_version = 2;")).unwrap(),
        }
        if version > 0 {
            conn.execute("INSERT INTO records (route, scope, key, state, token, created_ms, expires_ms) VALUES ('r', '', 'kept', 0, 1, 2, 3)", [])
                .unwrap();
        }
        conn
    }

    fn count(conn: &Connection, sql: &str) -> i64 {
        conn.query_row(sql, [], |r| r.get(0)).unwrap()
    }

    #[test]
    fn every_earlier_version_reaches_the_current_one_with_its_records() {
        for from in 0..=2 {
            let conn = database_at(from);
            migrate(&conn).unwrap();
            assert_eq!(count(&conn, "PRAGMA user_version"), SCHEMA_VERSION, "from {from}");
            assert_eq!(count(&conn, "SELECT count(*) FROM records"), i64::from(from > 0), "from {from}");
            conn.execute("INSERT INTO versions VALUES ('r', '', 'customer', 'i42', 5)", []).unwrap();
            // Current already: nothing to do, and nothing done.
            migrate(&conn).unwrap();
            assert_eq!(count(&conn, "SELECT count(*) FROM versions"), 1, "from {from}");
        }
    }
}
