//! The stall guard: no partition may stop being read without anyone noticing.
//!
//! A partition is *starved* while the broker has records beyond the reader's position, the
//! source asks the reader for them (the partition is neither held back by the read-ahead bound
//! nor finished), and the position does not move. Only time the source actually spends
//! asking counts: each check adds at most [`MAX_STEP`], so a worker that was not scheduled for a
//! while (a sink waiting for the store, a slow machine) does not make its partitions look
//! stalled. When the broker cannot be asked (an outage), the lag is unknown and nothing counts.
//!
//! After `timeout` of starvation the guard asks for the reader's client to be re-created (and
//! again after every further `timeout`); after `give_up` the process must stop, so that its
//! supervisor restarts the cluster, which resumes exactly once from the last manifest.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::Progress;
use crate::ownership::{Offset, PartitionId};

/// The longest gap between two checks that counts in full towards starvation.
pub const MAX_STEP: Duration = Duration::from_secs(1);

/// When a starved partition counts as stalled, and when the process gives up on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StallConfig {
    /// Starvation after which the partition is reported and the client re-created
    /// (`--stall-timeout`).
    pub timeout: Duration,
    /// Starvation after which the process stops with an error (`--stall-exit`).
    pub give_up: Duration,
}

impl Default for StallConfig {
    fn default() -> Self {
        StallConfig { timeout: Duration::from_secs(60), give_up: Duration::from_secs(300) }
    }
}

/// A partition the guard found starved for at least the stall timeout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stalled {
    /// Where reading stands.
    pub progress: Progress,
    /// How long the source asked for records in vain.
    pub starved: Duration,
    /// How many times the client was re-created for it so far.
    pub recoveries: u32,
}

/// What to do after a check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every partition is read, caught up, or waiting for a reason of its own.
    Fine,
    /// These partitions crossed the stall timeout (again): report them and re-create the client.
    Recover(Vec<Stalled>),
    /// This partition stayed starved for the whole give-up bound: stop the process.
    GiveUp(Stalled),
}

#[derive(Debug)]
struct Watch {
    position: Offset,
    starved: Duration,
    /// Starvation at the last recovery asked for (zero: none yet).
    recovered_at: Duration,
    recoveries: u32,
}

/// Tracks every owned partition's progress between checks.
#[derive(Debug)]
pub struct StallGuard {
    config: StallConfig,
    watches: HashMap<PartitionId, Watch>,
    last_check: Option<Instant>,
}

impl StallGuard {
    /// A guard with nothing observed yet.
    pub fn new(config: StallConfig) -> Self {
        StallGuard { config, watches: HashMap::new(), last_check: None }
    }

    /// Takes the readers' `progress` at `now`; `asked(id)` says whether the source asks the
    /// reader for partition `id`'s records. Returns what to do.
    pub fn check(&mut self, now: Instant, progress: &[Progress], asked: impl Fn(PartitionId) -> bool) -> Verdict {
        let step = self.last_check.map_or(Duration::ZERO, |t| now.saturating_duration_since(t).min(MAX_STEP));
        self.last_check = Some(now);
        let mut stalled = Vec::new();
        for p in progress {
            let w = self.watches.entry(p.id).or_insert(Watch { position: p.position, starved: Duration::ZERO, recovered_at: Duration::ZERO, recoveries: 0 });
            if p.position != w.position || !asked(p.id) || p.lag() == 0 {
                if w.recoveries > 0 && p.position != w.position {
                    tracing::info!(partition = %p.id, position = p.position.get(), after = ?w.starved, "stalled partition is read again");
                }
                *w = Watch { position: p.position, starved: Duration::ZERO, recovered_at: Duration::ZERO, recoveries: 0 };
                continue;
            }
            w.starved += step;
            let report = Stalled { progress: *p, starved: w.starved, recoveries: w.recoveries };
            if w.starved >= self.config.give_up {
                return Verdict::GiveUp(report);
            }
            if w.starved >= self.config.timeout && w.starved - w.recovered_at >= self.config.timeout {
                w.recovered_at = w.starved;
                w.recoveries += 1;
                stalled.push(report);
            }
        }
        if stalled.is_empty() { Verdict::Fine } else { Verdict::Recover(stalled) }
    }

    /// Whether partition `id` is stalled: starved past the timeout at least once (a recovery
    /// was asked for) and not read since. Feeds `citystream_partition_stalled`.
    pub fn is_stalled(&self, id: PartitionId) -> bool {
        self.watches.get(&id).is_some_and(|w| w.recoveries > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::Stream;

    const ID: PartitionId = PartitionId { stream: Stream::Vehicle, partition: 0 };

    fn at(position: i64, end: i64) -> [Progress; 1] {
        [Progress { id: ID, position: Offset(position), end: Some(Offset(end)), fresh: true }]
    }

    fn guard() -> (StallGuard, Instant) {
        (StallGuard::new(StallConfig { timeout: Duration::from_secs(3), give_up: Duration::from_secs(10) }), Instant::now())
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn a_starved_partition_is_recovered_after_the_timeout_then_again_then_given_up() {
        let (mut g, t0) = guard();
        let mut verdicts = Vec::new();
        for s in 0..=10 {
            verdicts.push(g.check(t0 + secs(s), &at(100, 150), |_| true));
        }
        let recovered: Vec<usize> = verdicts.iter().enumerate().filter(|(_, v)| matches!(v, Verdict::Recover(_))).map(|(s, _)| s).collect();
        assert_eq!(recovered, vec![3, 6, 9], "recovered at the timeout and after every further timeout");
        let Verdict::Recover(first) = &verdicts[3] else { unreachable!() };
        assert_eq!((first[0].starved, first[0].recoveries, first[0].progress.lag()), (secs(3), 0, 50));
        assert!(matches!(&verdicts[10], Verdict::GiveUp(s) if s.starved == secs(10) && s.recoveries == 3));
        assert!(g.is_stalled(ID), "stalled from the first recovery on");
        assert_eq!(g.check(t0 + secs(11), &at(101, 150), |_| true), Verdict::Fine);
        assert!(!g.is_stalled(ID), "read again: no longer stalled");
    }

    #[test]
    fn progress_lag_gone_or_not_asked_resets_the_clock() {
        let (mut g, t0) = guard();
        for s in 0..=2 {
            assert_eq!(g.check(t0 + secs(s), &at(100, 150), |_| true), Verdict::Fine);
        }
        // One record delivered: the clock starts again.
        for s in 3..=5 {
            assert_eq!(g.check(t0 + secs(s), &at(101, 150), |_| true), Verdict::Fine);
        }
        // Held back by the read-ahead bound: not the reader's fault.
        for s in 6..=20 {
            assert_eq!(g.check(t0 + secs(s), &at(101, 150), |_| false), Verdict::Fine);
        }
        // Caught up: nothing to read.
        for s in 21..=40 {
            assert_eq!(g.check(t0 + secs(s), &at(150, 150), |_| true), Verdict::Fine);
        }
        // End unknown (the broker did not answer): nothing counts.
        let unknown = [Progress { id: ID, position: Offset(150), end: None, fresh: false }];
        for s in 41..=60 {
            assert_eq!(g.check(t0 + secs(s), &unknown, |_| true), Verdict::Fine);
        }
    }

    #[test]
    fn time_the_source_was_not_scheduled_does_not_count() {
        let (mut g, t0) = guard();
        assert_eq!(g.check(t0, &at(100, 150), |_| true), Verdict::Fine);
        // A worker blocked for 60 s (e.g. waiting for the store) counts one step.
        assert_eq!(g.check(t0 + secs(60), &at(100, 150), |_| true), Verdict::Fine);
        assert_eq!(g.check(t0 + secs(61), &at(100, 150), |_| true), Verdict::Fine);
        assert!(matches!(g.check(t0 + secs(62), &at(100, 150), |_| true), Verdict::Recover(_)));
    }
}
