//! What a run records, on one clock: every attempt the providers made with what they got back,
//! and every forward the app received with what it answered.

use bytes::Bytes;
use http::HeaderMap;
use std::fmt;
use std::time::{Duration, Instant};

/// Milliseconds since the run started, shared by the providers and the app.
#[derive(Debug, Clone, Copy)]
pub struct Clock(Instant);

impl Clock {
    pub fn start() -> Clock {
        Clock(Instant::now())
    }

    pub fn ms(&self) -> f64 {
        self.0.elapsed().as_secs_f64() * 1000.0
    }

    /// The moment `ms` after the start, to sleep until.
    pub fn at(&self, ms: f64) -> tokio::time::Instant {
        tokio::time::Instant::from_std(self.0 + Duration::from_secs_f64(ms.max(0.0) / 1000.0))
    }
}

/// One HTTP request of a provider: event, flow and try, as in `e12.f3.t1`. Sent in the
/// `x-stream-attempt` header, so the app can tell which attempt reached it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AttemptId {
    pub event: usize,
    pub flow: usize,
    pub try_: u32,
}

pub const ATTEMPT_HEADER: &str = "x-stream-attempt";

impl fmt::Display for AttemptId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "e{}.f{}.t{}", self.event, self.flow, self.try_)
    }
}

impl std::str::FromStr for AttemptId {
    type Err = ();
    fn from_str(s: &str) -> Result<AttemptId, ()> {
        let mut parts = s.split('.');
        let mut next = |prefix| parts.next().and_then(|p: &str| p.strip_prefix(prefix)).and_then(|n| n.parse().ok());
        Ok(AttemptId { event: next('e').ok_or(())?, flow: next('f').ok_or(())?, try_: next('t').ok_or(())? as u32 })
    }
}

/// A response as a provider or the app saw it.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn replayed(&self) -> bool {
        self.headers.get("idempotent-replayed").is_some_and(|v| v == "true")
    }

    /// The `type` slug of idemgate's own problem+json answer (`key-in-flight`, ...), if it is one.
    pub fn problem(&self) -> Option<String> {
        if self.headers.get("content-type")? != "application/problem+json" {
            return None;
        }
        let v: serde_json::Value = serde_json::from_slice(&self.body).ok()?;
        Some(v["type"].as_str()?.trim_start_matches("urn:idemgate:problem:").to_string())
    }

    /// The app forward a response body came from (the app writes `"forward":N` into every body).
    pub fn forward(&self) -> Option<u64> {
        let v: serde_json::Value = serde_json::from_slice(&self.body).ok()?;
        v["forward"].as_u64()
    }

    /// The end-to-end headers a replay must repeat: without the framing and date that each
    /// hop sets for itself, the replay marker, and the request's own id (each delivery has one).
    pub fn stored_headers(&self) -> Vec<(String, Vec<u8>)> {
        let skip = [
            "content-length",
            "date",
            "idempotent-replayed",
            "x-request-id",
            "connection",
            "keep-alive",
            "transfer-encoding",
        ];
        let nominated: Vec<String> = self
            .headers
            .get_all("connection")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(',').map(|n| n.trim().to_ascii_lowercase()).collect::<Vec<_>>())
            .collect();
        self.headers
            .iter()
            .filter(|(n, _)| !skip.contains(&n.as_str()) && !nominated.iter().any(|x| x == n.as_str()))
            .map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    pub fn summary(&self) -> String {
        let tag = if self.replayed() {
            // An async route's acknowledgement names no forward: it comes before any.
            self.forward().map_or(" replay".into(), |n| format!(" replay of forward #{n}"))
        } else if let Some(problem) = self.problem() {
            format!(" {problem}")
        } else if let Some(n) = self.forward() {
            format!(" from forward #{n}")
        } else {
            String::new()
        };
        format!("{}{tag}", self.status)
    }
}

/// What became of one attempt.
#[derive(Debug, Clone)]
pub enum Outcome {
    Answered(Reply),
    /// The provider's client gave up (and closed the connection).
    TimedOut,
    /// No answer: refused, reset, closed.
    Failed(String),
}

#[derive(Debug, Clone)]
pub struct Attempt {
    pub id: AttemptId,
    pub sent_ms: f64,
    pub done_ms: f64,
    pub outcome: Outcome,
}

impl Attempt {
    pub fn reply(&self) -> Option<&Reply> {
        match &self.outcome {
            Outcome::Answered(reply) => Some(reply),
            _ => None,
        }
    }

    pub fn summary(&self) -> String {
        match &self.outcome {
            Outcome::Answered(reply) => reply.summary(),
            Outcome::TimedOut => "client timeout".into(),
            Outcome::Failed(e) => format!("failed: {e}"),
        }
    }
}

/// A request the app received.
#[derive(Debug, Clone)]
pub struct Forward {
    /// Unique in the run; written into the response body.
    pub number: u64,
    pub attempt: Option<AttemptId>,
    /// `X-Idempotency-Key` as received.
    pub key: String,
    /// `Idempotency-Attempt` as received: the number an async route's worker gives each delivery.
    pub delivery_attempt: Option<u32>,
    pub path: String,
    pub body: Bytes,
    pub arrived_ms: f64,
    /// The app's answer, once it gave one (none if it was killed first).
    pub answer: Option<(f64, Reply)>,
}

impl Forward {
    pub fn status(&self) -> Option<u16> {
        self.answer.as_ref().map(|(_, r)| r.status)
    }

    pub fn answered_ms(&self) -> Option<f64> {
        self.answer.as_ref().map(|(ms, _)| *ms)
    }
}
