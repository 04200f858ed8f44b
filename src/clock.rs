//! The wall clock, in one place.
//!
//! Event time drives everything that decides where a record goes (epochs, watermarks, late
//! records); the wall clock only bounds implausible event times (`--max-future`), names probe
//! objects, seeds random name parts, and measures latencies. It never decides what is committed.

use std::time::{SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch by the wall clock (0 before 1970, saturating far after).
pub fn now_micros() -> i64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since.as_micros()).unwrap_or(i64::MAX)
}

/// A random 64-bit number for name parts (run ids, compacted file names): the standard
/// library's randomly keyed hasher, fed the process id and the wall clock.
pub fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_i64(now_micros());
    h.finish()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_wall_clock_is_after_this_code_was_written() {
        // 2026-01-01T00:00:00Z
        assert!(super::now_micros() > 1_767_225_600_000_000);
    }
}
