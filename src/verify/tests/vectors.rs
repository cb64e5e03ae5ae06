//! Worked examples published by the providers (or their reference libraries), checked as is.

use super::*;
use crate::verify::VerifyError;

/// docs.github.com, "Validating webhook deliveries": testing the webhook payload validation.
#[test]
fn github_documented_example() {
    let v = compile("{ scheme: github, secret: env:S }", None, &[("S", "It's a Secret to Everybody")]).unwrap();
    let sig = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
    assert_eq!(v.verify(&Req::post(b"Hello, World!").header("X-Hub-Signature-256", sig).signed()), Ok(()));
    assert_eq!(
        mac256(b"It's a Secret to Everybody", &[b"Hello, World!"]),
        super::super::parse::hex(&sig[7..]).unwrap()
    );
}

const SLACK_BODY: &str = "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&\
channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2F\
hooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.\
803a0bc887a14d10d2c447fce8b6703c";

/// api.slack.com, "Verifying requests from Slack": the walk-through's secret, request and signature.
#[test]
fn slack_documented_example() {
    let v = compile("{ scheme: slack, secret: env:S }", None, &[("S", "8f742231b10e8888abcd99yyyzzz85a5")]).unwrap();
    let mut req = Req::post(SLACK_BODY.as_bytes())
        .header("X-Slack-Request-Timestamp", "1531420618")
        .header("X-Slack-Signature", "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503");
    req.now = 1_531_420_618 + 60;
    assert_eq!(v.verify(&req.signed()), Ok(()));
    req.now = 1_531_420_618 + 301;
    assert!(matches!(v.verify(&req.signed()), Err(VerifyError::Stale { skew: 301, tolerance: 300, .. })));
}

/// standard-webhooks/standard-webhooks, libraries/rust `test_sign` (the reference implementation).
#[test]
fn standard_webhooks_reference_example() {
    let secret = [("S", "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD")];
    let body = br#"{"email":"test@example.com","username":"test_user"}"#;
    let signed = |prefix: &str, signature: &str| {
        let mut req = Req::post(body)
            .header(&format!("{prefix}-id"), "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk")
            .header(&format!("{prefix}-timestamp"), "1649367553")
            .header(&format!("{prefix}-signature"), signature);
        req.now = 1_649_367_553;
        req
    };
    let good = "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=";
    let others = "v1,tFtCZ5RDCPxzWQRWXWPgrCgE2frDBe9gjpbWQxnVfsQ= v1a,hnO3f9T8Ytu9HwrXslvumlUpqtNVqkhqw/enGzPCXe5BdqzCInXqYXFymVJaA7AZdpXwVLPo3mNl8EM+m7TBAg==";
    for (scheme, prefix) in [("standard-webhooks", "webhook"), ("svix", "svix")] {
        let v = compile(&format!("{{ scheme: {scheme}, secret: env:S }}"), None, &secret).unwrap();
        assert_eq!(v.verify(&signed(prefix, good).signed()), Ok(()), "{scheme}");
        assert_eq!(v.verify(&signed(prefix, &format!("{others} {good}")).signed()), Ok(()), "{scheme}: in a list");
        assert_eq!(v.verify(&signed(prefix, others).signed()), Err(VerifyError::NoMatch), "{scheme}: not in the list");
    }
}

const TWILIO_URL_PATH: &str = "/myapp.php?foo=1&bar=2";
const TWILIO_PARAMS: &str =
    "CallSid=CA1234567890ABCDE&Digits=1234&From=%2B14158675309&To=%2B18005551212&Caller=%2B14158675309";

/// twilio/twilio-python `tests/unit/test_request_validator.py` (auth token 12345), the example
/// of Twilio's webhook security page.
#[test]
fn twilio_reference_examples() {
    let env = [("T", "12345")];
    let https = compile("{ scheme: twilio, secret: env:T }", None, &env).unwrap();
    let form = |host: &str, body: &str, sig: &str| {
        Req::post(body.as_bytes()).uri(TWILIO_URL_PATH).header("Host", host).header("X-Twilio-Signature", sig)
    };
    let cases = [
        ("mycompany.com", TWILIO_PARAMS, "RSOYDt4T1cUTdK1PDd93/VVr8B8="),
        ("mycompany.com:1234", TWILIO_PARAMS, "RSOYDt4T1cUTdK1PDd93/VVr8B8="),
        ("mycompany.com", TWILIO_PARAMS, "kvajT1Ptam85bY51eRf/AJRuM3w="),
        ("mycompany.com", "Sid=CA123&SidAccount=AC123&Digits=5678&Digits=1234", "IK+Dwps556ElfBT0I3Rgjkr1wJU="),
    ];
    for (host, body, sig) in cases {
        assert_eq!(https.verify(&form(host, body, sig).signed()), Ok(()), "{host} {body} {sig}");
    }
    for (public, sig) in [
        ("http://mycompany.com:1234", "Zmvh+3yNM1Phv2jhDCwEM3q5ebU="),
        ("http://mycompany.com", "0ZXoZLH/DfblKGATFgpif+LLRf4="),
    ] {
        let v = compile(&format!("{{ scheme: twilio, secret: env:T, public_url: '{public}' }}"), None, &env).unwrap();
        assert_eq!(v.verify(&form("proxy.internal:8080", TWILIO_PARAMS, sig).signed()), Ok(()), "{public}");
    }

    let body = br#"{"property": "value", "boolean": true}"#;
    let hash = "0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620";
    let json = Req::post(body)
        .uri(&format!("{TWILIO_URL_PATH}&bodySHA256={hash}"))
        .header("Host", "mycompany.com")
        .header("Content-Type", "application/json")
        .header("X-Twilio-Signature", "a9nBmqA0ju/hNViExpshrM61xv4=");
    assert_eq!(https.verify(&json.signed()), Ok(()));
    let mut tampered = json.clone();
    tampered.body = br#"{"property": "other", "boolean": true}"#.to_vec();
    assert_eq!(https.verify(&tampered.signed()), Err(VerifyError::NoMatch));
}

// The vectors below were computed once, outside this code, with Python's hmac, hashlib and base64
// modules following each provider's documented algorithm, and the Standard Webhooks and Svix ones
// cross-checked against the providers' own Python SDKs (`standardwebhooks` 1.3.0 and `svix`:
// `Webhook("whsec_<unpadded>").sign(id, ts, body)` gives the same `v1,` value):
//
//     mac = lambda key, msg: hmac.new(key, msg, hashlib.sha256).digest()
//     shopify = base64.b64encode(mac(b"shpss_idemgate_vector_client_secret", body))
//     secret = "whsec_" + base64.b64encode(key).decode().rstrip("=")
//     signature = "v1," + base64.b64encode(mac(key, f"{id}.{ts}.".encode() + body)).decode()

const SHOPIFY_SECRET: &str = "shpss_idemgate_vector_client_secret";
const SHOPIFY_BODY: &[u8] = br#"{"id":820982911946154508,"email":"jon@example.com","topic":"orders/create"}"#;
const SHOPIFY_HMAC: &str = "2GyWplIHYtiW7MTeyVjWTe13IX3H1svsr4DkVAWjbm0=";

/// Shopify signs the body alone, base64; the signature may come under the legacy name, the
/// unprefixed one, or both (events webhooks), and both must then agree.
#[test]
fn shopify_vector_under_either_header_name() {
    let v = compile("{ scheme: shopify, secret: env:S }", None, &[("S", SHOPIFY_SECRET)]).unwrap();
    let other = b64(&mac256(b"another app's secret", &[SHOPIFY_BODY]));
    let req = |headers: &[(&str, &str)]| {
        headers.iter().fold(Req::post(SHOPIFY_BODY), |req, (name, value)| req.header(name, value))
    };
    let table: Vec<(&str, Req, Result<(), &str>)> = vec![
        ("legacy name only", req(&[("X-Shopify-Hmac-Sha256", SHOPIFY_HMAC)]), Ok(())),
        ("new name only", req(&[("shopify-hmac-sha256", SHOPIFY_HMAC)]), Ok(())),
        ("both, equal", req(&[("X-Shopify-Hmac-Sha256", SHOPIFY_HMAC), ("shopify-hmac-sha256", SHOPIFY_HMAC)]), Ok(())),
        ("new name, wrong secret", req(&[("shopify-hmac-sha256", &other)]), Err("no_match")),
        (
            "both, the legacy one forged",
            req(&[("X-Shopify-Hmac-Sha256", &other), ("shopify-hmac-sha256", SHOPIFY_HMAC)]),
            Err("malformed"),
        ),
        (
            "both, the new one forged",
            req(&[("X-Shopify-Hmac-Sha256", SHOPIFY_HMAC), ("shopify-hmac-sha256", &other)]),
            Err("malformed"),
        ),
        (
            "new name given twice",
            req(&[("shopify-hmac-sha256", SHOPIFY_HMAC), ("shopify-hmac-sha256", SHOPIFY_HMAC)]),
            Err("malformed"),
        ),
        ("new name, not base64", req(&[("shopify-hmac-sha256", "not base64!")]), Err("malformed")),
        ("neither", req(&[("X-Shopify-Topic", "orders/create")]), Err("missing_header")),
    ];
    for (case, req, want) in table {
        assert_eq!(v.verify(&req.signed()).map_err(|e| e.kind()), want, "{case}");
    }
    let both = req(&[("X-Shopify-Hmac-Sha256", &other), ("shopify-hmac-sha256", SHOPIFY_HMAC)]);
    let err = v.verify(&both.signed()).unwrap_err().to_string();
    assert_eq!(
        err,
        "headers x-shopify-hmac-sha256 and shopify-hmac-sha256 is malformed: both are given, with different values"
    );
    assert!(!err.contains(SHOPIFY_HMAC) && !err.contains(&other), "{err}");
    let none = v.verify(&req(&[]).signed()).unwrap_err();
    assert_eq!(none, VerifyError::MissingHeader("x-shopify-hmac-sha256 or shopify-hmac-sha256".into()));
}

/// The unprefixed name belongs to the preset's header: naming `header:` reads that header only.
#[test]
fn shopify_with_an_explicit_header_reads_only_that_header() {
    let env = [("S", SHOPIFY_SECRET)];
    let v = compile("{ secret: env:S, header: X-Shopify-Hmac-Sha256 }", Some(&Scheme::shopify()), &env).unwrap();
    let new_only = Req::post(SHOPIFY_BODY).header("shopify-hmac-sha256", SHOPIFY_HMAC);
    assert_eq!(v.verify(&new_only.signed()), Err(VerifyError::MissingHeader("x-shopify-hmac-sha256".into())));
    let preset = compile("{ secret: env:S }", Some(&Scheme::shopify()), &env).unwrap();
    assert_eq!(preset.verify(&new_only.signed()), Ok(()));
    assert!(
        preset.describe().starts_with("hmac-sha256 base64 in x-shopify-hmac-sha256 (or shopify-hmac-sha256); 1 secret")
    );
}

const TS: i64 = 1_718_000_000;

/// A Standard Webhooks style delivery: id, timestamp and signature under `{prefix}-*`.
fn standard_req(prefix: &str, id: &str, body: &[u8], signature: &str) -> Req {
    let mut req = Req::post(body)
        .header(&format!("{prefix}-id"), id)
        .header(&format!("{prefix}-timestamp"), &TS.to_string())
        .header(&format!("{prefix}-signature"), signature);
    req.now = TS;
    req
}

/// A 32-byte key, whose base64 ends in one `=`, written without it.
const SW_SECRET_UNPADDED: &str = "whsec_ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8";
const SW_ID: &str = "msg_2LJ8kV0vQy9yD1VfVYqG0cz6f2A";
const SW_BODY: &[u8] = br#"{"type":"invoice.paid","data":{"id":"inv_1"}}"#;
const SW_SIGNATURE: &str = "v1,s9mBuCxvtwIvG+9CQphfiUbdOHGctNi53ZnSGFVkX34=";

/// A 31-byte key, whose base64 ends in `==`, written without them.
const SVIX_SECRET_UNPADDED: &str = "whsec_QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVpbXF1eXw";
const SVIX_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
const SVIX_BODY: &[u8] = br#"{"event_type":"ping","data":{"success":true}}"#;
const SVIX_SIGNATURE: &str = "v1,J3Xe9/Be33WZLQJf7+ExkaNLdA1AJcfa8khbMfe58SA=";

/// Secrets without their base64 padding are the same keys, as the SDKs read them; padded and
/// unprefixed spellings of the same key verify the same delivery.
#[test]
fn standard_webhooks_and_svix_vectors_with_unpadded_secrets() {
    let cases = [
        ("standard-webhooks", "webhook", SW_SECRET_UNPADDED, "=", SW_ID, SW_BODY, SW_SIGNATURE),
        ("svix", "svix", SVIX_SECRET_UNPADDED, "==", SVIX_ID, SVIX_BODY, SVIX_SIGNATURE),
    ];
    for (scheme, prefix, unpadded, padding, id, body, signature) in cases {
        let padded = format!("{unpadded}{padding}");
        let bare = &unpadded["whsec_".len()..];
        for secret in [unpadded, padded.as_str(), bare] {
            let v = compile(&format!("{{ scheme: {scheme}, secret: env:S }}"), None, &[("S", secret)])
                .unwrap_or_else(|e| panic!("{scheme} {secret}: {e}"));
            assert_eq!(v.verify(&standard_req(prefix, id, body, signature).signed()), Ok(()), "{scheme} {secret}");
            let mut tampered = standard_req(prefix, id, body, signature);
            tampered.body.push(b' ');
            assert_eq!(v.verify(&tampered.signed()), Err(VerifyError::NoMatch), "{scheme} {secret}");
        }
    }
}

/// What is still refused: not base64 at all, another alphabet, wrong padding, stray bits, no key.
#[test]
fn whsec_secrets_that_are_not_base64_are_config_errors() {
    let bad = [
        "whsec_!!notbase64",
        "whsec_ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8===",
        "whsec_ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj-",
        "whsec_ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj9",
        "whsec_ICEi IyQl",
        "whsec_I",
        "whsec_",
    ];
    for secret in bad {
        for scheme in ["standard-webhooks", "svix"] {
            let err = compile(&format!("{{ scheme: {scheme}, secret: env:S }}"), None, &[("S", secret)]).unwrap_err();
            assert!(err.starts_with("verify.secret: not a Standard Webhooks secret"), "{scheme} {secret}: {err}");
            assert!(secret == "whsec_" || !err.contains(secret), "{err}");
        }
        let err = compile("{ scheme: gitlab, secret: env:S }", None, &[("S", secret)]).unwrap_err();
        assert!(
            err.starts_with("verify.secret: starts with whsec_ but is not a GitLab signing token"),
            "{secret}: {err}"
        );
        assert!(secret == "whsec_" || !err.contains(secret), "{err}");
    }
}

/// GitLab generates `whsec_` + base64 of 32 bytes; here written without its `=`.
const GITLAB_SIGNING_TOKEN_UNPADDED: &str = "whsec_GLe/O8y0OUFl2siEptxqndIWiJJ5MPFwxj59Qzds5JQ";
const GITLAB_ID: &str = "f5e5f430-f57b-4e6e-9fac-d9128cd7232f";
const GITLAB_BODY: &[u8] = br#"{"object_kind":"push","ref":"refs/heads/main"}"#;
const GITLAB_SIGNATURE: &str = "v1,Cl1cdRoi2AuZBXk/5QrB7w8YAUo3WOZ+gURJUl/ehO8=";

#[test]
fn gitlab_signing_token_vector_padded_or_not() {
    let padded = format!("{GITLAB_SIGNING_TOKEN_UNPADDED}=");
    for token in [GITLAB_SIGNING_TOKEN_UNPADDED, padded.as_str()] {
        let v = compile("{ scheme: gitlab, secret: env:S }", None, &[("S", token)]).unwrap();
        let req = standard_req("webhook", GITLAB_ID, GITLAB_BODY, GITLAB_SIGNATURE)
            .header("Idempotency-Key", GITLAB_ID)
            .header("X-Gitlab-Event", "Push Hook");
        assert_eq!(v.verify(&req.signed()), Ok(()), "{token}");
        let mut late = req.clone();
        late.now = TS + 301;
        assert_eq!(v.verify(&late.signed()).map_err(|e| e.kind()), Err("stale"), "{token}");
        let mut tampered = req.clone();
        tampered.body = br#"{"object_kind":"push","ref":"refs/heads/evil"}"#.to_vec();
        assert_eq!(v.verify(&tampered.signed()), Err(VerifyError::NoMatch), "{token}");
    }
    // A plain secret token is still compared as is.
    let token = compile("{ scheme: gitlab, secret: env:S }", None, &[("S", "plain-secret-token")]).unwrap();
    let req = Req::post(GITLAB_BODY).header("X-Gitlab-Token", "plain-secret-token");
    assert_eq!(token.verify(&req.signed()), Ok(()));
}
