//! The namespace of a route's keys when the route names no `scope`: the request's credentials.
//!
//! An idempotency key is unique per client (the IETF draft, "Idempotency-Key HTTP Header Field",
//! section 2: "the idempotency key ... MUST be unique per client"), yet a route without a scope
//! once kept one namespace for everyone: a second client that sent the same key got the first
//! one's stored response, `Set-Cookie` and all. Such a route is now scoped by a digest of the
//! `Authorization` and `Cookie` headers a request carries; a request with neither stays in the
//! anonymous namespace (the empty scope), where it always was. `scope: none` keeps one shared
//! namespace on purpose.
//!
//! Upgrading must not turn a completed key into a second forward: a record an older idemgate
//! stored for a credentialed request sits in the empty scope. Such a request, first seen in its
//! own scope, therefore looks there too ([`LegacyScope`]), and replays what it finds if that record
//! was made before this store first served credential scopes. A record made since is another
//! (anonymous) client's, and never replays to a credentialed one.

use crate::store::{Claim, ClaimOutcome, Completed, RecordId, Records, StoreError, StoredResponse};
use http::{HeaderMap, HeaderName};
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// The empty scope: routes with `scope: none`, anonymous requests, and every record older
/// idemgates stored on unscoped routes.
pub const SHARED: &str = "";

/// The scope of a request on a credential-scoped route.
pub fn of_credentials(headers: &HeaderMap) -> String {
    const CREDENTIALS: [(u8, HeaderName); 2] = [(b'a', http::header::AUTHORIZATION), (b'c', http::header::COOKIE)];
    // Most webhooks carry neither: they are answered without a digest begun and dropped.
    if !CREDENTIALS.iter().any(|(_, name)| headers.contains_key(name)) {
        return SHARED.to_string();
    }
    let mut digest = Sha256::new();
    for (tag, name) in CREDENTIALS {
        for value in headers.get_all(name) {
            // Tagged and length-prefixed, so no two header sets share an encoding.
            digest.update([tag]);
            digest.update((value.len() as u64).to_be_bytes());
            digest.update(value.as_bytes());
        }
    }
    // Prefixed, so it can never equal an explicit scope's digest of the same bytes.
    format!("c1:{}", crate::gate::hex(&digest.finalize()))
}

/// Whether a record id was scoped by credentials (so may have a record in the legacy scope).
pub fn is_credential_scope(scope: &str) -> bool {
    scope.starts_with("c1:")
}

/// Where this store keeps the time it first served credential scopes: a record under a route
/// name no config can use (route names are letters, digits, `-`, `_` and `.`).
fn marker() -> RecordId {
    RecordId { route: "idemgate:meta".into(), scope: String::new(), key: "credential-scopes-since".into() }
}

/// Records older than this store's first start with credential scopes may be replayed from the
/// legacy (shared) scope to credentialed requests.
#[derive(Clone, Copy, Debug)]
pub struct LegacyScope {
    pub since_ms: i64,
}

impl LegacyScope {
    /// Reads the marker, or writes it on the first start (every replica of a shared store agrees
    /// on the first writer's time).
    pub async fn load(records: &Records, now_ms: i64) -> Result<LegacyScope, StoreError> {
        for _ in 0..50 {
            let claim =
                Claim { id: marker(), token: crate::gate::random_u64(), fingerprint: None, now_ms, lease_ms: 10_000 };
            match records.backend().claim(claim.clone()).await? {
                ClaimOutcome::Completed(done) => return Ok(LegacyScope { since_ms: done.created_ms }),
                ClaimOutcome::Claimed { token, .. } => {
                    let done = Completed {
                        fingerprint: None,
                        response: StoredResponse {
                            status: 204,
                            headers: vec![],
                            body: Default::default(),
                            body_omitted: false,
                        },
                        created_ms: now_ms,
                        // A century: never swept.
                        expires_ms: now_ms.saturating_add(100 * 365 * 24 * 3600 * 1000),
                    };
                    records.backend().complete(marker(), token, Arc::new(done)).await?;
                    return Ok(LegacyScope { since_ms: now_ms });
                }
                // Another replica is writing it now.
                ClaimOutcome::InFlight { .. } => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
            }
        }
        Err(StoreError::Unavailable("the credential-scope marker is held by another process".into()))
    }

    /// Whether a legacy record can still be alive at `now_ms` for a route with this ttl: if not,
    /// the legacy scope need not be looked at.
    pub fn may_hold(&self, now_ms: i64, ttl_ms: i64) -> bool {
        now_ms < self.since_ms.saturating_add(ttl_ms)
    }

    /// The completed record an older idemgate stored for `id` in the shared scope, if any.
    pub async fn find(
        &self,
        records: &Records,
        id: &RecordId,
        now_ms: i64,
    ) -> Result<Option<Arc<Completed>>, StoreError> {
        let legacy = RecordId { scope: SHARED.to_string(), ..id.clone() };
        let found = records.peek_completed(&legacy, now_ms).await?;
        Ok(found.filter(|done| done.created_ms < self.since_ms && done.expires_ms > now_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        map
    }

    #[test]
    fn credentials_make_the_scope() {
        let none = of_credentials(&headers(&[("x-other", "1")]));
        let alice = of_credentials(&headers(&[("authorization", "Bearer alice")]));
        let bob = of_credentials(&headers(&[("authorization", "Bearer bob")]));
        let alice_cookie = of_credentials(&headers(&[("authorization", "Bearer alice"), ("cookie", "s=1")]));
        let cookie_only = of_credentials(&headers(&[("cookie", "Bearer alice")]));
        assert_eq!(none, SHARED);
        assert!(is_credential_scope(&alice));
        let all = [&alice, &bob, &alice_cookie, &cookie_only];
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_eq!(alice, of_credentials(&headers(&[("authorization", "Bearer alice")])));
    }
}
