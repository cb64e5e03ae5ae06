//! The `request` log line, written by hand when logs are JSON.
//!
//! It is the one line every request writes, so it skips `tracing`'s generic event path (a
//! visitor per field, `serde_json` escaping of every name, a timestamp formatted through
//! `core::fmt`): on a replay that path cost more CPU than routing, key extraction and the cache
//! together. The line is the same object `tracing_subscriber`'s JSON layer writes (timestamp,
//! level, message, the fields, target), appended to the same [`LogBuffer`], so lines stay in
//! order with the rest of the log. Level filters still apply: the caller asks `tracing` whether
//! the line is enabled before it builds one.

use super::LogBuffer;
use std::cell::RefCell;
use std::sync::OnceLock;

/// Set once, when the process's subscriber writes JSON to `LogBuffer`.
static JSON_LOG: OnceLock<LogBuffer> = OnceLock::new();

pub(super) fn install(buffer: LogBuffer) {
    let _ = JSON_LOG.set(buffer);
}

/// The fields of one request line; `None` fields are left out, as `tracing` leaves out an
/// unset `Option`.
pub struct RequestLine<'a> {
    pub route: &'a str,
    pub key: Option<&'a str>,
    pub outcome: &'a str,
    pub method: &'a str,
    pub status: u16,
    pub duration_us: u64,
    pub trace_id: Option<&'a str>,
    pub error: Option<&'a str>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch { line: Vec::with_capacity(512), second: i64::MIN, stamp: [0; 19] });
}

struct Scratch {
    line: Vec<u8>,
    /// The UNIX second `stamp` was formatted for: one date per second, not one per line.
    second: i64,
    stamp: [u8; 19],
}

/// Writes the line at INFO and returns true; false when logs are not JSON (the caller then
/// logs through `tracing`).
pub fn write_info(target: &'static str, line: &RequestLine<'_>) -> bool {
    let Some(buffer) = JSON_LOG.get() else { return false };
    SCRATCH.with(|scratch| {
        let Ok(mut scratch) = scratch.try_borrow_mut() else { return false };
        let scratch = &mut *scratch;
        let out = &mut scratch.line;
        out.clear();
        out.extend_from_slice(b"{\"timestamp\":\"");
        timestamp(&mut scratch.second, &mut scratch.stamp, out);
        out.extend_from_slice(b"\",\"level\":\"INFO\",\"message\":\"request\",\"route\":");
        token(out, line.route);
        if let Some(key) = line.key {
            out.extend_from_slice(b",\"key\":");
            string(out, key);
        }
        out.extend_from_slice(b",\"outcome\":");
        token(out, line.outcome);
        out.extend_from_slice(b",\"method\":");
        token(out, line.method);
        out.extend_from_slice(b",\"status\":");
        out.extend_from_slice(itoa::Buffer::new().format(line.status).as_bytes());
        out.extend_from_slice(b",\"duration_ms\":");
        out.extend_from_slice(itoa::Buffer::new().format(line.duration_us / 1000).as_bytes());
        out.push(b'.');
        let micros = line.duration_us % 1000;
        out.extend_from_slice(&[
            b'0' + (micros / 100) as u8,
            b'0' + (micros / 10 % 10) as u8,
            b'0' + (micros % 10) as u8,
        ]);
        if let Some(trace_id) = line.trace_id {
            out.extend_from_slice(b",\"trace_id\":");
            string(out, trace_id);
        }
        if let Some(error) = line.error {
            out.extend_from_slice(b",\"error\":");
            string(out, error);
        }
        out.extend_from_slice(b",\"target\":");
        token(out, target);
        out.extend_from_slice(b"}\n");
        buffer.append(out);
        true
    })
}

/// A JSON string of text that never needs an escape, written without looking: a route name (the
/// config allows letters, digits, `-`, `_` and `.`), an outcome, an HTTP method (a token), a
/// module path.
fn token(out: &mut Vec<u8>, s: &str) {
    debug_assert!(s.bytes().all(|b| b > 0x20 && b < 0x7f && b != b'"' && b != b'\\'), "{s:?}");
    out.push(b'"');
    out.extend_from_slice(s.as_bytes());
    out.push(b'"');
}

/// A JSON string of text that may need escapes (a key, an error, a trace id); text that needs
/// none, nearly every key, is copied as it is.
fn string(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        // Cannot fail: writing a `str` to a `Vec`.
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

/// RFC 3339 in UTC with microseconds, as `tracing_subscriber` writes it.
fn timestamp(second: &mut i64, stamp: &mut [u8; 19], out: &mut Vec<u8>) {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = now.as_secs() as i64;
    if secs != *second {
        *second = secs;
        *stamp = date_time(secs);
    }
    out.extend_from_slice(stamp);
    let micros = now.subsec_micros();
    out.push(b'.');
    let mut digits = [0u8; 6];
    let mut m = micros;
    for d in digits.iter_mut().rev() {
        *d = b'0' + (m % 10) as u8;
        m /= 10;
    }
    out.extend_from_slice(&digits);
    out.push(b'Z');
}

/// `YYYY-MM-DDTHH:MM:SS` of a UNIX second.
fn date_time(secs: i64) -> [u8; 19] {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = crate::version::instant::civil_from_days(days);
    let mut out = *b"0000-00-00T00:00:00";
    let mut put = |at: usize, width: usize, mut v: i64| {
        for i in (at..at + width).rev() {
            out[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, 4, year);
    put(5, 2, month);
    put(8, 2, day);
    put(11, 2, rem / 3600);
    put(14, 2, rem / 60 % 60);
    put(17, 2, rem % 60);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_match_a_calendar() {
        assert_eq!(&date_time(0), b"1970-01-01T00:00:00");
        assert_eq!(&date_time(951_782_400), b"2000-02-29T00:00:00");
        assert_eq!(&date_time(1_796_634_061), b"2026-12-07T09:01:01");
        assert_eq!(&date_time(4_107_542_399), b"2100-02-28T23:59:59");
    }

    #[test]
    fn strings_are_escaped_only_when_they_must_be() {
        let mut out = Vec::new();
        string(&mut out, "order-4711");
        string(&mut out, "a\"b\\c\n");
        assert_eq!(String::from_utf8(out).unwrap(), r#""order-4711""a\"b\\c\n""#);
    }
}
