//! A record's hash as Redis returns it, decoded into the store's types.

use super::malformed;
use crate::store::{ClaimOutcome, Completed, StoreError, StoredResponse};
use ::redis::Value;
use bytes::Bytes;
use std::sync::Arc;

/// A record's fields as Redis returned them.
#[derive(Default)]
pub(super) struct Fields {
    state: Option<Vec<u8>>,
    token: Option<Vec<u8>>,
    fingerprint: Option<Vec<u8>>,
    created_ms: Option<Vec<u8>>,
    expires_ms: Option<Vec<u8>>,
    status: Option<Vec<u8>>,
    headers: Option<Vec<u8>>,
    body: Option<Vec<u8>>,
    body_omitted: Option<Vec<u8>>,
}

impl Fields {
    fn from_value(value: Value) -> Result<Fields, String> {
        let mut f = Fields::default();
        for (name, value) in field_pairs(value)? {
            let slot = match name.as_slice() {
                b"state" => &mut f.state,
                b"token" => &mut f.token,
                b"fingerprint" => &mut f.fingerprint,
                b"created_ms" => &mut f.created_ms,
                b"expires_ms" => &mut f.expires_ms,
                b"status" => &mut f.status,
                b"headers" => &mut f.headers,
                b"body" => &mut f.body,
                b"body_omitted" => &mut f.body_omitted,
                _ => continue,
            };
            *slot = Some(value);
        }
        Ok(f)
    }

    fn in_flight(&self) -> Result<bool, String> {
        match self.state.as_deref() {
            Some(b"0") => Ok(true),
            Some(b"1") => Ok(false),
            Some(other) => Err(format!("state {:?}", String::from_utf8_lossy(other))),
            None => Err("the record has no state".into()),
        }
    }

    /// What a claim found: the holder, completed or in flight.
    fn holder(self) -> Result<ClaimOutcome, String> {
        let fingerprint = self.fingerprint.as_deref().and_then(|f| f.try_into().ok());
        let expires_ms = int(self.expires_ms.as_deref(), "expires_ms")?;
        if self.in_flight()? {
            return Ok(ClaimOutcome::InFlight { fingerprint, expires_ms });
        }
        let status = match self.status.as_deref() {
            Some(s) => int(Some(s), "status")?.try_into().map_err(|_| "status out of range".to_string())?,
            None => 500,
        };
        Ok(ClaimOutcome::Completed(Arc::new(Completed {
            fingerprint,
            created_ms: int(self.created_ms.as_deref(), "created_ms")?,
            expires_ms,
            response: StoredResponse {
                status,
                headers: StoredResponse::decode_headers(self.headers.as_deref().unwrap_or_default()),
                body: Bytes::from(self.body.unwrap_or_default()),
                body_omitted: self.body_omitted.as_deref() == Some(b"1"),
            },
        })))
    }
}

/// A hash field (or config setting) and its value.
type Pair = (Vec<u8>, Vec<u8>);

/// The name/value pairs of a hash or `CONFIG GET` reply (a flat array, or a RESP3 map).
pub(super) fn field_pairs(value: Value) -> Result<Vec<Pair>, String> {
    let pairs: Vec<(Value, Value)> = match value {
        Value::Map(pairs) => pairs,
        Value::Array(items) if items.len() % 2 == 0 => {
            let mut items = items.into_iter();
            std::iter::from_fn(|| Some((items.next()?, items.next()?))).collect()
        }
        other => return Err(format!("expected a hash, got {other:?}")),
    };
    pairs
        .into_iter()
        .map(|(name, value)| match (bytes(name), bytes(value)) {
            (Some(name), Some(value)) => Ok((name, value)),
            _ => Err("a hash field that is not a string".to_string()),
        })
        .collect()
}

pub(super) fn bytes(value: Value) -> Option<Vec<u8>> {
    match value {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        Value::Int(i) => Some(i.to_string().into_bytes()),
        Value::Okay => Some(b"OK".to_vec()),
        _ => None,
    }
}

pub(super) fn int(field: Option<&[u8]>, name: &str) -> Result<i64, String> {
    let raw = field.ok_or_else(|| format!("the record has no {name}"))?;
    std::str::from_utf8(raw).ok().and_then(|s| s.parse().ok()).ok_or_else(|| format!("{name} is not a number"))
}

/// What the claim script's answer means: 1 is ours, 2 is ours by taking over an abandoned
/// claim, a hash is the holder. A retry that finds its
/// own token in flight is ours too: the first attempt took the key before the connection dropped.
pub(super) fn claim_outcome(answer: Value, token: u64, retried: bool) -> Result<ClaimOutcome, StoreError> {
    match answer {
        Value::Int(1) => Ok(ClaimOutcome::Claimed { token, took_over: false }),
        Value::Int(2) => Ok(ClaimOutcome::Claimed { token, took_over: true }),
        hash @ (Value::Array(_) | Value::Map(_)) => {
            let fields = Fields::from_value(hash).map_err(|e| malformed("claim", e))?;
            let ours = fields.token.as_deref() == Some(token.to_string().as_bytes());
            if retried && ours && fields.in_flight().unwrap_or(false) {
                return Ok(ClaimOutcome::Claimed { token, took_over: false });
            }
            fields.holder().map_err(|e| malformed("claim", e))
        }
        other => Err(malformed("claim", format!("{other:?}"))),
    }
}
