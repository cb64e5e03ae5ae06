//! Instants as versions: RFC 3339 timestamps and HTTP dates, read into nanoseconds since the Unix
//! epoch and written back as RFC 3339 in UTC, on the proleptic Gregorian calendar (Howard
//! Hinnant's civil-date algorithms).

const NANOS_PER_SEC: i128 = 1_000_000_000;
const SECS_PER_DAY: i64 = 86_400;
/// Day 0 (1970-01-01) was a Thursday; index 0 is Sunday.
const WEEKDAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

/// A date and a time of day as written, before any offset is applied.
struct Civil {
    year: i64,
    month: i64,
    day: i64,
    hour: i64,
    minute: i64,
    second: i64,
}

impl Civil {
    /// Days since 1970-01-01, if the date exists.
    fn days(&self) -> Option<i64> {
        let valid = (1..=12).contains(&self.month) && (1..=days_in_month(self.year, self.month)).contains(&self.day);
        valid.then(|| days_from_civil(self.year, self.month, self.day))
    }

    /// Seconds since the epoch, if date and time exist. Second 60 (a leap second) counts as the
    /// next minute's first, as Unix time has no second of its own for it.
    fn seconds(&self) -> Option<i64> {
        let valid = self.hour <= 23 && self.minute <= 59 && self.second <= 60;
        let time = self.hour * 3600 + self.minute * 60 + self.second;
        valid.then_some(self.days()? * SECS_PER_DAY + time)
    }
}

/// `2026-12-07T10:00:00Z`, `2026-12-07T10:00:00.123456+02:00`; `t` and `z` may be lowercase.
/// Fractions finer than a nanosecond are cut off.
pub(super) fn rfc3339(text: &str) -> Option<i128> {
    let b = text.as_bytes();
    let separators = b.len() >= 20 && b[4] == b'-' && b[7] == b'-' && b[13] == b':' && b[16] == b':';
    if !separators || !matches!(b[10], b'T' | b't') {
        return None;
    }
    let civil = Civil {
        year: number(&b[0..4])?,
        month: number(&b[5..7])?,
        day: number(&b[8..10])?,
        hour: number(&b[11..13])?,
        minute: number(&b[14..16])?,
        second: number(&b[17..19])?,
    };
    let (nanos, zone) = fraction(&b[19..])?;
    let local = civil.seconds()?;
    Some(i128::from(local - utc_offset(zone)?) * NANOS_PER_SEC + nanos)
}

/// IMF-fixdate, the one form HTTP senders must use: `Sun, 06 Nov 1994 08:49:37 GMT`. Names are
/// case-sensitive, and the weekday must be the date's.
pub(super) fn http_date(text: &str) -> Option<i128> {
    let b = text.as_bytes();
    let separators = b.len() == 29
        && &b[3..5] == b", "
        && [b[7], b[11], b[16]] == [b' '; 3]
        && [b[19], b[22]] == [b':'; 2]
        && &b[25..] == b" GMT";
    if !separators {
        return None;
    }
    let weekday = WEEKDAYS.iter().position(|name| name.as_bytes() == &b[0..3])?;
    let month = MONTHS.iter().position(|name| name.as_bytes() == &b[8..11])?;
    let civil = Civil {
        year: number(&b[12..16])?,
        month: month as i64 + 1,
        day: number(&b[5..7])?,
        hour: number(&b[17..19])?,
        minute: number(&b[20..22])?,
        second: number(&b[23..25])?,
    };
    if weekday_of(civil.days()?) != weekday {
        return None;
    }
    Some(i128::from(civil.seconds()?) * NANOS_PER_SEC)
}

/// RFC 3339 in UTC, with as many fraction digits as the instant needs (none for a whole second).
pub(super) fn format(nanos: i128) -> String {
    let secs = nanos.div_euclid(NANOS_PER_SEC) as i64;
    let fraction = nanos.rem_euclid(NANOS_PER_SEC);
    let (days, time) = (secs.div_euclid(SECS_PER_DAY), secs.rem_euclid(SECS_PER_DAY));
    let (year, month, day) = civil_from_days(days);
    let mut out = format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}", time / 3600, time / 60 % 60, time % 60);
    if fraction != 0 {
        let digits = format!("{fraction:09}");
        out.push('.');
        out.push_str(digits.trim_end_matches('0'));
    }
    out.push('Z');
    out
}

/// A fixed-width field of ASCII digits.
fn number(digits: &[u8]) -> Option<i64> {
    digits.iter().try_fold(0, |n: i64, &d| d.is_ascii_digit().then(|| n * 10 + i64::from(d - b'0')))
}

/// The optional `.digits` after the seconds, as nanoseconds, and what follows it.
fn fraction(rest: &[u8]) -> Option<(i128, &[u8])> {
    let Some(after_dot) = rest.strip_prefix(b".") else { return Some((0, rest)) };
    let len = after_dot.iter().take_while(|d| d.is_ascii_digit()).count();
    if len == 0 {
        return None;
    }
    let (digits, rest) = after_dot.split_at(len);
    let nanos = (0..9).fold(0, |n, i| n * 10 + digits.get(i).map_or(0, |d| i128::from(d - b'0')));
    Some((nanos, rest))
}

/// `Z`, or `+HH:MM` / `-HH:MM`, in seconds east of UTC.
fn utc_offset(zone: &[u8]) -> Option<i64> {
    if matches!(zone, b"Z" | b"z") {
        return Some(0);
    }
    let [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] = *zone else { return None };
    let (hours, minutes) = (number(&[h1, h2])?, number(&[m1, m2])?);
    if hours > 23 || minutes > 59 {
        return None;
    }
    let offset = hours * 3600 + minutes * 60;
    Some(if sign == b'-' { -offset } else { offset })
}

fn is_leap_year(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap_year(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

fn weekday_of(days: i64) -> usize {
    (days + 4).rem_euclid(7) as usize
}

fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year - era * 400;
    let doy = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Year, month and day of a day number since 1970-01-01 (Howard Hinnant's algorithm); also the log
/// line's timestamp ([`crate::telemetry`]).
pub(crate) fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_and_dates_are_inverse_across_the_years_versions_can_name() {
        // 0000-01-01 to 10000-12-31: every instant parse can produce, offsets included.
        for days in days_from_civil(0, 1, 1)..=days_from_civil(10_000, 12, 31) {
            let (year, month, day) = civil_from_days(days);
            assert_eq!(days_from_civil(year, month, day), days);
            assert!((1..=days_in_month(year, month)).contains(&day), "{year}-{month}-{day}");
        }
    }

    #[test]
    fn known_instants() {
        let table = [
            ("1970-01-01T00:00:00Z", 0),
            ("1969-12-31T23:59:59.999999999Z", -1),
            ("2000-02-29T00:00:00Z", 951_782_400 * NANOS_PER_SEC),
            ("2026-12-07T09:01:01Z", 1_796_634_061 * NANOS_PER_SEC),
            ("2026-12-07T11:01:01+02:00", 1_796_634_061 * NANOS_PER_SEC),
            ("2026-12-07T09:01:01.5Z", 1_796_634_061 * NANOS_PER_SEC + 500_000_000),
            ("2026-12-07t09:01:01.0000000019z", 1_796_634_061 * NANOS_PER_SEC + 1),
            ("2016-12-31T23:59:60Z", 1_483_228_800 * NANOS_PER_SEC),
        ];
        for (text, nanos) in table {
            assert_eq!(rfc3339(text), Some(nanos), "{text}");
        }
        assert_eq!(http_date("Sun, 06 Nov 1994 08:49:37 GMT"), Some(784_111_777 * NANOS_PER_SEC));
        assert_eq!(http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
    }

    #[test]
    fn malformed_or_impossible_instants_are_refused() {
        for text in [
            "2026-12-07T10:00:00",
            "2026-12-07 10:00:00Z",
            "2026-12-07T10:00:00.Z",
            "2026-12-07T10:00:00+0200",
            "2026-12-07T10:00:00+24:00",
            "2026-12-07T24:00:00Z",
            "2026-13-07T10:00:00Z",
            "2025-02-29T10:00:00Z",
            "1900-02-29T10:00:00Z",
            "2026-12-07T10:00:00ZZ",
            "+2026-12-07T10:00:00Z",
            "2026-12-07T10:60:00Z",
        ] {
            assert_eq!(rfc3339(text), None, "{text}");
        }
        for text in [
            "Mon, 06 Nov 1994 08:49:37 GMT",
            "sun, 06 Nov 1994 08:49:37 GMT",
            "Sun, 06 nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
            "Sun, 31 Nov 1994 08:49:37 GMT",
        ] {
            assert_eq!(http_date(text), None, "{text}");
        }
    }

    #[test]
    fn format_writes_utc_with_the_fraction_it_needs() {
        assert_eq!(format(0), "1970-01-01T00:00:00Z");
        assert_eq!(format(-1), "1969-12-31T23:59:59.999999999Z");
        assert_eq!(format(1_796_634_061 * NANOS_PER_SEC + 123_456_000), "2026-12-07T09:01:01.123456Z");
    }
}
