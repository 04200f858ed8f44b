//! Epoch arithmetic: timely's timestamp is the index of an event-time window.
//!
//! Epoch `e` covers event times `[e·W, (e+1)·W)` where `W` is `--window`. A watermark `wm`
//! (microseconds) "is in" epoch `epoch_of_watermark(wm)`; an epoch is sealed once the cluster
//! frontier — the least epoch any worker may still produce — is past it.

use crate::contract::Micros;

/// A timely time: the index of an event-time window.
pub type Epoch = u64;

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
    pub fn epoch_of(&self, t: Micros) -> Epoch {
        if t <= 0 { 0 } else { (t / self.window_us) as Epoch }
    }

    /// The epoch a watermark lies in; no watermark yet means epoch 0.
    pub fn epoch_of_watermark(&self, wm: Option<Micros>) -> Epoch {
        wm.map_or(0, |w| self.epoch_of(w))
    }

    /// First event time of an epoch.
    pub fn start_of(&self, e: Epoch) -> Micros {
        (e as i64).saturating_mul(self.window_us)
    }

    /// The watermark implied by the greatest event time seen and a floor from idle advances.
    pub fn watermark(&self, max_event_time: Option<Micros>, floor: Option<Micros>) -> Option<Micros> {
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
        assert_eq!(c.epoch_of(0), 0);
        assert_eq!(c.epoch_of(59_999_999), 0);
        assert_eq!(c.epoch_of(60_000_000), 1);
        assert_eq!(c.epoch_of(-5), 0);
        assert_eq!(c.start_of(3), 180_000_000);
        assert_eq!(c.epoch_of(c.start_of(12_345)), 12_345);
        assert_eq!(c.watermark(None, None), None);
        assert_eq!(c.watermark(Some(300_000_000), None), Some(180_000_000));
        assert_eq!(c.watermark(Some(300_000_000), Some(200_000_000)), Some(200_000_000));
        assert_eq!(c.watermark(None, Some(7)), Some(7));
        assert_eq!(c.epoch_of_watermark(None), 0);
        assert_eq!(c.epoch_of_watermark(Some(180_000_000)), 3);
    }
}
