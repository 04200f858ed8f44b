//! `citystream run` flags: timely's cluster flags, the source, the output, the clock.

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Args};

use super::kafka::KafkaConnectionArgs;
use super::{ConfigError, check_fraction, parse_bytes, parse_duration};
use crate::aggregate::Selection;
use crate::contract::EventTime;
use crate::contract::timestamp::parse_timestamp;
use crate::epoch::EpochClock;
use crate::kafka::KafkaOptions;
use crate::simulate::FleetConfig;
use crate::sink::encode::Codec;
use crate::source::stall::StallConfig;

/// One process of a citystream cluster (timely's -w/-n/-p/-h flags; help is --help only).
#[derive(Debug, Clone, Args)]
#[command(disable_help_flag = true)]
pub struct RunArgs {
    /// Print help.
    #[arg(long, action = ArgAction::Help)]
    pub help: Option<bool>,
    /// Worker threads in this process.
    #[arg(short = 'w', long = "threads", env = "CITYSTREAM_THREADS", default_value_t = 1)]
    pub threads: usize,
    /// Processes in the cluster.
    #[arg(short = 'n', long = "processes", env = "CITYSTREAM_PROCESSES", default_value_t = 1)]
    pub processes: usize,
    /// This process's index, 0..n.
    #[arg(short = 'p', long = "process", env = "CITYSTREAM_PROCESS", default_value_t = 0)]
    pub process: usize,
    /// Hostfile: one host:port per line, line i for process i (needed when -n > 1).
    #[arg(short = 'h', long = "hostfile", env = "CITYSTREAM_HOSTFILE")]
    pub hostfile: Option<PathBuf>,
    /// Kafka bootstrap brokers; without them the embedded simulator is the source.
    #[arg(long, env = "CITYSTREAM_BROKERS")]
    pub brokers: Option<String>,
    /// Prefix of the five topic names.
    #[arg(long, env = "CITYSTREAM_TOPIC_PREFIX", default_value = "")]
    pub topic_prefix: String,
    /// Consumer group that receives committed offsets (for lag monitoring).
    #[arg(long, env = "CITYSTREAM_GROUP", default_value = "citystream")]
    pub group: String,
    /// Output: a directory, file:///dir, or s3://bucket/prefix (AWS_* environment for S3).
    #[arg(long, env = "CITYSTREAM_OUTPUT", default_value = "./lake")]
    pub output: String,
    /// Epoch (window) length in event time.
    #[arg(long, env = "CITYSTREAM_WINDOW", value_parser = parse_duration, default_value = "60s")]
    pub window: Duration,
    /// Allowed lateness: the watermark trails the greatest event time by this much.
    #[arg(long, env = "CITYSTREAM_LATENESS", value_parser = parse_duration, default_value = "2m")]
    pub lateness: Duration,
    /// Read every partition up to its high watermark at start, seal everything, commit, exit.
    #[arg(long, env = "CITYSTREAM_UNTIL_CAUGHT_UP")]
    pub until_caught_up: bool,
    /// Bound on reaching Kafka at start.
    #[arg(long, env = "CITYSTREAM_CONNECT_TIMEOUT", value_parser = parse_duration, default_value = "10s")]
    pub connect_timeout: Duration,
    /// Kafka security (TLS, SASL) and librdkafka passthrough.
    #[command(flatten)]
    pub kafka: KafkaConnectionArgs,
    /// Values larger than this go to the dead-letter output unread.
    #[arg(long, env = "CITYSTREAM_MAX_VALUE_BYTES", default_value_t = 1 << 20)]
    pub max_value_bytes: usize,
    /// Event times further than this ahead of the wall clock go to the dead-letter output
    /// (they would drag the watermark forward and make everything after them late).
    #[arg(long, env = "CITYSTREAM_MAX_FUTURE", value_parser = parse_duration, default_value = "1d")]
    pub max_future: Duration,
    /// Event times before this instant go to the dead-letter output (ISO-8601; no zone = UTC).
    #[arg(long, env = "CITYSTREAM_NOT_BEFORE", value_parser = parse_instant, default_value = "2000-01-01T00:00:00Z")]
    pub not_before: EventTime,
    /// Parquet compression of the columns where it pays (ids, timestamps, offsets, text; columns of
    /// few values and float measurements are stored uncompressed): zstd, zstd:<level 1-22>, snappy or none.
    #[arg(long, env = "CITYSTREAM_COMPRESSION", value_parser = Codec::parse, default_value = "zstd:1")]
    pub compression: Codec,
    /// How often a commit is cut (wall clock): every sealed epoch since the last one is
    /// committed in one manifest, and each process writes one object per (stream, kind, hour) of
    /// it. The trade-off between freshness (committed data is at most about this old) and
    /// object size, like Spark's trigger interval or Flink's checkpoint interval. At shutdown
    /// and at the end of --until-caught-up everything is committed at once.
    #[arg(long, env = "CITYSTREAM_COMMIT_INTERVAL", value_parser = parse_duration, default_value = "10s")]
    pub commit_interval: Duration,
    /// An object that reaches this size is closed (the commit continues in a new object) and
    /// the next commit is cut at once. Units B, kB, MB, GB, KiB, MiB, GiB.
    #[arg(long, env = "CITYSTREAM_TARGET_OBJECT_SIZE", value_parser = parse_bytes, default_value = "128MiB")]
    pub target_object_size: u64,
    /// Fetched records (as fetched, i.e. compressed) the Kafka client may hold ahead of the
    /// workers, per process: split evenly over the partitions the process reads, each between
    /// 64 KiB and 1 MiB. Decompressed they take several times this much memory. Units as for
    /// --target-object-size.
    #[arg(long, env = "CITYSTREAM_KAFKA_PREFETCH", value_parser = parse_bytes, default_value = "8MiB")]
    pub kafka_prefetch: u64,
    /// A partition that delivers nothing for this long of reading, although the broker holds
    /// records beyond its position, is stalled: logged as a warning, and the Kafka client is
    /// re-created at its next offset (again after every further period of this length).
    #[arg(long, env = "CITYSTREAM_STALL_TIMEOUT", value_parser = parse_duration, default_value = "60s")]
    pub stall_timeout: Duration,
    /// A partition stalled for this long despite re-created clients stops the process with an
    /// error (exit code 3), so that its supervisor restarts the cluster from the last manifest.
    #[arg(long, env = "CITYSTREAM_STALL_EXIT", value_parser = parse_duration, default_value = "5m")]
    pub stall_exit: Duration,
    /// Aggregate tables to maintain under <output>/agg/: none, all, or a comma-separated list of
    /// vehicle_speed_minute, weather_hourly, emergency_hourly, vehicle_latest.
    #[arg(long, env = "CITYSTREAM_AGGREGATES", value_parser = Selection::parse, default_value = "all")]
    pub aggregates: Selection,
    /// Aggregate partitions whose hour ended this long (event time) before the watermark leave
    /// memory; a record for one later loads its rows back from the table first.
    #[arg(long, env = "CITYSTREAM_AGGREGATE_HORIZON", value_parser = parse_duration, default_value = "6h")]
    pub aggregate_horizon: Duration,
    /// Serve /metrics (Prometheus), /healthz and /readyz over HTTP at HOST:PORT (e.g.
    /// 0.0.0.0:9100); off when not given.
    #[arg(long, env = "CITYSTREAM_METRICS_ADDR", value_name = "HOST:PORT")]
    pub metrics_addr: Option<String>,
    /// Embedded source: vehicles in the simulated fleet (one journey each).
    #[arg(long, env = "CITYSTREAM_VEHICLES", default_value_t = 200)]
    pub vehicles: u32,
    /// Embedded source: virtual partitions per stream.
    #[arg(long, env = "CITYSTREAM_EMBEDDED_PARTITIONS", default_value_t = 4)]
    pub embedded_partitions: i32,
    /// Embedded source: how event time advances, fleet (one clock for the fleet) or original (the
    /// original producer's: one clock per device, 30–60 s per step); see `simulate --help`.
    #[arg(long, env = "CITYSTREAM_TIME_MODEL", value_enum, default_value = "fleet")]
    pub time_model: crate::simulate::TimeModel,
    /// Embedded source: seed.
    #[arg(long, env = "CITYSTREAM_SEED", default_value_t = 42)]
    pub seed: u64,
    /// Embedded source: fraction of late records.
    #[arg(long, env = "CITYSTREAM_LATE_FRACTION", default_value_t = 0.002)]
    pub late_fraction: f64,
    /// Embedded source: fraction of malformed records.
    #[arg(long, env = "CITYSTREAM_MALFORMED_FRACTION", default_value_t = 0.001)]
    pub malformed_fraction: f64,
}

/// Parses an ISO-8601 instant for a flag (a timestamp without a zone is UTC).
fn parse_instant(s: &str) -> Result<EventTime, String> {
    parse_timestamp(s.trim(), 0).map_err(|e| e.to_string())
}

/// Where records come from.
#[derive(Debug, Clone)]
pub enum SourceConfig {
    /// A Kafka cluster.
    Kafka(KafkaOptions),
    /// The in-process simulator.
    Embedded {
        /// The simulated fleet whose records the embedded source generates.
        fleet: FleetConfig,
        /// Virtual partitions per stream.
        partitions: i32,
    },
}

/// A checked `run` configuration.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Threads per process.
    pub threads: usize,
    /// Processes.
    pub processes: usize,
    /// This process.
    pub process: usize,
    /// host:port of every process (empty for one process).
    pub addresses: Vec<String>,
    /// Where records come from: Kafka or the embedded simulator.
    pub source: SourceConfig,
    /// The `--output` URL (local directory, `s3://` or `memory://`).
    pub output: String,
    /// Window and lateness.
    pub clock: EpochClock,
    /// Stop at the high watermarks taken at start.
    pub until_caught_up: bool,
    /// Decoder limits.
    pub max_value_bytes: usize,
    /// Event times before this are implausible.
    pub not_before: EventTime,
    /// Event times further than this ahead of the wall clock are implausible.
    pub max_future: Duration,
    /// Parquet page compression.
    pub compression: Codec,
    /// When a partition counts as stalled, and when the process gives up on it.
    pub stall: StallConfig,
    /// Wall-clock time between commits.
    pub commit_interval: Duration,
    /// Size at which an object is closed and a commit is asked for.
    pub target_object_size: u64,
    /// Where the metrics and health endpoint listens (`--metrics-addr`), if anywhere.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// The aggregate tables maintained (`--aggregates`).
    pub aggregates: Selection,
    /// How far behind the watermark aggregate partitions stay in memory (`--aggregate-horizon`).
    pub aggregate_horizon: Duration,
}

/// The smallest `--target-object-size`: below it, a Parquet footer and the per-object request
/// costs outweigh the rows.
pub const MIN_TARGET_OBJECT_SIZE: u64 = 1 << 20;

impl RunArgs {
    /// Checks every flag; errors name the flag and what would be accepted.
    pub fn validate(&self) -> Result<RunConfig, ConfigError> {
        if self.threads == 0 {
            return Err(ConfigError::new("-w/--threads", "must be at least 1"));
        }
        if self.processes == 0 {
            return Err(ConfigError::new("-n/--processes", "must be at least 1"));
        }
        if self.process >= self.processes {
            return Err(ConfigError::new("-p/--process", format!("{} is not below -n/--processes {}", self.process, self.processes)));
        }
        let addresses = match (&self.hostfile, self.processes) {
            (None, 1) => Vec::new(),
            (None, n) => return Err(ConfigError::new("-h/--hostfile", format!("is required with -n {n}: a file with one host:port per process"))),
            (Some(path), n) => {
                let text = std::fs::read_to_string(path).map_err(|e| ConfigError::new("-h/--hostfile", format!("cannot read {}: {e}", path.display())))?;
                let lines: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_owned).collect();
                if lines.len() < n {
                    return Err(ConfigError::new("-h/--hostfile", format!("{} has {} addresses but -n is {n}", path.display(), lines.len())));
                }
                if let Some(bad) = lines.iter().find(|l| l.rsplit_once(':').is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())) {
                    return Err(ConfigError::new("-h/--hostfile", format!("{bad:?} in {} is not host:port", path.display())));
                }
                lines.into_iter().take(n).collect()
            }
        };
        if self.window < Duration::from_millis(1) {
            return Err(ConfigError::new("--window", "must be at least 1ms"));
        }
        let clock = EpochClock::new(self.window.as_micros() as i64, self.lateness.as_micros() as i64);
        if self.stall_timeout < Duration::from_millis(100) {
            return Err(ConfigError::new("--stall-timeout", "must be at least 100ms"));
        }
        if self.stall_exit <= self.stall_timeout {
            return Err(ConfigError::new(
                "--stall-exit",
                format!("must be longer than --stall-timeout ({:?}), which first tries to re-create the Kafka client", self.stall_timeout),
            ));
        }
        if self.commit_interval < Duration::from_millis(10) {
            return Err(ConfigError::new("--commit-interval", "must be at least 10ms"));
        }
        if !self.aggregates.is_empty() && self.aggregate_horizon < self.lateness {
            return Err(ConfigError::new(
                "--aggregate-horizon",
                format!("must be at least --lateness ({:?}): on-time records of a partition would find it evicted", self.lateness),
            ));
        }
        if self.target_object_size < MIN_TARGET_OBJECT_SIZE {
            return Err(ConfigError::new("--target-object-size", format!("must be at least 1MiB, got {} bytes", self.target_object_size)));
        }
        if self.kafka_prefetch < crate::kafka::MIN_PARTITION_PREFETCH_KIB * 1024 {
            return Err(ConfigError::new("--kafka-prefetch", format!("must be at least 64KiB, got {} bytes", self.kafka_prefetch)));
        }
        let metrics_addr = match self.metrics_addr.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(a) => Some(crate::observe::http::resolve(a).map_err(|e| ConfigError::new("--metrics-addr", e))?),
        };
        if self.output.trim().is_empty() {
            return Err(ConfigError::new("--output", "is empty; give a directory or s3://bucket/prefix"));
        }
        let source = match &self.brokers {
            Some(b) if b.trim().is_empty() => return Err(ConfigError::new("--brokers", "is empty; give host:port")),
            Some(brokers) => SourceConfig::Kafka(KafkaOptions {
                brokers: brokers.clone(),
                topic_prefix: self.topic_prefix.clone(),
                group: self.group.clone(),
                timeout: self.connect_timeout,
                client: self.kafka.validate()?,
                prefetch: self.kafka_prefetch,
            }),
            None => {
                if self.vehicles == 0 {
                    return Err(ConfigError::new("--vehicles", "must be at least 1"));
                }
                if self.embedded_partitions < 1 {
                    return Err(ConfigError::new("--embedded-partitions", "must be at least 1"));
                }
                SourceConfig::Embedded {
                    fleet: FleetConfig {
                        vehicles: self.vehicles,
                        seed: self.seed,
                        late_fraction: check_fraction("--late-fraction", self.late_fraction)?,
                        malformed_fraction: check_fraction("--malformed-fraction", self.malformed_fraction)?,
                        time_model: self.time_model,
                        ..FleetConfig::default()
                    },
                    partitions: self.embedded_partitions,
                }
            }
        };
        // The embedded journey is bounded: it always runs until caught up.
        let until_caught_up = self.until_caught_up || matches!(source, SourceConfig::Embedded { .. });
        Ok(RunConfig {
            threads: self.threads,
            processes: self.processes,
            process: self.process,
            addresses,
            source,
            output: self.output.clone(),
            clock,
            until_caught_up,
            max_value_bytes: self.max_value_bytes,
            not_before: self.not_before,
            max_future: self.max_future,
            compression: self.compression,
            stall: StallConfig { timeout: self.stall_timeout, give_up: self.stall_exit },
            commit_interval: self.commit_interval,
            target_object_size: self.target_object_size,
            metrics_addr,
            aggregates: self.aggregates.clone(),
            aggregate_horizon: self.aggregate_horizon,
        })
    }
}
