//! Consumer-group offsets, committed for monitoring after each durable manifest.

use std::time::Duration;

use rdkafka::TopicPartitionList;
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::kafka::{ClientError, KafkaOptions, Quiet};
use crate::ownership::{Offset, PartitionId};

/// Commits consumer-group offsets for monitoring, after a manifest is durable. Failures are
/// warnings: the manifest, not the group offset, is the truth. Commits are asynchronous; the last
/// one is repeated synchronously when the committer is dropped at the end of a run, on a helper
/// thread waited for at most [`FINAL_COMMIT_WAIT`], so that a broker that is down cannot hold up
/// the exit (librdkafka's synchronous commit has no timeout of its own); normally a finished run
/// leaves the group exactly at the committed positions.
pub struct OffsetCommitter {
    /// Always `Some` until dropped (see `Drop`).
    consumer: Option<BaseConsumer<Quiet>>,
    opts: KafkaOptions,
    last: Option<TopicPartitionList>,
}

/// How long the final offset commit may take before the run ends without it.
pub const FINAL_COMMIT_WAIT: Duration = Duration::from_secs(10);

impl OffsetCommitter {
    /// A client for committing offsets of `opts.group`.
    pub fn new(opts: &KafkaOptions) -> Result<Self, ClientError> {
        let consumer = opts.client_config().create_with_context(Quiet)?;
        Ok(OffsetCommitter { consumer: Some(consumer), opts: opts.clone(), last: None })
    }

    /// Commits `offset` (the next to read) for each partition, asynchronously.
    pub fn commit(&mut self, offsets: &[(PartitionId, Offset)]) {
        let Some(consumer) = self.consumer.as_ref() else { return };
        let mut tpl = TopicPartitionList::new();
        for (id, offset) in offsets {
            if tpl.add_partition_offset(&self.opts.topic(id.stream), id.partition, rdkafka::Offset::Offset(offset.get())).is_err() {
                return;
            }
        }
        if let Err(e) = consumer.commit(&tpl, rdkafka::consumer::CommitMode::Async) {
            tracing::warn!(error = %e, "committing consumer-group offsets failed (the manifest is unaffected)");
        }
        let _ = consumer.poll(Duration::ZERO);
        self.last = Some(tpl);
    }

    /// Commits the last offsets synchronously on a helper thread and waits up to `wait` for it.
    /// `Ok` if the group holds them, else why not. On a timeout the client stays with the
    /// thread, which ends with the process.
    fn commit_last_and_wait(&mut self, wait: Duration) -> Result<(), String> {
        let (Some(tpl), Some(consumer)) = (self.last.take(), self.consumer.take()) else { return Ok(()) };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("final-offset-commit".into())
            .spawn(move || {
                let result = consumer.commit(&tpl, rdkafka::consumer::CommitMode::Sync);
                let _ = tx.send(result.map_err(|e| e.to_string()));
                drop(consumer);
            })
            .map_err(|e| e.to_string())?;
        match rx.recv_timeout(wait) {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {wait:?} (Kafka unreachable?)")),
        }
    }
}

impl Drop for OffsetCommitter {
    fn drop(&mut self) {
        if let Err(e) = self.commit_last_and_wait(FINAL_COMMIT_WAIT) {
            tracing::warn!(error = %e, "the final consumer-group offset commit failed (the manifest is unaffected; the group's lag is stale until a later run commits)");
        }
    }
}
