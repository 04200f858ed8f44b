//! # citystream
//!
//! Smart-city telemetry from Kafka to a queryable Parquet lake on S3, exactly once, on
//! timely-dataflow. See `docs/architecture.md` for the design and its reasons.
//!
//! Modules, roughly in the order data flows through them:
//!
//! | module | what it holds |
//! |---|---|
//! | [`contract`] | the five streams as the original producer sends them: record types, the decoder, the one column table per stream and the Arrow schemas and builders derived from it, timestamps |
//! | [`simulate`] | the fleet simulator (deterministic per seed) and its Kafka producer |
//! | [`kafka`] | every Kafka client's settings, the start-up probe, client-error logging |
//! | [`source`] | the source stage: readers (Kafka, embedded), the reclocking operator (`scope.reclock(..)`) and its state, the row batches it builds, the stall guard and the broker end-offset watcher |
//! | [`reclock`] | one partition's offsets → epochs, and the resume states that make replay exact |
//! | [`epoch`] | epoch arithmetic: windows of event time |
//! | [`ownership`] | which worker owns which partition |
//! | [`sink`] | the sink stage: the operator (`chunks.write_parquet(..)`), Parquet encoding, object uploads |
//! | [`commit`] | the commit stage: the operator (`reports.commit(..)`), the manifest chain, consumer-group offsets |
//! | [`dataflow`] | the wiring of the three stages ([`dataflow::build`]) and what flows between them |
//! | [`delta`] | the Delta Lake tables: publishing committed manifests, statistics, compaction, vacuum |
//! | [`lake`] | `--output` (local, `s3://`, `memory://`), object layout, garbage collection |
//! | [`observe`] | Prometheus metrics, `/healthz` and `/readyz`, logs, progress bars |
//! | [`status`] | `citystream status`: what the manifest chain says about a lake |
//! | [`ddl`] | Athena/Glue statements for the lake |
//! | [`error`] | errors that stop the pipeline, with their class, and the per-process failure slot |
//! | [`clock`] | the wall clock |
//! | [`cli`] | flags and their validation into checked configurations |
//! | [`run`] | one process of the cluster, from configuration to report or error |
#![warn(missing_docs)]

pub mod aggregate;
pub mod cli;
pub mod clock;
pub mod commit;
pub mod contract;
pub mod dataflow;
pub mod ddl;
pub mod delta;
pub mod epoch;
pub mod error;
pub mod kafka;
pub mod lake;
pub mod observe;
pub mod ownership;
pub mod reclock;
pub mod run;
pub mod simulate;
pub mod sink;
pub mod source;
pub mod status;
