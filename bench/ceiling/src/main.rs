//! The ceiling: the leanest program doing idemgate's durable work, to measure idemgate against.
//!
//! `idemgate-ceiling LISTEN UPSTREAM DB` (e.g. `127.0.0.1:18082 127.0.0.1:18000 /tmp/c.db`).
//!
//! - `POST /webhooks/...` with an `Idempotency-Key` header (the route of bench/run.sh's config):
//!   - a key completed in memory is answered from one shared `Arc` (`Idempotent-Replayed: true`);
//!   - otherwise one claim row is inserted (`INSERT ... ON CONFLICT DO NOTHING`) and committed
//!     (WAL, `synchronous=NORMAL`: survives a kill, not a power loss) before the app is called;
//!     if the row already existed, the writer reads it instead (replay, or 409 while in flight);
//!   - the app's response (status, end-to-end headers, body) is written by the single writer
//!     thread, which batches whatever is queued and commits; a second thread `fdatasync`s the WAL
//!     for every completion committed before the sync started, and only then is it answered. The
//!     writer builds and commits the next batch meanwhile;
//!   - a record reaches the in-memory map only once synced, and a row read from the file while a
//!     completion's sync is pending waits for that sync: a replay never leaves an unsynced record.
//! - Anything else is passed through to the upstream.
//!
//! Same table, index and columns as idemgate's schema version 2, so the bytes per key compare,
//! and a database prefilled for one can be copied for the other. No logs, no metrics, no config.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rusqlite::{Connection, OptionalExtension, params};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY, route TEXT NOT NULL, scope TEXT NOT NULL, key TEXT NOT NULL,
    state INTEGER NOT NULL, token INTEGER NOT NULL, fingerprint BLOB, created_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL, status INTEGER, headers BLOB, body BLOB,
    body_omitted INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX IF NOT EXISTS records_key ON records (route, scope, key);
CREATE INDEX IF NOT EXISTS records_expiry ON records (expires_ms);
PRAGMA user_version = 2;
";
const ROUTE: &str = "bench";
const LEASE_MS: i64 = 60_000;
const TTL_MS: i64 = 7 * 24 * 3600 * 1000;
const MAX_BATCH: usize = 256;
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// A stored response, shared by every replay of its key.
struct Stored {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

enum Slot {
    InFlight,
    Done(Arc<Stored>),
}

enum Op {
    Claim { key: String, token: i64, now: i64 },
    Complete { key: String, token: i64, now: i64, status: u16, headers: Vec<u8>, body: Bytes },
    Release { key: String, token: i64 },
}

enum Found {
    Claimed,
    InFlight,
    Done(Arc<Stored>),
}

type Reply = oneshot::Sender<Result<Found, String>>;

struct App {
    map: RwLock<HashMap<String, Slot>>,
    jobs: mpsc::Sender<(Op, Reply)>,
    client: Client<HttpConnector, Full<Bytes>>,
    upstream: String,
    tokens: AtomicU64,
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

fn text(status: StatusCode, msg: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(msg.as_bytes())));
    *r.status_mut() = status;
    r
}

fn replay(s: &Stored) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(s.body.clone()));
    *r.status_mut() = s.status;
    *r.headers_mut() = s.headers.clone();
    r.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
    r
}

impl App {
    async fn submit(&self, op: Op) -> Result<Found, String> {
        let (tx, rx) = oneshot::channel();
        self.jobs.send((op, tx)).await.map_err(|_| "writer gone".to_string())?;
        rx.await.map_err(|_| "writer gone".to_string())?
    }

    async fn forward(
        &self,
        parts: http::request::Parts,
        body: Bytes,
    ) -> Result<(StatusCode, HeaderMap, Bytes), String> {
        let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = parts.method;
        *req.uri_mut() = format!("http://{}{pq}", self.upstream).parse::<Uri>().map_err(|e| e.to_string())?;
        *req.headers_mut() = parts.headers;
        for h in HOP_BY_HOP {
            req.headers_mut().remove(h);
        }
        let resp = tokio::time::timeout(Duration::from_secs(30), self.client.request(req))
            .await
            .map_err(|_| "upstream timeout".to_string())?
            .map_err(|e| e.to_string())?;
        let (parts, body) = resp.into_parts();
        // Copies that own their bytes: hyper's parsed headers and body are slices of its read
        // buffer, which a stored record would otherwise keep alive (kilobytes per key).
        let body = Bytes::copy_from_slice(&body.collect().await.map_err(|e| e.to_string())?.to_bytes());
        let mut headers = HeaderMap::with_capacity(parts.headers.len());
        for (name, value) in &parts.headers {
            if name != header::CONTENT_LENGTH && !HOP_BY_HOP.contains(&name.as_str()) {
                let value = HeaderValue::from_bytes(value.as_bytes()).unwrap_or_else(|_| value.clone());
                headers
                    .append(HeaderName::from_bytes(name.as_str().as_bytes()).unwrap_or_else(|_| name.clone()), value);
            }
        }
        Ok((parts.status, headers, body))
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let key = req.headers().get("idempotency-key").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let (parts, body) = req.into_parts();
        let Some(key) = key.filter(|_| parts.uri.path().starts_with("/webhooks/")) else {
            // Not a protected route: pass through.
            let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else { return text(StatusCode::BAD_REQUEST, "") };
            return match self.forward(parts, body).await {
                Ok((status, headers, body)) => Stored { status, headers, body }.into_response(),
                Err(_) => text(StatusCode::BAD_GATEWAY, "upstream unreachable\n"),
            };
        };
        if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| b.is_ascii_graphic()) {
            return text(StatusCode::BAD_REQUEST, "bad Idempotency-Key\n");
        }
        // The hot path: one read lock, one Arc clone.
        match self.map.read().unwrap_or_else(|e| e.into_inner()).get(&key) {
            Some(Slot::Done(s)) => return replay(s),
            Some(Slot::InFlight) => return text(StatusCode::CONFLICT, "in flight\n"),
            None => {}
        }
        {
            let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
            match map.get(&key) {
                Some(Slot::Done(s)) => return replay(s),
                Some(Slot::InFlight) => return text(StatusCode::CONFLICT, "in flight\n"),
                None => map.insert(key.clone(), Slot::InFlight),
            };
        }
        let forget = |app: &App| app.map.write().unwrap_or_else(|e| e.into_inner()).remove(&key);
        let token = self.tokens.fetch_add(1, Ordering::Relaxed) as i64;
        match self.submit(Op::Claim { key: key.clone(), token, now: now_ms() }).await {
            Ok(Found::Claimed) => {}
            Ok(Found::Done(s)) => {
                self.map.write().unwrap_or_else(|e| e.into_inner()).insert(key, Slot::Done(s.clone()));
                return replay(&s);
            }
            Ok(Found::InFlight) => {
                forget(&self);
                return text(StatusCode::CONFLICT, "in flight\n");
            }
            Err(_) => {
                forget(&self);
                return text(StatusCode::SERVICE_UNAVAILABLE, "store unavailable\n");
            }
        }
        let forwarded = match body.collect().await {
            Ok(b) => self.forward(parts, b.to_bytes()).await,
            Err(e) => Err(e.to_string()),
        };
        let (status, headers, body) = match forwarded {
            Ok(r) => r,
            Err(_) => {
                let _ = self.submit(Op::Release { key: key.clone(), token }).await;
                forget(&self);
                return text(StatusCode::BAD_GATEWAY, "upstream unreachable\n");
            }
        };
        let stored = Arc::new(Stored { status, headers, body });
        let op = Op::Complete {
            key: key.clone(),
            token,
            now: now_ms(),
            status: status.as_u16(),
            headers: encode_headers(&stored.headers),
            body: stored.body.clone(),
        };
        // Answered only once the WAL holding this completion is synced.
        if self.submit(op).await.is_err() {
            forget(&self);
            return text(StatusCode::SERVICE_UNAVAILABLE, "store unavailable\n");
        }
        self.map.write().unwrap_or_else(|e| e.into_inner()).insert(key, Slot::Done(stored.clone()));
        stored.into_response()
    }
}

impl Stored {
    fn into_response(&self) -> Response<Full<Bytes>> {
        let mut r = Response::new(Full::new(self.body.clone()));
        *r.status_mut() = self.status;
        *r.headers_mut() = self.headers.clone();
        r
    }
}

/// `name:value\n` lines, as idemgate stores them.
fn encode_headers(h: &HeaderMap) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in h {
        out.extend_from_slice(name.as_str().as_bytes());
        out.push(b':');
        out.extend_from_slice(value.as_bytes());
        out.push(b'\n');
    }
    out
}

fn decode(status: Option<u16>, headers: Option<Vec<u8>>, body: Option<Vec<u8>>) -> Stored {
    let mut map = HeaderMap::new();
    for line in headers.unwrap_or_default().split(|b| *b == b'\n') {
        if let Some(c) = line.iter().position(|b| *b == b':')
            && let (Ok(n), Ok(v)) = (HeaderName::from_bytes(&line[..c]), HeaderValue::from_bytes(&line[c + 1..]))
        {
            map.append(n, v);
        }
    }
    Stored {
        status: StatusCode::from_u16(status.unwrap_or(500)).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        headers: map,
        body: Bytes::from(body.unwrap_or_default()),
    }
}

/// Commits transactions that hold a completion are numbered; the syncer records how far it synced.
#[derive(Default)]
struct Sync {
    committed: AtomicU64,
    synced: AtomicU64,
}

fn apply(tx: &Connection, op: &Op) -> rusqlite::Result<Found> {
    match op {
        Op::Claim { key, token, now } => {
            let n = tx
                .prepare_cached(
                    "INSERT INTO records (route, scope, key, state, token, created_ms, expires_ms)
                     VALUES (?1, '', ?2, 0, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
                )?
                .execute(params![ROUTE, key, token, now, now + LEASE_MS])?;
            if n == 1 {
                return Ok(Found::Claimed);
            }
            let row = tx
                .prepare_cached(
                    "SELECT state, status, headers, body FROM records WHERE route=?1 AND scope='' AND key=?2",
                )?
                .query_row(params![ROUTE, key], |r| Ok((r.get::<_, i64>(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                .optional()?;
            Ok(match row {
                Some((1, status, headers, body)) => Found::Done(Arc::new(decode(status, headers, body))),
                _ => Found::InFlight,
            })
        }
        Op::Complete { key, token, now, status, headers, body } => {
            tx.prepare_cached(
                "UPDATE records SET state=1, status=?3, headers=?4, body=?5, body_omitted=0, expires_ms=?6, created_ms=?7
                 WHERE route=?1 AND scope='' AND key=?2 AND token=?8 AND state=0",
            )?
            .execute(params![ROUTE, key, status, headers, &body[..], now + TTL_MS, now, token])?;
            Ok(Found::Claimed)
        }
        Op::Release { key, token } => {
            tx.prepare_cached("DELETE FROM records WHERE route=?1 AND scope='' AND key=?2 AND token=?3 AND state=0")?
                .execute(params![ROUTE, key, token])?;
            Ok(Found::Claimed)
        }
    }
}

/// The single writer: every queued job in one transaction, claims answered at commit,
/// completions (and reads of completed rows while a sync is pending) handed to the syncer.
fn writer(mut conn: Connection, wal: std::fs::File, ckpt: Connection, mut rx: mpsc::Receiver<(Op, Reply)>) {
    let sync = Arc::new(Sync::default());
    let (to_sync, pending) = std::sync::mpsc::channel::<(Reply, Found, u64)>();
    let s = sync.clone();
    std::thread::spawn(move || {
        while let Ok(first) = pending.recv() {
            let mut group = vec![first];
            group.extend(pending.try_iter());
            let covers = group.iter().map(|g| g.2).max().unwrap_or(0);
            let res = wal.sync_data().map_err(|e| e.to_string());
            if res.is_ok() {
                s.synced.fetch_max(covers, Ordering::AcqRel);
            }
            for (reply, found, _) in group {
                let _ = reply.send(res.clone().map(|()| found));
            }
        }
    });
    // Checkpoints (PASSIVE, at most every 100 ms) off the writer thread, as idemgate does.
    let (wrote, written) = std::sync::mpsc::sync_channel::<()>(1);
    std::thread::spawn(move || {
        while written.recv().is_ok() {
            let _ = ckpt.execute_batch("PRAGMA wal_checkpoint(PASSIVE);");
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let result = (|| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let out = batch.iter().map(|(op, _)| apply(&tx, op)).collect::<rusqlite::Result<Vec<_>>>()?;
            tx.commit()?;
            Ok::<_, rusqlite::Error>(out)
        })();
        match result {
            Ok(found) => {
                if batch.iter().any(|(op, _)| matches!(op, Op::Complete { .. })) {
                    sync.committed.fetch_add(1, Ordering::AcqRel);
                }
                let seq = sync.committed.load(Ordering::Acquire);
                let unsynced = sync.synced.load(Ordering::Acquire) < seq;
                for ((op, reply), found) in batch.drain(..).zip(found) {
                    let wait = matches!(op, Op::Complete { .. }) || (unsynced && matches!(found, Found::Done(_)));
                    if wait {
                        let _ = to_sync.send((reply, found, seq));
                    } else {
                        let _ = reply.send(Ok(found));
                    }
                }
            }
            Err(e) => {
                for (_, reply) in batch.drain(..) {
                    let _ = reply.send(Err(e.to_string()));
                }
            }
        }
        let _ = wrote.try_send(());
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: idemgate-ceiling LISTEN UPSTREAM DB";
    let (listen, upstream, db) = match (args.next(), args.next(), args.next()) {
        (Some(l), Some(u), Some(d)) => (l, u, d),
        _ => return Err(usage.into()),
    };
    let conn = Connection::open(&db)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    if mode != "wal" {
        return Err(format!("journal_mode is {mode}").into());
    }
    conn.execute_batch("PRAGMA synchronous=NORMAL; PRAGMA wal_autocheckpoint=10000;")?;
    conn.execute_batch(SCHEMA)?;
    let wal = std::fs::File::open(format!("{db}-wal"))?;
    let ckpt = Connection::open(&db)?;
    let (jobs, rx) = mpsc::channel(4096);
    std::thread::Builder::new().name("ceiling-writer".into()).spawn(move || writer(conn, wal, ckpt, rx))?;

    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(256)
        .build(connector);
    let app = Arc::new(App { map: RwLock::new(HashMap::new()), jobs, client, upstream, tokens: AtomicU64::new(1) });
    app.tokens.store((now_ms() as u64) << 20, Ordering::Relaxed);
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    eprintln!("idemgate-ceiling listening on {listen}, upstream {}, db {db}", app.upstream);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let app = app.clone();
                async move { Ok::<_, std::convert::Infallible>(app.handle(req).await) }
            });
            let _ = http1::Builder::new().keep_alive(true).serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}
