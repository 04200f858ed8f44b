//! Bytes → typed record, or a typed error naming the field and the problem.

use std::borrow::Cow;

use serde::Deserialize;

use super::records::{Location, RawTimestamp, wire};
use super::timestamp::{EventTime, format_naive, parse_timestamp};
use super::{BorrowedRecord, EmergencyRecord, GpsRecord, Record, Stream, TrafficRecord, VehicleRecord, WeatherRecord};

/// Values of `incident` the producer sends.
pub const INCIDENTS: [&str; 5] = ["Accident", "Fire", "Medical", "Police", "None"];
/// Values of `status` the producer sends.
pub const STATUSES: [&str; 2] = ["Active", "Resolved"];
/// Values of `weatherCondition` the producer sends.
pub const WEATHER_CONDITIONS: [&str; 4] = ["sunny", "rainy", "cloudy", "snowy"];

/// How to decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeOptions {
    /// Offset east of UTC, in seconds, of timestamps that carry no zone (0: UTC).
    pub naive_offset_secs: i32,
    /// Values larger than this are refused unread (the producer's are ~300 bytes).
    pub max_value_bytes: usize,
    /// Event times before this are implausible and refused (default [`NOT_BEFORE_DEFAULT`]).
    pub not_before: EventTime,
    /// Event times after this are implausible and refused. A record stamped far in the future
    /// would drag its partition's watermark forward and make everything after it late, so the
    /// source sets this to the wall clock plus `--max-future` as it reads (default: no bound).
    pub not_after: EventTime,
}

/// 2000-01-01T00:00:00Z: no telemetry of this system predates it.
pub const NOT_BEFORE_DEFAULT: EventTime = EventTime(946_684_800_000_000);

impl Default for DecodeOptions {
    fn default() -> Self {
        DecodeOptions { naive_offset_secs: 0, max_value_bytes: 1 << 20, not_before: NOT_BEFORE_DEFAULT, not_after: EventTime::MAX }
    }
}

/// The class of a decoding failure: a stable, machine-readable word for counting and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// The value is empty (a Kafka tombstone, or an empty payload).
    Empty,
    /// The value is larger than [`DecodeOptions::max_value_bytes`].
    Oversized,
    /// Not JSON: a syntax error, invalid UTF-8 or nesting too deep.
    Syntax,
    /// JSON that ends before it is complete.
    Truncated,
    /// Valid JSON, but not an object.
    NotObject,
    /// A required field is absent.
    MissingField,
    /// A field is present twice.
    DuplicateField,
    /// A field has the wrong JSON type (including `null`), or a number that does not fit.
    WrongType,
    /// The `timestamp` is not an ISO-8601 timestamp, or names an impossible date.
    BadTimestamp,
    /// The `timestamp` is a real date, but implausibly far in the past or the future (see
    /// [`DecodeOptions::not_before`] and [`DecodeOptions::not_after`]).
    ImplausibleTimestamp,
    /// A field has the right type but a value outside the contract (enum, UUID, range).
    BadValue,
}

impl ErrorClass {
    /// The class's stable name, as written to the dead-letter output.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Empty => "empty",
            ErrorClass::Oversized => "oversized",
            ErrorClass::Syntax => "syntax",
            ErrorClass::Truncated => "truncated",
            ErrorClass::NotObject => "not_object",
            ErrorClass::MissingField => "missing_field",
            ErrorClass::DuplicateField => "duplicate_field",
            ErrorClass::WrongType => "wrong_type",
            ErrorClass::BadTimestamp => "bad_timestamp",
            ErrorClass::ImplausibleTimestamp => "implausible_timestamp",
            ErrorClass::BadValue => "bad_value",
        }
    }
}

/// Why a value does not fit its stream's schema. Always definite: retrying cannot help, so
/// the record goes to the dead-letter output.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{stream}: {}{}: {detail}", class.as_str(), field.as_ref().map(|f| format!(" in field `{f}`")).unwrap_or_default())]
pub struct DecodeError {
    /// The stream the value was read from.
    pub stream: Stream,
    /// What kind of problem.
    pub class: ErrorClass,
    /// The field at fault, when there is one.
    pub field: Option<String>,
    /// A human-readable description.
    pub detail: String,
}

/// Decodes one Kafka value of `stream` into a record that owns its strings. Never panics.
pub fn decode(stream: Stream, bytes: &[u8], opts: &DecodeOptions) -> Result<Record, DecodeError> {
    decode_as(stream, bytes, opts)
}

/// Decodes one Kafka value of `stream` into a record whose strings borrow from `bytes` (those
/// without escapes; the others are unescaped into their own allocation). Accepts and refuses
/// exactly what [`decode`] does. Never panics.
pub fn decode_borrowed<'a>(stream: Stream, bytes: &'a [u8], opts: &DecodeOptions) -> Result<BorrowedRecord<'a>, DecodeError> {
    decode_as(stream, bytes, opts)
}

fn decode_as<'a, S: From<Cow<'a, str>>>(stream: Stream, bytes: &'a [u8], opts: &DecodeOptions) -> Result<Record<S>, DecodeError> {
    let err = |class, field: Option<&str>, detail: String| DecodeError { stream, class, field: field.map(str::to_owned), detail };
    if bytes.is_empty() {
        return Err(err(ErrorClass::Empty, None, "empty value".into()));
    }
    if bytes.len() > opts.max_value_bytes {
        return Err(err(ErrorClass::Oversized, None, format!("value of {} bytes exceeds the limit of {} bytes", bytes.len(), opts.max_value_bytes)));
    }
    // Serde would accept a JSON array positionally for a struct; the contract is an object.
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => {}
        None => return Err(err(ErrorClass::Empty, None, "value is only whitespace".into())),
        Some(_) if serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok() => {
            return Err(err(ErrorClass::NotObject, None, "value is JSON but not an object".into()));
        }
        Some(_) => {}
    }
    let v = Validator { stream, opts };
    match stream {
        Stream::Vehicle => {
            let w: wire::Vehicle = parse(stream, bytes)?;
            Ok(Record::Vehicle(VehicleRecord {
                id: v.uuid("id", w.id)?.into(),
                device_id: v.non_empty("deviceId", w.device_id)?.into(),
                timestamp: v.timestamp(&w.timestamp)?,
                location: v.location(w.location)?,
                speed: v.finite("speed", w.speed)?,
                direction: w.direction.into(),
                maker: w.maker.into(),
                model: w.model.into(),
                year: w.year,
                fueltype: w.fueltype.into(),
            }))
        }
        Stream::Gps => {
            let w: wire::Gps = parse(stream, bytes)?;
            Ok(Record::Gps(GpsRecord {
                id: v.uuid("id", w.id)?.into(),
                device_id: v.non_empty("deviceId", w.device_id)?.into(),
                timestamp: v.timestamp(&w.timestamp)?,
                speed: v.finite("speed", w.speed)?,
                direction: w.direction.into(),
                vehicle_type: w.vehicle_type.into(),
            }))
        }
        Stream::Traffic => {
            let w: wire::Traffic = parse(stream, bytes)?;
            Ok(Record::Traffic(TrafficRecord {
                id: v.uuid("id", w.id)?.into(),
                device_id: v.non_empty("deviceId", w.device_id)?.into(),
                camera_id: w.camera_id.into(),
                location: v.location(w.location)?,
                timestamp: v.timestamp(&w.timestamp)?,
                snapshot: w.snapshot.into(),
            }))
        }
        Stream::Weather => {
            let w: wire::Weather = parse(stream, bytes)?;
            Ok(Record::Weather(WeatherRecord {
                id: v.uuid("id", w.id)?.into(),
                device_id: v.non_empty("deviceId", w.device_id)?.into(),
                location: v.location(w.location)?,
                timestamp: v.timestamp(&w.timestamp)?,
                temperature: v.finite("temperature", w.temperature)?,
                weather_condition: v.one_of("weatherCondition", w.weather_condition, &WEATHER_CONDITIONS)?.into(),
                precipitation: v.finite("precipitation", w.precipitation)?,
                windspeed: v.finite("windspeed", w.windspeed)?,
                humidity: w.humidity,
                air_quality_index: v.finite("airQualityIndex", w.air_quality_index)?,
            }))
        }
        Stream::Emergency => {
            let w: wire::Emergency = parse(stream, bytes)?;
            Ok(Record::Emergency(EmergencyRecord {
                id: v.uuid("id", w.id)?.into(),
                device_id: v.non_empty("deviceId", w.device_id)?.into(),
                incident_id: v.uuid("incidentId", w.incident_id)?.into(),
                incident: v.one_of("incident", w.incident, &INCIDENTS)?.into(),
                timestamp: v.timestamp(&w.timestamp)?,
                location: v.location(w.location)?,
                status: v.one_of("status", w.status, &STATUSES)?.into(),
                description: w.description.into(),
            }))
        }
    }
}

/// Fast path with `serde_json`; on failure only, a second pass finds the field's path.
///
/// The payload's UTF-8 is checked once, whole, and then parsed as a `str`: parsing bytes,
/// `serde_json` checks every key and string on its own, ~20 calls per record (5 % of all
/// instructions in `benches/instructions.sh`). Invalid UTF-8 takes the bytes path, which
/// classifies it exactly as before.
fn parse<'a, T: Deserialize<'a>>(stream: Stream, bytes: &'a [u8]) -> Result<T, DecodeError> {
    let first = match std::str::from_utf8(bytes) {
        Ok(text) => serde_json::from_str::<T>(text),
        Err(_) => serde_json::from_slice::<T>(bytes),
    };
    let e = match first {
        Ok(v) => return Ok(v),
        Err(e) => e,
    };
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let path = match serde_path_to_error::deserialize::<_, T>(&mut de) {
        Err(pe) => Some(pe.path().to_string()).filter(|p| p != "." && !p.is_empty() && p != "?"),
        Ok(_) => None,
    };
    let message = e.to_string();
    let (class, field) = match e.classify() {
        serde_json::error::Category::Eof => (ErrorClass::Truncated, None),
        // A number too large for f64 is a syntax error to serde_json, a wrong value to us.
        serde_json::error::Category::Syntax if message.starts_with("number out of range") => (ErrorClass::WrongType, path.map(|p| top_field(&p))),
        serde_json::error::Category::Syntax | serde_json::error::Category::Io => (ErrorClass::Syntax, None),
        serde_json::error::Category::Data => {
            if let Some(f) = backticked(&message, "missing field `") {
                (ErrorClass::MissingField, Some(f))
            } else if let Some(f) = backticked(&message, "duplicate field `") {
                (ErrorClass::DuplicateField, Some(f))
            } else if message.starts_with("recursion limit") {
                (ErrorClass::Syntax, None)
            } else {
                (ErrorClass::WrongType, path.map(|p| top_field(&p)))
            }
        }
    };
    Err(DecodeError { stream, class, field, detail: message })
}

/// Path of a location element is e.g. `location[1]`: report the field itself.
fn top_field(path: &str) -> String {
    path.split(['[', '.']).next().unwrap_or_default().to_owned()
}

fn backticked(message: &str, prefix: &str) -> Option<String> {
    let rest = message.strip_prefix(prefix)?;
    rest.split('`').next().map(str::to_owned)
}

/// `0-9`, `a-f`, `A-F`.
const HEX_DIGIT: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = (b as u8).is_ascii_hexdigit();
        b += 1;
    }
    t
};

struct Validator<'a> {
    stream: Stream,
    opts: &'a DecodeOptions,
}

impl Validator<'_> {
    fn bad(&self, class: ErrorClass, field: &str, detail: String) -> DecodeError {
        DecodeError { stream: self.stream, class, field: Some(field.to_owned()), detail }
    }

    fn timestamp(&self, raw: &RawTimestamp<'_>) -> Result<EventTime, DecodeError> {
        let t = parse_timestamp(&raw.0, self.opts.naive_offset_secs).map_err(|e| self.bad(ErrorClass::BadTimestamp, "timestamp", e.to_string()))?;
        if t < self.opts.not_before {
            let detail = format!("{:?} is before {}Z, the earliest plausible event time", truncate(&raw.0), format_naive(self.opts.not_before));
            return Err(self.bad(ErrorClass::ImplausibleTimestamp, "timestamp", detail));
        }
        if t > self.opts.not_after {
            let detail = format!(
                "{:?} is after {}Z, the wall clock plus --max-future: it would drag the watermark",
                truncate(&raw.0),
                format_naive(self.opts.not_after)
            );
            return Err(self.bad(ErrorClass::ImplausibleTimestamp, "timestamp", detail));
        }
        Ok(t)
    }

    fn uuid<'a>(&self, field: &str, s: Cow<'a, str>) -> Result<Cow<'a, str>, DecodeError> {
        // Without a branch per digit: hex digits are random, so a branch on each mispredicted
        // often, and this check took ≈ 14 % of decoding when it had them.
        let b = s.as_bytes();
        let ok = b.len() == 36
            && b.iter().enumerate().fold(true, |ok, (i, &c)| ok & if matches!(i, 8 | 13 | 18 | 23) { c == b'-' } else { HEX_DIGIT[usize::from(c)] });
        if ok { Ok(s) } else { Err(self.bad(ErrorClass::BadValue, field, format!("not a UUID: {:?}", truncate(&s)))) }
    }

    fn non_empty<'a>(&self, field: &str, s: Cow<'a, str>) -> Result<Cow<'a, str>, DecodeError> {
        if s.is_empty() { Err(self.bad(ErrorClass::BadValue, field, "empty string".into())) } else { Ok(s) }
    }

    fn finite(&self, field: &str, x: f64) -> Result<f64, DecodeError> {
        if x.is_finite() { Ok(x) } else { Err(self.bad(ErrorClass::BadValue, field, format!("not a finite number: {x}"))) }
    }

    fn location(&self, l: Location) -> Result<Location, DecodeError> {
        if !(-90.0..=90.0).contains(&l.latitude) || !(-180.0..=180.0).contains(&l.longitude) {
            return Err(self.bad(ErrorClass::BadValue, "location", format!("[{}, {}] is not a [latitude, longitude] on Earth", l.latitude, l.longitude)));
        }
        Ok(l)
    }

    fn one_of<'a>(&self, field: &str, s: Cow<'a, str>, allowed: &[&str]) -> Result<Cow<'a, str>, DecodeError> {
        if allowed.contains(&s.as_ref()) { Ok(s) } else { Err(self.bad(ErrorClass::BadValue, field, format!("{:?} is not one of {allowed:?}", truncate(&s)))) }
    }
}

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(64) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests;
