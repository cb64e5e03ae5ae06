//! The app behind idemgate: records every forward on the run's clock and answers as the stream
//! planned for the event (status, delay). It can hold every request, and be killed (listener and
//! connections dropped, held requests with them) and brought back on the same port.

use super::model::{AppAnswer, Stream};
use super::record::{ATTEMPT_HEADER, AttemptId, Clock, Forward, Reply};
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// A later forward of an event, past its planned answers.
const DEFAULT_ANSWER: AppAnswer = AppAnswer { status: 200, delay_ms: 2 };

pub struct App {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    /// Cancelled to kill the app: the listener and every connection end.
    life: Mutex<CancellationToken>,
}

struct Shared {
    stream: Arc<Stream>,
    clock: Clock,
    state: Mutex<State>,
    /// How many forwards arrived so far.
    arrivals: watch::Sender<usize>,
    /// How many requests are in the app, not answered yet.
    inside: watch::Sender<usize>,
    /// While true, requests wait after their arrival is recorded.
    holding: watch::Sender<bool>,
}

#[derive(Default)]
struct State {
    forwards: Vec<Forward>,
    /// Forwards so far per event, to pick the event's planned answer.
    per_event: HashMap<usize, usize>,
}

impl App {
    pub async fn start(stream: Arc<Stream>, clock: Clock) -> App {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the app");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            stream,
            clock,
            state: Mutex::default(),
            arrivals: watch::channel(0).0,
            inside: watch::channel(0).0,
            holding: watch::channel(false).0,
        });
        let life = CancellationToken::new();
        tokio::spawn(serve(listener, shared.clone(), life.clone()));
        App { addr, shared, life: Mutex::new(life) }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn forwards(&self) -> Vec<Forward> {
        self.shared.state.lock().unwrap().forwards.clone()
    }

    /// Requests wait inside the app (after their arrival is recorded) while `on`.
    pub fn hold(&self, on: bool) {
        self.shared.holding.send_replace(on);
    }

    /// Waits until more than `seen` forwards have arrived, up to `limit`; false if none came.
    pub async fn arrival_after(&self, seen: usize, limit: Duration) -> bool {
        let mut rx = self.shared.arrivals.subscribe();
        tokio::time::timeout(limit, rx.wait_for(|n| *n > seen)).await.is_ok()
    }

    /// Waits until no request is inside the app, up to `limit`; false if some still are.
    pub async fn idle(&self, limit: Duration) -> bool {
        let mut rx = self.shared.inside.subscribe();
        tokio::time::timeout(limit, rx.wait_for(|n| *n == 0)).await.is_ok()
    }

    pub fn arrivals(&self) -> usize {
        *self.shared.arrivals.borrow()
    }

    /// Drops the listener and every connection, with the requests held in them.
    pub fn kill(&self) {
        self.life.lock().unwrap().cancel();
    }

    /// Listens again on the same address.
    pub async fn revive(&self) {
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(listener) => break listener,
                // The old listener's task may not have dropped its socket yet.
                Err(_) => tokio::task::yield_now().await,
            }
        };
        let life = CancellationToken::new();
        *self.life.lock().unwrap() = life.clone();
        tokio::spawn(serve(listener, self.shared.clone(), life));
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn serve(listener: TcpListener, shared: Arc<Shared>, life: CancellationToken) {
    loop {
        let stream = tokio::select! {
            _ = life.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
        };
        let (shared, life) = (shared.clone(), life.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req| answer(req, shared.clone()));
            let connection = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = life.cancelled() => {}
                _ = connection => {}
            }
        });
    }
}

async fn answer(req: Request<Incoming>, shared: Arc<Shared>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let header = |name| parts.headers.get(name).and_then(|v: &HeaderValue| v.to_str().ok()).unwrap_or("").to_string();
    let attempt: Option<AttemptId> = header(ATTEMPT_HEADER).parse().ok();
    let (index, number, plan) = {
        let mut state = shared.state.lock().unwrap();
        let number = state.forwards.len() as u64 + 1;
        let plan = attempt
            .and_then(|a| {
                let nth = state.per_event.entry(a.event).or_default();
                *nth += 1;
                shared.stream.event(a.event).and_then(|e| e.app.get(*nth - 1).copied())
            })
            .unwrap_or(DEFAULT_ANSWER);
        state.forwards.push(Forward {
            number,
            attempt,
            key: header("x-idempotency-key"),
            delivery_attempt: header("idempotency-attempt").parse().ok(),
            path: parts.uri.path_and_query().map(|p| p.to_string()).unwrap_or_default(),
            body,
            arrived_ms: shared.clock.ms(),
            answer: None,
        });
        (state.forwards.len() - 1, number, plan)
    };
    shared.arrivals.send_modify(|n| *n += 1);
    let _inside = Inside::enter(&shared.inside);
    let _ = shared.holding.subscribe().wait_for(|holding| !holding).await;
    tokio::time::sleep(Duration::from_millis(plan.delay_ms)).await;
    let attempt = attempt.map(|a| a.to_string()).unwrap_or_default();
    let body = format!("{{\"attempt\":\"{attempt}\",\"forward\":{number},\"status\":{}}}", plan.status);
    let mut response = Response::new(Full::new(Bytes::from(body.clone())));
    *response.status_mut() = StatusCode::from_u16(plan.status).unwrap();
    let headers = response.headers_mut();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    headers.insert("cache-control", HeaderValue::from_static("no-store"));
    headers.insert("x-app-forward", HeaderValue::from(number));
    headers.append("set-cookie", HeaderValue::from_static("session=a; Path=/"));
    headers.append("set-cookie", HeaderValue::from_static("seen=1; Path=/"));
    // A hop-by-hop header named by Connection: never stored, never replayed.
    headers.insert("connection", HeaderValue::from_static("x-app-hop"));
    headers.insert("x-app-hop", HeaderValue::from_static("1"));
    let reply = Reply { status: plan.status, headers: headers.clone(), body: Bytes::from(body) };
    shared.state.lock().unwrap().forwards[index].answer = Some((shared.clock.ms(), reply));
    Ok(response)
}

/// Counts a request inside the app until it answers or is dropped (the app killed).
struct Inside<'a>(&'a watch::Sender<usize>);

impl<'a> Inside<'a> {
    fn enter(count: &'a watch::Sender<usize>) -> Inside<'a> {
        count.send_modify(|n| *n += 1);
        Inside(count)
    }
}

impl Drop for Inside<'_> {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}
