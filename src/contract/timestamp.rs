//! Event timestamps as the original producer writes them.
//!
//! The Python producer calls `datetime.isoformat()` on a naive `datetime`, so a timestamp
//! arrives as `2025-03-01T10:15:42.123456` — no zone, microseconds, and no fraction at all
//! when the microsecond happens to be zero. We also accept a `Z` or `±hh:mm` suffix and a
//! space instead of `T`. Parsing is hand-written: it is on the hot path, it must never
//! panic whatever the bytes, and it must reject impossible dates (February 30th) rather than
//! normalise them.
//!
//! Times are carried as [`EventTime`]: microseconds since the Unix epoch in UTC, which is
//! exactly Arrow's `Timestamp(Microsecond, "UTC")`.

use std::fmt;

/// An instant of event time: microseconds since 1970-01-01T00:00:00Z.
///
/// A newtype, not a bare `i64`, so that an instant cannot be mixed up with a duration, an
/// epoch or an offset: durations stay plain microseconds (`i64`, named `…_us`, or
/// [`MICROS_PER_SEC`] and [`HOUR`]); an instant plus a duration is an instant, and two instants
/// differ by a duration. Written to manifests as a plain number, and to Parquet as Arrow's
/// `Timestamp(Microsecond, "UTC")`, which is the same number.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct EventTime(pub i64);

impl EventTime {
    /// 1970-01-01T00:00:00Z.
    pub const UNIX_EPOCH: EventTime = EventTime(0);
    /// The latest instant.
    pub const MAX: EventTime = EventTime(i64::MAX);

    /// Microseconds since the Unix epoch (Arrow's value of the instant).
    pub fn micros(self) -> i64 {
        self.0
    }

    /// The start of the `unit`-long interval (in microseconds, > 0) that holds this instant,
    /// counting from the Unix epoch: the hour of an instant is `t.floor(HOUR)`.
    pub fn floor(self, unit: i64) -> EventTime {
        EventTime(self.0.div_euclid(unit) * unit)
    }

    /// `us` microseconds earlier, saturating at the earliest instant.
    pub fn saturating_sub(self, us: i64) -> EventTime {
        EventTime(self.0.saturating_sub(us))
    }
}

impl std::ops::Add<i64> for EventTime {
    type Output = EventTime;
    fn add(self, us: i64) -> EventTime {
        EventTime(self.0 + us)
    }
}

impl std::ops::AddAssign<i64> for EventTime {
    fn add_assign(&mut self, us: i64) {
        self.0 += us;
    }
}

impl std::ops::Sub<i64> for EventTime {
    type Output = EventTime;
    fn sub(self, us: i64) -> EventTime {
        EventTime(self.0 - us)
    }
}

/// Two instants differ by a duration in microseconds.
impl std::ops::Sub<EventTime> for EventTime {
    type Output = i64;
    fn sub(self, earlier: EventTime) -> i64 {
        self.0 - earlier.0
    }
}

/// Microseconds in one second.
pub const MICROS_PER_SEC: i64 = 1_000_000;

/// Microseconds per hour.
pub const HOUR: i64 = 3600 * MICROS_PER_SEC;

/// Why a timestamp string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimestampError {
    /// The text does not have the `YYYY-MM-DDTHH:MM:SS[.ffffff][Z|±hh:mm]` shape.
    #[error("not an ISO-8601 timestamp (expected YYYY-MM-DDTHH:MM:SS[.ffffff][Z|±hh:mm]): {0:?}")]
    Shape(String),
    /// The shape is right but the date or time does not exist.
    #[error("impossible date or time: {0:?}")]
    Impossible(String),
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = month as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date `(year, month, day)` of a day count since 1970-01-01.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(year) => 29,
        2 => 28,
        _ => 0,
    }
}

fn digits(b: &[u8]) -> Option<u32> {
    if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(b.iter().fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0')))
}

/// Parses an ISO-8601 timestamp. A timestamp without a zone is taken to be at
/// `naive_offset_secs` east of UTC (0 = UTC, the default of the original pipeline).
pub fn parse_timestamp(text: &str, naive_offset_secs: i32) -> Result<EventTime, TimestampError> {
    let shape = || TimestampError::Shape(text.to_owned());
    let impossible = || TimestampError::Impossible(text.to_owned());
    let b = text.as_bytes();
    if b.len() < 19 || b.len() > 40 {
        return Err(shape());
    }
    if b[4] != b'-' || b[7] != b'-' || !(b[10] == b'T' || b[10] == b' ') || b[13] != b':' || b[16] != b':' {
        return Err(shape());
    }
    let year = digits(&b[0..4]).ok_or_else(shape)? as i64;
    let month = digits(&b[5..7]).ok_or_else(shape)?;
    let day = digits(&b[8..10]).ok_or_else(shape)?;
    let hour = digits(&b[11..13]).ok_or_else(shape)?;
    let minute = digits(&b[14..16]).ok_or_else(shape)?;
    let second = digits(&b[17..19]).ok_or_else(shape)?;
    let mut rest = &b[19..];
    let mut micros: i64 = 0;
    if let Some((&b'.', frac_and_zone)) = rest.split_first() {
        let n = frac_and_zone.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 || n > 9 {
            return Err(shape());
        }
        let frac = &frac_and_zone[..n];
        // Keep microsecond precision; extra digits (nanoseconds) are truncated.
        for i in 0..6 {
            micros = micros * 10 + frac.get(i).map_or(0, |d| i64::from(d - b'0'));
        }
        rest = &frac_and_zone[n..];
    }
    let offset_secs: i64 = match rest {
        [] => i64::from(naive_offset_secs),
        [b'Z'] | [b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let h = digits(&[*h1, *h2]).ok_or_else(shape)?;
            let m = digits(&[*m1, *m2]).ok_or_else(shape)?;
            if h > 23 || m > 59 {
                return Err(impossible());
            }
            let secs = i64::from(h * 3600 + m * 60);
            if *sign == b'-' { -secs } else { secs }
        }
        _ => return Err(shape()),
    };
    if year == 0 || !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return Err(impossible());
    }
    if hour > 23 || minute > 59 || second > 59 {
        return Err(impossible());
    }
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + i64::from(hour * 3600 + minute * 60 + second) - offset_secs;
    Ok(EventTime(secs * MICROS_PER_SEC + micros))
}

/// Formats micros as the original producer would: naive ISO-8601, microseconds, and no
/// fraction when the microsecond is zero (Python's `datetime.isoformat()`).
pub fn format_naive(micros: EventTime) -> NaiveIso {
    NaiveIso(micros)
}

/// Display adapter returned by [`format_naive`].
#[derive(Debug, Clone, Copy)]
pub struct NaiveIso(pub EventTime);

impl fmt::Display for NaiveIso {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0.0.div_euclid(MICROS_PER_SEC);
        let sub = self.0.0.rem_euclid(MICROS_PER_SEC);
        let days = secs.div_euclid(86_400);
        let sod = secs.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        write!(f, "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}", sod / 3600, sod / 60 % 60, sod % 60)?;
        if sub != 0 {
            write!(f, ".{sub:06}")?;
        }
        Ok(())
    }
}

/// `(YYYY-MM-DD, HH)` of an instant in UTC: the Hive partition of the output layout.
pub fn date_hour(t: EventTime) -> (String, u32) {
    let secs = t.0.div_euclid(MICROS_PER_SEC);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    (format!("{y:04}-{m:02}-{d:02}"), (secs.rem_euclid(86_400) / 3600) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_original_shape() {
        let t = parse_timestamp("2025-03-01T10:15:42.123456", 0).unwrap();
        assert_eq!(t, EventTime(1_740_824_142_123_456));
        assert_eq!(format_naive(t).to_string(), "2025-03-01T10:15:42.123456");
    }

    #[test]
    fn accepts_no_fraction_zones_and_space() {
        let base = parse_timestamp("2025-03-01T10:15:42", 0).unwrap();
        assert_eq!(base, EventTime(1_740_824_142_000_000));
        assert_eq!(parse_timestamp("2025-03-01T10:15:42Z", 0).unwrap(), base);
        assert_eq!(parse_timestamp("2025-03-01 10:15:42", 0).unwrap(), base);
        assert_eq!(parse_timestamp("2025-03-01T11:15:42+01:00", 0).unwrap(), base);
        assert_eq!(parse_timestamp("2025-03-01T09:15:42-01:00", 0).unwrap(), base);
        assert_eq!(parse_timestamp("2025-03-01T10:15:42.5", 0).unwrap(), base + 500_000);
        assert_eq!(parse_timestamp("2025-03-01T10:15:42.123456789", 0).unwrap(), base + 123_456);
        // A naive timestamp from a producer whose clock is at UTC+2.
        assert_eq!(parse_timestamp("2025-03-01T12:15:42", 7200).unwrap(), base);
        assert_eq!(format_naive(base).to_string(), "2025-03-01T10:15:42");
    }

    #[test]
    fn rejects_bad_shapes_and_impossible_dates() {
        for bad in [
            "",
            "2025-03-01",
            "2025-03-01T10:15",
            "2025/03/01T10:15:42",
            "2025-03-01T10:15:42.",
            "x025-03-01T10:15:42",
            "2025-03-01T10:15:42+0100",
            "2025-03-01T10:15:42 UTC",
            "2025-03-01T10:15:42.1234567890",
        ] {
            assert!(matches!(parse_timestamp(bad, 0), Err(TimestampError::Shape(_))), "{bad}");
        }
        for bad in [
            "2025-02-29T00:00:00",
            "2025-13-01T00:00:00",
            "2025-04-31T00:00:00",
            "2025-01-01T24:00:00",
            "2025-01-01T23:60:00",
            "0000-01-01T00:00:00",
            "2025-01-01T00:00:00+24:00",
        ] {
            assert!(matches!(parse_timestamp(bad, 0), Err(TimestampError::Impossible(_))), "{bad}");
        }
        assert!(parse_timestamp("2024-02-29T00:00:00", 0).is_ok());
        // Multi-byte UTF-8 must not panic on slicing.
        assert!(parse_timestamp("2025-03-01T10:15:4é", 0).is_err());
        assert!(parse_timestamp("éééééééééééééééééééé", 0).is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(20_000))]

        /// chrono's parser is the reference. On the producer's shape with any date and time (valid
        /// or not: month 0–13, day 0–32, hour 0–24, minute 0–60), a fraction of 0–9 digits and no
        /// zone, `Z` or any `±hh:mm` (hh 0–24, mm 0–60), both accept or both refuse, and agree on
        /// the instant (a naive time taken at `naive_offset` east of UTC).
        #[test]
        fn agrees_with_chrono(
            y in 1i64..=9999, mo in 0u32..=13, d in 0u32..=32, h in 0u32..=24, mi in 0u32..=60, s in 0u32..=59,
            frac in proptest::option::of(proptest::collection::vec(0u8..=9, 1..=9)),
            zone in proptest::option::of((proptest::bool::ANY, proptest::bool::ANY, 0u32..=24, 0u32..=60)),
            naive_offset in -43_200i32..=50_400,
        ) {
            let frac = frac.map_or(String::new(), |f| format!(".{}", f.iter().map(|d| char::from(b'0' + d)).collect::<String>()));
            let zone_text = match zone {
                None => String::new(),
                Some((true, ..)) => "Z".to_owned(),
                Some((false, minus, zh, zm)) => format!("{}{zh:02}:{zm:02}", if minus { '-' } else { '+' }),
            };
            let text = format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}{frac}{zone_text}");
            let reference = match zone {
                None => chrono::NaiveDateTime::parse_from_str(&text, "%Y-%m-%dT%H:%M:%S%.f")
                    .ok()
                    .map(|t| t.and_utc().timestamp_micros() - i64::from(naive_offset) * MICROS_PER_SEC),
                Some(_) => chrono::DateTime::parse_from_rfc3339(&text).ok().map(|t| t.timestamp_micros()),
            };
            let ours = parse_timestamp(&text, naive_offset).ok().map(EventTime::micros);
            proptest::prop_assert_eq!(ours, reference, "{}", text);
        }

        /// Whatever the bytes, the parser returns (never panics), and what it accepts it prints
        /// back, as the producer would, to the same instant.
        #[test]
        fn never_panics_and_round_trips(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..48)) {
            let text = String::from_utf8_lossy(&bytes);
            if let Ok(t) = parse_timestamp(&text, 0) {
                proptest::prop_assert_eq!(parse_timestamp(&format_naive(t).to_string(), 0), Ok(t));
            }
        }
    }

    #[test]
    fn civil_round_trip() {
        for days in [-719_162, -1, 0, 1, 10_957, 20_000, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(date_hour(EventTime(1_740_824_142_123_456)), ("2025-03-01".to_owned(), 10));
        assert_eq!(format_naive(EventTime(-1)).to_string(), "1969-12-31T23:59:59.999999");
    }
}
