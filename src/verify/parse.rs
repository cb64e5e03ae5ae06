//! Reading signature headers strictly: one value per header, digits-only timestamps, exact
//! encodings.

use super::VerifyError;
use base64::Engine;
use http::HeaderMap;

/// How many signatures one header may list (rotation needs two or three); more is refused so
/// that a request cannot make the proxy compare thousands.
pub(super) const MAX_SIGNATURES: usize = 16;

pub(super) fn malformed(what: impl Into<String>, reason: impl Into<String>) -> VerifyError {
    VerifyError::Malformed { what: what.into(), reason: reason.into() }
}

fn header_malformed(name: &str, reason: &str) -> VerifyError {
    malformed(format!("header {name}"), reason)
}

/// The one value of header `name`. Absent is [`VerifyError::MissingHeader`]; given twice is
/// ambiguous and refused; it must be visible ASCII.
pub(super) fn single_header<'a>(headers: &'a HeaderMap, name: &str) -> Result<&'a str, VerifyError> {
    let mut values = headers.get_all(name).iter();
    let first = values.next().ok_or_else(|| VerifyError::MissingHeader(name.to_string()))?;
    if values.next().is_some() {
        return Err(header_malformed(name, "given more than once"));
    }
    let text = first.to_str().map_err(|_| header_malformed(name, "not visible ASCII"))?;
    Ok(text.trim())
}

/// Like [`single_header`], but an absent header is `None` rather than an error.
pub(super) fn optional_header<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, VerifyError> {
    match single_header(headers, name) {
        Ok(text) => Ok(Some(text)),
        Err(VerifyError::MissingHeader(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// A Unix timestamp in seconds: ASCII digits only (no sign, no space), fitting an i64.
pub(super) fn timestamp(text: &str, what: &str) -> Result<i64, VerifyError> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed(what, "the timestamp is not a number of seconds"));
    }
    text.parse().map_err(|_| malformed(what, "the timestamp is out of range"))
}

/// Refuses a timestamp more than `tolerance` seconds before or after `now`.
pub(super) fn check_age(ts: i64, now: i64, tolerance: u64, header: &str) -> Result<(), VerifyError> {
    let skew = now.abs_diff(ts);
    if skew > tolerance {
        return Err(VerifyError::Stale { header: header.to_string(), skew, tolerance });
    }
    Ok(())
}

/// Lower- or upper-case hex, an even number of digits.
pub(super) fn hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16);
    text.as_bytes().chunks(2).map(|p| Some((digit(p[0])? * 16 + digit(p[1])?) as u8)).collect()
}

/// Standard base64 with canonical padding.
pub(super) fn base64(text: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD.decode(text).ok()
}

/// A decoded signature must be as long as the MAC, or it cannot be one.
pub(super) fn check_len(sig: Vec<u8>, len: usize, what: &str) -> Result<Vec<u8>, VerifyError> {
    if sig.len() != len {
        return Err(malformed(what, format!("a signature has {} bytes, not {len}", sig.len())));
    }
    Ok(sig)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_strict() {
        for good in ["0", "1531420618", "9223372036854775807"] {
            assert!(timestamp(good, "t").is_ok(), "{good}");
        }
        for bad in ["", "-1", "+5", " 5", "5 ", "1e9", "0x10", "9223372036854775808", "١٢"] {
            assert!(matches!(timestamp(bad, "t"), Err(VerifyError::Malformed { .. })), "{bad:?}");
        }
    }

    #[test]
    fn age_is_checked_both_ways() {
        assert!(check_age(1000, 1300, 300, "h").is_ok());
        assert!(check_age(1300, 1000, 300, "h").is_ok());
        assert_eq!(
            check_age(1000, 1301, 300, "h"),
            Err(VerifyError::Stale { header: "h".into(), skew: 301, tolerance: 300 })
        );
        assert!(check_age(1302, 1000, 300, "h").is_err());
        assert!(check_age(i64::MIN, i64::MAX, 300, "h").is_err());
    }

    #[test]
    fn hex_and_base64() {
        assert_eq!(hex("00ffA1"), Some(vec![0, 255, 161]));
        for bad in ["0", "zz", "0g", " 00"] {
            assert_eq!(hex(bad), None, "{bad:?}");
        }
        assert_eq!(base64("aGk="), Some(b"hi".to_vec()));
        assert_eq!(base64("aGk"), None);
        assert_eq!(base64("aGl="), None, "non-canonical trailing bits");
    }

    #[test]
    fn headers_given_twice_are_refused() {
        let mut h = HeaderMap::new();
        h.append("x-sig", "a".parse().unwrap());
        assert_eq!(single_header(&h, "X-Sig"), Ok("a"));
        h.append("x-sig", "b".parse().unwrap());
        assert!(matches!(single_header(&h, "x-sig"), Err(VerifyError::Malformed { .. })));
        assert_eq!(single_header(&h, "x-other"), Err(VerifyError::MissingHeader("x-other".into())));
    }
}
