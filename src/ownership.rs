//! Kafka coordinates — a stream's partition ([`PartitionId`]) and a position in it
//! ([`Offset`]) — and which worker owns which partition.
//!
//! All pairs are sorted and pair `i` goes to worker `i mod (processes × threads)`. The rule
//! uses nothing but the list of partitions, so every worker computes the same answer without
//! talking to the others, and because reclocking state is kept per partition (in the
//! manifest), a restart with a different `-n`/`-w` simply deals the partitions anew.

use crate::contract::Stream;

/// A partition of one stream's topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct PartitionId {
    /// The stream (its topic is prefix + stream name).
    pub stream: Stream,
    /// Kafka partition number.
    pub partition: i32,
}

impl std::fmt::Display for PartitionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.stream, self.partition)
    }
}

/// A position in a Kafka partition: the offset of a record, or of the next one to read.
///
/// A newtype, not a bare `i64`, so that an offset cannot be mixed up with an epoch, a count or
/// an event time. Written to manifests as a plain number.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Offset(pub i64);

impl Offset {
    /// The first offset of a partition that was never truncated.
    pub const ZERO: Offset = Offset(0);

    /// The offset as a number (as Kafka clients and the `_offset` column take it).
    pub fn get(self) -> i64 {
        self.0
    }

    /// The offset after this one.
    pub fn next(self) -> Offset {
        Offset(self.0 + 1)
    }

    /// Records from `earlier` up to (not including) `self`; negative if `earlier` is later.
    pub fn since(self, earlier: Offset) -> i64 {
        self.0 - earlier.0
    }
}

impl std::fmt::Display for Offset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::ops::Add<i64> for Offset {
    type Output = Offset;
    fn add(self, n: i64) -> Offset {
        Offset(self.0 + n)
    }
}

/// The partitions owned by worker `index` of `peers`.
pub fn owned(all: &[PartitionId], index: usize, peers: usize) -> Vec<PartitionId> {
    assert!(peers > 0 && index < peers, "worker {index} of {peers}");
    let mut sorted = all.to_vec();
    sorted.sort();
    sorted.dedup();
    sorted.into_iter().enumerate().filter(|(i, _)| i % peers == index).map(|(_, p)| p).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(parts: i32) -> Vec<PartitionId> {
        Stream::ALL.iter().flat_map(|&stream| (0..parts).map(move |partition| PartitionId { stream, partition })).collect()
    }

    #[test]
    fn every_partition_has_exactly_one_owner() {
        for peers in 1..=7 {
            let all = all(4);
            let mut seen: Vec<PartitionId> = (0..peers).flat_map(|w| owned(&all, w, peers)).collect();
            seen.sort();
            let mut expect = all.clone();
            expect.sort();
            assert_eq!(seen, expect, "peers={peers}");
            // Balanced within one.
            let sizes: Vec<usize> = (0..peers).map(|w| owned(&all, w, peers).len()).collect();
            assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1);
        }
    }

    #[test]
    fn order_of_discovery_does_not_matter() {
        let mut shuffled = all(3);
        shuffled.reverse();
        assert_eq!(owned(&shuffled, 1, 4), owned(&all(3), 1, 4));
        assert!(owned(&all(1), 6, 7).is_empty() || owned(&all(1), 6, 7).len() == 1);
        assert!(owned(&all(1)[..2], 5, 7).is_empty(), "more workers than partitions: some own none");
    }
}
