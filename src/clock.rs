//! The wall clock, in one place.
//!
//! Event time drives everything that decides where a record goes (epochs, watermarks, late
//! records); the wall clock only bounds implausible event times (`--max-future`), names probe
//! objects, and measures latencies. It never decides what is committed.

use std::time::{SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch by the wall clock (0 before 1970, saturating far after).
pub fn now_micros() -> i64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since.as_micros()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_wall_clock_is_after_this_code_was_written() {
        // 2026-01-01T00:00:00Z
        assert!(super::now_micros() > 1_767_225_600_000_000);
    }
}
