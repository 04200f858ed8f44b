//! The source's metrics: what its partitions look like, published every
//! [`crate::observe::source::PUBLISH_EVERY`] (and once more when the source finishes).

use super::SourceState;
use crate::observe::source::PartitionState;

impl SourceState {
    /// Publishes each owned partition's lag (the broker's end when last asked — or, before the
    /// broker answered, the stop offset — minus the position), watermark, idleness and whether
    /// the stall guard finds it stalled; and the epochs this source sent rows for. `force`:
    /// now, whatever the interval (the source finishes).
    pub(in crate::source) fn publish(&mut self, force: bool) {
        if !self.metrics.due(force) {
            return;
        }
        for p in &self.parts {
            let id = p.clock.id();
            let end = p.end.or(p.stop);
            let state = PartitionState {
                lag: end.map_or(0, |e| e.since(p.clock.next_offset()).max(0)),
                watermark: p.clock.watermark(),
                idle: p.caught_up || p.finished,
                stalled: self.guard.is_stalled(id),
            };
            self.metrics.partition(id, state);
        }
        let all_idle = self.parts.iter().all(|p| p.caught_up || p.finished);
        self.metrics.sent(self.max_sent, all_idle);
    }
}
