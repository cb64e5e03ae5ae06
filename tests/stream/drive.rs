//! The providers: each event's flows run on tasks of their own, on the stream's schedule, and
//! every attempt is recorded with what came back.

use super::model::{Event, Flow, Profile, Start, Stream};
use super::record::{ATTEMPT_HEADER, Attempt, AttemptId, Clock, Outcome, Reply};
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// Where idemgate listens now (a restarted child listens on another port).
#[derive(Clone)]
pub struct Target(Arc<Mutex<SocketAddr>>);

impl Target {
    pub fn new(addr: SocketAddr) -> Target {
        Target(Arc::new(Mutex::new(addr)))
    }

    pub fn set(&self, addr: SocketAddr) {
        *self.0.lock().unwrap() = addr;
    }

    fn get(&self) -> SocketAddr {
        *self.0.lock().unwrap()
    }
}

/// Whether an event has had its first 2xx, and when.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Settle {
    Pending,
    At(f64),
    /// Every flow that starts on its own ended without a 2xx: redeliveries never come.
    Never,
}

#[derive(Clone)]
struct Providers {
    client: Client<HttpConnector, Full<Bytes>>,
    target: Target,
    clock: Clock,
    profile: Arc<Profile>,
    /// No attempt starts after this (milliseconds on the clock).
    until_ms: f64,
    first_try: u32,
    log: Arc<Mutex<Vec<Attempt>>>,
}

/// Runs every event of the stream; returns the attempts in the order they were made.
pub async fn drive(stream: &Stream, target: Target, clock: Clock, until_ms: f64) -> Vec<Attempt> {
    drive_from(stream, target, clock, until_ms, 0).await
}

/// As [`drive`], numbering each flow's tries from `first_try` (to tell a later round apart).
pub async fn drive_from(stream: &Stream, target: Target, clock: Clock, until_ms: f64, first_try: u32) -> Vec<Attempt> {
    let providers = Providers {
        first_try,
        client: Client::builder(TokioExecutor::new()).build_http(),
        target,
        clock,
        profile: Arc::new(stream.profile.clone()),
        until_ms,
        log: Arc::default(),
    };
    let events: Vec<_> =
        stream.events.iter().map(|e| tokio::spawn(run_event(Arc::new(e.clone()), providers.clone()))).collect();
    for event in events {
        event.await.expect("an event task panicked");
    }
    let mut attempts = providers.log.lock().unwrap().clone();
    attempts.sort_by(|a, b| a.sent_ms.total_cmp(&b.sent_ms));
    attempts
}

async fn run_event(event: Arc<Event>, providers: Providers) {
    let settle = watch::channel(Settle::Pending).0;
    let mut scheduled = Vec::new();
    let mut after_settle = Vec::new();
    for index in 0..event.flows.len() {
        let task = tokio::spawn(run_flow(event.clone(), index, providers.clone(), settle.clone()));
        match event.flows[index].start {
            Start::At(_) => scheduled.push(task),
            Start::AfterSettle(_) => after_settle.push(task),
        }
    }
    for task in scheduled {
        task.await.expect("a flow panicked");
    }
    settle.send_if_modified(|s| {
        let never = *s == Settle::Pending;
        if never {
            *s = Settle::Never;
        }
        never
    });
    for task in after_settle {
        task.await.expect("a flow panicked");
    }
}

async fn run_flow(event: Arc<Event>, index: usize, providers: Providers, settle: watch::Sender<Settle>) {
    let flow = &event.flows[index];
    let begin = match flow.start {
        Start::At(ms) => ms as f64,
        Start::AfterSettle(ms) => match *settle.subscribe().wait_for(|s| *s != Settle::Pending).await.unwrap() {
            Settle::At(at) => at + ms as f64,
            _ => return,
        },
    };
    tokio::time::sleep_until(providers.clock.at(begin)).await;
    for try_ in 0..flow.tries {
        if try_ > 0 {
            tokio::time::sleep(Duration::from_millis(providers.profile.backoff_ms(try_))).await;
        }
        if providers.clock.ms() > providers.until_ms {
            return;
        }
        let id = AttemptId { event: event.index, flow: index, try_: providers.first_try + try_ };
        let attempt = providers.send(&event, flow, id).await;
        let status = attempt.reply().map(|r| r.status);
        providers.log.lock().unwrap().push(attempt.clone());
        match status {
            Some(200..=299) => {
                settle.send_if_modified(|s| {
                    let first = *s == Settle::Pending;
                    if first {
                        *s = Settle::At(attempt.done_ms);
                    }
                    first
                });
                return;
            }
            // A refusal that a retry cannot change (400, 422, ...); 409 means "later".
            Some(s) if (400..500).contains(&s) && ![408, 409, 429].contains(&s) => return,
            _ => {}
        }
    }
}

impl Providers {
    async fn send(&self, event: &Event, flow: &Flow, id: AttemptId) -> Attempt {
        let out = event.request(flow.payload);
        let mut req = Request::post(format!("http://{}{}", self.target.get(), out.path));
        for (name, value) in &out.headers {
            req = req.header(*name, value);
        }
        let req = req.header(ATTEMPT_HEADER, id.to_string()).body(Full::new(Bytes::from(out.body))).unwrap();
        let sent_ms = self.clock.ms();
        let exchange = async {
            let resp = self.client.request(req).await.map_err(|e| describe(&e))?;
            let (parts, body) = resp.into_parts();
            let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
            Ok::<_, String>(Reply { status: parts.status.as_u16(), headers: parts.headers, body })
        };
        let outcome = match tokio::time::timeout(Duration::from_millis(flow.timeout_ms), exchange).await {
            Err(_) => Outcome::TimedOut,
            Ok(Err(e)) => Outcome::Failed(e),
            Ok(Ok(reply)) => Outcome::Answered(reply),
        };
        Attempt { id, sent_ms, done_ms: self.clock.ms(), outcome }
    }
}

/// An error with its causes ("client error (Connect): tcp connect error: Connection refused").
fn describe(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}
