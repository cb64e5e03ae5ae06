//! Scheme-specific parsing and the corners each provider has.

use super::*;
use crate::verify::VerifyError;

fn kind(v: &Verifier, req: &Req) -> Result<(), &'static str> {
    v.verify(&req.signed()).map_err(|e| e.kind())
}

#[test]
fn stripe_header_variants() {
    let v = compile("{ scheme: stripe, secret: env:S }", None, &[("S", "whsec_stripe_test")]).unwrap();
    let body = fixture!("stripe-invoice.paid.json");
    let t = NOW.to_string();
    let good = hex(&mac256(b"whsec_stripe_test", &[t.as_bytes(), b".", body]));
    let other = hex(&mac256(b"another-secret", &[t.as_bytes(), b".", body]));
    let req = |header: &str| Req::post(body).header("Stripe-Signature", header);
    let table: Vec<(String, Result<(), &str>)> = vec![
        (format!("t={t},v1={good}"), Ok(())),
        (format!("t={t},v1={other},v1={good}"), Ok(())),
        (format!("t={t}, v1={good}, v0={other}"), Ok(())),
        (format!("v1={good},t={t},scheme2=whatever"), Ok(())),
        (format!("t={t},v1={}", good.to_uppercase()), Ok(())),
        (format!("t={t},v1={other}"), Err("no_match")),
        (format!("t={t},v0={good}"), Err("malformed")),
        (format!("v1={good}"), Err("malformed")),
        (format!("t={t},t={t},v1={good}"), Err("malformed")),
        (format!("t=+{t},v1={good}"), Err("malformed")),
        (format!("t={t},v1=xyz"), Err("malformed")),
        (format!("t={t},v1={}", &good[..62]), Err("malformed")),
        (format!("t={t};v1={good}"), Err("malformed")),
        (format!("t={t},{}", vec![format!("v1={other}"); 17].join(",")), Err("malformed")),
    ];
    for (header, want) in table {
        assert_eq!(kind(&v, &req(&header)), want, "{header}");
    }
    let tolerant =
        compile("{ scheme: stripe, secret: env:S, tolerance: 10m }", None, &[("S", "whsec_stripe_test")]).unwrap();
    let mut late = req(&format!("t={t},v1={good}"));
    late.now = NOW + 500;
    assert_eq!(kind(&v, &late), Err("stale"));
    assert_eq!(kind(&tolerant, &late), Ok(()));
}

#[test]
fn standard_webhooks_signature_lists() {
    let key = b"0123456789abcdef01234567";
    let v = compile("{ scheme: standard-webhooks, secret: env:S }", None, &[("S", &whsec(key))]).unwrap();
    let body = fixture!("standard-webhooks.json");
    let t = NOW.to_string();
    let good = b64(&mac256(key, &[b"msg_1.", t.as_bytes(), b".", body]));
    let req = |sig: &str| {
        Req::post(body).header("webhook-id", "msg_1").header("webhook-timestamp", &t).header("webhook-signature", sig)
    };
    let table: Vec<(String, Result<(), &str>)> = vec![
        (format!("v1,{good}"), Ok(())),
        (format!("v1a,AAAA  v2,BBBB v1,{good}"), Ok(())),
        ("v1a,AAAA".into(), Err("malformed")),
        (format!("v1={good}"), Err("malformed")),
        ("v1,!!!!".into(), Err("malformed")),
        (vec![format!("v1,{good}"); 17].join(" "), Err("malformed")),
    ];
    for (sig, want) in table {
        assert_eq!(kind(&v, &req(&sig)), want, "{sig}");
    }
    let no_id = Req::post(body).header("webhook-timestamp", &t).header("webhook-signature", &format!("v1,{good}"));
    assert_eq!(v.verify(&no_id.signed()), Err(VerifyError::MissingHeader("webhook-id".into())));
    let bad_ts = req(&format!("v1,{good}")).header("webhook-timestamp", "1");
    assert_eq!(kind(&v, &bad_ts), Err("malformed"), "timestamp given twice");
}

#[test]
fn slack_timestamp_header_is_required_and_strict() {
    let v = compile("{ scheme: slack, secret: env:S }", None, &[("S", "slack-secret")]).unwrap();
    let sig = format!("v0={}", hex(&mac256(b"slack-secret", &[b"v0:", NOW.to_string().as_bytes(), b":{}"])));
    let no_ts = Req::post(b"{}").header("X-Slack-Signature", &sig);
    assert_eq!(v.verify(&no_ts.signed()), Err(VerifyError::MissingHeader("X-Slack-Request-Timestamp".into())));
    let signed_ts = format!("{NOW}");
    for bad in [format!("{NOW}.5"), format!("-{NOW}"), "1e9".into()] {
        let req = Req::post(b"{}").header("X-Slack-Signature", &sig).header("X-Slack-Request-Timestamp", &bad);
        assert_eq!(kind(&v, &req), Err("malformed"), "{bad}");
    }
    let ok = Req::post(b"{}").header("X-Slack-Signature", &sig).header("X-Slack-Request-Timestamp", &signed_ts);
    assert_eq!(kind(&v, &ok), Ok(()));
}

#[test]
fn twilio_url_comes_from_public_url_or_host() {
    let body = fixture!("twilio-status.form");
    let signed = schemes::sign_twilio(b"auth-token", body, NOW);
    let env = [("T", "auth-token")];
    let by_host = compile("{ scheme: twilio, secret: env:T }", None, &env).unwrap();
    assert_eq!(kind(&by_host, &signed), Ok(()));

    let mut no_host = signed.clone();
    no_host.headers.remove("host");
    assert_eq!(by_host.verify(&no_host.signed()), Err(VerifyError::MissingHeader("host".into())));
    let mut absolute = no_host.clone();
    absolute.uri = "https://example.com/webhooks/twilio?src=sms".parse().unwrap();
    assert_eq!(kind(&by_host, &absolute), Ok(()), "the request's own authority");

    let behind_proxy = signed.clone().header("host", "10.0.0.7:8080");
    assert_eq!(kind(&by_host, &behind_proxy), Err("malformed"), "Host given twice");
    let mut proxied = signed.clone();
    proxied.headers.insert("host", "10.0.0.7:8080".parse().unwrap());
    assert_eq!(kind(&by_host, &proxied), Err("no_match"));
    let public = compile("{ scheme: twilio, secret: env:T, public_url: 'https://example.com/' }", None, &env).unwrap();
    assert_eq!(kind(&public, &proxied), Ok(()));

    let mut other_path = signed.clone();
    other_path.uri = "/webhooks/twilio?src=voice".parse().unwrap();
    assert_eq!(kind(&by_host, &other_path), Err("no_match"), "the query is signed");
}

#[test]
fn twilio_get_signs_the_url_alone_and_body_hash_is_unique() {
    let env = [("T", "auth-token")];
    let v = compile("{ scheme: twilio, secret: env:T }", None, &env).unwrap();
    let url = "https://example.com/voice?CallSid=CA1&From=%2B1555";
    let mut get = Req::post(b"")
        .uri("/voice?CallSid=CA1&From=%2B1555")
        .header("Host", "example.com")
        .header("X-Twilio-Signature", &b64(&mac1(b"auth-token", &[url.as_bytes()])));
    get.method = Method::GET;
    assert_eq!(kind(&v, &get), Ok(()));

    let twice = Req::post(b"{}")
        .uri("/s?bodySHA256=aa&bodySHA256=bb")
        .header("Host", "example.com")
        .header("X-Twilio-Signature", &b64(&[0u8; 20]));
    assert_eq!(kind(&v, &twice), Err("malformed"));
}

#[test]
fn gitlab_secret_token() {
    let v = compile("{ scheme: gitlab, secret: [env:NEW, env:OLD] }", None, &[("NEW", "glt-new"), ("OLD", "glt-old")])
        .unwrap();
    let body = fixture!("gitlab-push.json");
    let with = |token: &str| Req::post(body).header("X-Gitlab-Event", "Push Hook").header("X-Gitlab-Token", token);
    let table: Vec<(Req, Result<(), VerifyError>)> = vec![
        (with("glt-new"), Ok(())),
        (with("glt-old"), Ok(())),
        (with("glt-ne"), Err(VerifyError::NoMatch)),
        (with("glt-new-and-more"), Err(VerifyError::NoMatch)),
        (with(""), Err(VerifyError::NoMatch)),
        (Req::post(body), Err(VerifyError::MissingHeader("X-Gitlab-Token".into()))),
    ];
    for (req, want) in table {
        assert_eq!(v.verify(&req.signed()), want, "{:?}", req.headers.get("x-gitlab-token"));
    }
    assert_eq!(kind(&v, &with("glt-new").header("X-Gitlab-Token", "glt-new")), Err("malformed"));
}

#[test]
fn gitlab_signing_token_with_whsec_prefix_and_token_together() {
    let key = b"gitlab signing key bytes";
    let v = compile("{ scheme: gitlab, secret: env:S }", None, &[("S", &whsec(key))]).unwrap();
    let body = fixture!("gitlab-push.json");
    let sign = |ts: i64| {
        let t = ts.to_string();
        let sig = b64(&mac256(key, &[b"f5e5f430.", t.as_bytes(), b".", body]));
        Req::post(body)
            .header("webhook-id", "f5e5f430")
            .header("webhook-timestamp", &t)
            .header("webhook-signature", &format!("v1,{sig}"))
    };
    assert_eq!(kind(&v, &sign(NOW)), Ok(()));
    assert_eq!(kind(&v, &sign(NOW - 600)), Err("stale"));
    let stale_with_token = sign(NOW - 600).header("X-Gitlab-Token", &whsec(key));
    assert_eq!(kind(&v, &stale_with_token), Ok(()), "the token alone is enough");
    let stale_with_wrong_token = sign(NOW - 600).header("X-Gitlab-Token", "nope");
    assert_eq!(kind(&v, &stale_with_wrong_token), Err("stale"));
}

#[test]
fn fields_beside_a_preset_override_its_scheme() {
    let github = Scheme::github();
    let env = [("S", "gh-secret")];
    let body = fixture!("github-push.json");
    let legacy =
        compile("{ secret: env:S, header: X-Hub-Signature, algorithm: sha1, prefix: 'sha1=' }", Some(&github), &env)
            .unwrap();
    let sha1 = Req::post(body).header("X-Hub-Signature", &format!("sha1={}", hex(&mac1(b"gh-secret", &[body]))));
    assert_eq!(kind(&legacy, &sha1), Ok(()));
    let stripe = compile("{ scheme: stripe, secret: env:S }", Some(&github), &env).unwrap();
    assert_eq!(stripe.scheme(), &Scheme::Stripe);
    let plain = compile("{ secret: env:S }", Some(&github), &env).unwrap();
    assert_eq!(plain.scheme(), &github);
    assert_eq!(kind(&plain, &sha1), Err("missing_header"));
}
