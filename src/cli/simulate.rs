//! `citystream simulate` flags.

use std::time::Duration;

use clap::Args;

use super::kafka::KafkaConnectionArgs;
use super::{ConfigError, check_fraction, parse_duration};
use crate::contract::timestamp::parse_timestamp;
use crate::simulate::producer::ProduceOptions;
use crate::simulate::{FleetConfig, KeyMode, TimeModel, parse_place};

// The key mode is the simulator's; here it only learns how to be a flag.
impl clap::ValueEnum for KeyMode {
    fn value_variants<'a>() -> &'a [Self] {
        &[KeyMode::Device, KeyMode::Id]
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(match self {
            KeyMode::Device => "device",
            KeyMode::Id => "id",
        }))
    }
}

// The time model is the simulator's too.
impl clap::ValueEnum for TimeModel {
    fn value_variants<'a>() -> &'a [Self] {
        &[TimeModel::Fleet, TimeModel::Original]
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(match self {
            TimeModel::Fleet => "fleet",
            TimeModel::Original => "original",
        }))
    }
}

/// Produce the five streams of a simulated fleet into Kafka.
#[derive(Debug, Clone, Args)]
pub struct SimulateArgs {
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    pub help: Option<bool>,
    /// Kafka bootstrap brokers, host:port[,host:port…].
    #[arg(long, env = "CITYSTREAM_BROKERS", default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// Prefix of the five topic names (topic = prefix + stream name).
    #[arg(long, env = "CITYSTREAM_TOPIC_PREFIX", default_value = "")]
    pub topic_prefix: String,
    /// Number of vehicles in the fleet.
    #[arg(long, env = "CITYSTREAM_VEHICLES", default_value_t = 1)]
    pub vehicles: u32,
    /// Total records to produce over the five topics (default: one journey of the fleet).
    #[arg(long, env = "CITYSTREAM_EVENTS", conflicts_with = "duration")]
    pub events: Option<u64>,
    /// Produce for this long instead, e.g. 30s or 5m.
    #[arg(long, env = "CITYSTREAM_DURATION", value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Records per second (0: as fast as possible).
    #[arg(long, env = "CITYSTREAM_RATE", default_value_t = 0)]
    pub rate: u64,
    /// Partitions of the topics that are created because they are missing.
    #[arg(long, env = "CITYSTREAM_PARTITIONS", default_value_t = 6)]
    pub partitions: i32,
    /// Kafka key: the device id (keeps a vehicle's records in order) or the record id (the original).
    #[arg(long, env = "CITYSTREAM_KEY", value_enum, default_value = "device")]
    pub key: KeyMode,
    /// How event time advances. fleet: one clock for the whole fleet, advancing 30–60 s each time
    /// every vehicle has made a step (vehicles of a round stamp within the same second). original:
    /// the original producer's, one clock per device starting at --start and advancing a whole
    /// 30–60 s per step of that device, the step's five records sharing its timestamp; with a few
    /// devices a one-minute window then holds only a few records per stream.
    #[arg(long, env = "CITYSTREAM_TIME_MODEL", value_enum, default_value = "fleet")]
    pub time_model: TimeModel,
    /// Fraction of records to stamp 10–60 minutes in the past (for tests).
    #[arg(long, env = "CITYSTREAM_LATE_FRACTION", default_value_t = 0.0)]
    pub late_fraction: f64,
    /// Fraction of records to corrupt (for tests).
    #[arg(long, env = "CITYSTREAM_MALFORMED_FRACTION", default_value_t = 0.0)]
    pub malformed_fraction: f64,
    /// Seed of every random choice: the same seed gives the same records.
    #[arg(long, env = "CITYSTREAM_SEED", default_value_t = 42)]
    pub seed: u64,
    /// Where the fleet sets off: a city name or latitude,longitude.
    #[arg(long, env = "CITYSTREAM_FROM", default_value = "london")]
    pub from: String,
    /// Where it goes.
    #[arg(long, env = "CITYSTREAM_TO", default_value = "birmingham")]
    pub to: String,
    /// Event time of the first step, ISO-8601 (naive = UTC).
    #[arg(long, env = "CITYSTREAM_START", default_value = "2025-03-01T08:00:00.123456")]
    pub start: String,
    /// Give up reaching the brokers after this long.
    #[arg(long, env = "CITYSTREAM_CONNECT_TIMEOUT", value_parser = parse_duration, default_value = "10s")]
    pub connect_timeout: Duration,
    /// Kafka security (TLS, SASL) and librdkafka passthrough.
    #[command(flatten)]
    pub kafka: KafkaConnectionArgs,
}

impl SimulateArgs {
    /// Checks the flags and splits them into the fleet's and the producer's configuration.
    pub fn validate(&self) -> Result<(FleetConfig, ProduceOptions), ConfigError> {
        if self.vehicles == 0 {
            return Err(ConfigError::new("--vehicles", "must be at least 1"));
        }
        if self.partitions < 1 {
            return Err(ConfigError::new("--partitions", "must be at least 1"));
        }
        if self.brokers.trim().is_empty() {
            return Err(ConfigError::new("--brokers", "is empty; give host:port"));
        }
        let fleet = FleetConfig {
            vehicles: self.vehicles,
            seed: self.seed,
            start: parse_timestamp(&self.start, 0).map_err(|e| ConfigError::new("--start", e.to_string()))?,
            from: parse_place(&self.from).map_err(|e| ConfigError::new("--from", e))?,
            to: parse_place(&self.to).map_err(|e| ConfigError::new("--to", e))?,
            steps_per_journey: 100,
            late_fraction: check_fraction("--late-fraction", self.late_fraction)?,
            malformed_fraction: check_fraction("--malformed-fraction", self.malformed_fraction)?,
            key: self.key,
            time_model: self.time_model,
        };
        let events = match (self.events, self.duration) {
            (None, None) => Some(crate::simulate::Fleet::new(fleet.clone()).journey_records()),
            (events, _) => events,
        };
        let produce = ProduceOptions {
            brokers: self.brokers.clone(),
            topic_prefix: self.topic_prefix.clone(),
            events,
            duration: self.duration,
            rate: self.rate,
            partitions: self.partitions,
            connect_timeout: self.connect_timeout,
            kafka: self.kafka.validate()?,
            progress: true,
        };
        Ok((fleet, produce))
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use crate::cli::run::SourceConfig;
    use crate::cli::{Cli, Command};
    use crate::simulate::{KeyMode, TimeModel};

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("citystream").chain(args.iter().copied()))
    }

    #[test]
    fn time_model_flag() {
        let model = |args: &[&str]| match parse(args).unwrap().command {
            Command::Simulate(a) => a.validate().unwrap().0.time_model,
            Command::Run(a) => match a.validate().unwrap().source {
                SourceConfig::Embedded { fleet, .. } => fleet.time_model,
                // CITYSTREAM_BROKERS in the environment: the flag is parsed all the same.
                SourceConfig::Kafka(_) => a.time_model,
            },
            Command::Ddl(_) | Command::Status(_) => unreachable!(),
        };
        assert_eq!(model(&["simulate"]), TimeModel::Fleet);
        assert_eq!(model(&["simulate", "--time-model", "original"]), TimeModel::Original);
        assert_eq!(model(&["simulate", "--time-model", "fleet"]), TimeModel::Fleet);
        assert_eq!(model(&["run"]), TimeModel::Fleet);
        assert_eq!(model(&["run", "--time-model", "original"]), TimeModel::Original);
        let cli = parse(&["simulate", "--time-model", "original", "--key", "id", "--vehicles", "3"]).unwrap();
        let Command::Simulate(a) = cli.command else { unreachable!() };
        let (fleet, _) = a.validate().unwrap();
        assert_eq!((fleet.time_model, fleet.key, fleet.vehicles), (TimeModel::Original, KeyMode::Id, 3));
        let e = parse(&["simulate", "--time-model", "python"]).unwrap_err().to_string();
        assert!(e.contains("--time-model") && e.contains("fleet") && e.contains("original"), "{e}");
    }
}
