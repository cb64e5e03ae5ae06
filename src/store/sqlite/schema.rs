//! The database schema, its version, and the migrations between versions.

use rusqlite::Connection;

pub(super) const SCHEMA_VERSION: i64 = 4;

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

/// Version 4: async routes' events (see [`crate::store::queue`]). A rowid table: `seq` is the
/// arrival order, and rows written together share the table's last pages, as records do.
///
/// The indexes other than the key's are partial, each over the events one operation looks for,
/// so that none of them wades through a route's completed events (a day's worth, on a busy
/// route): `waiting` holds the queued and delivering events of a route in arrival order, with
/// what tells whether each is due, so that `take_due` walks it from the oldest, tests each
/// entry without reading its row, and stops after `max` (and the gauges read it alone).
/// `ordered` holds the waiting events of each order key, for the test of an earlier one;
/// `dead` the dead letters in the order they are listed; `expiry` what the sweep may delete.
/// Statements name the states as literals, as these predicates do: SQLite uses a partial index
/// only for a query whose `WHERE` repeats its predicate.
///
/// `event_queues` counts each route's waiting events for the enqueue's limit, kept by triggers in
/// the transaction that changes them. Counting the index instead would cost every enqueue a walk
/// over the whole backlog (milliseconds at the default limit of 100,000) on the one writer
/// thread, just when a backlog has built up.
const EVENTS: &str = "
CREATE TABLE events (
    seq                   INTEGER PRIMARY KEY,   -- arrival order
    route                 TEXT    NOT NULL,
    scope                 TEXT    NOT NULL,      -- as in records
    key                   TEXT    NOT NULL,
    state                 INTEGER NOT NULL,      -- 0 queued, 1 delivering, 2 completed, 3 dead
    order_key             TEXT,                  -- order_by's value: one at a time per value
    method                TEXT    NOT NULL,
    target                TEXT    NOT NULL,
    headers               BLOB    NOT NULL,      -- name:value lines
    body                  BLOB    NOT NULL,
    attempts              INTEGER NOT NULL,
    first_seen_ms         INTEGER NOT NULL,      -- max_age counts from here
    next_attempt_ms       INTEGER NOT NULL,
    last_attempt_ms       INTEGER,
    last_status           INTEGER,
    last_error            TEXT,
    token                 INTEGER,               -- the worker leasing it, while delivering
    lease_until_ms        INTEGER,
    expires_ms            INTEGER NOT NULL,      -- swept after this once completed or dead
    response_status       INTEGER,
    response_headers      BLOB,
    response_body         BLOB,
    response_body_omitted INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX events_key ON events (route, scope, key);
CREATE INDEX events_waiting ON events (route, seq, state, next_attempt_ms, lease_until_ms, first_seen_ms)
    WHERE state IN (0, 1);
CREATE INDEX events_ordered ON events (route, scope, order_key, seq) WHERE order_key IS NOT NULL AND state IN (0, 1);
CREATE INDEX events_dead ON events (route, first_seen_ms, seq) WHERE state = 3;
CREATE INDEX events_expiry ON events (expires_ms) WHERE state IN (2, 3);
CREATE TABLE event_queues (
    route   TEXT    PRIMARY KEY,
    waiting INTEGER NOT NULL                 -- events queued or delivering
) WITHOUT ROWID;
CREATE TRIGGER events_arrive AFTER INSERT ON events WHEN new.state IN (0, 1) BEGIN
    INSERT INTO event_queues (route, waiting) VALUES (new.route, 1)
        ON CONFLICT (route) DO UPDATE SET waiting = waiting + 1;
END;
CREATE TRIGGER events_move AFTER UPDATE OF state ON events
    WHEN (old.state IN (0, 1)) <> (new.state IN (0, 1)) BEGIN
    INSERT INTO event_queues (route, waiting) VALUES (new.route, iif(new.state IN (0, 1), 1, -1))
        ON CONFLICT (route) DO UPDATE SET waiting = waiting + excluded.waiting;
END;
CREATE TRIGGER events_leave AFTER DELETE ON events WHEN old.state IN (0, 1) BEGIN
    UPDATE event_queues SET waiting = waiting - 1 WHERE route = old.route;
END;
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
        0 => format!("{SCHEMA}{VERSIONS}{EVENTS}"),
        1 => format!("{}{VERSIONS}{EVENTS}", MIGRATE_1_TO_2.replace("{SCHEMA}", SCHEMA)),
        2 => format!("{VERSIONS}{EVENTS}"),
        3 => EVENTS.to_string(),
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
            2 => conn.execute_batch(&format!("{SCHEMA} PRAGMA user_version = 2;")).unwrap(),
            _ => conn.execute_batch(&format!("{SCHEMA}{VERSIONS} PRAGMA user_version = 3;")).unwrap(),
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
        for from in 0..=3 {
            let conn = database_at(from);
            if from == 3 {
                conn.execute("INSERT INTO versions VALUES ('r', '', 'customer', 'i41', 5)", []).unwrap();
            }
            migrate(&conn).unwrap();
            assert_eq!(count(&conn, "PRAGMA user_version"), SCHEMA_VERSION, "from {from}");
            assert_eq!(count(&conn, "SELECT count(*) FROM records"), i64::from(from > 0), "from {from}");
            assert_eq!(count(&conn, "SELECT count(*) FROM versions"), i64::from(from == 3), "from {from}");
            conn.execute("INSERT OR REPLACE INTO versions VALUES ('r', '', 'customer', 'i42', 5)", []).unwrap();
            conn.execute(
                "INSERT INTO events (route, scope, key, state, method, target, headers, body, attempts,
                     first_seen_ms, next_attempt_ms, expires_ms)
                 VALUES ('r', '', 'evt', 0, 'POST', '/', x'', x'', 0, 1, 1, 9)",
                [],
            )
            .unwrap();
            // Current already: nothing to do, and nothing done.
            migrate(&conn).unwrap();
            assert_eq!(count(&conn, "SELECT count(*) FROM versions"), 1, "from {from}");
            assert_eq!(count(&conn, "SELECT count(*) FROM events"), 1, "from {from}");
        }
    }
}
