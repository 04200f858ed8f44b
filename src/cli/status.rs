//! `citystream status` flags, and how the status is printed (human-readable or `--json`).

use std::time::Duration;

use anyhow::Context;
use clap::{ArgAction, Args};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use super::kafka::KafkaConnectionArgs;
use super::parse_duration;
use crate::kafka::{KafkaOptions, Quiet};
use crate::lake::Lake;
use crate::status::{Health, LakeStatus, PartitionStatus};

/// `citystream status`: what a lake holds and whether its manifest chain is sound.
#[derive(Debug, Clone, Args)]
#[command(disable_help_flag = true)]
pub struct StatusArgs {
    /// Print help.
    #[arg(long, action = ArgAction::Help)]
    pub help: Option<bool>,
    /// The lake: a directory, file:///dir, or s3://bucket/prefix (AWS_* environment for S3).
    #[arg(long, env = "CITYSTREAM_OUTPUT")]
    pub output: String,
    /// Print JSON (for scripts) instead of text.
    #[arg(long)]
    pub json: bool,
    /// Kafka bootstrap brokers: also show the consumer group's lag per partition.
    #[arg(long, env = "CITYSTREAM_BROKERS")]
    pub brokers: Option<String>,
    /// The consumer group citystream commits offsets to (`run --group`).
    #[arg(long, env = "CITYSTREAM_GROUP", default_value = "citystream")]
    pub group: String,
    /// Bound on reaching Kafka.
    #[arg(long, env = "CITYSTREAM_CONNECT_TIMEOUT", value_parser = parse_duration, default_value = "10s")]
    pub connect_timeout: Duration,
    /// Kafka security (TLS, SASL) and librdkafka passthrough.
    #[command(flatten)]
    pub kafka: KafkaConnectionArgs,
}

/// Reads the lake (and the group's lag), prints the status, and returns the exit code: 0
/// healthy, 4 no commit, 5 broken chain. Errors (exit 1): bad flags, an unreachable store or
/// Kafka.
pub fn run(args: &StatusArgs) -> anyhow::Result<u8> {
    let lake = Lake::open(&args.output)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the I/O runtime")?;
    let mut status = rt.block_on(crate::status::read(&lake))?;
    if let Some(brokers) = &args.brokers {
        if brokers.trim().is_empty() {
            return Err(super::ConfigError::new("--brokers", "is empty; give host:port").into());
        }
        let opts = KafkaOptions {
            brokers: brokers.clone(),
            topic_prefix: status.topic_prefix.clone(),
            group: args.group.clone(),
            timeout: args.connect_timeout,
            client: args.kafka.validate()?,
            prefetch: crate::kafka::DEFAULT_PREFETCH,
        };
        status.partitions = group_lag(&opts, &status.partitions)?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status).expect("the status serialises"));
    } else {
        print!("{}", human(&status, args.brokers.as_deref().map(|b| (b, args.group.as_str()))));
    }
    match &status.health {
        Health::Healthy => {}
        Health::Empty(why) | Health::Broken(why) => eprintln!("status: {why}"),
    }
    Ok(status.exit_code())
}

/// Every partition of the five topics with the manifest's position, the group's committed
/// offset, the broker's end and the lag.
fn group_lag(opts: &KafkaOptions, known: &[PartitionStatus]) -> anyhow::Result<Vec<PartitionStatus>> {
    let all = opts.discover()?;
    let marks = opts.watermarks(&all)?;
    let consumer: BaseConsumer<Quiet> = opts.client_config().create_with_context(Quiet)?;
    let mut tpl = TopicPartitionList::new();
    for p in &all {
        tpl.add_partition(&opts.topic(p.stream), p.partition);
    }
    let committed = consumer
        .committed_offsets(tpl, opts.timeout)
        .with_context(|| format!("reading the offsets of consumer group {:?} from {}", opts.group, opts.brokers))?;
    let mut out: Vec<PartitionStatus> = all
        .iter()
        .map(|p| {
            let topic = opts.topic(p.stream);
            let group_offset = committed.find_partition(&topic, p.partition).and_then(|e| match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            });
            let committed_position = known.iter().find(|k| k.topic == topic && k.partition == p.partition).map_or(-1, |k| k.committed_position);
            let end = marks.get(p).map(|w| w.high.get());
            let from = group_offset.or((committed_position >= 0).then_some(committed_position)).or(marks.get(p).map(|w| w.low.get()));
            let lag = end.zip(from).map(|(e, f)| (e - f).max(0));
            PartitionStatus { topic, partition: p.partition, committed_position, group_offset, end, lag }
        })
        .collect();
    out.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    Ok(out)
}

/// The status as text.
pub fn human(s: &LakeStatus, kafka: Option<(&str, &str)>) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let state = match &s.health {
        Health::Healthy => "healthy".to_owned(),
        Health::Empty(why) => format!("EMPTY — {why}"),
        Health::Broken(why) => format!("BROKEN — {why}"),
    };
    let _ = writeln!(o, "lake {}: {state}", s.output);
    let _ = writeln!(o, "  manifests:      {} ({} commits)", s.manifests, s.commits);
    if let Some(c) = &s.last_commit {
        let shape = c.cluster.map_or("cluster shape not recorded".to_owned(), |k| format!("{} process(es) × {} thread(s)", k.processes, k.threads));
        let _ = writeln!(o, "  last commit:    manifest {}, through epoch {} ({} s epochs)", c.sequence, c.epoch, c.window_seconds);
        let _ = writeln!(o, "  event time:     {} .. {} (committed)", c.event_time_from, c.event_time_to);
        let _ = writeln!(o, "  committed at:   {} by run {} ({shape})", c.written_at, c.run);
    }
    let _ = writeln!(o, "  {:<16} {:>12} {:>10} {:>12} {:>8} {:>10}", "stream", "rows", "late", "dead letters", "objects", "MB");
    let (mut rows, mut late, mut dead, mut objects, mut bytes) = (0, 0, 0, 0, 0);
    for t in &s.streams {
        let _ = writeln!(o, "  {:<16} {:>12} {:>10} {:>12} {:>8} {:>10.1}", t.stream, t.rows, t.late_rows, t.dead_letters, t.objects, t.bytes as f64 / 1e6);
        (rows, late, dead, objects, bytes) = (rows + t.rows, late + t.late_rows, dead + t.dead_letters, objects + t.objects, bytes + t.bytes);
    }
    let _ = writeln!(o, "  {:<16} {:>12} {:>10} {:>12} {:>8} {:>10.1}", "total", rows, late, dead, objects, bytes as f64 / 1e6);
    if !s.tables.is_empty() {
        // Tables hold commit manifests only (a claim publishes nothing): compare with the newest commit.
        let newest = s.last_commit.as_ref().map_or(0, |c| c.sequence);
        let _ = writeln!(o, "  Delta tables:");
        for t in &s.tables {
            let behind = if t.manifest < newest {
                format!(" (behind the newest commit manifest {newest}: published at the next commit or start)")
            } else {
                String::new()
            };
            let _ = writeln!(o, "    {:<16} version {:>8}, holds manifest {}{behind}", t.table, t.version, t.manifest);
        }
    }
    if let Some((brokers, group)) = kafka {
        let total: i64 = s.partitions.iter().filter_map(|p| p.lag).sum();
        let _ = writeln!(o, "  consumer group {group:?} at {brokers}: lag {total} records");
        let width = s.partitions.iter().map(|p| p.topic.len() + 1 + p.partition.to_string().len()).max().unwrap_or(0).max(15);
        let _ = writeln!(o, "    {:<width$} {:>12} {:>12} {:>12} {:>10}", "topic/partition", "manifest", "group", "end", "lag");
        let show = |v: Option<i64>| v.map_or("-".to_owned(), |v| v.to_string());
        for p in &s.partitions {
            let name = format!("{}/{}", p.topic, p.partition);
            let manifest = (p.committed_position >= 0).then_some(p.committed_position);
            let _ = writeln!(o, "    {name:<width$} {:>12} {:>12} {:>12} {:>10}", show(manifest), show(p.group_offset), show(p.end), show(p.lag));
        }
    }
    o
}
