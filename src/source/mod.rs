//! Where records come from: Kafka, or the embedded fleet simulator.
//!
//! A [`Reader`] delivers, for the partitions one worker owns, records in offset order per
//! partition and an end-of-partition event whenever a partition is caught up. Readers know
//! nothing of epochs; reclocking happens in the dataflow's source operator.

pub mod batches;
pub mod embedded;
pub mod kafka;
pub mod operator;
pub mod stall;
mod state;
pub mod watch;

use crate::ownership::{Offset, PartitionId};

/// Something a reader saw.
#[derive(Debug)]
pub enum Event<'a> {
    /// A record at `offset` of partition `id`.
    Record {
        /// The partition the record was read from.
        id: PartitionId,
        /// Its offset.
        offset: Offset,
        /// The value (empty for a null value).
        payload: &'a [u8],
    },
    /// Partition `id` is caught up: it has no record after the last one delivered.
    Caught {
        /// The partition that reached its end.
        id: PartitionId,
    },
}

/// What a reader fails with: only Kafka clients fail (the embedded simulator cannot).
pub type SourceError = crate::kafka::ClientError;

/// A source of records for one worker's partitions.
pub trait Reader {
    /// Delivers up to `budget` events to `f`; returns how many were delivered.
    fn poll(&mut self, budget: usize, f: &mut dyn FnMut(Event<'_>)) -> Result<usize, SourceError>;
    /// Stops delivering partition `id` (it reached its stop offset).
    fn pause(&mut self, id: PartitionId);
    /// Holds back (`true`) or releases partition `id`: a held partition is not read, so its
    /// prefetch queue fills and fetching stops (bounded memory). Readers that cannot hold
    /// partitions back ignore it (the default).
    fn hold(&mut self, id: PartitionId, held: bool) {
        let _ = (id, held);
    }
    /// Where reading stands against the broker, per owned partition, as last measured. Readers
    /// that always deliver [`Event::Caught`] at the end of their input and cannot stall report
    /// nothing (the default).
    fn progress(&mut self) -> Vec<Progress> {
        Vec::new()
    }
    /// Re-creates the client after a stall, so that every partition not paused is read again
    /// from the offset after the last record delivered. Readers without a client to re-create
    /// do nothing (the default).
    fn recover(&mut self) -> Result<(), SourceError> {
        Ok(())
    }
    /// The client's own view of partition `id`, for a log line (empty if there is none).
    fn describe(&self, id: PartitionId) -> String {
        let _ = id;
        String::new()
    }
}

/// One partition's reading position against the end of the partition on the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// The partition measured.
    pub id: PartitionId,
    /// The next offset the reader will deliver: one past the last record it delivered, or past
    /// the transaction markers after it.
    pub position: Offset,
    /// The end of the partition on the broker (the last stable offset when only committed data is
    /// read) when last asked; `None` if the broker has not answered yet.
    pub end: Option<Offset>,
    /// The end was asked after the last record was delivered, so `end <= position` means the
    /// partition is caught up, as an [`Event::Caught`] would say.
    pub fresh: bool,
}

impl Progress {
    /// Records on the broker beyond the reader's position (0 if unknown).
    pub fn lag(&self) -> i64 {
        self.end.map_or(0, |e| e.since(self.position).max(0))
    }

    /// Caught up by the broker's word: its end, asked after the last delivery, is reached.
    pub fn caught(&self) -> bool {
        self.fresh && self.end.is_some_and(|e| e <= self.position)
    }
}
