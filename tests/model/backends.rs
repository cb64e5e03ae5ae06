//! Each case gets records of its own: a fresh SQLite file, a fresh Redis key prefix, or the
//! test's own PostgreSQL schema, which each case leaves empty (a schema per case costs more to
//! create and migrate than the case itself). Sweeps count what they delete, so no other test, case
//! or run may share rows.

use idemgate::config::{Dur, PostgresConfig, RedisConfig};
use idemgate::store::{PostgresStore, RedisStore, SqliteStore, Store, StoreError};
use std::sync::Arc;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub enum Kind {
    Sqlite,
    /// The server's url.
    Postgres(String),
    Redis(String),
}

impl Kind {
    /// For messages: the urls may carry credentials.
    pub fn name(&self) -> &'static str {
        match self {
            Kind::Sqlite => "SQLite",
            Kind::Postgres(_) => "PostgreSQL",
            Kind::Redis(_) => "Redis",
        }
    }

    /// Postgres or Redis as named by the environment; None (and a line on stderr) when unset.
    pub fn from_env(var: &str, make: fn(String) -> Kind) -> Option<Kind> {
        match std::env::var(var).ok().filter(|url| !url.is_empty()) {
            Some(url) => Some(make(url)),
            None => {
                use std::io::Write;
                // Past the harness' capture: a skipped backend must not pass silently.
                let _ = writeln!(std::io::stderr().lock(), "SKIPPED: {var} not set");
                None
            }
        }
    }
}

/// Where a test's records live: a temp dir (a file per case), a PostgreSQL schema (emptied by
/// each case as it ends), or a Redis key prefix (one per case).
pub struct Place {
    kind: Kind,
    /// A name no other test or run uses.
    unique: String,
    dir: Option<tempfile::TempDir>,
}

/// Which case's records: a case and its reopens see the same ones.
pub type CaseId = u64;

impl Place {
    pub async fn new(kind: &Kind) -> Place {
        let unique = format!("model_{:016x}", unique());
        let dir = matches!(kind, Kind::Sqlite).then(|| tempfile::tempdir().expect("a temp dir"));
        if let Kind::Postgres(url) = kind {
            admin(url, &format!("CREATE SCHEMA {unique}")).await;
        }
        Place { kind: kind.clone(), unique, dir }
    }

    /// The store of case `case` as a process would open it.
    pub async fn open(&self, case: CaseId) -> Result<Arc<dyn Store>, StoreError> {
        Ok(match &self.kind {
            Kind::Sqlite => {
                let dir = self.dir.as_ref().expect("sqlite has a dir");
                Arc::new(SqliteStore::open(&dir.path().join(format!("case-{case}.db")))?)
            }
            Kind::Postgres(url) => {
                let url = format!("{url}{}options=-c%20search_path%3D{}", separator(url), self.unique);
                Arc::new(
                    PostgresStore::open(&PostgresConfig {
                        url,
                        pool_size: 2,
                        timeout: Dur(TIMEOUT),
                        prepared_statements: false,
                    })
                    .await?,
                )
            }
            Kind::Redis(url) => {
                let key_prefix = format!("idemgate-{}-{case}:", self.unique);
                Arc::new(
                    RedisStore::open(&RedisConfig { url: url.clone(), key_prefix, timeout: Dur(TIMEOUT), tls: None })
                        .await?,
                )
            }
        })
    }

    /// Drops what the test left on a shared server.
    pub async fn remove(self) {
        if let Kind::Postgres(url) = &self.kind {
            admin(url, &format!("DROP SCHEMA IF EXISTS {} CASCADE", self.unique)).await;
        }
    }
}

fn separator(url: &str) -> char {
    if url.contains('?') { '&' } else { '?' }
}

fn unique() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    RandomState::new().hash_one((COUNTER.fetch_add(1, Ordering::Relaxed), std::process::id()))
}

async fn admin(url: &str, sql: &str) {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.expect("connect to postgres");
    let task = tokio::spawn(connection);
    client.batch_execute(sql).await.expect(sql);
    drop(client);
    let _ = task.await;
}
