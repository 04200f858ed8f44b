//! # citystream
//!
//! Smart-city telemetry from Kafka to a queryable Parquet lake on S3, exactly once, on
//! timely-dataflow. See `docs/architecture.md` for the design and its reasons.
//!
//! Modules, in the order data flows through them:
//! - [`contract`]: the five streams as the original producer sends them, decoding and schemas.
//! - [`simulate`]: the fleet simulator (and its Kafka producer).
#![warn(missing_docs)]

pub mod cli;
pub mod clock;
pub mod commit;
pub mod contract;
pub mod dataflow;
pub mod ddl;
pub mod epoch;
pub mod error;
pub mod kafka;
pub mod lake;
pub mod ownership;
pub mod reclock;
pub mod run;
pub mod simulate;
pub mod sink;
pub mod source;
