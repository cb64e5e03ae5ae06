//! The provider's side: signs each delivery as Stripe and GitHub do, gives up on an answer after
//! [`TIMEOUT`], and retries until it gets a 2xx, honouring `Retry-After`.

use crate::events::{Event, Provider, Secrets};
use bytes::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::time::Duration;

/// How long the sender waits for an answer. Real providers wait 10-30 s; the demo's slow app
/// takes [`SLOW_APP`], so its sender gives up while idemgate still waits for the app.
pub const TIMEOUT: Duration = Duration::from_millis(500);
/// How long the receiver takes on a slow event: past [`TIMEOUT`], and short of the 1 s a sender
/// waits after a 409, so that the retry after the 409 finds the answer stored.
pub const SLOW_APP: Duration = Duration::from_millis(1200);
/// Attempts per delivery before the sender gives up, as a provider's retry schedule ends.
const ATTEMPTS: usize = 5;
/// The most a `Retry-After` may make the sender wait, so the demo stays short whatever it says.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3);

/// What one attempt got back.
#[derive(Debug, Clone)]
pub enum Answer {
    /// A 2xx the app produced for this very request.
    First(Bytes),
    /// A 2xx with `Idempotent-Replayed: true`: the stored answer, the app not called.
    Replayed(Bytes),
    /// 409: the event is still being processed.
    InFlight,
    /// No answer within [`TIMEOUT`]; the sender hung up.
    TimedOut,
    /// Anything else: a status or a connection error.
    Other(String),
}

impl Answer {
    pub fn is_success(&self) -> bool {
        matches!(self, Answer::First(_) | Answer::Replayed(_))
    }
}

#[derive(Clone)]
pub struct Sender {
    client: Client<HttpConnector, Full<Bytes>>,
    stripe_secret: String,
    github_secret: String,
    /// Sending straight to the receiver, without idemgate.
    bypass: bool,
}

impl Sender {
    pub fn new(secrets: &Secrets, bypass: bool) -> Sender {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Sender {
            client: Client::builder(TokioExecutor::new()).build(connector),
            stripe_secret: secrets.stripe.clone(),
            github_secret: secrets.github.clone(),
            bypass,
        }
    }

    /// One delivery as a provider makes it: attempts until a 2xx or the schedule ends. A sender
    /// that timed out retries at once (Slack's first retry is "nearly immediate"); after a 409 or
    /// an error it waits as `Retry-After` says. Every attempt's answer, in order.
    pub async fn deliver(&self, base: &str, event: &Event) -> Vec<Answer> {
        let mut answers = Vec::new();
        for _ in 0..ATTEMPTS {
            let (answer, retry_after) = self.attempt(base, event).await;
            let done = answer.is_success();
            let pause = match answer {
                Answer::TimedOut => Duration::ZERO,
                _ => retry_after.unwrap_or(Duration::from_secs(1)).min(MAX_RETRY_AFTER),
            };
            answers.push(answer);
            if done {
                break;
            }
            tokio::time::sleep(pause).await;
        }
        answers
    }

    async fn attempt(&self, base: &str, event: &Event) -> (Answer, Option<Duration>) {
        let request = match self.request(base, event) {
            Ok(request) => request,
            Err(e) => return (Answer::Other(format!("cannot build the request: {e}")), None),
        };
        let exchange = async {
            let response = self.client.request(request).await.map_err(|e| e.to_string())?;
            let (parts, body) = response.into_parts();
            let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
            Ok::<_, String>((parts, body))
        };
        // Dropping the exchange closes the connection, as a provider's HTTP client does.
        let (parts, body) = match tokio::time::timeout(TIMEOUT, exchange).await {
            Err(_) => return (Answer::TimedOut, None),
            Ok(Err(e)) => return (Answer::Other(e), None),
            Ok(Ok(answer)) => answer,
        };
        let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
        let retry_after = header("retry-after").and_then(|v| v.parse().ok()).map(Duration::from_secs);
        let answer = match parts.status.as_u16() {
            200..=299 if header("idempotent-replayed") == Some("true") => Answer::Replayed(body),
            200..=299 => Answer::First(body),
            409 => Answer::InFlight,
            status => Answer::Other(format!("status {status}")),
        };
        (answer, retry_after)
    }

    fn request(&self, base: &str, event: &Event) -> Result<Request<Full<Bytes>>, hyper::http::Error> {
        let mut request = Request::post(format!("{base}{}", event.provider.path()));
        for (name, value) in &event.headers {
            request = request.header(*name, value);
        }
        // Each attempt is signed afresh, as providers do, so a timestamp is always current.
        let (name, value) = match event.provider {
            Provider::Stripe => ("Stripe-Signature", stripe_signature(&self.stripe_secret, &event.body)),
            Provider::Github => ("X-Hub-Signature-256", github_signature(&self.github_secret, &event.body)),
        };
        request = request.header(name, value);
        if self.bypass {
            // What idemgate would forward, so that the receiver counts by event without it too.
            request = request.header("X-Idempotency-Key", &event.key);
        }
        if event.plan.slow {
            request = request.header("X-Receiver-Delay-Ms", SLOW_APP.as_millis().to_string());
        }
        request.body(Full::new(event.body.clone()))
    }

    /// `GET url`, as JSON: the receiver's `/_seen`.
    pub async fn get_json(&self, url: &str) -> Result<serde_json::Value, String> {
        let request = Request::get(url).body(Full::new(Bytes::new())).map_err(|e| e.to_string())?;
        let response = tokio::time::timeout(Duration::from_secs(5), self.client.request(request))
            .await
            .map_err(|_| format!("no answer from {url} within 5s"))?
            .map_err(|e| format!("{url}: {e}"))?;
        let body = response.into_body().collect().await.map_err(|e| format!("{url}: {e}"))?.to_bytes();
        serde_json::from_slice(&body).map_err(|e| format!("{url}: not JSON: {e}"))
    }
}

/// `Stripe-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "t.body">`.
fn stripe_signature(secret: &str, body: &[u8]) -> String {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
    format!("t={t},v1={}", hex(&hmac_sha256(secret.as_bytes(), &[t.to_string().as_bytes(), b".", body])))
}

/// `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>`.
fn github_signature(secret: &str, body: &[u8]) -> String {
    format!("sha256={}", hex(&hmac_sha256(secret.as_bytes(), &[body])))
}

fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes a key of any length");
    parts.iter().for_each(|part| mac.update(part));
    mac.finalize().into_bytes().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
