//! The order of events for one entity, for the stale-event guard.
//!
//! A route with a stale guard names, per delivery, an entity (a Stripe customer, an order) and a
//! version; idemgate keeps the highest version completed per entity, and a delivery with a lower
//! one is stale. A version is an integer (a sequence number, Unix seconds) or an instant (an
//! RFC 3339 timestamp, an HTTP date). An integer and an instant never compare: a source whose
//! format changed is not called stale by accident.
//!
//! The stores keep a version as its encoding, a kind letter and fixed-width digits, so that they
//! can compare versions with a byte comparison inside one atomic statement or script, without
//! knowing what a version is.

pub(crate) mod instant;

use std::cmp::Ordering;
use std::fmt;

/// An event's order for its entity. Two versions compare only if they are of the same kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    value: Value,
    /// See [`Version::encoded`].
    encoded: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Value {
    Integer(u128),
    /// Nanoseconds since the Unix epoch.
    Instant(i128),
}

/// The digits after the kind letter: one width for both kinds, wide enough for the largest
/// integer and for every biased instant.
const DIGITS: usize = 40;
/// What a `u128` holds whole; longer integers are refused rather than rounded.
const MAX_INTEGER_DIGITS: usize = 38;
const INTEGER_LIMIT: u128 = 10u128.pow(MAX_INTEGER_DIGITS as u32);
/// Added to an instant before it is encoded, so that every instant a version can name (years
/// 0000 to 9999, about 6.2e19 ns before the epoch to 2.6e20 after) encodes without a sign.
const INSTANT_BIAS_NS: i128 = 10i128.pow(21);
const INTEGER: char = 'i';
const INSTANT: char = 't';

impl Version {
    /// From the text a key source yields (a JSON integer arrives as its decimal digits, a JSON
    /// string as its content, a header as its value). Accepted:
    ///  - integers: ASCII digits only, no sign; leading zeros allowed (compared by value), up to
    ///    38 significant digits;
    ///  - RFC 3339 timestamps (`2026-12-07T10:00:00Z`, `2026-12-07T10:00:00.123456+02:00`,
    ///    lowercase `t`/`z` allowed), compared as instants to the nanosecond;
    ///  - HTTP dates (IMF-fixdate, `Sun, 06 Nov 1994 08:49:37 GMT`), instants like the above.
    ///
    /// Anything else is `None`: the delivery is then not stale.
    pub fn parse(text: &str) -> Option<Version> {
        let value = match integer(text) {
            Some(n) => Value::Integer(n),
            None => Value::Instant(instant::rfc3339(text).or_else(|| instant::http_date(text))?),
        };
        Some(Version::of(value))
    }

    /// `Some(ordering)` when both are of the same kind (integer or instant), else `None`.
    pub fn compare(&self, other: &Version) -> Option<Ordering> {
        // Same kind: same letter and width, so byte order is the values' order.
        (self.kind() == other.kind()).then(|| self.encoded.cmp(&other.encoded))
    }

    /// The text the stores keep: the kind letter (`i` integer, `t` instant) and 40 digits (the
    /// integer, or the instant's nanoseconds since the epoch plus 10^21), so that two encodings
    /// of one kind compare as byte strings exactly as the versions compare.
    pub fn encoded(&self) -> &str {
        &self.encoded
    }

    /// An encoding read back from a store; `None` if it is not one.
    pub fn decode(stored: &str) -> Option<Version> {
        let (kind, digits) = stored.split_at_checked(1)?;
        if digits.len() != DIGITS || !digits.bytes().all(|d| d.is_ascii_digit()) {
            return None;
        }
        let n: u128 = digits.parse().ok()?;
        let value = match kind {
            "i" => Value::Integer(n).in_range()?,
            "t" => Value::Instant(i128::try_from(n).ok()? - INSTANT_BIAS_NS).in_range()?,
            _ => return None,
        };
        Some(Version::of(value))
    }

    /// An instant as Unix milliseconds; `None` for an integer.
    pub fn unix_ms(&self) -> Option<i64> {
        match self.value {
            Value::Instant(nanos) => i64::try_from(nanos.div_euclid(1_000_000)).ok(),
            Value::Integer(_) => None,
        }
    }

    fn of(value: Value) -> Version {
        let encoded = match value {
            Value::Integer(n) => format!("{INTEGER}{n:0DIGITS$}"),
            Value::Instant(nanos) => format!("{INSTANT}{:0DIGITS$}", nanos + INSTANT_BIAS_NS),
        };
        Version { value, encoded }
    }

    fn kind(&self) -> u8 {
        self.encoded.as_bytes()[0]
    }
}

impl Value {
    /// Whether a value read back is one that [`Version::parse`] could have made.
    fn in_range(self) -> Option<Value> {
        let fits = match self {
            Value::Integer(n) => n < INTEGER_LIMIT,
            Value::Instant(nanos) => nanos.abs() < INSTANT_BIAS_NS,
        };
        fits.then_some(self)
    }
}

/// Human-readable, for logs and admin output: the integer, or the instant in RFC 3339 UTC.
impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.value {
            Value::Integer(n) => write!(f, "{n}"),
            Value::Instant(nanos) => f.write_str(&instant::format(nanos)),
        }
    }
}

/// ASCII digits only (`str::parse` would take a `+`), at most 38 of them past the leading zeros.
fn integer(text: &str) -> Option<u128> {
    if text.is_empty() || !text.bytes().all(|d| d.is_ascii_digit()) {
        return None;
    }
    match text.trim_start_matches('0') {
        "" => Some(0),
        significant if significant.len() > MAX_INTEGER_DIGITS => None,
        significant => significant.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Ordering::{Equal, Greater, Less};

    fn v(text: &str) -> Version {
        Version::parse(text).unwrap_or_else(|| panic!("{text:?} should be a version"))
    }

    fn assert_order(table: &[(&str, &str, Ordering)]) {
        for &(a, b, expected) in table {
            assert_eq!(v(a).compare(&v(b)), Some(expected), "{a} vs {b}");
            assert_eq!(v(b).compare(&v(a)), Some(expected.reverse()), "{b} vs {a}");
        }
    }

    #[test]
    fn integers_with_leading_zeros_are_equal() {
        assert_eq!(v("007"), v("7"));
        assert_eq!(v("0000"), v("0"));
        assert_order(&[("007", "7", Equal), ("000", "0", Equal)]);
    }

    #[test]
    fn integers_compare_by_value_not_as_text() {
        let largest = "9".repeat(38);
        let smaller = format!("1{}", "0".repeat(37));
        assert_order(&[
            ("10", "9", Greater),
            ("100", "99", Greater),
            ("0", "1", Less),
            ("1796634061", "1796634062", Less),
            (&largest, &smaller, Greater),
            (&format!("000{largest}"), &largest, Equal),
        ]);
    }

    #[test]
    fn timestamps_compare_as_instants_whatever_their_offset() {
        assert_order(&[
            ("2026-01-01T01:00:00+01:00", "2026-01-01T00:00:00Z", Equal),
            ("2026-01-01T00:00:00-00:30", "2026-01-01T00:00:00Z", Greater),
            ("2025-12-31T23:00:00-02:00", "2026-01-01T00:30:00+00:00", Greater),
            ("2026-01-01T00:00:00.5Z", "2026-01-01T00:00:00.499999999Z", Greater),
            ("2026-01-01T00:00:00.5Z", "2026-01-01T00:00:00.500z", Equal),
            ("2026-01-01t00:00:00.000000001Z", "2026-01-01T00:00:00Z", Greater),
            ("2026-01-01T00:00:00.123456+02:00", "2025-12-31T22:00:00.123456Z", Equal),
            ("1969-12-31T23:59:59Z", "1970-01-01T00:00:00Z", Less),
            ("0000-01-01T00:00:00+23:59", "9999-12-31T23:59:59-23:59", Less),
        ]);
    }

    #[test]
    fn an_http_date_is_the_same_instant_as_rfc3339_says() {
        assert_eq!(v("Sun, 06 Nov 1994 08:49:37 GMT"), v("1994-11-06T08:49:37Z"));
        assert_order(&[
            ("Sun, 06 Nov 1994 08:49:37 GMT", "1994-11-06T09:49:37+01:00", Equal),
            ("Sun, 06 Nov 1994 08:49:38 GMT", "1994-11-06T08:49:37.999Z", Greater),
            ("Mon, 07 Dec 2026 09:01:01 GMT", "Sun, 06 Nov 1994 08:49:37 GMT", Greater),
        ]);
    }

    #[test]
    fn integers_and_instants_do_not_compare() {
        // Even the same moment: Unix seconds and a timestamp are different kinds.
        let (seconds, timestamp) = (v("1796634061"), v("2026-12-07T09:01:01Z"));
        assert_eq!(seconds.compare(&timestamp), None);
        assert_eq!(timestamp.compare(&seconds), None);
        assert_eq!(v("0").compare(&v("Thu, 01 Jan 1970 00:00:00 GMT")), None);
    }

    #[test]
    fn anything_else_is_no_version() {
        let too_long = format!("1{}", "0".repeat(38));
        for text in [
            "",
            "-1",
            "+1",
            "1.5",
            "1e3",
            "0x10",
            " 1",
            "1 ",
            "١٢",
            "abc",
            "true",
            "2026-12-07",
            "2026-12-07T10:00:00",
            "Sun, 06 Nov 1994 08:49:37",
            &too_long,
        ] {
            assert_eq!(Version::parse(text), None, "{text:?}");
        }
    }

    #[test]
    fn encodings_round_trip() {
        let largest = "9".repeat(38);
        for text in [
            "0",
            "42",
            &largest,
            "1970-01-01T00:00:00Z",
            "0000-01-01T00:00:00+23:59",
            "9999-12-31T23:59:60.999999999-23:59",
            "Sun, 06 Nov 1994 08:49:37 GMT",
        ] {
            let version = v(text);
            assert_eq!(version.encoded().len(), 1 + DIGITS, "{text}");
            assert_eq!(Version::decode(version.encoded()), Some(version.clone()), "{text}");
        }
        assert_eq!(v("42").encoded(), format!("i{}42", "0".repeat(38)));
        assert_eq!(v("1970-01-01T00:00:00Z").encoded(), format!("t{}1{}", "0".repeat(18), "0".repeat(21)));
    }

    #[test]
    fn decode_refuses_what_no_version_encodes_to() {
        let zeros = "0".repeat(DIGITS);
        for stored in [
            String::new(),
            "i".into(),
            "i42".into(),
            format!("x{zeros}"),
            format!("I{zeros}"),
            format!("i{zeros}0"),
            format!("i0{}", "9".repeat(DIGITS - 1)),
            format!("t{}", "9".repeat(DIGITS)),
            format!("t{zeros}"),
            format!("i{}a", "0".repeat(DIGITS - 1)),
            format!("i+{}", "0".repeat(DIGITS - 1)),
        ] {
            assert_eq!(Version::decode(&stored), None, "{stored:?}");
        }
    }

    #[test]
    fn display_is_the_integer_or_the_instant_in_utc() {
        assert_eq!(v("007").to_string(), "7");
        assert_eq!(v("2026-12-07T11:01:01.123456+02:00").to_string(), "2026-12-07T09:01:01.123456Z");
        assert_eq!(v("Sun, 06 Nov 1994 08:49:37 GMT").to_string(), "1994-11-06T08:49:37Z");
    }

    /// A small seeded generator (Knuth's MMIX LCG), so a failure repeats.
    struct Lcg(u64);

    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            self.0
        }

        fn below(&mut self, limit: u128) -> u128 {
            ((u128::from(self.next()) << 64) | u128::from(self.next())) % limit
        }

        /// Any magnitude, from one digit to 38, and sometimes a close neighbour of `near`.
        fn integer(&mut self, near: u128) -> u128 {
            match self.next() % 4 {
                0 => near.saturating_add(self.below(3)).min(INTEGER_LIMIT - 1),
                _ => {
                    let digits = 1 + (self.next() % 38) as u32;
                    self.below(10u128.pow(digits))
                }
            }
        }

        fn instant(&mut self, near: i128) -> i128 {
            const FIRST: i128 = -62_167_219_200 * 1_000_000_000; // 0000-01-01T00:00:00Z
            const LAST: i128 = 253_402_300_799 * 1_000_000_000; // 9999-12-31T23:59:59Z
            match self.next() % 4 {
                0 => (near + self.below(3) as i128 - 1).clamp(FIRST, LAST),
                _ => FIRST + self.below((LAST - FIRST) as u128) as i128,
            }
        }
    }

    #[test]
    fn byte_order_of_encodings_is_version_order() {
        let mut rng = Lcg(0x1de6_9a7e);
        for _ in 0..300 {
            let a = rng.integer(0);
            let b = rng.integer(a);
            let (va, vb) = (Version::of(Value::Integer(a)), Version::of(Value::Integer(b)));
            assert_eq!(va.encoded().cmp(vb.encoded()), a.cmp(&b), "{a} vs {b}");
            assert_eq!(va.compare(&vb), Some(a.cmp(&b)), "{a} vs {b}");
            assert_eq!(Version::parse(&a.to_string()), Some(va));
        }
        for _ in 0..300 {
            let a = rng.instant(0);
            let b = rng.instant(a);
            let (va, vb) = (Version::of(Value::Instant(a)), Version::of(Value::Instant(b)));
            assert_eq!(va.encoded().cmp(vb.encoded()), a.cmp(&b), "{a} vs {b}");
            assert_eq!(va.compare(&vb), Some(a.cmp(&b)), "{a} vs {b}");
            // What Display writes, parse reads back as the same instant.
            assert_eq!(Version::parse(&va.to_string()), Some(va), "{a}");
        }
    }
}
