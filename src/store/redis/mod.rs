//! The shared Redis store: several replicas agree on one Redis.
//!
//! # Layout
//!
//! One Redis key per record: `{key_prefix}{route}:{scope}:{key}` (route names contain no `:`,
//! the scope is a hex digest or empty, and the key comes last so that it may contain `:`). The
//! record is a hash:
//!
//! | field          | value                                                        |
//! |----------------|--------------------------------------------------------------|
//! | `state`        | `0` in flight, `1` completed                                 |
//! | `token`        | the claim token (decimal), the fence of `complete`/`release` |
//! | `fingerprint`  | the raw 32 bytes; absent when the route takes none           |
//! | `created_ms`   | when the key was claimed (the claimant's clock)              |
//! | `expires_ms`   | when the lease or the ttl ends (the claimant's clock)        |
//! | `status`       | completed only: the status code                              |
//! | `headers`      | completed only: [`StoredResponse::encode_headers`]           |
//! | `body`         | completed only: the body bytes                               |
//! | `body_omitted` | completed only: `0` or `1`                                   |
//!
//! The key carries a `PEXPIRE` of the ttl once completed, and of the lease plus
//! [`ABANDONED_CLAIM_RETENTION_MS`] while in flight: the lease runs while more than the retention
//! remains, so that a claim that takes over an abandoned one can tell (and count) it. Redis' own
//! clock ends leases and ttls, so the replicas' clocks need not agree, and a claim simply takes a
//! key that is gone or whose lease has ended. [`Store::sweep`] has nothing to do.
//!
//! An entity's version (the stale guard) is a string key of its own,
//! `{key_prefix}#version:{route}:{scope}:{entity}`, holding [`Version::encoded`] and expiring
//! (`PEXPIREAT`) at the `expires_ms` its raise gave. No route name contains `#`, so it never
//! meets a record's key. `raise_version` is a script that compares and sets in one step.
//!
//! Every operation touches exactly one key (one command, or one Lua script over `KEYS[1]`), so
//! the layout is cluster-safe as it is: no hash tags are needed and no operation can span slots.
//! The client is redis-rs' [`ConnectionManager`], which talks to one endpoint (a standalone
//! primary, a Sentinel- or operator-managed primary address, or a cluster-aware proxy); speaking
//! the Redis Cluster protocol itself would take the crate's `cluster-async` client.
//!
//! # Atomicity and fencing
//!
//! `claim` is one script: if the key does not exist it writes the in-flight record with its lease
//! and answers "claimed", otherwise it answers the hash, from which the holder (completed or in
//! flight) is decoded. Scripts run atomically, so of any number of concurrent claims of one key
//! exactly one is claimed. `complete` and `release` are scripts that act only if the record is in
//! flight under the caller's token: a replica that paused past its lease finds the key gone or
//! held by another token and gets `false`.
//!
//! # Durability
//!
//! A completion is acknowledged once Redis holds it **in memory**; `complete` returning true means
//! no more than that. Whether it survives a Redis crash or restart is Redis' persistence setting:
//!
//! - `appendonly yes` with `appendfsync always`: Redis writes the AOF and fsyncs it before it
//!   answers, the same guarantee as the SQLite and PostgreSQL stores (on that one server).
//! - `appendonly yes` with `appendfsync everysec` (Redis' default once AOF is on): a crash loses up
//!   to about a second of completions and claims.
//! - RDB snapshots only, or no persistence: a restart forgets everything since the last snapshot.
//!
//! A forgotten key is claimed and forwarded to the app again on its next delivery. Replication is
//! asynchronous, so a failover to a replica can likewise lose acknowledged records that had not
//! reached it. `maxmemory-policy noeviction` is **required**: under any evicting policy Redis may
//! drop a record before its ttl, and an evicted record is a forgotten key; with `noeviction` a full
//! Redis refuses writes, which idemgate answers with 503 (and readiness fails) instead of
//! forgetting. `open` warns when it can read either setting and finds it unsafe.
//!
//! Prefer PostgreSQL when a completed response must survive a crash of the store (or a failover)
//! for certain; Redis fits when a rare duplicate forward after a Redis crash is tolerable, or when
//! it runs with `appendfsync always`.
//!
//! # Outages
//!
//! Every operation is bounded by `store.redis.timeout`: past it, or on any error, it fails with
//! [`StoreError::Unavailable`] (the request gets 503 and nothing is forwarded). The connection is
//! one multiplexed [`ConnectionManager`], which replaces a dropped connection by itself; an
//! operation that finds its connection dropped is retried once on the new one, within the same
//! bound. The scripts make that retry safe: a retried claim or completion that finds its own
//! token already in place knows that its first attempt was applied. TCP keepalive and
//! `TCP_USER_TIMEOUT` make a silently vanished server (no reset) count as a dropped connection
//! within seconds instead of minutes.
//!
//! # TLS
//!
//! A `rediss://` url connects over TLS (rustls) and verifies the server's certificate, chain and
//! host name, against `store.redis.tls.ca_file` or the system's roots; `cert_file` and `key_file`
//! present a client certificate. See [`tls`].

mod fields;
mod scripts;
#[cfg(test)]
mod tests;
mod tls;
mod versions;

use fields::{bytes, claim_outcome, field_pairs, int};
use scripts::{CLAIM, COMPLETE, RELEASE};

use super::{
    ABANDONED_CLAIM_RETENTION_MS, Claim, ClaimOutcome, Completed, Record, RecordId, State, Store, StoreError,
    StoreFuture,
};
use crate::config::RedisConfig;
use crate::version::Version;
use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::io::tcp::TcpSettings;
use ::redis::io::tcp::socket2::TcpKeepalive;
use ::redis::{Cmd, IntoConnectionInfo, RedisError, ScriptInvocation, Value, cmd};

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// Expiries are clamped to this (about 142 years), far inside what `PEXPIRE` accepts.
const MAX_EXPIRY_MS: i64 = 1 << 52;

/// Idle time before TCP keepalive probes, and how long sent data may stay unacknowledged before
/// the kernel drops the connection (Linux): a vanished server is noticed within seconds.
const TCP_DEAD_PEER: Duration = Duration::from_secs(10);

pub struct RedisStore {
    conn: Conn,
    prefix: Arc<str>,
}

/// The shared connection and the bound of every operation; cloned (cheaply) into each future.
#[derive(Clone)]
struct Conn {
    manager: ConnectionManager,
    timeout: Duration,
}

/// One round trip: a script (EVALSHA, loading the script if the server does not have it) or a
/// plain command.
enum Request {
    Script(ScriptInvocation<'static>),
    Cmd(Cmd),
}

impl RedisStore {
    /// Connects (a multiplexed, reconnecting connection) and PINGs, all within `cfg.timeout`.
    pub async fn open(cfg: &RedisConfig) -> Result<RedisStore, StoreError> {
        let timeout = cfg.timeout.0;
        let info = cfg
            .url
            .as_str()
            .into_connection_info()
            .map_err(|e| StoreError::Unavailable(format!("store.redis.url: {e}")))?
            .set_tcp_settings(tcp_settings());
        let certificates = tls::certificates(cfg).map_err(|e| StoreError::Unavailable(format!("redis TLS: {e}")))?;
        // redis-rs builds its rustls config from the process' default provider.
        crate::store::tls::install_default_provider();
        let client = match certificates {
            Some(certificates) => ::redis::Client::build_with_tls(info, certificates),
            None => ::redis::Client::open(info),
        }
        .map_err(|e| unavailable("connect", &e))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            // The operation's own bound (`Conn::run`) is the one that counts.
            .set_response_timeout(None)
            // Fail fast while Redis is down: each later operation starts a new attempt anyway.
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        let connect = async {
            let manager =
                ConnectionManager::new_with_config(client, config).await.map_err(|e| connect_error(cfg, &e))?;
            let conn = Conn { manager, timeout };
            conn.send(&Request::Cmd(cmd("PING"))).await.map_err(|e| format!("redis ping: {e}"))?;
            Ok::<_, String>(conn)
        };
        let conn = match tokio::time::timeout(timeout, connect).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(message)) => return Err(StoreError::Unavailable(message)),
            Err(_) => return Err(StoreError::Unavailable(format!("redis connect: no answer within {timeout:?}"))),
        };
        warn_about_settings(&conn).await;
        Ok(RedisStore { conn, prefix: cfg.key_prefix.as_str().into() })
    }

    fn key(&self, id: &RecordId) -> String {
        record_key(&self.prefix, id)
    }

    /// How the connection is protected, for `idemgate check`: `tls, ca: /etc/ca.pem`.
    pub fn describe_tls(cfg: &RedisConfig) -> String {
        tls::describe(cfg)
    }
}

fn record_key(prefix: &str, id: &RecordId) -> String {
    format!("{prefix}{}:{}:{}", id.route, id.scope, id.key)
}

fn tcp_settings() -> TcpSettings {
    let settings = TcpSettings::default().set_nodelay(true).set_keepalive(TcpKeepalive::new().with_time(TCP_DEAD_PEER));
    #[cfg(target_os = "linux")]
    let settings = settings.set_user_timeout(TCP_DEAD_PEER);
    settings
}

/// Says so at startup if the server's settings can forget records (when `CONFIG GET` is allowed:
/// managed services often refuse it, and then nothing is said).
async fn warn_about_settings(conn: &Conn) {
    if let Some(policy) = config_get(conn, "maxmemory-policy").await
        && policy != "noeviction"
    {
        tracing::warn!(
            maxmemory_policy = %policy,
            "redis may evict records before their ttl, and an evicted key is forwarded again: set maxmemory-policy noeviction"
        );
    }
    match config_get(conn, "appendonly").await.as_deref() {
        Some("no") => tracing::warn!(
            "redis runs without AOF: completed records live in its memory, and a restart forgets them (set appendonly yes and appendfsync always for durable completions)"
        ),
        Some(_) => {
            if let Some(fsync) = config_get(conn, "appendfsync").await
                && fsync != "always"
            {
                tracing::info!(appendfsync = %fsync, "redis acknowledges completions before they are fsynced: a crash can lose the last moments of them");
            }
        }
        None => {}
    }
}

async fn config_get(conn: &Conn, name: &'static str) -> Option<String> {
    let (value, _) = conn
        .clone()
        .run("config get", move |_| {
            let mut c = cmd("CONFIG");
            c.arg("GET").arg(name);
            Request::Cmd(c)
        })
        .await
        .ok()?;
    let pairs = field_pairs(value).ok()?;
    pairs.into_iter().find(|(k, _)| k == name.as_bytes()).and_then(|(_, v)| String::from_utf8(v).ok())
}

impl Conn {
    async fn send(&self, request: &Request) -> Result<Value, RedisError> {
        let mut manager = self.manager.clone();
        match request {
            Request::Script(invocation) => invocation.invoke_async(&mut manager).await,
            Request::Cmd(c) => c.query_async(&mut manager).await,
        }
    }

    /// One operation within the timeout. If the connection turns out to be dropped, the manager
    /// is already replacing it, and the request is sent once more (built with `retry` true): the
    /// answer tells whether that happened.
    async fn run<F>(self, what: &'static str, request: F) -> Result<(Value, bool), StoreError>
    where
        F: Fn(bool) -> Request + Send,
    {
        let attempts = async {
            match self.send(&request(false)).await {
                Err(e) if e.is_unrecoverable_error() => {
                    tracing::debug!(op = what, error = %e, "redis connection dropped; retrying on a new one");
                    self.send(&request(true)).await.map(|v| (v, true))
                }
                other => other.map(|v| (v, false)),
            }
        };
        match tokio::time::timeout(self.timeout, attempts).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => Err(unavailable(what, &e)),
            Err(_) => Err(StoreError::Unavailable(format!("redis {what}: no answer within {:?}", self.timeout))),
        }
    }
}

/// A failed first connection; over TLS, it says what the certificate was checked against.
fn connect_error(cfg: &RedisConfig, e: &RedisError) -> String {
    match cfg.uses_tls() {
        true => format!("redis connect ({}): {e}", tls::describe(cfg)),
        false => format!("redis connect: {e}"),
    }
}

fn unavailable(what: &str, e: &RedisError) -> StoreError {
    StoreError::Unavailable(format!("redis {what}: {e}"))
}

fn malformed(what: &str, detail: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("redis {what}: unexpected answer: {detail}"))
}

fn boxed<T, F>(f: F) -> StoreFuture<T>
where
    F: Future<Output = Result<T, StoreError>> + Send + 'static,
{
    Box::pin(f)
}

impl Store for RedisStore {
    fn claim(&self, claim: Claim) -> StoreFuture<ClaimOutcome> {
        let key = self.key(&claim.id);
        let conn = self.conn.clone();
        boxed(async move {
            let lease_ms = claim.lease_ms.clamp(1, MAX_EXPIRY_MS);
            let fingerprint = claim.fingerprint.map(Vec::from).unwrap_or_default();
            let expires_ms = claim.now_ms.saturating_add(lease_ms);
            let keep_ms = lease_ms.saturating_add(ABANDONED_CLAIM_RETENTION_MS).min(MAX_EXPIRY_MS);
            let (answer, retried) = conn
                .run("claim", |_| {
                    let mut invocation = CLAIM.prepare_invoke();
                    invocation
                        .key(&key)
                        .arg(claim.token)
                        .arg(&fingerprint[..])
                        .arg(claim.now_ms)
                        .arg(expires_ms)
                        .arg(keep_ms)
                        .arg(ABANDONED_CLAIM_RETENTION_MS);
                    Request::Script(invocation)
                })
                .await?;
            claim_outcome(answer, claim.token, retried)
        })
    }

    fn complete(&self, id: RecordId, token: u64, completed: Arc<Completed>) -> StoreFuture<bool> {
        let key = self.key(&id);
        let conn = self.conn.clone();
        boxed(async move {
            // The key lives until the record's own expiry, measured from now.
            let ttl_ms = completed.expires_ms.saturating_sub(super::now_ms()).clamp(1, MAX_EXPIRY_MS);
            let headers = completed.response.encode_headers();
            let fingerprint = completed.fingerprint.map(Vec::from).unwrap_or_default();
            let response = &completed.response;
            let (answer, _) = conn
                .run("complete", |retry| {
                    let mut invocation = COMPLETE.prepare_invoke();
                    invocation
                        .key(&key)
                        .arg(token)
                        .arg(response.status)
                        .arg(&headers[..])
                        .arg(&response.body[..])
                        .arg(if response.body_omitted { "1" } else { "0" })
                        .arg(completed.expires_ms)
                        .arg(ttl_ms)
                        .arg(if retry { "1" } else { "0" })
                        .arg(completed.created_ms)
                        .arg(&fingerprint[..]);
                    Request::Script(invocation)
                })
                .await?;
            match answer {
                Value::Int(n) => Ok(n == 1),
                other => Err(malformed("complete", format!("{other:?}"))),
            }
        })
    }

    fn release(&self, id: RecordId, token: u64) -> StoreFuture<()> {
        let key = self.key(&id);
        let conn = self.conn.clone();
        boxed(async move {
            conn.run("release", |_| {
                let mut invocation = RELEASE.prepare_invoke();
                invocation.key(&key).arg(token);
                Request::Script(invocation)
            })
            .await?;
            Ok(())
        })
    }

    fn get(&self, id: RecordId) -> StoreFuture<Option<Record>> {
        let key = self.key(&id);
        let conn = self.conn.clone();
        boxed(async move {
            let (answer, _) = conn
                .run("get", |_| {
                    let mut c = cmd("HMGET");
                    c.arg(&key).arg("state").arg("status").arg("created_ms").arg("expires_ms");
                    Request::Cmd(c)
                })
                .await?;
            let Value::Array(values) = answer else {
                return Err(malformed("get", format!("{answer:?}")));
            };
            let mut values = values.into_iter().map(bytes);
            let mut next = || values.next().flatten();
            let (state, status, created_ms, expires_ms) = (next(), next(), next(), next());
            let state = match state.as_deref() {
                None => return Ok(None),
                Some(b"0") => State::InFlight,
                Some(b"1") => State::Completed,
                Some(other) => return Err(malformed("get", format!("state {:?}", String::from_utf8_lossy(other)))),
            };
            let status = match status.as_deref() {
                Some(s) => Some(
                    int(Some(s), "status").and_then(|s| s.try_into().map_err(|_| "status out of range".to_string())),
                )
                .transpose()
                .map_err(|e| malformed("get", e))?,
                None => None,
            };
            Ok(Some(Record {
                state,
                status,
                created_ms: int(created_ms.as_deref(), "created_ms").map_err(|e| malformed("get", e))?,
                expires_ms: int(expires_ms.as_deref(), "expires_ms").map_err(|e| malformed("get", e))?,
            }))
        })
    }

    fn delete(&self, id: RecordId) -> StoreFuture<bool> {
        let key = self.key(&id);
        let conn = self.conn.clone();
        boxed(async move {
            let (answer, _) = conn
                .run("delete", |_| {
                    let mut c = cmd("DEL");
                    c.arg(&key);
                    Request::Cmd(c)
                })
                .await?;
            match answer {
                Value::Int(n) => Ok(n > 0),
                other => Err(malformed("delete", format!("{other:?}"))),
            }
        })
    }

    /// Redis' own expiry deletes ended leases and ttls (the `PEXPIRE` on every record) and
    /// expired versions (their `PEXPIREAT`).
    fn sweep(&self, _now_ms: i64, _batch: usize) -> StoreFuture<usize> {
        boxed(async { Ok(0) })
    }

    fn version(&self, id: RecordId) -> StoreFuture<Option<Version>> {
        boxed(versions::get(self.conn.clone(), versions::key(&self.prefix, &id)))
    }

    fn raise_version(&self, id: RecordId, version: Version, expires_ms: i64) -> StoreFuture<()> {
        boxed(versions::raise(self.conn.clone(), versions::key(&self.prefix, &id), version, expires_ms))
    }

    /// A write that leaves nothing durable behind: it fails on a read-only replica, or when Redis
    /// is out of memory under `noeviction`.
    fn check_writable(&self) -> StoreFuture<()> {
        let key = format!("{}__ready", self.prefix);
        let conn = self.conn.clone();
        boxed(async move {
            let (answer, _) = conn
                .run("check_writable", |_| {
                    let mut c = cmd("SET");
                    c.arg(&key).arg("1").arg("PX").arg(1000);
                    Request::Cmd(c)
                })
                .await?;
            match answer {
                Value::Okay => Ok(()),
                Value::SimpleString(s) if s == "OK" => Ok(()),
                other => Err(malformed("check_writable", format!("{other:?}"))),
            }
        })
    }

    /// Nothing is queued on this side: every acknowledged write is already in Redis.
    fn close(&self) -> StoreFuture<()> {
        boxed(async { Ok(()) })
    }
}
