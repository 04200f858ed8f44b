//! Epoch arithmetic: timely's timestamp is the index of an event-time window.
//!
//! Epoch `e` covers event times `[e·W, (e+1)·W)` where `W` is `--window`. A watermark `wm`
//! (microseconds) "is in" epoch `epoch_of_watermark(wm)`; an epoch is sealed once the cluster
//! frontier — the least epoch any worker may still produce — is past it.

use crate::contract::EventTime;

/// A timely time: the index of an event-time window (see [`EpochClock`]).
///
/// A newtype, not a bare `u64`, so that an epoch cannot be mixed up with an offset, a count or
/// microseconds. It is timely's timestamp (totally ordered; a path summary is a number of
/// epochs to add) and is written to manifests and channels as a plain number.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Epoch(pub u64);

impl Epoch {
    /// The first epoch (event times before the first window; dead letters without a time).
    pub const ZERO: Epoch = Epoch(0);
    /// The greatest epoch.
    pub const MAX: Epoch = Epoch(u64::MAX);

    /// The index as a number.
    pub fn get(self) -> u64 {
        self.0
    }

    /// The epoch after this one.
    pub fn next(self) -> Epoch {
        Epoch(self.0 + 1)
    }

    /// The epoch before this one; `None` for [`Epoch::ZERO`].
    pub fn prev(self) -> Option<Epoch> {
        self.0.checked_sub(1).map(Epoch)
    }

    /// `n` epochs later, or [`Epoch::MAX`] on overflow.
    pub fn saturating_add(self, n: u64) -> Epoch {
        Epoch(self.0.saturating_add(n))
    }

    /// `n` epochs earlier, or [`Epoch::ZERO`] below it.
    pub fn saturating_sub(self, n: u64) -> Epoch {
        Epoch(self.0.saturating_sub(n))
    }

    /// Epochs from `earlier` to `self` (0 if `earlier` is later).
    pub fn since(self, earlier: Epoch) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

impl std::fmt::Display for Epoch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::str::FromStr for Epoch {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Epoch, Self::Err> {
        s.parse().map(Epoch)
    }
}

impl std::ops::Add<u64> for Epoch {
    type Output = Epoch;
    fn add(self, n: u64) -> Epoch {
        Epoch(self.0 + n)
    }
}

impl std::ops::Sub<u64> for Epoch {
    type Output = Epoch;
    fn sub(self, n: u64) -> Epoch {
        Epoch(self.0 - n)
    }
}

impl timely::order::PartialOrder for Epoch {
    fn less_equal(&self, other: &Self) -> bool {
        self <= other
    }
}

impl timely::order::TotalOrder for Epoch {}

impl timely::progress::Timestamp for Epoch {
    type Summary = u64;
    fn minimum() -> Self {
        Epoch::ZERO
    }
}

/// A path summary: the number of epochs a path adds (timely's feedback edges).
impl timely::progress::timestamp::PathSummary<Epoch> for u64 {
    fn results_in(&self, src: &Epoch) -> Option<Epoch> {
        src.0.checked_add(*self).map(Epoch)
    }
    fn followed_by(&self, other: &u64) -> Option<u64> {
        self.checked_add(*other)
    }
}

/// Epochs are totally ordered, so differential dataflow's lattice is the order: the join of two
/// epochs is the later one, the meet the earlier one.
impl differential_dataflow::lattice::Lattice for Epoch {
    fn join(&self, other: &Self) -> Self {
        (*self).max(*other)
    }
    fn meet(&self, other: &Self) -> Self {
        (*self).min(*other)
    }
}

impl timely::progress::timestamp::Refines<()> for Epoch {
    fn to_inner(_: ()) -> Epoch {
        Epoch::ZERO
    }
    fn to_outer(self) {}
    fn summarize(_: u64) {}
}

/// Window length and allowed lateness, both in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EpochClock {
    /// Window (epoch) length, microseconds, > 0.
    pub window_us: i64,
    /// Allowed lateness, microseconds, ≥ 0.
    pub lateness_us: i64,
}

impl EpochClock {
    /// A clock; panics if `window_us` is not positive or `lateness_us` negative (validated earlier).
    pub fn new(window_us: i64, lateness_us: i64) -> Self {
        assert!(window_us > 0 && lateness_us >= 0, "window must be positive and lateness non-negative");
        EpochClock { window_us, lateness_us }
    }

    /// The epoch of an event time. Times before 1970 belong to epoch 0 (the decoder refuses them).
    pub fn epoch_of(&self, t: EventTime) -> Epoch {
        if t <= EventTime::UNIX_EPOCH { Epoch::ZERO } else { Epoch((t.micros() / self.window_us) as u64) }
    }

    /// The epoch a watermark lies in; no watermark yet means epoch 0.
    pub fn epoch_of_watermark(&self, wm: Option<EventTime>) -> Epoch {
        wm.map_or(Epoch::ZERO, |w| self.epoch_of(w))
    }

    /// First event time of an epoch.
    pub fn start_of(&self, e: Epoch) -> EventTime {
        EventTime((e.0 as i64).saturating_mul(self.window_us))
    }

    /// The watermark implied by the greatest event time seen and a floor from idle advances.
    pub fn watermark(&self, max_event_time: Option<EventTime>, floor: Option<EventTime>) -> Option<EventTime> {
        let from_data = max_event_time.map(|t| t.saturating_sub(self.lateness_us));
        match (from_data, floor) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_and_watermarks() {
        let c = EpochClock::new(60_000_000, 120_000_000);
        assert_eq!(c.epoch_of(EventTime(0)), Epoch(0));
        assert_eq!(c.epoch_of(EventTime(59_999_999)), Epoch(0));
        assert_eq!(c.epoch_of(EventTime(60_000_000)), Epoch(1));
        assert_eq!(c.epoch_of(EventTime(-5)), Epoch(0));
        assert_eq!(c.start_of(Epoch(3)), EventTime(180_000_000));
        assert_eq!(c.epoch_of(c.start_of(Epoch(12_345))), Epoch(12_345));
        assert_eq!(c.watermark(None, None), None);
        assert_eq!(c.watermark(Some(EventTime(300_000_000)), None), Some(EventTime(180_000_000)));
        assert_eq!(c.watermark(Some(EventTime(300_000_000)), Some(EventTime(200_000_000))), Some(EventTime(200_000_000)));
        assert_eq!(c.watermark(None, Some(EventTime(7))), Some(EventTime(7)));
        assert_eq!(c.epoch_of_watermark(None), Epoch::ZERO);
        assert_eq!(c.epoch_of_watermark(Some(EventTime(180_000_000))), Epoch(3));
    }
}
