//! Listeners, connection limits, header timeouts and the graceful drain.
//!
//! [`start`] opens the store, binds both listeners and returns a [`Running`] handle; its
//! [`Running::shutdown`] stops accepting, lets requests in flight finish (up to
//! `server.shutdown_grace`), then closes the store so every queued write is on disk.

use crate::admin::Admin;
use crate::config::Config;
use crate::gate::Gate;
use crate::idempotency::{EmbedError, build_gate};
use crate::metrics::Metrics;
use crate::reload::Reloader;
use crate::stack;
use crate::store::spawn_sweeper;
use crate::upstream::{AppClient, ClientAddr};
use head_timeout::{AnswerBody, HeadClock, Watched};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tower::ServiceExt;

mod head_timeout;

/// How often expired records are swept.
const SWEEP_EVERY: Duration = Duration::from_secs(30);
/// The largest request head accepted (nginx's default allows 4 x 8 KiB lines; 64 KiB in all).
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Admin requests in flight at shutdown get this long; they are all short.
const ADMIN_GRACE: Duration = Duration::from_secs(2);
/// An admin request's head must arrive within this: probes send theirs at once.
const ADMIN_HEAD_TIMEOUT: Duration = Duration::from_secs(2);
/// No admin connection lives longer (a Prometheus scraper simply reconnects).
const ADMIN_CONN_LIFETIME: Duration = Duration::from_secs(30);
/// Open admin connections beyond which new ones are not kept alive.
const ADMIN_KEEP_ALIVE_UNTIL: usize = 64;
/// Admin requests are small; a connection's read buffer need not grow to hyper's default 400 KiB.
const ADMIN_BUF_BYTES: usize = 16 * 1024;
/// A connection's read buffer at most: the largest head, plus room for body bytes read with it.
/// hyper's default (about 400 KiB) times thousands of connections would dwarf the body budget.
const PROXY_BUF_BYTES: usize = MAX_HEAD_BYTES + 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(String),
    #[error("cannot open the store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
}

/// A started proxy.
pub struct Running {
    pub proxy_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    gate: Arc<Gate>,
    metrics: Arc<Metrics>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Running {
    /// Reloads `path` into this proxy on request; `config` is the one it was started with, loaded
    /// from the file whose digest was `loaded`.
    pub fn reloader(&self, path: std::path::PathBuf, config: Config, loaded: Option<[u8; 32]>) -> Arc<Reloader> {
        Arc::new(Reloader::new(path, config, loaded, self.gate.clone(), self.metrics.clone()))
    }

    /// Drains and stops; returns once the store is closed.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

pub async fn start(config: Config) -> Result<Running, StartError> {
    let metrics = Arc::new(Metrics::new());
    let client = AppClient::new(&config.upstream).map_err(StartError::Config)?;
    let gate = build_gate(&config, metrics.clone()).await.map_err(|e| match e {
        EmbedError::Config(e) => StartError::Config(e.0),
        EmbedError::Store(e) => StartError::Store(e),
    })?;
    let backend = gate.records.backend().clone();
    let upstream = stack::upstream(client, config.upstream.timeout.0, config.upstream.max_in_flight);
    // The async routes' queue series exist from the start, at 0.
    for route in gate.routes().router.routes().iter().filter(|r| r.is_async()) {
        metrics.queue(&route.name);
    }
    let (stop_deliveries, deliveries_stopped) = watch::channel(false);
    let grace = config.server.shutdown_grace.0;
    let deliveries = tokio::spawn(crate::delivery::run(gate.clone(), upstream.clone(), deliveries_stopped, grace));
    let proxy = stack::proxy(gate.clone(), upstream);
    let admin = Arc::new(Admin::new(gate.clone(), metrics.clone(), config.admin.token.clone()));

    let proxy_listener = TcpListener::bind(config.listen).await.map_err(|e| StartError::Bind(config.listen, e))?;
    let admin_listener =
        TcpListener::bind(config.admin.listen).await.map_err(|e| StartError::Bind(config.admin.listen, e))?;
    let proxy_addr = proxy_listener.local_addr().map_err(|e| StartError::Bind(config.listen, e))?;
    let admin_addr = admin_listener.local_addr().map_err(|e| StartError::Bind(config.admin.listen, e))?;

    let (stop, stopped) = watch::channel(false);
    // The admin listener outlives the proxy listener during the drain, so that readiness can
    // say "draining" (503) while requests in flight finish.
    let (stop_admin, admin_stopped) = watch::channel(false);
    let limits = Limits {
        connections: Arc::new(Semaphore::new(config.server.max_connections)),
        header_read_timeout: config.server.header_read_timeout.0,
    };
    let proxy_loop = accept_loop(proxy_listener, limits.clone(), stopped.clone(), move |peer, clock| {
        let connection = ConnectionService::new(proxy.clone(), peer, clock);
        move |req| connection.call(req)
    });
    let admin_loop = {
        let admin = stack::admin(admin.clone());
        admin_accept_loop(admin_listener, admin_stopped, move |req| {
            let admin = admin.clone();
            async move {
                match admin.oneshot(req).await {
                    Ok(response) => response,
                    Err(never) => match never {},
                }
            }
        })
    };
    let proxy_loop = tokio::spawn(proxy_loop);
    let admin_loop = tokio::spawn(admin_loop);
    let sweeper = spawn_sweeper(backend.clone(), SWEEP_EVERY, metrics.clone());
    let handles = (gate.clone(), metrics);

    let task = tokio::spawn(async move {
        let mut stopped = stopped;
        stop_requested(&mut stopped).await;
        admin.set_draining();
        // No new deliveries from now on; those in flight finish within the grace, beside the drain.
        let _ = stop_deliveries.send(true);
        let proxy_conns = proxy_loop.await.unwrap_or_default();
        tracing::info!(in_flight = proxy_conns.count(), "shutting down: listener closed; draining connections");
        let started = tokio::time::Instant::now();
        if tokio::time::timeout(grace, proxy_conns.shutdown()).await.is_err() {
            tracing::warn!(grace = ?grace, "requests still in flight after the shutdown grace; closing them");
        }
        if !gate.drain(grace.saturating_sub(started.elapsed())).await {
            tracing::warn!(
                "exchanges with the app still running after the shutdown grace; their keys wait for their lease"
            );
        }
        let _ = deliveries.await;
        let _ = stop_admin.send(true);
        let _ = admin_loop.await;
        sweeper.abort();
        drop(gate);
        if let Err(e) = backend.close().await {
            tracing::error!(error = %e, "closing the store failed");
        }
        tracing::info!("stopped");
    });
    let (gate, metrics) = handles;
    Ok(Running { proxy_addr, admin_addr, gate, metrics, stop, task })
}

#[derive(Clone)]
struct Limits {
    /// One permit per open connection; at the limit, new connections wait in the listen backlog.
    connections: Arc<Semaphore>,
    header_read_timeout: Duration,
}

/// The proxy stack as one connection uses it. Every layer of the stack is always ready, so a
/// connection keeps one instance and calls it in place, request after request (HTTP/1 serves
/// them one at a time); cloning the stack per request cost an allocation and a dozen reference
/// counts each time. Should a layer ever report not ready, the request gets a clone of its own.
struct ConnectionService {
    proxy: std::sync::Mutex<stack::Proxy>,
    peer: SocketAddr,
    clock: Arc<HeadClock>,
}

impl ConnectionService {
    fn new(proxy: stack::Proxy, peer: SocketAddr, clock: Arc<HeadClock>) -> ConnectionService {
        ConnectionService { proxy: std::sync::Mutex::new(proxy), peer, clock }
    }

    fn call(
        &self,
        mut req: Request<Incoming>,
    ) -> impl Future<Output = Response<AnswerBody<stack::ResponseBody>>> + Send + use<> {
        use tower::Service;
        self.clock.serving();
        req.extensions_mut().insert(ClientAddr(self.peer));
        let call = {
            let mut proxy = crate::lock(&self.proxy);
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            match proxy.poll_ready(&mut cx) {
                std::task::Poll::Ready(Ok(())) => proxy.call(req),
                _ => Box::pin(proxy.clone().oneshot(req)),
            }
        };
        let clock = self.clock.clone();
        async move {
            match call.await {
                Ok(response) => response.map(|body| AnswerBody::new(body, clock)),
                Err(never) => match never {},
            }
        }
    }
}

async fn accept_loop<F, H, Fut, B>(
    listener: TcpListener,
    limits: Limits,
    mut stopped: watch::Receiver<bool>,
    per_connection: F,
) -> GracefulShutdown
where
    F: Fn(SocketAddr, Arc<HeadClock>) -> H,
    H: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<tower::BoxError>,
{
    // Every connection is watched, so that shutdown can wait for the requests they carry.
    let graceful = GracefulShutdown::new();
    loop {
        let permit = tokio::select! {
            permit = limits.connections.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            _ = stop_requested(&mut stopped) => return graceful,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Usually EMFILE: back off briefly instead of spinning on the error.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop_requested(&mut stopped) => return graceful,
        };
        let _ = stream.set_nodelay(true);
        let clock = HeadClock::start();
        let handler = per_connection(peer, clock.clone());
        let service = service_fn(move |req| {
            let answer = handler(req);
            async move { Ok::<_, Infallible>(answer.await) }
        });
        let conn = http1::Builder::new()
            // Kept by `head_timeout` instead: hyper's costs a timer per request.
            .header_read_timeout(None)
            // The request head must fit in this; a larger one gets 431.
            .max_header_size(MAX_HEAD_BYTES)
            .max_buf_size(PROXY_BUF_BYTES)
            .serve_connection(Watched::new(TokioIo::new(stream), clock.clone()), service);
        let conn = graceful.watch(conn);
        let timeout = limits.header_read_timeout;
        tokio::spawn(async move {
            tokio::select! {
                biased;
                ended = conn => if let Err(e) = ended {
                    tracing::debug!(error = %e, %peer, "connection ended with an error");
                },
                () = head_timeout::head_late(&clock, timeout) => {
                    tracing::debug!(%peer, "no request head within server.header_read_timeout; connection closed");
                }
            }
            drop(permit);
        });
    }
}

/// Admin connections: probes must be answered within a second whatever else holds connections
/// here (the port is reachable from the whole cluster network when kubelet probes the pod IP).
/// So accepting never waits for a permit, a head must arrive within `ADMIN_HEAD_TIMEOUT`, no
/// connection lives longer than `ADMIN_CONN_LIFETIME`, and past `ADMIN_KEEP_ALIVE_UNTIL` open
/// connections new ones answer one request and close. Idle or trickling connections then cost a
/// task and a socket for a bounded time each, and never stand between a probe and its answer.
async fn admin_accept_loop<F, Fut>(listener: TcpListener, mut stopped: watch::Receiver<bool>, handler: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<stack::ResponseBody>> + Send + 'static,
{
    let connections = tokio_util::task::TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop_requested(&mut stopped) => break,
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let service = service_fn(move |req| {
            let handler = handler.clone();
            async move { Ok::<_, Infallible>(handler(req).await) }
        });
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(ADMIN_HEAD_TIMEOUT)
            .keep_alive(connections.len() < ADMIN_KEEP_ALIVE_UNTIL)
            .max_buf_size(ADMIN_BUF_BYTES)
            .serve_connection(TokioIo::new(stream), service);
        let mut stopped = stopped.clone();
        connections.spawn(async move {
            tokio::pin!(conn);
            let ended = tokio::select! {
                ended = conn.as_mut() => Some(ended),
                () = tokio::time::sleep(ADMIN_CONN_LIFETIME) => None,
                _ = stop_requested(&mut stopped) => None,
            };
            let ended = match ended {
                Some(ended) => ended,
                None => {
                    // The request in progress (if any) finishes; then the connection closes.
                    conn.as_mut().graceful_shutdown();
                    tokio::time::timeout(ADMIN_GRACE, conn).await.unwrap_or(Ok(()))
                }
            };
            if let Err(e) = ended {
                tracing::debug!(error = %e, %peer, "admin connection ended with an error");
            }
        });
    }
    connections.close();
    let _ = tokio::time::timeout(ADMIN_GRACE, connections.wait()).await;
}

async fn stop_requested(stopped: &mut watch::Receiver<bool>) {
    let _ = stopped.wait_for(|s| *s).await;
}
