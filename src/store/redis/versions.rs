//! Entity versions for the stale guard: one string key per entity, holding
//! [`Version::encoded`] and expiring (`PEXPIREAT`) at the `expires_ms` of the raise that wrote it.

use super::scripts::RAISE_VERSION;
use super::{Conn, MAX_EXPIRY_MS, Request, malformed};
use crate::store::{RecordId, StoreError};
use crate::version::Version;
use ::redis::{Value, cmd};

/// `{key_prefix}#version:{route}:{scope}:{entity}`. A record's key starts with its route name
/// right after the prefix, and a route name cannot contain `#`: the two never meet.
pub(super) fn key(prefix: &str, id: &RecordId) -> String {
    format!("{prefix}#version:{}:{}:{}", id.route, id.scope, id.key)
}

/// An expired version is gone: Redis' own expiry deleted it. A damaged value is an error, as a
/// damaged record is: read as absent, it would let every delivery of the entity through as fresh.
pub(super) async fn get(conn: Conn, key: String) -> Result<Option<Version>, StoreError> {
    let (answer, _) = conn
        .run("version", |_| {
            let mut c = cmd("GET");
            c.arg(&key);
            Request::Cmd(c)
        })
        .await?;
    let stored = match answer {
        Value::Nil => return Ok(None),
        Value::BulkString(stored) => stored,
        other => return Err(malformed("version", format!("{other:?}"))),
    };
    match std::str::from_utf8(&stored).ok().and_then(Version::decode) {
        Some(version) => Ok(Some(version)),
        None => Err(malformed("version", format!("{:?} is no version", String::from_utf8_lossy(&stored)))),
    }
}

/// The script compares and sets in one step; sent again after a dropped connection, it changes
/// nothing more than the first attempt did.
pub(super) async fn raise(conn: Conn, key: String, version: Version, expires_ms: i64) -> Result<(), StoreError> {
    let expires_ms = expires_ms.clamp(1, MAX_EXPIRY_MS);
    let (answer, _) = conn
        .run("raise_version", |_| {
            let mut invocation = RAISE_VERSION.prepare_invoke();
            invocation.key(&key).arg(version.encoded()).arg(expires_ms);
            Request::Script(invocation)
        })
        .await?;
    match answer {
        Value::Int(0 | 1) => Ok(()),
        other => Err(malformed("raise_version", format!("{other:?}"))),
    }
}
