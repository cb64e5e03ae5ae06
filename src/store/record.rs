//! What the store keeps per key, and what a claim can find.

use crate::fingerprint::Fingerprint;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use std::sync::Arc;

/// The identity of a record: the route, the hashed scope value ("" on unscoped routes) and the key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RecordId {
    pub route: Arc<str>,
    pub scope: String,
    pub key: String,
}

impl RecordId {
    /// One string for the in-memory cache; the separator cannot occur in a key (visible ASCII only).
    pub fn cache_key(&self) -> String {
        let mut key = String::with_capacity(self.route.len() + self.scope.len() + self.key.len() + 2);
        self.write_cache_key(&mut key);
        key
    }

    /// [`Self::cache_key`], into `out`.
    pub fn write_cache_key(&self, out: &mut String) {
        for (i, part) in [&*self.route, &self.scope, &self.key].into_iter().enumerate() {
            if i > 0 {
                out.push('\n');
            }
            out.push_str(part);
        }
    }
}

/// An app response as stored and replayed: status, end-to-end headers and (unless it was larger
/// than `max_response_body`) the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    pub status: u16,
    /// End-to-end headers only, in the order the app sent them; hop-by-hop headers are never kept.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
    /// The body was larger than `max_response_body`: the replay carries status and headers only.
    pub body_omitted: bool,
}

impl StoredResponse {
    /// `name:value\n` lines; header values cannot contain a newline, so this round-trips.
    pub fn encode_headers(&self) -> Vec<u8> {
        encode_headers(&self.headers)
    }

    pub fn decode_headers(bytes: &[u8]) -> Vec<(HeaderName, HeaderValue)> {
        bytes
            .split(|b| *b == b'\n')
            .filter_map(|line| {
                let colon = line.iter().position(|b| *b == b':')?;
                let name = HeaderName::from_bytes(&line[..colon]).ok()?;
                let value = HeaderValue::from_bytes(&line[colon + 1..]).ok()?;
                Some((name, value))
            })
            .collect()
    }

    pub fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    pub fn header_map(&self) -> HeaderMap {
        // Room for the headers the answer gains on its way out (`Idempotent-Replayed`,
        // `X-Request-Id`): growing the map would move it.
        let mut map = HeaderMap::with_capacity(self.headers.len() + 2);
        for (name, value) in &self.headers {
            map.append(name.clone(), value.clone());
        }
        map
    }

    /// What this response costs in memory, for the cache's byte bound: the bytes, plus the
    /// allocations around them and the cache's own bookkeeping, so that `store.cache.max_bytes`
    /// bounds real memory rather than payload alone. bench/scale measured about 1,170 bytes of
    /// RSS per cached record whose body and headers take about 150.
    pub fn weight(&self) -> usize {
        const PER_HEADER: usize = 64;
        let headers: usize = self.headers.iter().map(|(n, v)| n.as_str().len() + v.len() + PER_HEADER).sum();
        self.body.len() + headers + Self::PER_ENTRY
    }

    /// The least an entry weighs in the cache.
    pub const PER_ENTRY: usize = 1024;

    /// A copy that shares no bytes with this one: its headers and body are allocations of its own.
    pub fn detached(&self) -> StoredResponse {
        StoredResponse {
            status: self.status,
            headers: self.headers.iter().map(|(n, v)| detach(n, v)).collect(),
            body: Bytes::copy_from_slice(&self.body),
            body_omitted: self.body_omitted,
        }
    }
}

/// A copy of a header that owns its bytes. hyper parses headers as slices of its read buffer; a
/// stored clone would keep that whole buffer (kilobytes) alive for as long as the record is cached.
pub fn detach(name: &HeaderName, value: &HeaderValue) -> (HeaderName, HeaderValue) {
    let name = HeaderName::from_bytes(name.as_str().as_bytes()).unwrap_or_else(|_| name.clone());
    let mut copy = HeaderValue::from_bytes(value.as_bytes()).unwrap_or_else(|_| value.clone());
    copy.set_sensitive(value.is_sensitive());
    (name, copy)
}

/// Headers as [`StoredResponse::encode_headers`] writes them; stored requests use it too.
pub(super) fn encode_headers(headers: &[(HeaderName, HeaderValue)]) -> Vec<u8> {
    // Sized first: grown a line at a time, the buffer was copied four or five times per record.
    let mut out = Vec::with_capacity(headers.iter().map(|(n, v)| n.as_str().len() + v.len() + 2).sum());
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.push(b':');
        out.extend_from_slice(value.as_bytes());
        out.push(b'\n');
    }
    out
}

/// A key whose response is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completed {
    pub fingerprint: Option<Fingerprint>,
    pub response: StoredResponse,
    pub created_ms: i64,
    pub expires_ms: i64,
}

/// What a claim found.
#[derive(Debug, Clone)]
pub enum ClaimOutcome {
    /// The key is ours: forward, then complete or release with this token. `took_over`: the key
    /// was held by a claim whose lease ended unfinished (its proxy crashed or stalled), so the app
    /// may be seeing this key a second time.
    Claimed { token: u64, took_over: bool },
    /// The key is completed: replay.
    Completed(Arc<Completed>),
    /// Another request holds the key until `expires_ms`.
    InFlight { fingerprint: Option<Fingerprint>, expires_ms: i64 },
}

/// What a claim asks for.
#[derive(Debug, Clone)]
pub struct Claim {
    pub id: RecordId,
    pub token: u64,
    pub fingerprint: Option<Fingerprint>,
    pub now_ms: i64,
    pub lease_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    InFlight,
    Completed,
}

/// A record as the admin endpoint shows it.
#[derive(Debug, Clone)]
pub struct Record {
    pub state: State,
    pub status: Option<u16>,
    pub created_ms: i64,
    pub expires_ms: i64,
}
