//! Where records come from: Kafka, or the embedded fleet simulator.
//!
//! A [`Reader`] delivers, for the partitions one worker owns, records in offset order per
//! partition and an end-of-partition event whenever a partition is caught up. Readers know
//! nothing of epochs; reclocking happens in the dataflow's source operator.

pub mod embedded;
pub mod kafka;

use crate::ownership::PartitionId;

/// Something a reader saw.
#[derive(Debug)]
pub enum Event<'a> {
    /// A record at `offset` of partition `id`.
    Record {
        /// The partition.
        id: PartitionId,
        /// Its offset.
        offset: i64,
        /// The value (empty for a null value).
        payload: &'a [u8],
    },
    /// Partition `id` is caught up: it has no record after the last one delivered.
    Caught {
        /// The partition.
        id: PartitionId,
    },
}

/// Errors of a source. Transient ones are retried by the client library itself (librdkafka
/// reconnects and refetches); what surfaces here is definite.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The brokers did not answer in time.
    #[error("cannot reach Kafka brokers at {brokers} within {seconds} s (check --brokers / CITYSTREAM_BROKERS and that the broker runs): {reason}")]
    Unreachable {
        /// Bootstrap list.
        brokers: String,
        /// How long we waited.
        seconds: u64,
        /// librdkafka's words.
        reason: String,
    },
    /// A topic does not exist.
    #[error("Kafka topic {topic} does not exist on {brokers} (check --topic-prefix; create it or run `citystream simulate` first)")]
    UnknownTopic {
        /// The topic.
        topic: String,
        /// Bootstrap list.
        brokers: String,
    },
    /// The brokers refused the credentials or the TLS handshake (definite: retrying won't help).
    #[error("cannot connect to Kafka at {brokers}: {hint} ({reason})")]
    Refused {
        /// Bootstrap list.
        brokers: String,
        /// What to check, naming the settings.
        hint: &'static str,
        /// librdkafka's words, secrets scrubbed.
        reason: String,
    },
    /// The client could not be created from the settings (librdkafka's words, secrets scrubbed).
    #[error("cannot create the Kafka client (check --kafka-option and the --kafka-* flags): {0}")]
    Client(String),
    /// Any other Kafka client error.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
}

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
}
