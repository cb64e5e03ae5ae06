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
