//! What the aggregate dataflow computes with: a row's key ([`AggKey`]) and its mergeable
//! partial aggregate ([`Agg`]), which is also the *difference type* of the differential
//! collection.
//!
//! Every record becomes one update `(key, epoch, Agg)`. Adding updates merges them — counts and
//! sums add, minima and maxima and the latest reading are taken — so the accumulation of a key's
//! updates up to a time is the aggregate of every record up to then: the row itself, in
//! mergeable form (the writer keeps exactly that sum). Rows are written with those partials
//! (sums beside the averages), which is what lets a restart, or a late record for a partition
//! that left memory, read them back and go on adding.

use std::cmp::Ordering;

use compact_str::CompactString;

use super::AggTable;
use crate::contract::EventTime;

/// The key of one aggregate row: its table, the partition it lives in, and its grouping
/// columns.
///
/// Updates are exchanged by [`AggKey::route`], which covers only the table and the bucket (the
/// hour of a windowed row; one bucket for `vehicle_latest`), so every key of a partition is
/// owned by one worker, which writes the partition's one file.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct AggKey {
    /// The table the row belongs to.
    pub table: AggTable,
    /// The hour a windowed row lies in (its partition); [`EventTime::UNIX_EPOCH`] for
    /// `vehicle_latest`, whose rows move between date partitions with their `last_seen`.
    pub bucket: EventTime,
    /// `device_id`, or `incident` for `emergency_hourly` (inline up to 24 bytes: no allocation
    /// for the ids of the contract).
    pub name: CompactString,
    /// `status` for `emergency_hourly`; empty otherwise.
    pub status: CompactString,
    /// `window_start` / `hour_start`; [`EventTime::UNIX_EPOCH`] for `vehicle_latest`.
    pub start: EventTime,
}

impl AggKey {
    /// What the exchange routes the key's updates by: its table and bucket.
    pub fn route(&self) -> u64 {
        route(self.table, self.bucket)
    }
}

/// The exchange hash of `bucket` of `table` (see [`owner`]).
pub fn route(table: AggTable, bucket: EventTime) -> u64 {
    use differential_dataflow::hashable::Hashable;
    (table, bucket.micros()).hashed()
}

/// The worker (of `peers`) that owns the keys of `bucket` of `table`: where the exchange by
/// [`route`] sends them (timely sends a datum to worker `hash % peers`).
pub fn owner(table: AggTable, bucket: EventTime, peers: usize) -> usize {
    (route(table, bucket) % peers.max(1) as u64) as usize
}

/// The reading of a vehicle with the greatest (timestamp, partition, offset): what
/// `vehicle_latest` shows.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct Latest {
    /// The record's timestamp (`last_seen`).
    pub at: EventTime,
    /// The Kafka partition it was read from (ties of `at` are broken by partition, then offset).
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Where the vehicle was.
    pub latitude: f64,
    /// Where the vehicle was.
    pub longitude: f64,
    /// Its speed.
    pub speed: f64,
}

impl Latest {
    fn order(&self) -> (EventTime, i32, i64) {
        (self.at, self.partition, self.offset)
    }
}

/// How many sums, maxima an aggregate keeps (the widest table, `weather_hourly`, needs three
/// of each: temperature, precipitation, humidity; temperature, windspeed, air quality).
pub const SLOTS: usize = 3;

/// A mergeable partial aggregate: the difference type of the aggregate collections.
///
/// Which slot holds what is the table's business ([`super::table`]); unused slots keep the
/// identity (sum 0, min +∞, max −∞, no latest reading).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Agg {
    /// Records merged (negative only in a retraction).
    pub records: i64,
    /// Sums.
    pub sum: [f64; SLOTS],
    /// A minimum.
    pub min: f64,
    /// Maxima.
    pub max: [f64; SLOTS],
    /// The latest reading (`vehicle_latest` only; boxed so that the other tables' aggregates,
    /// nearly all of them, stay small).
    pub latest: Option<Box<Latest>>,
}

impl Agg {
    /// The identity: no records.
    pub const ZERO: Agg = Agg { records: 0, sum: [0.0; SLOTS], min: f64::INFINITY, max: [f64::NEG_INFINITY; SLOTS], latest: None };

    /// One record, no values (emergency counts).
    pub fn one() -> Agg {
        Agg { records: 1, ..Agg::ZERO }
    }

    /// The mean of sum slot `i`.
    pub fn mean(&self, i: usize) -> f64 {
        self.sum[i] / self.records as f64
    }

    /// Every field as comparable bits, for equality and order (floats by their total order).
    fn bits(&self) -> impl Iterator<Item = i64> + '_ {
        let float = |f: f64| {
            let b = f.to_bits() as i64;
            b ^ (((b >> 63) as u64) >> 1) as i64
        };
        let latest = self.latest.iter().flat_map(move |l| [l.at.micros(), l.partition as i64, l.offset, float(l.latitude), float(l.longitude), float(l.speed)]);
        [self.records, self.latest.is_some() as i64]
            .into_iter()
            .chain(self.sum.iter().map(move |s| float(*s)))
            .chain([float(self.min)])
            .chain(self.max.iter().map(move |m| float(*m)))
            .chain(latest)
    }
}

impl PartialEq for Agg {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Agg {}

impl PartialOrd for Agg {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Agg {
    fn cmp(&self, other: &Self) -> Ordering {
        self.bits().cmp(other.bits())
    }
}

impl differential_dataflow::difference::IsZero for Agg {
    fn is_zero(&self) -> bool {
        self.records == 0
    }
}

impl differential_dataflow::difference::Semigroup for Agg {
    fn plus_equals(&mut self, rhs: &Self) {
        self.records += rhs.records;
        for i in 0..SLOTS {
            self.sum[i] += rhs.sum[i];
            self.max[i] = self.max[i].max(rhs.max[i]);
        }
        self.min = self.min.min(rhs.min);
        match (&mut self.latest, &rhs.latest) {
            (Some(a), Some(b)) if b.order() > a.order() => **a = **b,
            (None, Some(b)) => self.latest = Some(b.clone()),
            _ => {}
        }
    }
}

impl differential_dataflow::difference::Monoid for Agg {
    fn zero() -> Self {
        Agg::ZERO
    }
}

#[cfg(test)]
mod tests {
    use differential_dataflow::difference::{IsZero, Semigroup};

    use super::*;

    fn reading(speed: f64) -> Agg {
        Agg { records: 1, sum: [speed, 0.0, 0.0], min: speed, max: [speed, f64::NEG_INFINITY, f64::NEG_INFINITY], latest: None }
    }

    fn sum(aggs: &[Agg]) -> Agg {
        let mut total = Agg::ZERO;
        for a in aggs {
            total.plus_equals(a);
        }
        total
    }

    #[test]
    fn merging_is_count_sum_min_max_and_order_free() {
        let a = sum(&[reading(50.0), reading(70.5), reading(12.25)]);
        assert_eq!((a.records, a.sum[0], a.min, a.max[0]), (3, 132.75, 12.25, 70.5));
        assert_eq!(a.mean(0), 44.25);
        let b = sum(&[reading(12.25), reading(50.0), reading(70.5)]);
        assert_eq!(a, b, "the same records in another order merge alike");
        assert!(!a.is_zero() && Agg::ZERO.is_zero());
    }

    #[test]
    fn the_latest_reading_is_the_greatest_time_then_partition_then_offset() {
        let at = |t: i64, partition: i32, offset: i64, speed: f64| Agg {
            latest: Some(Box::new(Latest { at: EventTime(t), partition, offset, latitude: 51.5, longitude: -0.1, speed })),
            ..Agg::one()
        };
        let merged = sum(&[at(10, 0, 5, 1.0), at(12, 0, 1, 2.0), at(12, 1, 0, 3.0), at(12, 1, 7, 4.0), at(11, 9, 9, 5.0)]);
        assert_eq!(merged.records, 5);
        assert_eq!(merged.latest.as_ref().unwrap().speed, 4.0, "greatest time, then partition, then offset");
        assert_eq!(sum(&[at(12, 1, 7, 4.0), at(12, 1, 0, 3.0)]), sum(&[at(12, 1, 0, 3.0), at(12, 1, 7, 4.0)]));
    }

    #[test]
    fn keys_of_one_bucket_route_alike() {
        let key = |name: &str, start: i64| AggKey {
            table: AggTable::SpeedMinute,
            bucket: EventTime(3_600_000_000),
            name: name.into(),
            status: CompactString::default(),
            start: EventTime(start),
        };
        assert_eq!(key("Vehicle-1", 3_600_000_000).route(), key("Vehicle-2", 3_660_000_000).route());
        let other = AggKey { bucket: EventTime(7_200_000_000), ..key("Vehicle-1", 7_200_000_000) };
        assert_ne!(key("Vehicle-1", 3_600_000_000).route(), other.route());
        assert_eq!(owner(AggTable::SpeedMinute, EventTime(3_600_000_000), 3) as u64, key("Vehicle-9", 3_600_000_000).route() % 3);
    }
}
