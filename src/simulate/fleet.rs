//! The fleet: vehicles travelling between two cities, each step producing one record on each
//! of the five streams, with the original producer's semantics.
//!
//! Per step a vehicle moves 1/100 of the way (plus a little jitter) and emits a vehicle reading,
//! a GPS fix, a traffic-camera snapshot, a weather reading and an emergency report, all stamped
//! with the same naive ISO timestamp. Vehicles take turns (round robin). On arrival a vehicle
//! turns around. How the timestamps advance is the [`TimeModel`]: event time runs faster than
//! the wall clock in both, as in the original:
//!
//! - [`TimeModel::Fleet`] (the default): one clock for the whole fleet, advancing 30–60 s each
//!   time every vehicle has made a step, each vehicle stamping within the same second; records of
//!   all vehicles advance through event time together, so a one-minute epoch holds about one
//!   step of every vehicle.
//! - [`TimeModel::Original`]: the original Python producer's, one clock per device advancing
//!   30–60 s on each step of that device; the devices' clocks run independently, and a
//!   one-minute epoch holds about one step per device.
//!
//! For tests, a fraction of records can be made late (stamped 10–60 minutes in the past) or
//! malformed (one of several corruption classes, each with the decode error it must cause).

use crate::contract::timestamp::{EventTime, MICROS_PER_SEC};
use crate::contract::{EmergencyRecord, ErrorClass, GpsRecord, Location, Record, Stream, TrafficRecord, VehicleRecord, WeatherRecord};

use super::rng::Rng;

/// A named place.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct City {
    /// Lower-case name.
    pub name: &'static str,
    /// Where it is.
    pub location: Location,
}

const fn city(name: &'static str, latitude: f64, longitude: f64) -> City {
    City { name, location: Location { latitude, longitude } }
}

/// Cities known by name to `--from`/`--to` (any `lat,lon` works too).
pub const CITIES: &[City] = &[
    city("london", 51.5074, -0.1278),
    city("birmingham", 52.4862, -1.8904),
    city("manchester", 53.4808, -2.2426),
    city("leeds", 53.8008, -1.5491),
    city("bristol", 51.4545, -2.5879),
    city("liverpool", 53.4084, -2.9916),
];

/// Parses a city name or a `latitude,longitude` pair.
pub fn parse_place(s: &str) -> Result<Location, String> {
    if let Some(c) = CITIES.iter().find(|c| c.name.eq_ignore_ascii_case(s.trim())) {
        return Ok(c.location);
    }
    let parts: Vec<&str> = s.split(',').map(str::trim).collect();
    if let [lat, lon] = parts.as_slice()
        && let (Ok(latitude), Ok(longitude)) = (lat.parse::<f64>(), lon.parse::<f64>())
        && (-90.0..=90.0).contains(&latitude)
        && (-180.0..=180.0).contains(&longitude)
    {
        return Ok(Location { latitude, longitude });
    }
    let names: Vec<&str> = CITIES.iter().map(|c| c.name).collect();
    Err(format!("{s:?} is neither a known city ({}) nor a `latitude,longitude` pair", names.join(", ")))
}

/// Which value becomes the Kafka key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyMode {
    /// The `deviceId`: a vehicle's records stay in one partition, in order.
    Device,
    /// The record `id`, as the original producer did: records land on random partitions.
    Id,
}

/// How event time advances from step to step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TimeModel {
    /// One clock for the fleet: it advances 30–60 s each time every vehicle has made a step,
    /// and the vehicles of that round stamp their steps within the same second (a random
    /// sub-second offset per step). Event time advances ~45 s per round of the whole fleet.
    #[default]
    Fleet,
    /// The original producer's: one clock per device, starting at `start` and advancing a
    /// random whole 30–60 s on each step of that device (`start_time += timedelta(seconds=
    /// random.randint(30, 60))`), so its microseconds stay those of `start`, like the
    /// `datetime.now()` the original starts from. The clocks of different devices are
    /// independent; each advances ~45 s per step of its device.
    Original,
}

/// How the fleet behaves.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetConfig {
    /// Number of vehicles.
    pub vehicles: u32,
    /// Seed of every random choice.
    pub seed: u64,
    /// Where every vehicle's clock starts; its first step is stamped 30–60 s later.
    pub start: EventTime,
    /// Where vehicles set off.
    pub from: Location,
    /// Where they go.
    pub to: Location,
    /// Steps from one city to the other (the original: 100).
    pub steps_per_journey: u32,
    /// Fraction of records stamped 10–60 minutes in the past.
    pub late_fraction: f64,
    /// Fraction of records corrupted.
    pub malformed_fraction: f64,
    /// What the Kafka key is.
    pub key: KeyMode,
    /// How event time advances.
    pub time_model: TimeModel,
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            vehicles: 1,
            seed: 42,
            // 2025-03-01T08:00:00.123456, naive, as the producer would stamp it.
            start: EventTime(1_740_816_000_123_456),
            from: CITIES[0].location,
            to: CITIES[1].location,
            steps_per_journey: 100,
            late_fraction: 0.0,
            malformed_fraction: 0.0,
            key: KeyMode::Device,
            time_model: TimeModel::Fleet,
        }
    }
}

/// What was done to a record on purpose, so tests know what to expect of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Injected {
    /// Stamped in the past: it should arrive behind the watermark.
    Late,
    /// Corrupted: decoding must fail with this class.
    Malformed(ErrorClass),
}

impl Injected {
    /// The value of the `citystream-injected` Kafka header.
    pub fn header_value(self) -> String {
        match self {
            Injected::Late => "late".into(),
            Injected::Malformed(c) => format!("malformed:{}", c.as_str()),
        }
    }
}

/// Name of the Kafka header that marks injected records.
pub const INJECTED_HEADER: &str = "citystream-injected";

/// One record ready to produce.
#[derive(Debug, Clone, PartialEq)]
pub struct SimRecord {
    /// Its stream.
    pub stream: Stream,
    /// Kafka key.
    pub key: String,
    /// Kafka value: the producer's JSON (or a corruption of it).
    pub value: Vec<u8>,
    /// Its event time.
    pub event_time: EventTime,
    /// Whether and how it was tampered with.
    pub injected: Option<Injected>,
}

#[derive(Debug, Clone)]
struct Vehicle {
    device_id: String,
    position: Location,
    /// The timestamp of its last step (before the first: `start`).
    clock: EventTime,
    step: u32,
    outbound: bool,
}

/// The fleet simulator: an endless, deterministic sequence of steps.
#[derive(Debug, Clone)]
pub struct Fleet {
    cfg: FleetConfig,
    rng: Rng,
    vehicles: Vec<Vehicle>,
    turn: usize,
    /// The fleet's clock ([`TimeModel::Fleet`] only): advances 30–60 s each time every vehicle
    /// has made a step.
    clock: EventTime,
}

const DIRECTIONS: &[&str] = &["North-East"];
const INCIDENTS: &[&str] = &["Accident", "Fire", "Medical", "Police", "None"];
const STATUSES: &[&str] = &["Active", "Resolved"];
const CONDITIONS: &[&str] = &["sunny", "rainy", "cloudy", "snowy"];

impl Fleet {
    /// A fleet at the start of its journeys.
    pub fn new(cfg: FleetConfig) -> Self {
        let vehicles = (0..cfg.vehicles.max(1))
            .map(|i| Vehicle { device_id: format!("Vehicle-CityStream-{i:05}"), position: cfg.from, clock: cfg.start, step: 0, outbound: true })
            .collect();
        Fleet { rng: Rng::new(cfg.seed), clock: cfg.start, cfg, vehicles, turn: 0 }
    }

    /// The fleet's configuration: vehicles, seed, start, route, time model, key mode and the
    /// fractions of late and malformed records.
    pub fn config(&self) -> &FleetConfig {
        &self.cfg
    }

    /// Records in one journey of the whole fleet: vehicles × steps × 5 streams.
    pub fn journey_records(&self) -> u64 {
        u64::from(self.cfg.vehicles.max(1)) * u64::from(self.cfg.steps_per_journey) * 5
    }

    /// The next vehicle's step: one record per stream, in the producer's order.
    pub fn step(&mut self) -> [SimRecord; 5] {
        let n = self.vehicles.len();
        let rng = &mut self.rng;
        if self.turn == 0 && self.cfg.time_model == TimeModel::Fleet {
            // One step of the whole fleet: event time advances 30–60 s, as in the original.
            self.clock += rng.int_inclusive(30, 60) * MICROS_PER_SEC;
        }
        let v = &mut self.vehicles[self.turn];
        self.turn = (self.turn + 1) % n;
        let cfg = &self.cfg;

        // Move 1/steps of the way, with the original's ±0.0005° jitter; turn around on arrival.
        let (a, b) = if v.outbound { (cfg.from, cfg.to) } else { (cfg.to, cfg.from) };
        let steps = f64::from(cfg.steps_per_journey.max(1));
        v.position.latitude += (b.latitude - a.latitude) / steps + rng.uniform(-0.0005, 0.0005);
        v.position.longitude += (b.longitude - a.longitude) / steps + rng.uniform(-0.0005, 0.0005);
        v.position.latitude = v.position.latitude.clamp(-90.0, 90.0);
        v.position.longitude = v.position.longitude.clamp(-180.0, 180.0);
        v.step += 1;
        if v.step >= cfg.steps_per_journey.max(1) {
            v.step = 0;
            v.outbound = !v.outbound;
        }
        v.clock = match cfg.time_model {
            // Vehicles of one fleet step report within the same second, in turn.
            TimeModel::Fleet => self.clock + rng.int_inclusive(0, MICROS_PER_SEC - 1),
            // The original: the device's own clock, after its movement (as its generator did).
            TimeModel::Original => v.clock + rng.int_inclusive(30, 60) * MICROS_PER_SEC,
        };
        let (device_id, location, now) = (v.device_id.clone(), v.position, v.clock);

        let records = [
            Record::Vehicle(VehicleRecord {
                id: rng.uuid4(),
                device_id: device_id.clone(),
                timestamp: now,
                location,
                speed: rng.uniform(10.0, 40.0),
                direction: DIRECTIONS[0].into(),
                maker: "BMW".into(),
                model: "C500".into(),
                year: 2024,
                fueltype: "Hybrid".into(),
            }),
            Record::Gps(GpsRecord {
                id: rng.uuid4(),
                device_id: device_id.clone(),
                timestamp: now,
                speed: rng.uniform(0.0, 40.0),
                direction: DIRECTIONS[0].into(),
                vehicle_type: "private".into(),
            }),
            Record::Traffic(TrafficRecord {
                id: rng.uuid4(),
                device_id: device_id.clone(),
                camera_id: "Nikon-Cam123".into(),
                location,
                timestamp: now,
                snapshot: "Base64EncodedString".into(),
            }),
            Record::Weather(WeatherRecord {
                id: rng.uuid4(),
                device_id: device_id.clone(),
                location,
                timestamp: now,
                temperature: rng.uniform(-5.0, 26.0),
                weather_condition: (*rng.choose(CONDITIONS)).into(),
                precipitation: rng.uniform(0.0, 25.0),
                windspeed: rng.uniform(0.0, 100.0),
                humidity: rng.int_inclusive(0, 100) as i32,
                air_quality_index: rng.uniform(0.0, 500.0),
            }),
            Record::Emergency(EmergencyRecord {
                id: rng.uuid4(),
                device_id: device_id.clone(),
                incident_id: rng.uuid4(),
                incident: (*rng.choose(INCIDENTS)).into(),
                timestamp: now,
                location,
                status: (*rng.choose(STATUSES)).into(),
                description: "Description of the incident".into(),
            }),
        ];
        records.map(|mut record| {
            let mut injected = None;
            if rng.chance(cfg.late_fraction) {
                let back = rng.int_inclusive(10 * 60, 60 * 60) * MICROS_PER_SEC;
                set_timestamp(&mut record, now - back);
                injected = Some(Injected::Late);
            }
            let key = match cfg.key {
                KeyMode::Device => device_id.clone(),
                KeyMode::Id => record.id().to_owned(),
            };
            let mut value = record.to_json();
            if rng.chance(cfg.malformed_fraction) {
                let (bytes, class) = corrupt(&value, record.stream(), rng);
                value = bytes;
                injected = Some(Injected::Malformed(class));
            }
            SimRecord { stream: record.stream(), key, value, event_time: record.timestamp(), injected }
        })
    }
}

fn set_timestamp(record: &mut Record, t: EventTime) {
    match record {
        Record::Vehicle(r) => r.timestamp = t,
        Record::Gps(r) => r.timestamp = t,
        Record::Traffic(r) => r.timestamp = t,
        Record::Weather(r) => r.timestamp = t,
        Record::Emergency(r) => r.timestamp = t,
    }
}

/// Corrupts a producer JSON value in one of several ways, returning the decode error class
/// that the corruption must cause.
fn corrupt(json: &[u8], stream: Stream, rng: &mut Rng) -> (Vec<u8>, ErrorClass) {
    let text = String::from_utf8_lossy(json).into_owned();
    // `deviceId` and `timestamp` exist in every stream; `location` in all but gps.
    match rng.next_u64() % 7 {
        0 => (json[..json.len() / 2].to_vec(), ErrorClass::Truncated),
        1 => (b"this is not json".to_vec(), ErrorClass::Syntax),
        2 => (replace_value(&text, "deviceId", None), ErrorClass::MissingField),
        3 => (replace_value(&text, "deviceId", Some("12345")), ErrorClass::WrongType),
        4 => (replace_value(&text, "timestamp", Some("\"2025-02-30T25:61:00\"")), ErrorClass::BadTimestamp),
        5 if stream != Stream::Gps => (replace_value(&text, "location", Some("[51.5]")), ErrorClass::WrongType),
        _ => (Vec::new(), ErrorClass::Empty),
    }
}

/// Replaces (or, with `None`, removes) the value of a top-level field in compact JSON.
fn replace_value(text: &str, field: &str, new: Option<&str>) -> Vec<u8> {
    let mut map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(text).expect("the simulator's own JSON parses");
    match new {
        Some(raw) => {
            map.insert(field.to_owned(), serde_json::Value::from(raw));
            // Insert the raw JSON text, not a JSON string of it.
            let s = serde_json::to_string(&map).expect("maps serialise");
            let quoted = serde_json::to_string(raw).expect("strings serialise");
            s.replacen(&format!("\"{field}\":{quoted}"), &format!("\"{field}\":{raw}"), 1).into_bytes()
        }
        None => {
            map.remove(field);
            serde_json::to_vec(&map).expect("maps serialise")
        }
    }
}

#[cfg(test)]
mod tests;
