//! The same cases for every scheme: valid, wrong secret, tampered body, missing, malformed and
//! duplicated signature header, stale and future timestamps, rotation, and no secret in any
//! output.

use super::*;
use crate::verify::VerifyError;

/// One scheme under test: how to configure it and how its provider signs a delivery.
struct Kit {
    name: &'static str,
    /// The `verify:` fields besides `secret`.
    fields: &'static str,
    /// How a raw key is written in the environment variable.
    secret_text: fn(&[u8]) -> String,
    sign: fn(key: &[u8], body: &[u8], ts: i64) -> Req,
    body: &'static [u8],
    /// The header that carries the signature.
    signature: &'static str,
    /// The header named when `signature` is absent.
    missing: &'static str,
    garbage: &'static str,
    timestamped: bool,
}

fn plain(key: &[u8]) -> String {
    String::from_utf8(key.to_vec()).unwrap()
}

fn sign_github(key: &[u8], body: &[u8], _: i64) -> Req {
    Req::post(body)
        .header("X-GitHub-Delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958")
        .header("X-Hub-Signature-256", &format!("sha256={}", hex(&mac256(key, &[body]))))
}

fn sign_shopify(key: &[u8], body: &[u8], _: i64) -> Req {
    Req::post(body).header("X-Shopify-Hmac-Sha256", &b64(&mac256(key, &[body])))
}

fn sign_shopify_unprefixed(key: &[u8], body: &[u8], _: i64) -> Req {
    Req::post(body).header("shopify-hmac-sha256", &b64(&mac256(key, &[body])))
}

fn sign_stripe(key: &[u8], body: &[u8], ts: i64) -> Req {
    let t = ts.to_string();
    let v1 = hex(&mac256(key, &[t.as_bytes(), b".", body]));
    let v0 = hex(&mac256(b"stripe's fake test-mode key", &[t.as_bytes(), b".", body]));
    Req::post(body).header("Stripe-Signature", &format!("t={t},v1={v1},v0={v0}"))
}

fn sign_slack(key: &[u8], body: &[u8], ts: i64) -> Req {
    let t = ts.to_string();
    Req::post(body)
        .header("X-Slack-Request-Timestamp", &t)
        .header("X-Slack-Signature", &format!("v0={}", hex(&mac256(key, &[b"v0:", t.as_bytes(), b":", body]))))
}

fn sign_standard_as(prefix: &str, key: &[u8], body: &[u8], ts: i64) -> Req {
    let (id, t) = ("msg_2KWPBgLlAfxdpx2AI54pPJ85f4W", ts.to_string());
    let sig = b64(&mac256(key, &[id.as_bytes(), b".", t.as_bytes(), b".", body]));
    Req::post(body)
        .header(&format!("{prefix}-id"), id)
        .header(&format!("{prefix}-timestamp"), &t)
        .header(&format!("{prefix}-signature"), &format!("v1,{sig}"))
}

fn sign_standard(key: &[u8], body: &[u8], ts: i64) -> Req {
    sign_standard_as("webhook", key, body, ts)
}

fn sign_svix(key: &[u8], body: &[u8], ts: i64) -> Req {
    sign_standard_as("svix", key, body, ts)
}

/// Twilio's documented algorithm: the URL, then each POST parameter's name and value, sorted.
pub fn sign_twilio(key: &[u8], body: &[u8], _: i64) -> Req {
    let mut params: Vec<(String, String)> = form_urlencoded::parse(body).into_owned().collect();
    params.sort();
    let signed: String = params.iter().map(|(k, v)| format!("{k}{v}")).collect();
    let url = "https://example.com/webhooks/twilio?src=sms";
    Req::post(body)
        .uri("/webhooks/twilio?src=sms")
        .header("Host", "example.com")
        .header("Content-Type", "application/x-www-form-urlencoded")
        .header("X-Twilio-Signature", &b64(&mac1(key, &[url.as_bytes(), signed.as_bytes()])))
}

fn sign_gitlab(key: &[u8], body: &[u8], ts: i64) -> Req {
    sign_standard_as("webhook", key, body, ts).header("X-Gitlab-Event", "Push Hook")
}

fn sign_sha1_base64(key: &[u8], body: &[u8], _: i64) -> Req {
    Req::post(body).header("X-Signature", &format!("sha1={}", b64(&mac1(key, &[body]))))
}

fn sign_sha256_hex(key: &[u8], body: &[u8], _: i64) -> Req {
    Req::post(body).header("X-Body-Signature", &hex(&mac256(key, &[body])))
}

fn kits() -> Vec<Kit> {
    let kit = |name, fields, sign, body, signature, garbage, timestamped| Kit {
        name,
        fields,
        secret_text: plain,
        sign,
        body,
        signature,
        missing: signature,
        garbage,
        timestamped,
    };
    vec![
        kit(
            "github",
            "scheme: github",
            sign_github,
            fixture!("github-push.json"),
            "x-hub-signature-256",
            "sha256=zz",
            false,
        ),
        Kit {
            missing: "x-shopify-hmac-sha256 or shopify-hmac-sha256",
            ..kit(
                "shopify",
                "scheme: shopify",
                sign_shopify,
                fixture!("shopify-orders-create.json"),
                "x-shopify-hmac-sha256",
                "no base64!",
                false,
            )
        },
        Kit {
            missing: "x-shopify-hmac-sha256 or shopify-hmac-sha256",
            ..kit(
                "shopify, unprefixed header",
                "scheme: shopify",
                sign_shopify_unprefixed,
                fixture!("shopify-orders-create.json"),
                "shopify-hmac-sha256",
                "no base64!",
                false,
            )
        },
        kit(
            "stripe",
            "scheme: stripe",
            sign_stripe,
            fixture!("stripe-invoice.paid.json"),
            "Stripe-Signature",
            "t=1718000000",
            true,
        ),
        kit(
            "slack",
            "scheme: slack",
            sign_slack,
            fixture!("slack-event_callback.json"),
            "X-Slack-Signature",
            "v1=00",
            true,
        ),
        Kit {
            secret_text: whsec,
            ..kit(
                "standard-webhooks",
                "scheme: standard-webhooks",
                sign_standard,
                fixture!("standard-webhooks.json"),
                "webhook-signature",
                "v1a,AAAA",
                true,
            )
        },
        Kit {
            secret_text: whsec,
            ..kit("svix", "scheme: svix", sign_svix, fixture!("svix.json"), "svix-signature", "nonsense", true)
        },
        kit(
            "twilio",
            "scheme: twilio",
            sign_twilio,
            fixture!("twilio-status.form"),
            "X-Twilio-Signature",
            "%%%",
            false,
        ),
        Kit {
            missing: "X-Gitlab-Token",
            ..kit(
                "gitlab signing token",
                "scheme: gitlab",
                sign_gitlab,
                fixture!("gitlab-push.json"),
                "webhook-signature",
                "v1,@@",
                true,
            )
        },
        kit(
            "hmac sha1 base64",
            "{scheme: hmac, header: X-Signature, algorithm: sha1, encoding: base64, prefix: 'sha1='}",
            sign_sha1_base64,
            b"{\"any\":\"body\"}",
            "x-signature",
            "sha1=AAAA",
            false,
        ),
        kit(
            "hmac default",
            "{scheme: hmac, header: X-Body-Signature}",
            sign_sha256_hex,
            b"raw body",
            "x-body-signature",
            "abc",
            false,
        ),
    ]
}

impl Kit {
    fn verifier(&self, secrets: &str) -> Verifier {
        let fields = self.fields.trim_start_matches('{').trim_end_matches('}');
        let (new, old) = ((self.secret_text)(NEW), (self.secret_text)(OLD));
        compile(&format!("{{ {fields}, secret: {secrets} }}"), None, &[("NEW", &new), ("OLD", &old)])
            .unwrap_or_else(|e| panic!("{}: {e}", self.name))
    }

    fn sign(&self, key: &[u8], ts: i64) -> Req {
        (self.sign)(key, self.body, ts)
    }
}

#[test]
fn every_scheme_accepts_its_signature_and_rejects_the_rest() {
    for kit in kits() {
        let v = kit.verifier("env:NEW");
        let name = kit.name;
        let check = |req: &Req, case: &str| v.verify(&req.signed()).map_err(|e| (case.to_string(), e));
        let valid = kit.sign(NEW, NOW);
        assert_eq!(check(&valid, "valid"), Ok(()), "{name}");

        let wrong = kit.sign(b"wrong-secret-0000000000", NOW);
        assert_eq!(v.verify(&wrong.signed()), Err(VerifyError::NoMatch), "{name}: wrong secret");

        let mut tampered = valid.clone();
        tampered.body.push(b' ');
        assert_eq!(v.verify(&tampered.signed()), Err(VerifyError::NoMatch), "{name}: tampered body");

        let mut missing = valid.clone();
        missing.headers.remove(kit.signature);
        assert_eq!(v.verify(&missing.signed()), Err(VerifyError::MissingHeader(kit.missing.into())), "{name}: missing");

        let mut garbled = valid.clone();
        garbled.headers.insert(HeaderName::from_bytes(kit.signature.as_bytes()).unwrap(), kit.garbage.parse().unwrap());
        assert_eq!(v.verify(&garbled.signed()).map_err(|e| e.kind()), Err("malformed"), "{name}: malformed");

        let mut twice = valid.clone();
        let value = twice.headers.get(kit.signature).unwrap().clone();
        twice.headers.append(HeaderName::from_bytes(kit.signature.as_bytes()).unwrap(), value);
        assert_eq!(v.verify(&twice.signed()).map_err(|e| e.kind()), Err("malformed"), "{name}: given twice");
    }
}

#[test]
fn timestamps_outside_the_tolerance_are_stale() {
    for kit in kits() {
        let v = kit.verifier("env:NEW");
        let at = |offset: i64| v.verify(&kit.sign(NEW, NOW + offset).signed()).map_err(|e| e.kind());
        if kit.timestamped {
            assert_eq!(at(-300), Ok(()), "{}", kit.name);
            assert_eq!(at(300), Ok(()), "{}", kit.name);
            assert_eq!(at(-301), Err("stale"), "{}: old", kit.name);
            assert_eq!(at(301), Err("stale"), "{}: future", kit.name);
        } else {
            assert_eq!(at(-30 * 86_400), Ok(()), "{}: no timestamp is signed", kit.name);
        }
    }
}

#[test]
fn both_secrets_are_accepted_during_rotation() {
    for kit in kits() {
        let both = kit.verifier("[env:NEW, env:OLD]");
        let only_new = kit.verifier("env:NEW");
        for key in [NEW, OLD] {
            assert_eq!(both.verify(&kit.sign(key, NOW).signed()), Ok(()), "{}", kit.name);
        }
        assert_eq!(only_new.verify(&kit.sign(OLD, NOW).signed()), Err(VerifyError::NoMatch), "{}", kit.name);
    }
}

#[test]
fn no_output_contains_a_secret_or_a_signature() {
    for kit in kits() {
        let v = kit.verifier("[env:NEW, env:OLD]");
        let valid = kit.sign(NEW, NOW);
        let mut outputs = vec![format!("{v:?}"), v.describe()];
        let mut tampered = valid.clone();
        tampered.body.push(b'!');
        for req in [kit.sign(b"wrong-secret-0000000000", NOW), tampered, kit.sign(NEW, NOW - 1000)] {
            if let Err(err) = v.verify(&req.signed()) {
                outputs.extend([err.to_string(), format!("{err:?}")]);
            }
        }
        let signature = valid.headers.get(kit.signature).unwrap().to_str().unwrap();
        for out in &outputs {
            for secret in [NEW, OLD] {
                assert!(!out.contains(&plain(secret)), "{}: {out}", kit.name);
                assert!(!out.contains(&(kit.secret_text)(secret)), "{}: {out}", kit.name);
            }
            assert!(!out.contains(signature), "{}: {out}", kit.name);
        }
        assert!(v.describe().contains("2 secrets"), "{}", v.describe());
    }
}
