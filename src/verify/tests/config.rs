//! The `verify:` block: where secrets may come from, and the errors of a wrong block.

use super::*;
use crate::verify::{SecretList, SecretRef};
use std::io::Write;

#[test]
fn secret_references_parse_without_keeping_inline_values() {
    let table: &[(&str, Vec<SecretRef>)] = &[
        ("env:STRIPE_WEBHOOK_SECRET", vec![SecretRef::Env("STRIPE_WEBHOOK_SECRET".into())]),
        ("file:/run/secrets/hook", vec![SecretRef::File("/run/secrets/hook".into())]),
        ("[env:NEW, 'file:old.txt']", vec![SecretRef::Env("NEW".into()), SecretRef::File("old.txt".into())]),
        ("hunter2hunter2", vec![SecretRef::Inline]),
        ("'123456'", vec![SecretRef::Inline]),
    ];
    for (yaml, want) in table {
        let cfg = config(&format!("{{ scheme: github, secret: {yaml} }}"));
        assert_eq!(cfg.secret, SecretList(want.clone()), "{yaml}");
        assert!(!format!("{cfg:?}").contains("hunter2"), "{cfg:?}");
    }
}

#[test]
fn secrets_of_the_wrong_type_are_refused_without_echo() {
    for yaml in ["987654321", "98765.4321", "true", "[env:A, 987654321]", "{ value: 987654321 }"] {
        let text = format!("scheme: github\nsecret: {yaml}\n");
        // As config::load parses: without source snippets, which would quote the line itself.
        let options = serde_saphyr::options! { with_snippet: false };
        let err = serde_saphyr::from_str_with_options::<VerifyConfig>(&text, options).unwrap_err().to_string();
        assert!(!err.contains("987654321") && !err.contains("98765.4321"), "{yaml}: {err}");
    }
}

#[test]
fn inline_secrets_are_a_config_error_naming_the_field() {
    let err = compile("{ scheme: github, secret: hunter2hunter2 }", None, &[]).unwrap_err();
    assert!(err.starts_with("verify.secret: inline secrets are refused"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
    let err = compile("{ scheme: github, secret: [env:A, hunter2hunter2] }", None, &[("A", "a")]).unwrap_err();
    assert!(err.starts_with("verify.secret[1]: inline"), "{err}");
}

#[test]
fn environment_secrets() {
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], Result<(), &'a str>);
    let table: &[Case] = &[
        ("env:GH", &[("GH", "s3cret")], Ok(())),
        ("env:GH", &[], Err("verify.secret: environment variable GH is not set")),
        ("env:GH", &[("GH", "")], Err("verify.secret: environment variable GH is empty")),
        ("'env:'", &[], Err("verify.secret: env: needs a variable name")),
        ("[env:A, env:B]", &[("A", "x")], Err("verify.secret[1]: environment variable B is not set")),
    ];
    for (secret, env, want) in table {
        let got = compile(&format!("{{ scheme: github, secret: {secret} }}"), None, env).map(|_| ());
        assert_eq!(got.as_ref().map_err(String::as_str), want.as_ref().map_err(|e| *e), "{secret}");
    }
    let unset = "IDEMGATE_TEST_VERIFY_SECRET_THAT_IS_NEVER_SET_4711";
    let err = Verifier::compile(&config(&format!("{{ scheme: github, secret: env:{unset} }}")), None).unwrap_err();
    assert_eq!(err, format!("verify.secret: environment variable {unset} is not set"));
}

#[test]
fn file_secrets_lose_their_trailing_newline() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hook-secret");
    std::fs::File::create(&path).unwrap().write_all(b"s3cret-from-file\r\n").unwrap();
    let v =
        Verifier::compile(&config(&format!("{{ scheme: github, secret: 'file:{}' }}", path.display())), None).unwrap();
    let body = b"{}";
    let sig = format!("sha256={}", hex(&mac256(b"s3cret-from-file", &[body])));
    assert_eq!(v.verify(&Req::post(body).header("X-Hub-Signature-256", &sig).signed()), Ok(()));

    let missing = dir.path().join("absent");
    let err = Verifier::compile(&config(&format!("{{ scheme: github, secret: 'file:{}' }}", missing.display())), None)
        .unwrap_err();
    assert!(err.starts_with(&format!("verify.secret: cannot read file {}", missing.display())), "{err}");
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "\n").unwrap();
    let err = Verifier::compile(&config(&format!("{{ scheme: github, secret: 'file:{}' }}", empty.display())), None)
        .unwrap_err();
    assert_eq!(err, format!("verify.secret: file {} is empty", empty.display()));
}

#[test]
fn wrong_blocks_name_their_field() {
    let env: &[(&str, &str)] = &[("S", "secret-value"), ("W", "whsec_!!notbase64")];
    let github = Scheme::github();
    let table: &[(&str, Option<&Scheme>, &str)] = &[
        ("{ secret: env:S }", None, "verify.scheme: is required without a preset"),
        ("{ scheme: hmac, secret: env:S }", None, "verify.header: is required with scheme hmac"),
        (
            "{ scheme: hmac, header: 'bad header', secret: env:S }",
            None,
            "verify.header: \"bad header\" is not a header name",
        ),
        ("{ scheme: stripe, header: X-Sig, secret: env:S }", None, "verify.header: only applies to the hmac schemes"),
        ("{ scheme: slack, encoding: hex, secret: env:S }", None, "verify.encoding: only applies"),
        ("{ secret: env:S, tolerance: 5m }", Some(&github), "verify.tolerance: this scheme signs no timestamp"),
        ("{ scheme: stripe, secret: env:S, tolerance: 0s }", None, "verify.tolerance: must be at least 1s"),
        (
            "{ scheme: stripe, secret: env:S, public_url: 'https://a.example' }",
            None,
            "verify.public_url: only the twilio",
        ),
        (
            "{ scheme: twilio, secret: env:S, public_url: 'https://a.example/hook' }",
            None,
            "verify.public_url: \"https://a.example/hook\" must be",
        ),
        (
            "{ scheme: twilio, secret: env:S, public_url: 'ftp://a.example' }",
            None,
            "verify.public_url: \"ftp://a.example\" must start",
        ),
        ("{ scheme: svix, secret: env:W }", None, "verify.secret: not a Standard Webhooks secret"),
        ("{ scheme: svix, secret: [] }", None, "verify.secret: give at least one"),
    ];
    for (yaml, preset, want) in table {
        let err = compile(yaml, *preset, env).unwrap_err();
        assert!(err.starts_with(want), "{yaml}: {err}");
        assert!(!err.contains("secret-value") && !err.contains("notbase64"), "{yaml}: {err}");
    }
    for yaml in
        ["{ scheme: github, secret: env:S, algo: sha1 }", "{ scheme: sha512, secret: env:S }", "{ scheme: github }"]
    {
        assert!(serde_saphyr::from_str::<VerifyConfig>(yaml).is_err(), "{yaml}");
    }
}

#[test]
fn describe_says_scheme_and_count() {
    let env = [("A", "a-secret"), ("B", "b-secret")];
    let cases = [
        ("{ scheme: github, secret: env:A }", "hmac-sha256 hex in x-hub-signature-256 after \"sha256=\"; 1 secret"),
        (
            "{ scheme: stripe, secret: [env:A, env:B], tolerance: 10m }",
            "stripe (Stripe-Signature t=,v1=); 2 secrets, tolerance 10m",
        ),
        (
            "{ scheme: twilio, secret: env:A, public_url: 'https://hooks.example.com' }",
            "twilio (X-Twilio-Signature); 1 secret, public url https://hooks.example.com",
        ),
    ];
    for (yaml, want) in cases {
        assert_eq!(compile(yaml, None, &env).unwrap().describe(), want);
    }
}
