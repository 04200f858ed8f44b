//! A small, seedable, portable PRNG, so that `--seed` gives the same records on every machine.
//!
//! The generator is xoshiro256++ (`rand_xoshiro`), its state filled by SplitMix64 from the
//! `u64` seed; ranges are drawn with `rand`'s samplers, which have no modulo bias (a plain
//! `next_u64() % span` favours the low values; `rand`'s integer sampler is off by at most
//! 2⁻⁶⁴). The stream of a seed is fixed by the versions of `rand` and `rand_xoshiro` locked in
//! Cargo.lock and independent of the machine; an upgrade of either may change the simulated
//! values of a seed (only simulated data and the delays the fault tests draw depend on them).

use rand::{Rng as _, RngExt as _, SeedableRng as _};
use rand_xoshiro::Xoshiro256PlusPlus;

/// The simulator's random source: deterministic for a seed, cheap (a few shifts, adds and
/// rotations per draw), not for cryptography.
#[derive(Debug, Clone)]
pub struct Rng(Xoshiro256PlusPlus);

impl Rng {
    /// A generator seeded with `seed`; equal seeds give equal streams.
    pub fn new(seed: u64) -> Self {
        Rng(Xoshiro256PlusPlus::seed_from_u64(seed))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        // `StandardUniform` for f64: 53 random bits scaled into [0, 1), never 1.
        self.0.random::<f64>()
    }

    /// Uniform in `[lo, hi)`, like Python's `random.uniform`.
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        // Not `random_range(lo..hi)`: its rounding may return `hi`; `unit()` stays below 1,
        // so the result stays below `hi` for the ranges the simulator uses.
        lo + (hi - lo) * self.unit()
    }

    /// Uniform integer in `[lo, hi]` inclusive, like Python's `random.randint`.
    ///
    /// # Panics
    ///
    /// If `lo > hi`.
    pub fn int_inclusive(&mut self, lo: i64, hi: i64) -> i64 {
        self.0.random_range(lo..=hi)
    }

    /// One element of a non-empty slice, each equally likely.
    ///
    /// # Panics
    ///
    /// If `items` is empty.
    pub fn choose<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.0.random_range(0..items.len())]
    }

    /// True with probability `p` (never for `p ≤ 0`, always for `p ≥ 1`).
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.unit() < p
    }

    /// A random (version 4) UUID in its canonical lower-case text form, like Python's
    /// `uuid.uuid4()`. Its 122 random bits come from this generator, so it is reproducible by
    /// seed (the `uuid` crate's own `new_v4` would draw from the operating system).
    pub fn uuid4(&mut self) -> String {
        let mut bytes = [0u8; 16];
        self.0.fill_bytes(&mut bytes);
        uuid::Builder::from_random_bytes(bytes).into_uuid().hyphenated().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_in_range() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        for _ in 0..1000 {
            assert_eq!(a.next_u64(), b.next_u64());
            let x = a.uniform(-5.0, 26.0);
            assert!((-5.0..26.0).contains(&x));
            let n = a.int_inclusive(30, 60);
            assert!((30..=60).contains(&n));
            b.uniform(0.0, 1.0);
            b.int_inclusive(0, 1);
        }
        let u = a.uuid4();
        assert_eq!((u.len(), &u[14..15]), (36, "4"));
        assert!(matches!(&u[19..20], "8" | "9" | "a" | "b"));
        assert_eq!(Rng::new(3).uuid4(), Rng::new(3).uuid4(), "UUIDs are reproducible by seed");
        assert_ne!(Rng::new(3).uuid4(), Rng::new(4).uuid4());
    }

    #[test]
    fn ranges_reach_both_ends_evenly() {
        let mut r = Rng::new(11);
        let mut counts = [0u32; 3];
        for _ in 0..30_000 {
            counts[(r.int_inclusive(-1, 1) + 1) as usize] += 1;
        }
        // Each value 10,000 ± 5 %: far outside that is a sampler that favours some values.
        assert!(counts.iter().all(|&c| (9_500..=10_500).contains(&c)), "{counts:?}");
        let items = ["a", "b", "c", "d"];
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..200 {
            seen.insert(*r.choose(&items));
        }
        assert_eq!(seen.len(), items.len(), "every element can be chosen");
        assert!(!r.chance(0.0) && r.chance(1.0));
    }
}
