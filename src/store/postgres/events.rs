//! The statements on async routes' events (`idemgate_events`), sent as [`Db`] sends every
//! statement (unnamed, or prepared with `store.postgres.prepared_statements`): each operation is
//! one autocommitted statement in one round trip, like a claim.
//!
//! Every replica polls the same table, so the two operations that choose rows are written for
//! concurrency: an enqueue meets a concurrent one of the same key at the unique key, and a take
//! locks what it leases with `FOR UPDATE SKIP LOCKED` (see [`TAKE_DUE`] for why the order rule
//! survives that).

use super::sql::{Db, Failure, Sql};
use crate::store::RecordId;
use crate::store::event_row::{EventRow, Finish, decode_state, event_columns, request_headers, sql_count};
use crate::store::queue::{Attempted, Enqueued, NewEvent, QueueStats, QueuedEvent};
use tokio_postgres::Row;
use tokio_postgres::types::{ToSql, Type};

/// Inserts the event unless its key is known or the route's queue is full, and says which, in
/// one row: the new `seq`, else the known key's state, and the queue's length (counted no
/// further than the limit, the only thing it is compared with).
///
/// The count and the insert are not serialised across replicas: two enqueues of different keys
/// at once can both see one place left, so a queue may go a few events over its limit under
/// concurrency. That bounds the backlog well enough, and costs no lock on every enqueue. The
/// unique key does serialise enqueues of one key: the second waits for the first to commit, and
/// then inserts nothing. Its `existing` read, from the snapshot taken before, may not see the
/// winner: the row then says neither, and [`enqueue`] asks again.
const ENQUEUE: Sql = Sql {
    text: "
WITH existing AS (
    SELECT state FROM idemgate_events WHERE route = $1 AND scope = $2 AND key = $3
), waiting AS (
    SELECT count(*) AS n FROM (
        SELECT 1 FROM idemgate_events WHERE route = $1 AND state IN (0, 1) LIMIT $11
    ) w
), inserted AS (
    INSERT INTO idemgate_events (route, scope, key, state, order_key, method, target, headers, body, attempts,
                                 first_seen_ms, next_attempt_ms, expires_ms)
    SELECT $1, $2, $3, 0, $4, $5, $6, $7, $8, 0, $9, $9, $10
    WHERE NOT EXISTS (SELECT 1 FROM existing) AND (SELECT n FROM waiting) < $11
    ON CONFLICT (route, scope, key) DO NOTHING
    RETURNING seq
)
SELECT (SELECT seq FROM inserted), (SELECT state FROM existing), (SELECT n FROM waiting)",
    types: &[
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::BYTEA,
        Type::BYTEA,
        Type::INT8,
        Type::INT8,
        Type::INT8,
    ],
};

/// Each attempt but the first follows a concurrent enqueue of the same key that committed
/// between the statement's snapshot and its insert; the next attempt sees it.
const ENQUEUE_ATTEMPTS: usize = 16;

pub(super) async fn enqueue(db: &Db<'_>, event: &NewEvent) -> Result<Enqueued, Failure> {
    let (id, request) = (&event.id, &event.request);
    let route: &str = &id.route;
    let headers = request_headers(request);
    let body: &[u8] = &request.body;
    let limit = sql_count(event.queue_limit);
    let params: [&(dyn ToSql + Sync); 11] = [
        &route,
        &id.scope,
        &id.key,
        &event.order_key,
        &request.method,
        &request.target,
        &headers,
        &body,
        &event.now_ms,
        &event.expires_ms,
        &limit,
    ];
    for _ in 0..ENQUEUE_ATTEMPTS {
        let row = db.query_opt(&ENQUEUE, &params).await?;
        let row = row.ok_or_else(|| Failure::Store("the enqueue returned no row".into()))?;
        if let Some(enqueued) = enqueued(&row, limit)? {
            return Ok(enqueued);
        }
    }
    Err(Failure::Store(format!("the enqueue of key {:?} kept racing with other enqueues of it", id.key)))
}

/// What [`ENQUEUE`]'s row says, or None if it lost a race and must be asked again.
fn enqueued(row: &Row, limit: i64) -> Result<Option<Enqueued>, Failure> {
    if row.try_get::<_, Option<i64>>(0)?.is_some() {
        return Ok(Some(Enqueued::Queued));
    }
    if let Some(code) = row.try_get::<_, Option<i16>>(1)? {
        return decode_state(i64::from(code)).map(|state| Some(Enqueued::Duplicate(state))).map_err(Failure::Store);
    }
    let waiting: i64 = row.try_get(2)?;
    Ok((waiting >= limit).then_some(Enqueued::Full))
}

/// Leases the due events of a route, oldest first. Why two replicas never lease one event, and
/// never break the order rule, under READ COMMITTED:
///
/// - `FOR UPDATE SKIP LOCKED` locks each chosen row, skipping those another transaction holds
///   (another take, or an attempt's end). A row another take leased and committed after this
///   statement's snapshot is not locked any more, but locking it reads its latest version again
///   and tests the `WHERE` on it: delivering, with a lease that runs, it is not due, and is
///   left. `LIMIT` counts only rows locked.
/// - The order rule is a `NOT EXISTS` over the statement's snapshot, not over locks: the
///   subquery locks nothing and so skips nothing. An earlier event of the same key that another
///   replica is leasing right now is queued in this snapshot, or delivering if that take has
///   committed: either way, queued or delivering, it holds the later one back. Only an attempt's
///   end (completed, dead) or a forget releases it, and once committed, that is what the next
///   snapshot sees. A snapshot older than the release only holds back for one more poll.
///
/// `MATERIALIZED`: the rows are chosen and locked once. A subquery in the `UPDATE`'s join could be
/// scanned again for every row updated, and a scan after an update skips the row it just leased
/// and takes the next: more than `max`. `RETURNING` has no order: [`take_due`] sorts.
pub(super) const TAKE_DUE: Sql = Sql {
    text: concat!(
        "
WITH due AS MATERIALIZED (
    SELECT e.seq AS due_seq FROM idemgate_events e
    WHERE e.route = $1 AND e.state IN (0, 1)
      AND ((e.state = 0 AND e.next_attempt_ms <= $2) OR (e.state = 1 AND e.lease_until_ms <= $2))
      AND (e.order_key IS NULL OR NOT EXISTS (
          SELECT 1 FROM idemgate_events p
          WHERE p.route = e.route AND p.scope = e.scope AND p.order_key = e.order_key
            AND p.seq < e.seq AND p.state IN (0, 1)))
    ORDER BY e.seq
    LIMIT $3
    FOR UPDATE OF e SKIP LOCKED
)
UPDATE idemgate_events
SET state = 1, token = $4, lease_until_ms = $2 + $5, attempts = attempts + 1, last_attempt_ms = $2
FROM due WHERE seq = due_seq
RETURNING ",
        event_columns!()
    ),
    types: &[Type::TEXT, Type::INT8, Type::INT8, Type::INT8, Type::INT8],
};

pub(super) async fn take_due(
    db: &Db<'_>,
    route: &str,
    now_ms: i64,
    max: usize,
    token: u64,
    lease_ms: i64,
) -> Result<Vec<QueuedEvent>, Failure> {
    let (max, token) = (sql_count(max), token as i64);
    let rows = db.query(&TAKE_DUE, &[&route, &now_ms, &max, &token, &lease_ms]).await?;
    let mut events = rows.iter().map(event_of).collect::<Result<Vec<_>, _>>()?;
    events.sort_by_key(|e| e.seq);
    Ok(events)
}

/// The token fences a worker whose lease ended and whose event another worker took since.
const FINISH_ATTEMPT: Sql = Sql {
    text: "UPDATE idemgate_events
           SET state = $5, next_attempt_ms = coalesce($6, next_attempt_ms), last_status = $7, last_error = $8,
               response_status = $9, response_headers = $10, response_body = $11, response_body_omitted = $12,
               token = NULL, lease_until_ms = NULL
           WHERE route = $1 AND scope = $2 AND key = $3 AND state = 1 AND token = $4",
    types: &[
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::INT8,
        Type::INT2,
        Type::INT8,
        Type::INT4,
        Type::TEXT,
        Type::INT4,
        Type::BYTEA,
        Type::BYTEA,
        Type::BOOL,
    ],
};

pub(super) async fn finish_attempt(
    db: &Db<'_>,
    id: &RecordId,
    token: u64,
    attempted: &Attempted,
) -> Result<bool, Failure> {
    let route: &str = &id.route;
    let token = token as i64;
    let finish = Finish::of(attempted);
    let (status, headers, body) = (finish.response_status(), finish.response_headers(), finish.response_body());
    let changed = db
        .execute(
            &FINISH_ATTEMPT,
            &[
                &route,
                &id.scope,
                &id.key,
                &token,
                &finish.state,
                &finish.next_attempt_ms,
                &finish.last_status,
                &finish.last_error,
                &status,
                &headers,
                &body,
                &finish.body_omitted(),
            ],
        )
        .await?;
    Ok(changed == 1)
}

const EVENT: Sql = Sql {
    text: concat!("SELECT ", event_columns!(), " FROM idemgate_events WHERE route = $1 AND scope = $2 AND key = $3"),
    types: &[Type::TEXT, Type::TEXT, Type::TEXT],
};

pub(super) async fn event(db: &Db<'_>, id: &RecordId) -> Result<Option<QueuedEvent>, Failure> {
    let route: &str = &id.route;
    db.query_opt(&EVENT, &[&route, &id.scope, &id.key]).await?.as_ref().map(event_of).transpose()
}

const DEAD_LETTERS: Sql = Sql {
    text: concat!(
        "SELECT ",
        event_columns!(),
        " FROM idemgate_events WHERE route = $1 AND state = 3 ORDER BY first_seen_ms, seq LIMIT $2"
    ),
    types: &[Type::TEXT, Type::INT8],
};

pub(super) async fn dead_letters(db: &Db<'_>, route: &str, limit: usize) -> Result<Vec<QueuedEvent>, Failure> {
    let limit = sql_count(limit);
    db.query(&DEAD_LETTERS, &[&route, &limit]).await?.iter().map(event_of).collect()
}

/// The last status and error stay: they say why it died, until the next attempt says otherwise.
const RETRY_DEAD: Sql = Sql {
    text: "UPDATE idemgate_events SET state = 0, attempts = 0, first_seen_ms = $4, next_attempt_ms = $4
           WHERE route = $1 AND scope = $2 AND key = $3 AND state = 3",
    types: &[Type::TEXT, Type::TEXT, Type::TEXT, Type::INT8],
};

pub(super) async fn retry_dead(db: &Db<'_>, id: &RecordId, now_ms: i64) -> Result<bool, Failure> {
    let route: &str = &id.route;
    Ok(db.execute(&RETRY_DEAD, &[&route, &id.scope, &id.key, &now_ms]).await? == 1)
}

const FORGET: Sql = Sql {
    text: "DELETE FROM idemgate_events WHERE route = $1 AND scope = $2 AND key = $3 AND (NOT $4 OR state = 3)",
    types: &[Type::TEXT, Type::TEXT, Type::TEXT, Type::BOOL],
};

/// Forgets an event, whatever its state, or only a dead letter (state 3) when `only_dead`.
pub(super) async fn forget(db: &Db<'_>, id: &RecordId, only_dead: bool) -> Result<bool, Failure> {
    let route: &str = &id.route;
    Ok(db.execute(&FORGET, &[&route, &id.scope, &id.key, &only_dead]).await? > 0)
}

/// On the `waiting` and `dead` indexes: a route's completed events, the bulk of a busy route, are
/// not read.
const STATS: Sql = Sql {
    text: "SELECT count(*), min(first_seen_ms), (SELECT count(*) FROM idemgate_events WHERE route = $1 AND state = 3)
           FROM idemgate_events WHERE route = $1 AND state IN (0, 1)",
    types: &[Type::TEXT],
};

pub(super) async fn stats(db: &Db<'_>, route: &str) -> Result<QueueStats, Failure> {
    let row = db.query_opt(&STATS, &[&route]).await?;
    let row = row.ok_or_else(|| Failure::Store("the queue's counts returned no row".into()))?;
    Ok(QueueStats {
        depth: row.try_get::<_, i64>(0)?.unsigned_abs(),
        oldest_ms: row.try_get(1)?,
        dead: row.try_get::<_, i64>(2)?.unsigned_abs(),
    })
}

/// As the records' sweep: `SKIP LOCKED` so that replicas sweeping at once take different rows,
/// and a row that an operation holds right now (a dead letter being retried) is left to it; the
/// test is checked again on the row version that is finally deleted. Queued and delivering events
/// are never swept, however old. `MATERIALIZED`, as in [`TAKE_DUE`]: as `seq IN (subquery)`, the
/// planner may scan the subquery again for every row deleted, each scan skipping the rows this
/// statement deleted already, and delete well past the batch.
const SWEEP: Sql = Sql {
    text: "WITH doomed AS MATERIALIZED (
               SELECT seq FROM idemgate_events WHERE expires_ms <= $1 AND state IN (2, 3)
               LIMIT $2 FOR UPDATE SKIP LOCKED)
           DELETE FROM idemgate_events
           WHERE seq IN (SELECT seq FROM doomed) AND expires_ms <= $1 AND state IN (2, 3)",
    types: &[Type::INT8, Type::INT8],
};

/// Deletes up to `limit` completed or dead events whose ttl ended; returns how many.
pub(super) async fn sweep(db: &Db<'_>, now_ms: i64, limit: usize) -> Result<usize, Failure> {
    let limit = sql_count(limit);
    let deleted = db.execute(&SWEEP, &[&now_ms, &limit]).await?;
    Ok(usize::try_from(deleted).unwrap_or(usize::MAX))
}

fn event_of(row: &Row) -> Result<QueuedEvent, Failure> {
    let row = EventRow {
        seq: row.try_get(0)?,
        route: row.try_get(1)?,
        scope: row.try_get(2)?,
        key: row.try_get(3)?,
        state: i64::from(row.try_get::<_, i16>(4)?),
        order_key: row.try_get(5)?,
        method: row.try_get(6)?,
        target: row.try_get(7)?,
        headers: row.try_get(8)?,
        body: row.try_get(9)?,
        attempts: i64::from(row.try_get::<_, i32>(10)?),
        first_seen_ms: row.try_get(11)?,
        next_attempt_ms: row.try_get(12)?,
        last_attempt_ms: row.try_get(13)?,
        last_status: row.try_get::<_, Option<i32>>(14)?.map(i64::from),
        last_error: row.try_get(15)?,
        response_status: row.try_get::<_, Option<i32>>(16)?.map(i64::from),
        response_headers: row.try_get(17)?,
        response_body: row.try_get(18)?,
        response_body_omitted: row.try_get(19)?,
    };
    row.into_event().map_err(Failure::Store)
}
