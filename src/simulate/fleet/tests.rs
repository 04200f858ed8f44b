//! Unit tests of the fleet simulator: both time models, injection, determinism.

use super::*;
use crate::contract::{DecodeOptions, decode};

#[test]
fn steps_follow_the_original_semantics() {
    let mut fleet = Fleet::new(FleetConfig { vehicles: 3, ..FleetConfig::default() });
    let mut last = [EventTime::UNIX_EPOCH; 3];
    for i in 0..300 {
        let step = fleet.step();
        let t = step[0].event_time;
        let advance = t - if last[i % 3] == EventTime::UNIX_EPOCH { fleet.config().start } else { last[i % 3] };
        assert!((29 * MICROS_PER_SEC..=61 * MICROS_PER_SEC).contains(&advance), "event time advances 30–60 s a step");
        last[i % 3] = t;
        for (rec, stream) in step.iter().zip(Stream::ALL) {
            assert_eq!(rec.stream, stream);
            assert_eq!(rec.event_time, t);
            let r = decode(stream, &rec.value, &DecodeOptions::default()).unwrap();
            assert_eq!(r.timestamp(), t);
            assert_eq!(rec.key, r.device_id());
            if let Record::Weather(w) = r {
                assert!((-5.0..26.0).contains(&w.temperature) && (0..=100).contains(&w.humidity));
            }
        }
    }
    // After 100 steps each vehicle is near Birmingham, then turns around.
    let mut fleet = Fleet::new(FleetConfig::default());
    let mut end = Location { latitude: 0.0, longitude: 0.0 };
    for _ in 0..100 {
        if let Ok(Record::Vehicle(v)) = decode(Stream::Vehicle, &fleet.step()[0].value, &DecodeOptions::default()) {
            end = v.location;
        }
    }
    assert!((end.latitude - 52.4862).abs() < 0.05 && (end.longitude + 1.8904).abs() < 0.05, "{end:?}");
}

/// The `timestamp` text of a producer JSON value, as sent.
fn timestamp_text(value: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(value).unwrap();
    v["timestamp"].as_str().unwrap().to_owned()
}

#[test]
fn original_model_has_one_clock_per_device() {
    let cfg = FleetConfig { vehicles: 3, key: KeyMode::Id, time_model: TimeModel::Original, ..FleetConfig::default() };
    let start = cfg.start;
    let mut fleet = Fleet::new(cfg);
    let mut clocks = [start; 3];
    let mut advances: [Vec<i64>; 3] = Default::default();
    let (mut first, mut backwards, mut previous) = (Vec::new(), 0, start);
    for i in 0..300 {
        let step = fleet.step();
        let device = i % 3; // round robin
        let t = step[0].event_time;
        let advance = t - clocks[device];
        assert!(advance % MICROS_PER_SEC == 0 && (30..=60).contains(&(advance / MICROS_PER_SEC)), "step {i}: the device's clock advanced {advance} µs");
        clocks[device] = t;
        advances[device].push(advance / MICROS_PER_SEC);
        backwards += usize::from(t < previous);
        previous = t;
        let text = timestamp_text(&step[0].value);
        if i < 4 {
            first.push(text.clone());
        }
        for (rec, stream) in step.iter().zip(Stream::ALL) {
            assert_eq!(rec.stream, stream);
            assert_eq!(rec.event_time, t);
            assert_eq!(timestamp_text(&rec.value), text, "step {i}: the five records share one timestamp");
            let r = decode(stream, &rec.value, &DecodeOptions::default()).unwrap();
            assert_eq!(r.timestamp(), t);
            assert_eq!(r.device_id(), format!("Vehicle-CityStream-{device:05}"));
            assert_eq!(rec.key, r.id(), "--key id");
        }
    }
    // Whole seconds after `start` (…08:00:00.123456): its microseconds stay, as in the original.
    assert_eq!(first, PINNED_ORIGINAL_FIRST);
    // Independent clocks: in a round the devices advance by different amounts, the clocks
    // drift apart, and the records, in production order, go back in event time whenever
    // the next device's clock is behind the previous one's.
    let differing = (0..100).filter(|&k| advances[0][k] != advances[1][k] || advances[1][k] != advances[2][k]).count();
    assert!(differing > 90, "{differing} of 100 rounds");
    let spread = *clocks.iter().max().unwrap() - *clocks.iter().min().unwrap();
    assert_eq!(spread, PINNED_ORIGINAL_SPREAD_S * MICROS_PER_SEC);
    assert!(backwards > 50, "{backwards} of 300 steps went back in event time");
    // ~45 s per step of a device, so with 3 devices a one-minute epoch holds ~1–2 steps per device.
    for a in &advances {
        let mean = a.iter().sum::<i64>() as f64 / a.len() as f64;
        assert!((40.0..=50.0).contains(&mean), "{mean} s per step");
    }
    // The fleet model, for contrast: all vehicles of a round stamp within one second.
    let mut fleet = Fleet::new(FleetConfig { vehicles: 3, ..FleetConfig::default() });
    for _ in 0..100 {
        let round: Vec<EventTime> = (0..3).map(|_| fleet.step()[0].event_time).collect();
        assert!(*round.iter().max().unwrap() - *round.iter().min().unwrap() < MICROS_PER_SEC, "{round:?}");
    }
}

#[test]
fn same_seed_same_records() {
    for time_model in [TimeModel::Fleet, TimeModel::Original] {
        let cfg = FleetConfig { vehicles: 2, key: KeyMode::Id, late_fraction: 0.1, malformed_fraction: 0.1, time_model, ..FleetConfig::default() };
        let (mut a, mut b) = (Fleet::new(cfg.clone()), Fleet::new(cfg));
        for _ in 0..100 {
            assert_eq!(a.step(), b.step());
        }
        let mut c = Fleet::new(FleetConfig { seed: 43, ..a.config().clone() });
        assert_ne!(a.step(), c.step());
    }
}

// Pinned outputs; see the tests that use them.
const PINNED_FIRST_EVENT_TIME: EventTime = EventTime(1_740_816_055_824_591); // 2025-03-01T08:00:55.824591
const PINNED_DIGEST: u64 = 0x7b24_2f00_4d4b_e31b;
const PINNED_DEFAULT_DIGEST: u64 = 0xf27f_c1ce_0f4b_7b43;
// Devices 0, 1, 2, then 0 again: +60 s, +59 s, +44 s, then device 0 +39 s on its own clock.
const PINNED_ORIGINAL_FIRST: [&str; 4] =
    ["2025-03-01T08:01:00.123456", "2025-03-01T08:00:59.123456", "2025-03-01T08:00:44.123456", "2025-03-01T08:01:39.123456"];
const PINNED_ORIGINAL_SPREAD_S: i64 = 121;

/// FNV-1a over everything a step produces (key, value, event time, injection), so that a
/// change of the generated records for a seed shows as a changed digest.
fn digest(fleet: &mut Fleet, steps: usize) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    for _ in 0..steps {
        for rec in fleet.step() {
            eat(rec.stream.name().as_bytes());
            eat(rec.key.as_bytes());
            eat(&rec.value);
            eat(&rec.event_time.micros().to_le_bytes());
            eat(rec.injected.map(Injected::header_value).unwrap_or_default().as_bytes());
        }
    }
    h
}

#[test]
fn fleet_model_output_is_pinned_for_a_seed() {
    // Computed at dc1bc46, before the time models existed: the fleet model must keep
    // producing exactly these records for this seed (tests and benchmarks rely on it).
    let cfg = FleetConfig { vehicles: 3, key: KeyMode::Id, late_fraction: 0.05, malformed_fraction: 0.05, ..FleetConfig::default() };
    let mut fleet = Fleet::new(cfg);
    let first = fleet.step();
    assert_eq!(first[0].event_time, PINNED_FIRST_EVENT_TIME);
    assert_eq!(digest(&mut fleet, 500), PINNED_DIGEST);
    let mut fleet = Fleet::new(FleetConfig::default());
    assert_eq!(digest(&mut fleet, 200), PINNED_DEFAULT_DIGEST);
}

#[test]
fn injected_records_fail_as_announced() {
    for time_model in [TimeModel::Fleet, TimeModel::Original] {
        let mut fleet = Fleet::new(FleetConfig { vehicles: 5, late_fraction: 0.05, malformed_fraction: 0.2, time_model, ..FleetConfig::default() });
        let (mut malformed, mut late) = (0, 0);
        for _ in 0..2000 {
            let step = fleet.step();
            // The step's timestamp: that of any record not made late or malformed.
            let now = step.iter().find(|r| r.injected.is_none()).map(|r| r.event_time);
            for rec in step {
                let decoded = decode(rec.stream, &rec.value, &DecodeOptions::default());
                match rec.injected {
                    Some(Injected::Malformed(class)) => {
                        malformed += 1;
                        assert_eq!(decoded.unwrap_err().class, class, "{}", String::from_utf8_lossy(&rec.value));
                    }
                    Some(Injected::Late) => {
                        late += 1;
                        let t = decoded.unwrap().timestamp();
                        assert_eq!(t, rec.event_time);
                        if let Some(now) = now {
                            assert!(
                                (10 * 60 * MICROS_PER_SEC..=60 * 60 * MICROS_PER_SEC).contains(&(now - t)),
                                "{time_model:?}: {} s late",
                                (now - t) / MICROS_PER_SEC
                            );
                        }
                    }
                    None => assert!(decoded.is_ok()),
                }
            }
        }
        assert!(malformed > 1500 && late > 300, "{time_model:?}: {malformed} {late}");
    }
}

#[test]
fn places_parse() {
    assert_eq!(parse_place("London").unwrap(), CITIES[0].location);
    assert_eq!(parse_place("52.1, -1.5").unwrap(), Location { latitude: 52.1, longitude: -1.5 });
    assert!(parse_place("Atlantis").unwrap_err().contains("birmingham"));
    assert!(parse_place("91,0").is_err());
}
