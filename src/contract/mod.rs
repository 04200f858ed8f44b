//! The data contract: the five streams exactly as the original producer sends them.
//!
//! In: the raw bytes of a Kafka value and the stream it came from.
//! Out: a typed [`Record`], or a [`DecodeError`] naming the field and the problem.
//! Guarantee: [`decode`] never panics, whatever the bytes; unknown extra fields are ignored;
//! every quirk of the original producer (naive timestamps, `[lat, lon]` arrays, an integer
//! where a float is expected) is accepted, and everything else that does not fit is refused
//! with a reason that a person can act on.

mod columns;
mod decode;
mod records;
pub mod schema;
pub mod timestamp;

pub use decode::{DecodeError, DecodeOptions, ErrorClass, NOT_BEFORE_DEFAULT, decode, decode_borrowed};
pub use records::{EmergencyRecord, GpsRecord, Location, TrafficRecord, VehicleRecord, WeatherRecord};
pub use timestamp::EventTime;

use std::fmt;
use std::str::FromStr;

/// One of the five telemetry streams. Its Kafka topic is the configured prefix + [`Stream::name`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    /// `vehicle_data`
    Vehicle,
    /// `gps_data`
    Gps,
    /// `traffic_data`
    Traffic,
    /// `weather_data`
    Weather,
    /// `emergency_data`
    Emergency,
}

impl Stream {
    /// All streams, in the order the producer writes them each step.
    pub const ALL: [Stream; 5] = [Stream::Vehicle, Stream::Gps, Stream::Traffic, Stream::Weather, Stream::Emergency];

    /// The stream's name, which is also its topic name without prefix and its output folder.
    pub fn name(self) -> &'static str {
        match self {
            Stream::Vehicle => "vehicle_data",
            Stream::Gps => "gps_data",
            Stream::Traffic => "traffic_data",
            Stream::Weather => "weather_data",
            Stream::Emergency => "emergency_data",
        }
    }

    /// A dense index 0..5, for per-stream arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The stream whose topic is `topic` under `prefix`, if any.
    pub fn from_topic(topic: &str, prefix: &str) -> Option<Stream> {
        topic.strip_prefix(prefix).and_then(|name| name.parse().ok())
    }
}

impl fmt::Display for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Stream {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Stream::ALL
            .into_iter()
            .find(|st| st.name() == s)
            .ok_or_else(|| format!("unknown stream {s:?} (expected one of vehicle_data, gps_data, traffic_data, weather_data, emergency_data)"))
    }
}

/// A decoded record of any stream, owning its strings (`S = String`, the default) or borrowing
/// them from the value it was decoded from (`S = Cow<str>`, see [`decode_borrowed`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Record<S = String> {
    /// From `vehicle_data`.
    Vehicle(VehicleRecord<S>),
    /// From `gps_data`.
    Gps(GpsRecord<S>),
    /// From `traffic_data`.
    Traffic(TrafficRecord<S>),
    /// From `weather_data`.
    Weather(WeatherRecord<S>),
    /// From `emergency_data`.
    Emergency(EmergencyRecord<S>),
}

/// A record whose strings borrow from the Kafka value it was decoded from.
pub type BorrowedRecord<'a> = Record<std::borrow::Cow<'a, str>>;

impl<S> Record<S> {
    /// The record's stream.
    pub fn stream(&self) -> Stream {
        match self {
            Record::Vehicle(_) => Stream::Vehicle,
            Record::Gps(_) => Stream::Gps,
            Record::Traffic(_) => Stream::Traffic,
            Record::Weather(_) => Stream::Weather,
            Record::Emergency(_) => Stream::Emergency,
        }
    }

    /// Event time, microseconds since the epoch (UTC).
    pub fn timestamp(&self) -> EventTime {
        match self {
            Record::Vehicle(r) => r.timestamp,
            Record::Gps(r) => r.timestamp,
            Record::Traffic(r) => r.timestamp,
            Record::Weather(r) => r.timestamp,
            Record::Emergency(r) => r.timestamp,
        }
    }
}

impl<S: AsRef<str>> Record<S> {
    /// The record's `deviceId`.
    pub fn device_id(&self) -> &str {
        match self {
            Record::Vehicle(r) => r.device_id.as_ref(),
            Record::Gps(r) => r.device_id.as_ref(),
            Record::Traffic(r) => r.device_id.as_ref(),
            Record::Weather(r) => r.device_id.as_ref(),
            Record::Emergency(r) => r.device_id.as_ref(),
        }
    }

    /// The record's `id`.
    pub fn id(&self) -> &str {
        match self {
            Record::Vehicle(r) => r.id.as_ref(),
            Record::Gps(r) => r.id.as_ref(),
            Record::Traffic(r) => r.id.as_ref(),
            Record::Weather(r) => r.id.as_ref(),
            Record::Emergency(r) => r.id.as_ref(),
        }
    }
}

impl<S: serde::Serialize> Record<S> {
    /// The JSON the original producer would have sent for this record.
    pub fn to_json(&self) -> Vec<u8> {
        let out = match self {
            Record::Vehicle(r) => serde_json::to_vec(r),
            Record::Gps(r) => serde_json::to_vec(r),
            Record::Traffic(r) => serde_json::to_vec(r),
            Record::Weather(r) => serde_json::to_vec(r),
            Record::Emergency(r) => serde_json::to_vec(r),
        };
        out.expect("records of plain strings and finite numbers always serialise")
    }
}
