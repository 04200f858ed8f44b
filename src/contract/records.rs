//! The five record types, field for field as the original producer sends them.
//!
//! Field names on the wire are the producer's (`deviceId`, `fueltype`, `windspeed`, …);
//! Rust names are snake_case. Serialising a record gives exactly the original JSON shape
//! (same field order, `location` as a `[latitude, longitude]` array, a naive ISO timestamp),
//! which is what the simulator sends; deserialising accepts what the producer sends,
//! including an integer where a float is expected and unknown extra fields.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::timestamp::{Micros, format_naive};

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
/// error class and the configured zone for naive timestamps applies.
#[derive(Debug, Clone, PartialEq)]
pub struct RawTimestamp(pub String);

impl<'de> Deserialize<'de> for RawTimestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(RawTimestamp)
    }
}

/// Serialises event time the way Python's `datetime.isoformat()` does.
pub fn serialize_naive<S: Serializer>(t: &Micros, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&format_naive(*t))
}

macro_rules! record {
    ($(#[$meta:meta])* $name:ident { $($(#[$fmeta:meta])* $wire:literal $field:ident : $ty:ty),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Serialize)]
        pub struct $name {
            $($(#[$fmeta])* #[serde(rename = $wire)] pub $field: $ty,)*
        }
    };
}

record!(
    /// One reading of the vehicle itself (topic `vehicle_data`).
    VehicleRecord {
        /// Record UUID.
        "id" id: String,
        /// The vehicle.
        "deviceId" device_id: String,
        /// Event time.
        #[serde(serialize_with = "serialize_naive")]
        "timestamp" timestamp: Micros,
        /// Where the vehicle is.
        "location" location: Location,
        /// km/h.
        "speed" speed: f64,
        /// Heading, e.g. `North-East`.
        "direction" direction: String,
        /// Manufacturer.
        "maker" maker: String,
        /// Model name.
        "model" model: String,
        /// Model year.
        "year" year: i32,
        /// Fuel type, e.g. `Hybrid`.
        "fueltype" fueltype: String,
    }
);

record!(
    /// A GPS fix (topic `gps_data`).
    GpsRecord {
        /// Record UUID.
        "id" id: String,
        /// The vehicle.
        "deviceId" device_id: String,
        /// Event time.
        #[serde(serialize_with = "serialize_naive")]
        "timestamp" timestamp: Micros,
        /// km/h.
        "speed" speed: f64,
        /// Heading.
        "direction" direction: String,
        /// e.g. `private`.
        "vehicleType" vehicle_type: String,
    }
);

record!(
    /// A traffic camera snapshot (topic `traffic_data`).
    TrafficRecord {
        /// Record UUID.
        "id" id: String,
        /// The vehicle that passed.
        "deviceId" device_id: String,
        /// The camera.
        "cameraId" camera_id: String,
        /// Where the camera is.
        "location" location: Location,
        /// Event time.
        #[serde(serialize_with = "serialize_naive")]
        "timestamp" timestamp: Micros,
        /// Base64 image (a placeholder string in the simulation).
        "snapshot" snapshot: String,
    }
);

record!(
    /// A weather reading (topic `weather_data`).
    WeatherRecord {
        /// Record UUID.
        "id" id: String,
        /// The vehicle that measured it.
        "deviceId" device_id: String,
        /// Where.
        "location" location: Location,
        /// Event time.
        #[serde(serialize_with = "serialize_naive")]
        "timestamp" timestamp: Micros,
        /// °C, a float (the original Spark schema said integer and produced nulls).
        "temperature" temperature: f64,
        /// One of `sunny`, `rainy`, `cloudy`, `snowy`.
        "weatherCondition" weather_condition: String,
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
        "id" id: String,
        /// The vehicle that reported it.
        "deviceId" device_id: String,
        /// Incident UUID.
        "incidentId" incident_id: String,
        /// One of `Accident`, `Fire`, `Medical`, `Police`, `None`.
        "incident" incident: String,
        /// Event time.
        #[serde(serialize_with = "serialize_naive")]
        "timestamp" timestamp: Micros,
        /// Where.
        "location" location: Location,
        /// `Active` or `Resolved`.
        "status" status: String,
        /// Free text.
        "description" description: String,
    }
);

/// Wire shapes used for decoding: identical fields, but the timestamp still a string.
pub(crate) mod wire {
    use super::{Location, RawTimestamp};
    use serde::Deserialize;

    macro_rules! wire {
        ($name:ident { $($wire:literal $field:ident : $ty:ty),* $(,)? }) => {
            #[derive(Debug, Deserialize)]
            pub struct $name {
                $(#[serde(rename = $wire)] pub $field: $ty,)*
            }
        };
    }

    wire!(Vehicle { "id" id: String, "deviceId" device_id: String, "timestamp" timestamp: RawTimestamp,
        "location" location: Location, "speed" speed: f64, "direction" direction: String, "maker" maker: String,
        "model" model: String, "year" year: i32, "fueltype" fueltype: String });
    wire!(Gps { "id" id: String, "deviceId" device_id: String, "timestamp" timestamp: RawTimestamp,
        "speed" speed: f64, "direction" direction: String, "vehicleType" vehicle_type: String });
    wire!(Traffic { "id" id: String, "deviceId" device_id: String, "cameraId" camera_id: String,
        "location" location: Location, "timestamp" timestamp: RawTimestamp, "snapshot" snapshot: String });
    wire!(Weather { "id" id: String, "deviceId" device_id: String, "location" location: Location,
        "timestamp" timestamp: RawTimestamp, "temperature" temperature: f64, "weatherCondition" weather_condition: String,
        "precipitation" precipitation: f64, "windspeed" windspeed: f64, "humidity" humidity: i32,
        "airQualityIndex" air_quality_index: f64 });
    wire!(Emergency { "id" id: String, "deviceId" device_id: String, "incidentId" incident_id: String,
        "incident" incident: String, "timestamp" timestamp: RawTimestamp, "location" location: Location,
        "status" status: String, "description" description: String });
}
