//! The embedded source: the fleet simulator in-process, with virtual partitions and offsets,
//! so that a newcomer runs the whole pipeline — epochs, seals, manifests — without Kafka.
//!
//! A record's virtual partition is a hash of its key modulo the partition count; offsets
//! count per (stream, partition) from 0. Every worker replays the same deterministic fleet and
//! keeps the records of the partitions it owns, so resuming from any offset is exact.

use std::collections::{HashMap, HashSet};

use super::{Event, Reader, SourceError};
use crate::contract::Stream;
use crate::ownership::{Offset, PartitionId};
use crate::simulate::{Fleet, FleetConfig};

/// FNV-1a: a stable hash of the key, for virtual partitioning.
pub fn partition_of(key: &str, partitions: i32) -> i32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % partitions.max(1) as u64) as i32
}

/// All virtual partitions of the embedded source.
pub fn all_partitions(partitions: i32) -> Vec<PartitionId> {
    Stream::ALL.iter().flat_map(|&stream| (0..partitions).map(move |partition| PartitionId { stream, partition })).collect()
}

/// Reads the simulated fleet's journey.
pub struct EmbeddedReader {
    fleet: Fleet,
    partitions: i32,
    steps_left: u64,
    next: HashMap<PartitionId, i64>,
    start: HashMap<PartitionId, i64>,
    paused: HashSet<PartitionId>,
    done: bool,
}

impl EmbeddedReader {
    /// A reader of `owned` partitions (out of `partitions` per stream), each starting at the
    /// given offset, over one journey of the fleet.
    pub fn new(cfg: FleetConfig, partitions: i32, owned: &[(PartitionId, Offset)]) -> Self {
        let fleet = Fleet::new(cfg);
        let steps_left = fleet.journey_records() / 5;
        let start: HashMap<PartitionId, i64> = owned.iter().map(|(id, o)| (*id, o.get())).collect();
        let next = owned.iter().map(|(id, _)| (*id, 0)).collect();
        EmbeddedReader { fleet, partitions, steps_left, next, start, paused: HashSet::new(), done: false }
    }

    /// Offsets per partition of a whole journey: what `--until-caught-up` stops at.
    pub fn journey_ends(cfg: &FleetConfig, partitions: i32) -> HashMap<PartitionId, Offset> {
        let mut fleet = Fleet::new(cfg.clone());
        let mut ends: HashMap<PartitionId, Offset> = all_partitions(partitions).into_iter().map(|p| (p, Offset::ZERO)).collect();
        for _ in 0..fleet.journey_records() / 5 {
            for rec in fleet.step() {
                ends.entry(PartitionId { stream: rec.stream, partition: partition_of(&rec.key, partitions) }).or_default().0 += 1;
            }
        }
        ends
    }
}

impl Reader for EmbeddedReader {
    fn poll(&mut self, budget: usize, f: &mut dyn FnMut(Event<'_>)) -> Result<usize, SourceError> {
        let mut delivered = 0;
        while delivered < budget && self.steps_left > 0 {
            self.steps_left -= 1;
            for rec in self.fleet.step() {
                let id = PartitionId { stream: rec.stream, partition: partition_of(&rec.key, self.partitions) };
                let Some(next) = self.next.get_mut(&id) else { continue };
                let offset = *next;
                *next += 1;
                if offset >= self.start[&id] && !self.paused.contains(&id) {
                    f(Event::Record { id, offset: Offset(offset), payload: &rec.value });
                    delivered += 1;
                }
            }
        }
        if self.steps_left == 0 && !self.done {
            self.done = true;
            for id in self.next.keys() {
                f(Event::Caught { id: *id });
                delivered += 1;
            }
        }
        Ok(delivered)
    }

    fn pause(&mut self, id: PartitionId) {
        self.paused.insert(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_are_dense_and_resumable() {
        let cfg = FleetConfig { vehicles: 7, ..FleetConfig::default() };
        let ends = EmbeddedReader::journey_ends(&cfg, 3);
        assert_eq!(ends.values().map(|o| o.get()).sum::<i64>(), 7 * 100 * 5);
        let owned: Vec<(PartitionId, Offset)> = all_partitions(3).into_iter().map(|p| (p, Offset::ZERO)).collect();
        let mut r = EmbeddedReader::new(cfg.clone(), 3, &owned);
        let mut seen: HashMap<PartitionId, Vec<i64>> = HashMap::new();
        let mut caught = 0;
        while r
            .poll(100, &mut |e| match e {
                Event::Record { id, offset, .. } => seen.entry(id).or_default().push(offset.get()),
                Event::Caught { id } => {
                    assert!(ends.contains_key(&id));
                    caught += 1;
                }
            })
            .unwrap()
            > 0
        {}
        assert_eq!(caught, 15);
        for (id, offs) in &seen {
            assert_eq!(*offs, (0..ends[id].get()).collect::<Vec<_>>());
        }
        // Resume one partition from the middle: the same records from there on.
        let id = PartitionId { stream: Stream::Weather, partition: 1 };
        let mut r = EmbeddedReader::new(cfg, 3, &[(id, Offset(50))]);
        let mut offs = Vec::new();
        while r
            .poll(100, &mut |e| {
                if let Event::Record { offset, .. } = e {
                    offs.push(offset.get())
                }
            })
            .unwrap()
            > 0
        {}
        assert_eq!(offs, (50..ends[&id].get()).collect::<Vec<_>>());
    }
}
