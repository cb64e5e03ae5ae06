//! Fuzz target: `idemgate::route::normalize_path`.
//!
//! The input bytes are tried two ways: as a `&str` when they are valid UTF-8 (what a direct caller
//! could pass), and as the path of an `http::Uri` built from "/" + input (what the proxy really
//! gets from hyper: ASCII only, query split off). Every `Ok` result must be in normal form:
//!
//! - it starts with '/';
//! - it has no "//" and no "." or ".." segment;
//! - it has no encoded '/' or '\' (`%2F`, `%2f`, `%5C`, `%5c`) and every '%' starts a valid,
//!   upper-case escape of a byte that is not unreserved (those are decoded);
//! - normalizing it again gives it back unchanged (idempotent);
//! - a leading "//./" instead of "/" changes nothing (the result, or the error).
//!
//! `known-bugs/path_normalize-non-ascii-percent` (now in the corpus) broke idempotence: fixed.
#![no_main]

use idemgate::route::{PathError, normalize_path};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        check(s);
        check_prefix_invariance(s);
    }
    let mut raw = Vec::with_capacity(data.len() + 1);
    raw.push(b'/');
    raw.extend_from_slice(data);
    if let Ok(uri) = http::Uri::try_from(raw) {
        check(uri.path());
    }
});

fn check(raw: &str) {
    let Ok(out) = normalize_path(raw) else {
        return;
    };
    assert!(out.starts_with('/'), "{raw:?} -> {out:?}: does not start with '/'");
    assert!(!out.contains("//"), "{raw:?} -> {out:?}: contains \"//\"");
    for seg in out[1..].split('/') {
        assert!(seg != "." && seg != "..", "{raw:?} -> {out:?}: has a dot segment {seg:?}");
    }
    for bad in ["%2F", "%2f", "%5C", "%5c"] {
        assert!(!out.contains(bad), "{raw:?} -> {out:?}: contains an encoded slash {bad}");
    }
    check_escapes(raw, &out);
    let again = normalize_path(&out);
    assert_eq!(again.as_deref(), Ok(out.as_str()), "{raw:?} -> {out:?}: normalizing again changes it");
}

/// Every escape left in a normal path is `%XY` with upper-case hex, for a byte that must stay
/// encoded (not unreserved, not a slash or backslash).
fn check_escapes(raw: &str, out: &str) {
    let b = out.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = &b[i + 1..(i + 3).min(b.len())];
            assert!(
                hex.len() == 2 && hex.iter().all(|h| h.is_ascii_digit() || (b'A'..=b'F').contains(h)),
                "{raw:?} -> {out:?}: '%' at {i} does not start an upper-case escape"
            );
            let v = u8::from_str_radix(std::str::from_utf8(hex).unwrap(), 16).unwrap();
            assert!(
                !(v.is_ascii_alphanumeric() || b"-._~/\\".contains(&v)),
                "{raw:?} -> {out:?}: escape %{v:02X} should have been decoded or refused"
            );
            i += 3;
        } else {
            i += 1;
        }
    }
}

/// "/" + s and "//./" + s name the same resource: same normal form, or the same refusal.
fn check_prefix_invariance(s: &str) {
    let a: Result<String, PathError> = normalize_path(&format!("/{s}"));
    let b = normalize_path(&format!("//./{s}"));
    assert_eq!(a, b, "{s:?}: \"/\" and \"//./\" prefixes normalize differently");
}
