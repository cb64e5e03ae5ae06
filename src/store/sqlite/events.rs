//! The statements on async routes' events (the `events` table), run on the writer thread like
//! the others. One thread runs one job at a time, so each operation is atomic however many
//! statements it takes: no other enqueue or take can run between a count and an insert, or
//! between the choice of due events and their lease.

use crate::store::RecordId;
use crate::store::event_row::{EventRow, Finish, decode_state, event_columns, request_headers, sql_count};
use crate::store::queue::{Attempted, Enqueued, NewEvent, QueueStats, QueuedEvent};
use rusqlite::{Connection, OptionalExtension, params};

/// A known key is a duplicate whatever the queue's length; a new one is refused past the limit.
pub(super) fn enqueue(conn: &Connection, event: &NewEvent) -> rusqlite::Result<Enqueued> {
    if let Some(state) = state_of_key(conn, &event.id)? {
        return Ok(Enqueued::Duplicate(state));
    }
    if waiting(conn, &event.id.route)? >= event.queue_limit {
        return Ok(Enqueued::Full);
    }
    insert(conn, event)?;
    Ok(Enqueued::Queued)
}

fn state_of_key(conn: &Connection, id: &RecordId) -> rusqlite::Result<Option<crate::store::queue::EventState>> {
    let code: Option<i64> = conn
        .prepare_cached("SELECT state FROM events WHERE route = ?1 AND scope = ?2 AND key = ?3")?
        .query_row(params![&*id.route, id.scope, id.key], |r| r.get(0))
        .optional()?;
    code.map(|code| decode_state(code).map_err(damaged)).transpose()
}

/// Events of the route queued or delivering, as the triggers count them (see the schema).
fn waiting(conn: &Connection, route: &str) -> rusqlite::Result<u64> {
    let n: Option<i64> = conn
        .prepare_cached("SELECT waiting FROM event_queues WHERE route = ?1")?
        .query_row([route], |r| r.get(0))
        .optional()?;
    Ok(n.unwrap_or(0).unsigned_abs())
}

fn insert(conn: &Connection, event: &NewEvent) -> rusqlite::Result<()> {
    let (id, request) = (&event.id, &event.request);
    conn.prepare_cached(
        "INSERT INTO events (route, scope, key, state, order_key, method, target, headers, body, attempts,
             first_seen_ms, next_attempt_ms, expires_ms)
         VALUES (?1, ?2, ?3, 0, ?4, ?5, ?6, ?7, ?8, 0, ?9, ?9, ?10)",
    )?
    .execute(params![
        &*id.route,
        id.scope,
        id.key,
        event.order_key,
        request.method,
        request.target,
        request_headers(request),
        &request.body[..],
        event.now_ms,
        event.expires_ms
    ])?;
    Ok(())
}

/// Due: queued and its time has come, or delivering with a lease that ended. An event with an
/// order key waits while an earlier one with the same key (route and scope too) is queued or
/// delivering; finished ones hold nothing back. The subquery is evaluated before any row is
/// changed, and a lease leaves the leased event queued-or-delivering anyway, so events taken
/// together obey the rule as well. Walks the `waiting` index from the oldest event and stops
/// after `max` due ones. `RETURNING` has no order: [`take_due`] sorts.
const TAKE_DUE: &str = concat!(
    "UPDATE events
     SET state = 1, token = ?4, lease_until_ms = ?2 + ?5, attempts = attempts + 1, last_attempt_ms = ?2
     WHERE seq IN (
         SELECT e.seq FROM events e
         WHERE e.route = ?1 AND e.state IN (0, 1)
           AND ((e.state = 0 AND e.next_attempt_ms <= ?2) OR (e.state = 1 AND e.lease_until_ms <= ?2))
           AND (e.order_key IS NULL OR NOT EXISTS (
               SELECT 1 FROM events p
               WHERE p.route = e.route AND p.scope = e.scope AND p.order_key = e.order_key
                 AND p.seq < e.seq AND p.state IN (0, 1)))
         ORDER BY e.seq
         LIMIT ?3)
     RETURNING ",
    event_columns!()
);

pub(super) fn take_due(
    conn: &Connection,
    route: &str,
    now_ms: i64,
    max: usize,
    token: u64,
    lease_ms: i64,
) -> rusqlite::Result<Vec<QueuedEvent>> {
    let lease = params![route, now_ms, sql_count(max), token as i64, lease_ms];
    let mut events = read_events(conn, TAKE_DUE, lease)?;
    events.sort_by_key(|e| e.seq);
    Ok(events)
}

/// Interrupted deliveries are due again at once: one process keeps a SQLite file, so an event
/// still delivering when it opens was being delivered by a process that is gone.
pub(super) fn recover(conn: &Connection) -> rusqlite::Result<usize> {
    conn.execute("UPDATE events SET lease_until_ms = 0 WHERE state = 1", [])
}

/// The token fences a worker whose lease ended and whose event another worker took since.
pub(super) fn finish_attempt(
    conn: &Connection,
    id: &RecordId,
    token: u64,
    attempted: &Attempted,
) -> rusqlite::Result<bool> {
    let finish = Finish::of(attempted);
    let changed = conn
        .prepare_cached(
            "UPDATE events
             SET state = ?5, next_attempt_ms = coalesce(?6, next_attempt_ms), last_status = ?7, last_error = ?8,
                 response_status = ?9, response_headers = ?10, response_body = ?11, response_body_omitted = ?12,
                 token = NULL, lease_until_ms = NULL
             WHERE route = ?1 AND scope = ?2 AND key = ?3 AND state = 1 AND token = ?4",
        )?
        .execute(params![
            &*id.route,
            id.scope,
            id.key,
            token as i64,
            finish.state,
            finish.next_attempt_ms,
            finish.last_status,
            finish.last_error,
            finish.response_status(),
            finish.response_headers(),
            finish.response_body(),
            finish.body_omitted()
        ])?;
    Ok(changed == 1)
}

const EVENT: &str = concat!("SELECT ", event_columns!(), " FROM events WHERE route = ?1 AND scope = ?2 AND key = ?3");

pub(super) fn event(conn: &Connection, id: &RecordId) -> rusqlite::Result<Option<QueuedEvent>> {
    Ok(read_events(conn, EVENT, params![&*id.route, id.scope, id.key])?.pop())
}

const DEAD_LETTERS: &str = concat!(
    "SELECT ",
    event_columns!(),
    " FROM events WHERE route = ?1 AND state = 3 ORDER BY first_seen_ms, seq LIMIT ?2"
);

pub(super) fn dead_letters(conn: &Connection, route: &str, limit: usize) -> rusqlite::Result<Vec<QueuedEvent>> {
    read_events(conn, DEAD_LETTERS, params![route, sql_count(limit)])
}

/// The last status and error stay: they say why it died, until the next attempt says otherwise.
pub(super) fn retry_dead(conn: &Connection, id: &RecordId, now_ms: i64) -> rusqlite::Result<bool> {
    let changed = conn
        .prepare_cached(
            "UPDATE events SET state = 0, attempts = 0, first_seen_ms = ?4, next_attempt_ms = ?4
             WHERE route = ?1 AND scope = ?2 AND key = ?3 AND state = 3",
        )?
        .execute(params![&*id.route, id.scope, id.key, now_ms])?;
    Ok(changed == 1)
}

/// Forgets an event, whatever its state, or only a dead letter (state 3) when `only_dead`.
pub(super) fn forget(conn: &Connection, id: &RecordId, only_dead: bool) -> rusqlite::Result<bool> {
    let deleted = conn
        .prepare_cached("DELETE FROM events WHERE route = ?1 AND scope = ?2 AND key = ?3 AND (?4 = 0 OR state = 3)")?
        .execute(params![&*id.route, id.scope, id.key, only_dead])?;
    Ok(deleted > 0)
}

/// On the `waiting` and `dead` indexes: a route's completed events, the bulk of a busy route, are
/// not read.
const STATS: &str = "SELECT count(*), min(first_seen_ms), (SELECT count(*) FROM events WHERE route = ?1 AND state = 3)
                     FROM events WHERE route = ?1 AND state IN (0, 1)";

pub(super) fn stats(conn: &Connection, route: &str) -> rusqlite::Result<QueueStats> {
    conn.prepare_cached(STATS)?.query_row(params![route], |r| {
        Ok(QueueStats {
            depth: r.get::<_, i64>(0)?.unsigned_abs(),
            oldest_ms: r.get(1)?,
            dead: r.get::<_, i64>(2)?.unsigned_abs(),
        })
    })
}

/// Deletes up to `limit` completed or dead events whose ttl ended; a queued or delivering event
/// is kept however old: it was acknowledged, and is delivered or dies first.
const SWEEP: &str = "DELETE FROM events WHERE seq IN
                         (SELECT seq FROM events WHERE expires_ms <= ?1 AND state IN (2, 3) LIMIT ?2)";

pub(super) fn sweep(conn: &Connection, now_ms: i64, limit: usize) -> rusqlite::Result<usize> {
    conn.prepare_cached(SWEEP)?.execute(params![now_ms, sql_count(limit)])
}

fn read_events(conn: &Connection, sql: &str, params: impl rusqlite::Params) -> rusqlite::Result<Vec<QueuedEvent>> {
    let mut statement = conn.prepare_cached(sql)?;
    let rows = statement.query_map(params, read_row)?;
    rows.map(|row| row.and_then(|row| row.into_event().map_err(damaged))).collect()
}

fn read_row(r: &rusqlite::Row) -> rusqlite::Result<EventRow> {
    Ok(EventRow {
        seq: r.get(0)?,
        route: r.get(1)?,
        scope: r.get(2)?,
        key: r.get(3)?,
        state: r.get(4)?,
        order_key: r.get(5)?,
        method: r.get(6)?,
        target: r.get(7)?,
        headers: r.get(8)?,
        body: r.get(9)?,
        attempts: r.get(10)?,
        first_seen_ms: r.get(11)?,
        next_attempt_ms: r.get(12)?,
        last_attempt_ms: r.get(13)?,
        last_status: r.get(14)?,
        last_error: r.get(15)?,
        response_status: r.get(16)?,
        response_headers: r.get(17)?,
        response_body: r.get(18)?,
        response_body_omitted: r.get(19)?,
    })
}

/// As a damaged version is: an error naming what was found.
fn damaged(message: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Integer, message.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SQLite's plan for `sql`, one step a line.
    fn plan(conn: &Connection, sql: &str) -> String {
        let mut statement = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let unbound = std::iter::repeat_n(rusqlite::types::Null, statement.parameter_count());
        let steps = statement.query_map(rusqlite::params_from_iter(unbound), |r| r.get::<_, String>(3)).unwrap();
        steps.map(Result::unwrap).collect::<Vec<_>>().join("\n")
    }

    /// A partial index is used only where the statement repeats its predicate: if one of these
    /// drifted, the lookup would quietly walk every completed event of the route instead.
    #[test]
    fn each_lookup_walks_its_partial_index() {
        let conn = Connection::open_in_memory().unwrap();
        super::super::schema::migrate(&conn).unwrap();
        let take = plan(&conn, TAKE_DUE);
        assert!(take.contains("INDEX events_waiting (route=?)"), "{take}");
        assert!(take.contains("INDEX events_ordered (route=? AND scope=? AND order_key=? AND seq<?)"), "{take}");
        assert!(!take.contains("TEMP B-TREE"), "arrival order comes from the index: {take}");
        let stats = plan(&conn, STATS);
        assert!(stats.contains("COVERING INDEX events_waiting") && stats.contains("INDEX events_dead"), "{stats}");
        let dead = plan(&conn, DEAD_LETTERS);
        assert!(dead.contains("INDEX events_dead (route=?)") && !dead.contains("TEMP B-TREE"), "{dead}");
        let sweep = plan(&conn, SWEEP);
        assert!(sweep.contains("INDEX events_expiry (expires_ms<?)"), "{sweep}");
    }
}
