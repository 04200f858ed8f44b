//! The command line: clap definitions, then `validate()` into checked configuration.
//!
//! Every flag can also be set by a `CITYSTREAM_…` environment variable. Validation happens
//! before any work starts, and every error names the flag and says what would be accepted.

pub mod kafka;
pub mod maintain;
pub mod run;
pub mod simulate;
pub mod status;

use std::time::Duration;

use clap::{Parser, Subcommand};

pub use crate::error::ConfigError;

/// citystream: smart-city telemetry from Kafka to a Parquet lake on S3, exactly once.
#[derive(Debug, Parser)]
#[command(name = "citystream", version, about, disable_help_subcommand = true, disable_help_flag = true)]
pub struct Cli {
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help, global = false)]
    pub help: Option<bool>,
    /// Log lines as human-readable text (coloured only on a terminal) or one JSON object per
    /// line; RUST_LOG filters them as usual.
    #[arg(long, global = true, env = "CITYSTREAM_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: crate::observe::logs::LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands: `simulate`, `run`, `ddl`, `compact`, `vacuum` and `status`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Simulate the fleet: produce the five telemetry streams into Kafka.
    Simulate(Box<simulate::SimulateArgs>),
    /// Run one process of the cluster: Kafka (or the embedded simulator) → Parquet lake.
    Run(Box<run::RunArgs>),
    /// Print Athena/Glue CREATE EXTERNAL TABLE statements for the lake's Delta tables.
    Ddl(DdlArgs),
    /// Rewrite the small files of sealed hours into right-sized ones (Delta, dataChange=false).
    Compact(maintain::CompactArgs),
    /// Delete files no Delta table version needs any more, after a retention period.
    Vacuum(maintain::VacuumArgs),
    /// Show what a lake holds: the last commit, rows and objects per stream, the manifest
    /// chain's health, and with --brokers the consumer group's lag.
    Status(Box<status::StatusArgs>),
}

/// `citystream ddl` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct DdlArgs {
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    pub help: Option<bool>,
    /// The lake's location, e.g. s3://bucket/prefix.
    #[arg(long, env = "CITYSTREAM_OUTPUT")]
    pub output: String,
    /// Glue/Athena database name.
    #[arg(long, env = "CITYSTREAM_DATABASE", default_value = "citystream")]
    pub database: String,
    /// Print Hive-layout tables with partition projection instead of Delta tables (they list
    /// folders, so they also see objects not yet or no longer committed).
    #[arg(long)]
    pub hive: bool,
}

/// Parses a human duration such as `60s`, `2m`, `1h30m` or `500ms`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| format!("{s:?} is not a duration like 60s, 2m or 1h30m ({e})"))
}

/// Parses a size in bytes: a whole number with an optional unit — `B`, `kB`/`MB`/`GB` (powers of
/// 1000) or `KiB`/`MiB`/`GiB` (powers of 1024), e.g. `128MiB`, `64MB`, `1048576`.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "kB" | "KB" => 1000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        other => return Err(format!("{s:?}: unknown unit {other:?} (use B, kB, MB, GB, KiB, MiB or GiB, e.g. 128MiB)")),
    };
    let n: u64 = digits.parse().map_err(|_| format!("{s:?} is not a size like 128MiB or 64MB"))?;
    n.checked_mul(scale).ok_or_else(|| format!("{s:?} is too large"))
}

/// Checks that a fraction lies in [0, 1].
pub fn check_fraction(flag: &'static str, x: f64) -> Result<f64, ConfigError> {
    if (0.0..=1.0).contains(&x) { Ok(x) } else { Err(ConfigError::new(flag, format!("{x} is not a fraction between 0 and 1"))) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_fractions() {
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert!(parse_duration("soon").unwrap_err().contains("soon"));
        assert!(check_fraction("--late-fraction", 1.5).unwrap_err().to_string().contains("--late-fraction"));
        assert_eq!(parse_bytes("128MiB").unwrap(), 128 << 20);
        assert_eq!(parse_bytes("64 MB").unwrap(), 64_000_000);
        assert_eq!(parse_bytes("4096").unwrap(), 4096);
        assert!(parse_bytes("12 parsecs").unwrap_err().contains("unit"));
        assert!(parse_bytes("MiB").unwrap_err().contains("not a size"));
    }

    #[test]
    fn parsed_and_checked_configurations_print_no_secret() {
        use clap::Parser;
        let mark = "secret-MARK-91d2";
        for command in ["run", "simulate"] {
            let cli = Cli::try_parse_from(["citystream", command, "--brokers", "127.0.0.1:9092", "--kafka-option", &format!("sasl.password={mark}")]).unwrap();
            assert!(!format!("{cli:?}").contains(mark), "{cli:?}");
            let shown = match &cli.command {
                Command::Run(a) => format!("{:?}", a.validate().unwrap()),
                Command::Simulate(a) => format!("{:?}", a.validate().unwrap()),
                Command::Ddl(_) | Command::Compact(_) | Command::Vacuum(_) | Command::Status(_) => unreachable!(),
            };
            assert!(!shown.contains(mark) && shown.contains("sasl.password=***"), "{shown}");
        }
    }
}
