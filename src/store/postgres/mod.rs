//! The shared PostgreSQL store: every replica's sidecar talks to one database, so that all of
//! them agree on every key.
//!
//! **Claims.** A claim is one statement (see [`sql::CLAIM`]): an `INSERT ... ON CONFLICT DO
//! UPDATE ... WHERE expires_ms <= now` that either inserts the key or takes over a record whose
//! lease or ttl has ended, and, in the same round trip, reads the record that holds the key when
//! it did neither. The unique primary key serialises concurrent claims of one key, whichever
//! replica sends them: exactly one of them inserts (or takes over) the row. Each claim carries a
//! random token; `complete` and `release` only touch the row while it still carries their token,
//! so a replica that paused past its lease, and lost the key to another, is refused
//! (`complete` answers false) and the other replica's record stands.
//!
//! **Entity versions** (the stale guard) live in `idemgate_versions`, a row per route, scope and
//! entity. A raise is one upsert whose `WHERE` keeps a higher version of the same kind (see
//! [`versions`]); the sweeper deletes expired rows after expired records.
//!
//! **Async routes' events** live in `idemgate_events` (see [`events`]): an enqueue is one
//! statement that inserts unless the key is known or the queue full, and replicas lease due events
//! with `FOR UPDATE SKIP LOCKED`, so that each event is delivered by one replica at a time. An
//! enqueue is answered once committed, which (with `synchronous_commit` on, see below) is durable.
//!
//! **Durability.** Every statement runs in autocommit: when `complete` returns, its transaction
//! is committed. Whether committed means on disk is PostgreSQL's `synchronous_commit`: it must
//! stay `on` (the default; `remote_write` / `remote_apply` are stronger still with synchronous
//! replicas) for the database and role idemgate uses. With `off`, a server crash can lose the
//! last completions after their responses left, and a retried delivery would reach the app again.
//! [`PostgresStore::open`] logs a warning when it finds it `off`.
//!
//! **Timeouts and outages.** Every operation, including taking a connection from the pool (and
//! connecting, when the pool has none), is bounded by `store.postgres.timeout`: past it, or on any
//! connection or SQL error, the operation answers [`StoreError::Unavailable`] and the pipeline
//! answers 503. A connection goes back to the pool only after a statement on it succeeded or the
//! server itself answered with an error; one that timed out or broke is dropped, so a dead
//! connection (server restarted, network cut, a half-open socket) is never handed out again, and
//! the pool connects afresh once the server is back: no restart needed. Idle pooled connections are
//! checked with `is_closed` when they are taken (deadpool's `RecyclingMethod::Fast`), and TCP
//! keepalives start after 30 s idle (unless the url sets `keepalives_idle`), so that a half-open
//! idle connection is noticed by itself too. A statement abandoned by the timeout may still finish
//! on the server: a claim reported unavailable may then hold its key until its lease ends, exactly
//! as after a crash; a completion reported unavailable may be stored after all, and the next
//! delivery is replayed. (A server-side `statement_timeout` would need a `SET`, which pgbouncer in
//! transaction mode does not keep: set it on the role instead if wanted, e.g.
//! `ALTER ROLE idemgate SET statement_timeout = '5s'`.)
//!
//! **Statements** are sent unnamed by default, or prepared once per pooled connection with
//! `store.postgres.prepared_statements: true` (see [`sql`]). Each operation is one autocommitted
//! statement in one round trip either way: a first-seen key costs two (its claim, its completion),
//! a replay that misses the in-memory cache one (the claim that finds the completed record); no
//! `BEGIN`/`COMMIT`, and no read after a write (the claim reads what it wrote, or what holds the
//! key, in the same statement). Prepared, the first use of a statement on a connection costs one
//! more round trip, once; every later one skips parsing and, once PostgreSQL settles on a generic
//! plan, planning too. If the server reports that a prepared statement is missing, taken, or
//! that its cached plan no longer fits the table, the connection is closed rather than pooled,
//! and its statements with it.
//!
//! **pgbouncer (transaction pooling).** Unnamed statements (the default) leave nothing prepared on
//! the server: every one is sent with `query_typed` / `execute_typed` (Parse, Bind, Describe,
//! Execute and Sync of the unnamed statement, with the parameter types given, in one round trip),
//! and nothing relies on session state. The one multi-statement transaction, the migration at
//! [`PostgresStore::open`], holds a transaction-level advisory lock (`pg_advisory_xact_lock`),
//! which transaction pooling keeps. The only startup parameters sent are user, database,
//! `client_encoding` and `application_name` (`idemgate` unless the url names another), which
//! pgbouncer accepts. So idemgate works through pgbouncer in transaction (or statement, except for
//! the migration) mode without `max_prepared_statements`. Prepared statements need pgbouncer
//! 1.21+ with `max_prepared_statements` set (it then tracks them per server connection); without
//! it, a statement prepared on one server connection is missing on the next, or, worse, another
//! client's statement of the same name (tokio-postgres names them `s0`, `s1`, ... in each process)
//! runs in its place.
//!
//! **TLS.** libpq's `sslmode`, `sslrootcert`, `sslcert` and `sslkey` in the url ([`url`]), on
//! rustls ([`tls`]): `verify-full` and `require` verify the server's chain and host name,
//! `verify-ca` its chain only, `prefer` (the default) encrypts when the server offers TLS and
//! verifies nothing, `disable` never asks. The CA and client files are read at [`PostgresStore::open`],
//! so a missing one fails the start; a refused certificate fails every connection, the first
//! (at start) included, with the reason and what it was checked against.
//!
//! **Clocks.** Times are the callers' wall clocks (`now_ms`): replicas' clocks should agree to well
//! within a lease, as with any lease-based scheme.

mod events;
mod sql;
#[cfg(test)]
mod tests;
mod tls;
mod url;
mod versions;

pub use url::{PostgresTls, SslMode, UrlError};

use super::queue::{Attempted, Enqueued, NewEvent, QueueStats, QueuedEvent};
use super::{Claim, ClaimOutcome, Completed, Record, RecordId, Store, StoreError, StoreFuture};
use crate::config::PostgresConfig;
use crate::version::Version;
use deadpool_postgres::{ClientWrapper, Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime};
use sql::{Db, Failure};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// tokio-postgres' default keepalive idle time; replaced by [`KEEPALIVES_IDLE`] unless the url
/// chose another.
const DEFAULT_KEEPALIVES_IDLE: Duration = Duration::from_secs(2 * 60 * 60);
const KEEPALIVES_IDLE: Duration = Duration::from_secs(30);

/// What one operation does with its connection; the future may borrow it.
type OpFuture<'c, T> = Pin<Box<dyn Future<Output = Result<T, Failure>> + Send + 'c>>;

#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
    timeout: Duration,
    /// `store.postgres.prepared_statements`: see [`sql`].
    prepared: bool,
}

impl PostgresStore {
    /// Builds the pool, connects, and creates or migrates the schema (serialised across replicas
    /// by an advisory lock), all within `cfg.timeout`.
    pub async fn open(cfg: &PostgresConfig) -> Result<PostgresStore, StoreError> {
        let timeout = cfg.timeout.0;
        let (url, settings) =
            url::split(&cfg.url).map_err(|e| StoreError::Unavailable(format!("store.postgres.url: {e}")))?;
        let mut pg: tokio_postgres::Config = url.parse().map_err(|e| {
            StoreError::Unavailable(format!("store.postgres.url is not a valid connection string: {e}"))
        })?;
        pg.ssl_mode(settings.mode.wire());
        let tls = tls::MakeRustls::new(&settings)
            .map_err(|e| StoreError::Unavailable(format!("PostgreSQL TLS ({}): {e}", settings.describe())))?;
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(timeout);
        }
        if pg.get_keepalives_idle() == DEFAULT_KEEPALIVES_IDLE {
            pg.keepalives_idle(KEEPALIVES_IDLE);
        }
        if pg.get_application_name().is_none() {
            pg.application_name("idemgate");
        }
        let manager = Manager::from_config(pg, tls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(cfg.pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(timeout))
            .create_timeout(Some(timeout))
            .recycle_timeout(Some(timeout))
            .build()
            .map_err(|e| StoreError::Unavailable(format!("cannot build the PostgreSQL pool: {e}")))?;
        let store = PostgresStore { pool, timeout, prepared: cfg.prepared_statements };
        let synchronous_commit = store.call(|db| Box::pin(sql::migrate(db.client))).await?;
        if synchronous_commit == "off" {
            tracing::warn!(
                "PostgreSQL synchronous_commit is off: a server crash can lose completed keys whose responses \
                 were already sent; set it to on for idemgate's role or database"
            );
        }
        Ok(store)
    }

    /// Runs `op` on a pooled connection, the whole of it (waiting for the pool and connecting
    /// included) bounded by the timeout.
    fn call<T, F>(&self, op: F) -> StoreFuture<T>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(Db<'c>) -> OpFuture<'c, T> + Send + 'static,
    {
        let pool = self.pool.clone();
        let (timeout, prepared) = (self.timeout, self.prepared);
        Box::pin(async move {
            let run = async {
                let mut conn = Conn { obj: Some(pool.get().await.map_err(pool_error)?), keep: false };
                let result = op(Db { client: conn.client(), prepared }).await;
                conn.keep = match &result {
                    Ok(_) | Err(Failure::Store(_)) => true,
                    // The server answered: the connection itself is fine, unless its prepared
                    // statements are what failed (they go with it).
                    Err(Failure::Pg(e)) => {
                        e.as_db_error().is_some()
                            && !conn.client().is_closed()
                            && !(prepared && e.code().is_some_and(sql::spoils_prepared))
                    }
                };
                result.map_err(Failure::into_store_error)
            };
            match tokio::time::timeout(timeout, run).await {
                Ok(result) => result,
                Err(_) => Err(StoreError::Unavailable(format!("PostgreSQL did not answer within {timeout:?}"))),
            }
        })
    }
}

/// A pooled connection that goes back to the pool only if marked `keep`; otherwise (an error
/// that may have broken it, or the operation abandoned at the timeout) it is closed and the pool
/// shrinks, to connect afresh when next needed.
struct Conn {
    obj: Option<Object>,
    keep: bool,
}

impl Conn {
    fn client(&mut self) -> &mut ClientWrapper {
        self.obj.as_mut().expect("taken only on drop")
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if !self.keep
            && let Some(obj) = self.obj.take()
        {
            drop(Object::take(obj));
        }
    }
}

fn pool_error(e: PoolError) -> StoreError {
    match e {
        PoolError::Closed => StoreError::Closed,
        PoolError::Backend(e) => {
            StoreError::Unavailable(format!("cannot connect to PostgreSQL: {}", sql::describe(&e)))
        }
        PoolError::Timeout(_) => StoreError::Unavailable("timed out waiting for a PostgreSQL connection".into()),
        e => StoreError::Unavailable(format!("cannot get a PostgreSQL connection: {e}")),
    }
}

impl Store for PostgresStore {
    fn claim(&self, claim: Claim) -> StoreFuture<ClaimOutcome> {
        self.call(move |db| Box::pin(async move { sql::claim(&db, &claim).await }))
    }
    fn complete(&self, id: RecordId, token: u64, completed: Arc<Completed>) -> StoreFuture<bool> {
        self.call(move |db| Box::pin(async move { sql::complete(&db, &id, token, &completed).await }))
    }
    fn release(&self, id: RecordId, token: u64) -> StoreFuture<()> {
        self.call(move |db| Box::pin(async move { sql::release(&db, &id, token).await }))
    }
    fn get(&self, id: RecordId) -> StoreFuture<Option<Record>> {
        self.call(move |db| Box::pin(async move { sql::get(&db, &id).await }))
    }
    fn delete(&self, id: RecordId) -> StoreFuture<bool> {
        self.call(move |db| Box::pin(async move { sql::delete(&db, &id).await }))
    }
    /// Records first, then versions, then finished events, each with what is left of the batch,
    /// on one connection.
    fn sweep(&self, now_ms: i64, batch: usize) -> StoreFuture<usize> {
        self.call(move |db| {
            Box::pin(async move {
                let mut swept = sql::sweep(&db, now_ms, batch).await?;
                swept += versions::sweep(&db, now_ms, batch.saturating_sub(swept)).await?;
                swept += events::sweep(&db, now_ms, batch.saturating_sub(swept)).await?;
                Ok(swept)
            })
        })
    }
    fn version(&self, id: RecordId) -> StoreFuture<Option<Version>> {
        let now_ms = super::now_ms();
        self.call(move |db| Box::pin(async move { versions::get(&db, &id, now_ms).await }))
    }
    fn raise_version(&self, id: RecordId, version: Version, expires_ms: i64) -> StoreFuture<()> {
        let now_ms = super::now_ms();
        self.call(move |db| Box::pin(async move { versions::raise(&db, &id, &version, expires_ms, now_ms).await }))
    }
    fn check_writable(&self) -> StoreFuture<()> {
        self.call(|db| Box::pin(async move { sql::check_writable(&db).await }))
    }
    fn supports_queue(&self) -> bool {
        true
    }
    fn enqueue(&self, event: NewEvent) -> StoreFuture<Enqueued> {
        self.call(move |db| Box::pin(async move { events::enqueue(&db, &event).await }))
    }
    fn take_due(
        &self,
        route: &str,
        now_ms: i64,
        max: usize,
        token: u64,
        lease_ms: i64,
    ) -> StoreFuture<Vec<QueuedEvent>> {
        let route = route.to_string();
        self.call(move |db| Box::pin(async move { events::take_due(&db, &route, now_ms, max, token, lease_ms).await }))
    }
    fn finish_attempt(&self, id: RecordId, token: u64, attempted: Attempted) -> StoreFuture<bool> {
        self.call(move |db| Box::pin(async move { events::finish_attempt(&db, &id, token, &attempted).await }))
    }
    fn event(&self, id: RecordId) -> StoreFuture<Option<QueuedEvent>> {
        self.call(move |db| Box::pin(async move { events::event(&db, &id).await }))
    }
    fn dead_letters(&self, route: &str, limit: usize) -> StoreFuture<Vec<QueuedEvent>> {
        let route = route.to_string();
        self.call(move |db| Box::pin(async move { events::dead_letters(&db, &route, limit).await }))
    }
    fn retry_dead(&self, id: RecordId, now_ms: i64) -> StoreFuture<bool> {
        self.call(move |db| Box::pin(async move { events::retry_dead(&db, &id, now_ms).await }))
    }
    fn forget_event(&self, id: RecordId) -> StoreFuture<bool> {
        self.call(move |db| Box::pin(async move { events::forget(&db, &id, false).await }))
    }
    fn forget_dead(&self, id: RecordId) -> StoreFuture<bool> {
        self.call(move |db| Box::pin(async move { events::forget(&db, &id, true).await }))
    }
    fn queue_stats(&self, route: &str) -> StoreFuture<QueueStats> {
        let route = route.to_string();
        self.call(move |db| Box::pin(async move { events::stats(&db, &route).await }))
    }
    /// Closes the pool: idle connections now, those in use when their operation ends. Every
    /// later operation answers [`StoreError::Closed`]. Nothing is queued, so nothing is lost.
    fn close(&self) -> StoreFuture<()> {
        let pool = self.pool.clone();
        Box::pin(async move {
            pool.close();
            Ok(())
        })
    }
}
