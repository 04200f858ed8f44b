//! The raw-consume ceiling: how fast this machine can read the five topics at all.
//!
//! `T` threads, each with its own rdkafka `BaseConsumer` manually assigned to its share of the
//! partitions (citystream's ownership rule: sorted pairs, pair `i` to thread `i mod T`), with
//! citystream's own consumer settings (`KafkaOptions::reader_config` with `--kafka-prefetch`'s
//! default, split the same way, so prefetch and fetch sizes match), read every record from the
//! beginning up to the high watermark each partition had at start. Nothing is parsed: it counts
//! records and key + value bytes. That is the upper bound for any consumer of these topics on
//! this machine, citystream included. It reads in batches through librdkafka's batch API
//! ([`citystream::kafka::batch`]), as citystream's reader does.
//!
//! Run: `cargo bench --bench raw_consume -- --brokers HOST:PORT --topic-prefix P --threads T`
//! (`--kafka-option KEY=VALUE`, repeatable, applies a librdkafka setting on top, as `run` does;
//! `--delete-topics` deletes the five topics of the prefix instead, for the clean-up)
//! (`benches/e2e.sh` does, on the same topics as citystream and Spark). Prints one JSON object
//! on stdout: `{"records", "value_bytes", "key_bytes", "seconds", "threads", "partitions"}`.
//!
//! Under `cargo test --all-targets` (no `--bench` argument) it runs a smoke version instead: when
//! `CITYSTREAM_BROKERS` is set it produces 1,000 records into fresh topics, reads them back with
//! two threads and checks the counts, so the benchmark cannot rot unnoticed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use citystream::contract::Stream;
use citystream::kafka::batch::BatchQueue;
use citystream::kafka::settings::{KafkaClientSettings, KafkaOption};
use citystream::kafka::{DEFAULT_PREFETCH, KafkaOptions, Watermarks};
use citystream::ownership::{PartitionId, owned};
use citystream::simulate::FleetConfig;
use citystream::simulate::producer::{ProduceOptions, produce};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

/// Messages taken from librdkafka per batch (citystream's reader takes its poll budget split
/// over its partitions; a few hundred either way).
const BATCH: usize = 1024;

/// What the threads read, summed.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    records: u64,
    value_bytes: u64,
    key_bytes: u64,
}

/// Reads `parts` from their low to their high watermarks at start (the start given as an explicit
/// offset, as citystream does: librdkafka's `BEGINNING` costs ≈ 0.5 s more).
fn read(opts: &KafkaOptions, parts: &[PartitionId], threads: usize, marks: &HashMap<PartitionId, Watermarks>, client_id: &str) -> Result<Counts, KafkaError> {
    let mut counts = Counts::default();
    // Partitions still to finish, by (topic, partition) → (stream partition, end).
    let mut left: HashMap<(String, i32), i64> = HashMap::new();
    let mut tpl = TopicPartitionList::new();
    for p in parts {
        let Watermarks { low, high: end } = marks[p];
        if end > low {
            left.insert((opts.topic(p.stream), p.partition), end.get());
            tpl.add_partition_offset(&opts.topic(p.stream), p.partition, Offset::Offset(low.get()))?;
        }
    }
    if left.is_empty() {
        return Ok(counts);
    }
    let consumer: Arc<BaseConsumer> = Arc::new(opts.reader_config(threads, parts.len()).set("client.id", client_id).create()?);
    consumer.assign(&tpl)?;
    let mut queue = BatchQueue::consumer(&consumer).ok_or_else(|| KafkaError::Subscription("no consumer queue".into()))?;
    let deadline = Instant::now() + Duration::from_secs(3600);
    let mut failed = None;
    while !left.is_empty() && failed.is_none() {
        assert!(Instant::now() < deadline, "raw consumer: not done after an hour; partitions left: {left:?}");
        queue.consume(BATCH, Duration::from_millis(100), |m| match m.error() {
            None => {
                counts.records += 1;
                counts.value_bytes += m.payload().len() as u64;
                counts.key_bytes += m.key().len() as u64;
                let key = (m.topic().to_owned(), m.partition());
                if left.get(&key).is_some_and(|&end| m.offset() + 1 >= end) {
                    left.remove(&key);
                }
            }
            Some(RDKafkaErrorCode::PartitionEOF | RDKafkaErrorCode::OperationTimedOut) => {}
            Some(code) => failed = Some(KafkaError::MessageConsumption(code)),
        });
    }
    failed.map_or(Ok(counts), Err)
}

/// Reads every partition of the five topics with `threads` consumers; returns counts, seconds, partitions.
fn consume(opts: &KafkaOptions, threads: usize) -> (Counts, f64, usize) {
    let all = opts.discover().unwrap_or_else(|e| panic!("raw consumer: {e}"));
    let marks = opts.watermarks(&all).unwrap_or_else(|e| panic!("raw consumer: {e}"));
    let start = Instant::now();
    let results: Vec<Counts> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let mine = owned(&all, t, threads);
                let marks = &marks;
                s.spawn(move || read(opts, &mine, threads, marks, &format!("raw-consume-{t}")).unwrap_or_else(|e| panic!("raw consumer thread {t}: {e}")))
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("raw consumer thread")).collect()
    });
    let secs = start.elapsed().as_secs_f64();
    let total = results.iter().fold(Counts::default(), |a, c| Counts {
        records: a.records + c.records,
        value_bytes: a.value_bytes + c.value_bytes,
        key_bytes: a.key_bytes + c.key_bytes,
    });
    let expected: i64 = marks.values().map(|w| w.high.since(w.low)).sum();
    assert_eq!(total.records as i64, expected, "raw consumer: read {} records, the high watermarks sum to {expected}", total.records);
    (total, secs, all.len())
}

fn options(brokers: &str, prefix: &str, group: &str, extra: Vec<(String, String)>) -> KafkaOptions {
    KafkaOptions {
        brokers: brokers.into(),
        topic_prefix: prefix.into(),
        group: group.into(),
        timeout: Duration::from_secs(10),
        client: KafkaClientSettings::with_options(extra.into_iter().map(|(key, value)| KafkaOption { key, value }).collect()),
        prefetch: DEFAULT_PREFETCH,
    }
}

fn usage() -> ! {
    eprintln!("usage: cargo bench --bench raw_consume -- --brokers HOST:PORT [--topic-prefix P] [--threads T] [--kafka-option KEY=VALUE]... [--delete-topics]");
    std::process::exit(2)
}

/// Produces 1,000 records into fresh topics and reads them back.
fn smoke(brokers: &str) {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let prefix = format!("raw-smoke-{}-{nanos}.", std::process::id());
    let produce_opts = ProduceOptions {
        brokers: brokers.into(),
        topic_prefix: prefix.clone(),
        events: Some(1000),
        duration: None,
        rate: 0,
        partitions: 3,
        connect_timeout: Duration::from_secs(10),
        kafka: KafkaClientSettings::default(),
        progress: false,
    };
    let summary = produce(FleetConfig { vehicles: 10, ..FleetConfig::default() }, &produce_opts).unwrap_or_else(|e| panic!("produce into {brokers}: {e}"));
    let (counts, secs, partitions) = consume(&options(brokers, &prefix, &format!("{prefix}group"), Vec::new()), 2);
    assert_eq!(counts.records, 1000, "every produced record read");
    assert_eq!(counts.value_bytes, summary.bytes, "value bytes read = value bytes produced");
    assert_eq!(partitions, 15, "5 topics × 3 partitions");
    println!("raw_consume smoke: {} records, {} value bytes in {secs:.2} s", counts.records, counts.value_bytes);
    if let Err(e) = delete_topics(brokers, &prefix) {
        eprintln!("warning: cannot delete the smoke topics: {e}");
    }
}

/// Deletes the five topics of `prefix`.
fn delete_topics(brokers: &str, prefix: &str) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new().set("bootstrap.servers", brokers).create()?;
    let names: Vec<String> = Stream::ALL.iter().map(|s| format!("{prefix}{}", s.name())).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    futures::executor::block_on(admin.delete_topics(&names, &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)))))?;
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo bench` passes `--bench`; `cargo test --all-targets` does not.
    if !args.iter().any(|a| a == "--bench") {
        match std::env::var("CITYSTREAM_BROKERS") {
            Ok(brokers) => smoke(&brokers),
            Err(_) => println!("raw_consume: CITYSTREAM_BROKERS is not set, smoke run skipped"),
        }
        return;
    }
    let (mut brokers, mut prefix, mut threads) = (std::env::var("CITYSTREAM_BROKERS").ok(), String::new(), 2usize);
    let mut extra = Vec::new();
    let mut delete = false;
    let mut it = args.into_iter().filter(|a| a != "--bench");
    while let Some(a) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--brokers" => brokers = Some(value()),
            "--topic-prefix" => prefix = value(),
            "--threads" => threads = value().parse().ok().filter(|&t| t > 0).unwrap_or_else(|| usage()),
            "--delete-topics" => delete = true,
            "--kafka-option" => {
                let kv = value();
                let (k, v) = kv.split_once('=').unwrap_or_else(|| usage());
                extra.push((k.to_owned(), v.to_owned()));
            }
            _ => usage(),
        }
    }
    let brokers = brokers.unwrap_or_else(|| usage());
    if delete {
        return delete_topics(&brokers, &prefix).unwrap_or_else(|e| panic!("deleting the topics of prefix {prefix:?}: {e}"));
    }
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let (c, secs, partitions) = consume(&options(&brokers, &prefix, &format!("raw-consume-{nanos}"), extra), threads);
    eprintln!(
        "raw consume: {} records, {:.1} MB of values in {secs:.2} s with {threads} threads: {:.0} records/s, {:.1} MB/s",
        c.records,
        c.value_bytes as f64 / 1e6,
        c.records as f64 / secs,
        c.value_bytes as f64 / secs / 1e6
    );
    println!(
        "{}",
        serde_json::json!({
            "records": c.records,
            "value_bytes": c.value_bytes,
            "key_bytes": c.key_bytes,
            "seconds": secs,
            "threads": threads,
            "partitions": partitions,
        })
    );
}
