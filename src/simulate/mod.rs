//! The fleet simulator: the five streams of the original producer, at scale.
//!
//! [`fleet`] generates records (pure, deterministic for a seed); [`producer`] writes them to
//! Kafka. The embedded source of `citystream run` uses [`fleet`] directly, without Kafka.

pub mod fleet;
pub mod producer;
pub mod rng;

pub use fleet::{CITIES, Fleet, FleetConfig, INJECTED_HEADER, Injected, KeyMode, SimRecord, TimeModel, parse_place};
