//! The five record types, field for field as the original producer sends them.
//!
//! Field names on the wire are the producer's (`deviceId`, `fueltype`, `windspeed`, …);
//! Rust names are snake_case. Serialising a record gives exactly the original JSON shape
//! (same field order, `location` as a `[latitude, longitude]` array, a naive ISO timestamp),
//! which is what the simulator sends; deserialising accepts what the producer sends,
//! including an integer where a float is expected and unknown extra fields.

use std::borrow::Cow;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::timestamp::{EventTime, format_naive};

/// A position as the producer sends it: a JSON array `[latitude, longitude]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Location {
    /// Degrees north, −90 to 90.
    pub latitude: f64,
    /// Degrees east, −180 to 180.
    pub longitude: f64,
}

impl Serialize for Location {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (self.latitude, self.longitude).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Location {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        /// Exactly two numbers: a third element is an error naming the field, not trailing JSON.
        struct Pair;
        impl<'de> serde::de::Visitor<'de> for Pair {
            type Value = Location;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a [latitude, longitude] pair")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Location, A::Error> {
                let latitude = seq.next_element::<f64>()?.ok_or_else(|| serde::de::Error::invalid_length(0, &self))?;
                let longitude = seq.next_element::<f64>()?.ok_or_else(|| serde::de::Error::invalid_length(1, &self))?;
                let mut len = 2;
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {
                    len += 1;
                }
                if len != 2 {
                    return Err(serde::de::Error::invalid_length(len, &self));
                }
                Ok(Location { latitude, longitude })
            }
        }
        d.deserialize_seq(Pair)
    }
}

/// An event timestamp: parsed later (see [`super::timestamp`]) so that a bad one gets its own
/// error class and the configured zone for naive timestamps applies. Borrowed from the value
/// unless it holds escapes.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct RawTimestamp<'a>(#[serde(borrow)] pub Cow<'a, str>);

/// Serialises event time the way Python's `datetime.isoformat()` does.
pub fn serialize_naive<S: Serializer>(t: &EventTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&format_naive(*t))
}

// Every record is generic in its string type `S`: `String` (the default) for records that own
// their text, `Cow<str>` for records borrowed from the Kafka value they were decoded from, which
// is what the pipeline appends to its Arrow builders without allocating a `String` per field.
macro_rules! record {
    ($(#[$meta:meta])* $name:ident { $($(#[$fmeta:meta])* $wire:literal $field:ident : $ty:ty),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Serialize)]
        pub struct $name<S = String> {
            $($(#[$fmeta])* #[serde(rename = $wire)] pub $field: $ty,)*
        }
    };
}

record!(
    /// One reading of the vehicle itself (topic `vehicle_data`).
    VehicleRecord {
        /// Record UUID.
        "id" id: S,
        /// The vehicle's id (`deviceId`; the Kafka key in the fleet model).
        "deviceId" device_id: S,
        /// Event time.
        #[serde(serialize_with = "serialize_naive")]
        "timestamp" timestamp: EventTime,
        /// Where the vehicle is.
        "location" location: Location,
        /// km/h.
        "speed" speed: f64,
        /// Heading, e.g. `North-East`.
        "direction" direction: S,
        /// Manufacturer.
        "maker" maker: S,
        /// Model name.
        "model" model: S,
        /// Model year.
        "year" year: i32,
        /// Fuel type, e.g. `Hybrid`.
        "fueltype" fueltype: S,
    }
);

record!(
    /// A GPS fix (topic `gps_data`).
    GpsRecord {
        /// Record UUID.
        "id" id: S,
        /// The vehicle's id (`deviceId`).
        "deviceId" device_id: S,
        /// Event time.
        #[serde(serialize_with = "serialize_naive")]
        "timestamp" timestamp: EventTime,
        /// km/h.
        "speed" speed: f64,
        /// Heading.
        "direction" direction: S,
        /// e.g. `private`.
        "vehicleType" vehicle_type: S,
    }
);

record!(
    /// A traffic camera snapshot (topic `traffic_data`).
    TrafficRecord {
        /// Record UUID.
        "id" id: S,
        /// The vehicle that passed.
        "deviceId" device_id: S,
        /// The camera's id.
        "cameraId" camera_id: S,
        /// Where the camera is.
        "location" location: Location,
        /// Event time.
        #[serde(serialize_with = "serialize_naive")]
        "timestamp" timestamp: EventTime,
        /// Base64 image (a placeholder string in the simulation).
        "snapshot" snapshot: S,
    }
);

record!(
    /// A weather reading (topic `weather_data`).
    WeatherRecord {
        /// Record UUID.
        "id" id: S,
        /// The vehicle that measured it.
        "deviceId" device_id: S,
        /// Where.
        "location" location: Location,
        /// Event time.
        #[serde(serialize_with = "serialize_naive")]
        "timestamp" timestamp: EventTime,
        /// °C, a float (the original Spark schema said integer and produced nulls).
        "temperature" temperature: f64,
        /// One of `sunny`, `rainy`, `cloudy`, `snowy`.
        "weatherCondition" weather_condition: S,
        /// mm.
        "precipitation" precipitation: f64,
        /// km/h.
        "windspeed" windspeed: f64,
        /// Percent, an integer.
        "humidity" humidity: i32,
        /// AQI.
        "airQualityIndex" air_quality_index: f64,
    }
);

record!(
    /// An emergency incident (topic `emergency_data`).
    EmergencyRecord {
        /// Record UUID.
        "id" id: S,
        /// The vehicle that reported it.
        "deviceId" device_id: S,
        /// Incident UUID.
        "incidentId" incident_id: S,
        /// One of `Accident`, `Fire`, `Medical`, `Police`, `None`.
        "incident" incident: S,
        /// Event time.
        #[serde(serialize_with = "serialize_naive")]
        "timestamp" timestamp: EventTime,
        /// Where.
        "location" location: Location,
        /// `Active` or `Resolved`.
        "status" status: S,
        /// Free text.
        "description" description: S,
    }
);

/// Wire shapes used for decoding: identical fields, but the timestamp still a string, and every
/// string borrowed from the value where it holds no escapes.
pub(crate) mod wire {
    use std::borrow::Cow;

    use super::{Location, RawTimestamp};
    use serde::Deserialize;

    macro_rules! wire {
        ($name:ident { $($(#[$fmeta:meta])* $wire:literal $field:ident : $ty:ty),* $(,)? }) => {
            #[derive(Debug, Deserialize)]
            pub struct $name<'a> {
                $($(#[$fmeta])* #[serde(rename = $wire)] pub $field: $ty,)*
            }
        };
    }

    wire!(Vehicle {
        #[serde(borrow)] "id" id: Cow<'a, str>,
        #[serde(borrow)] "deviceId" device_id: Cow<'a, str>,
        #[serde(borrow)] "timestamp" timestamp: RawTimestamp<'a>,
        "location" location: Location,
        "speed" speed: f64,
        #[serde(borrow)] "direction" direction: Cow<'a, str>,
        #[serde(borrow)] "maker" maker: Cow<'a, str>,
        #[serde(borrow)] "model" model: Cow<'a, str>,
        "year" year: i32,
        #[serde(borrow)] "fueltype" fueltype: Cow<'a, str>,
    });
    wire!(Gps {
        #[serde(borrow)] "id" id: Cow<'a, str>,
        #[serde(borrow)] "deviceId" device_id: Cow<'a, str>,
        #[serde(borrow)] "timestamp" timestamp: RawTimestamp<'a>,
        "speed" speed: f64,
        #[serde(borrow)] "direction" direction: Cow<'a, str>,
        #[serde(borrow)] "vehicleType" vehicle_type: Cow<'a, str>,
    });
    wire!(Traffic {
        #[serde(borrow)] "id" id: Cow<'a, str>,
        #[serde(borrow)] "deviceId" device_id: Cow<'a, str>,
        #[serde(borrow)] "cameraId" camera_id: Cow<'a, str>,
        "location" location: Location,
        #[serde(borrow)] "timestamp" timestamp: RawTimestamp<'a>,
        #[serde(borrow)] "snapshot" snapshot: Cow<'a, str>,
    });
    wire!(Weather {
        #[serde(borrow)] "id" id: Cow<'a, str>,
        #[serde(borrow)] "deviceId" device_id: Cow<'a, str>,
        "location" location: Location,
        #[serde(borrow)] "timestamp" timestamp: RawTimestamp<'a>,
        "temperature" temperature: f64,
        #[serde(borrow)] "weatherCondition" weather_condition: Cow<'a, str>,
        "precipitation" precipitation: f64,
        "windspeed" windspeed: f64,
        "humidity" humidity: i32,
        "airQualityIndex" air_quality_index: f64,
    });
    wire!(Emergency {
        #[serde(borrow)] "id" id: Cow<'a, str>,
        #[serde(borrow)] "deviceId" device_id: Cow<'a, str>,
        #[serde(borrow)] "incidentId" incident_id: Cow<'a, str>,
        #[serde(borrow)] "incident" incident: Cow<'a, str>,
        #[serde(borrow)] "timestamp" timestamp: RawTimestamp<'a>,
        "location" location: Location,
        #[serde(borrow)] "status" status: Cow<'a, str>,
        #[serde(borrow)] "description" description: Cow<'a, str>,
    });
}
