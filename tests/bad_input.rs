//! The malformed-input corpus (`tests/corpus/malformed/`, one file per case, expectations in
//! `tests/corpus/malformed.tsv`) goes through a real Kafka broker and `citystream run`,
//! interleaved with valid simulator records in the same partitions.
//!
//! Asserts: the run exits 0 without a panic; the independent pyarrow check finds every offset
//! exactly once (data + dead letters, raw bytes equal to Kafka); every corpus case is a dead
//! letter with its expected class and a reason naming its field; every valid record is a data
//! row with its values; and none is late — the far-future record did not drag its partition's
//! watermark forward.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use arrow::array::AsArray;
use citystream::contract::Stream;
use citystream::simulate::{Fleet, FleetConfig};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use common::{Proc, brokers, lake_check, unique};

const PARTITIONS: i32 = 3;
/// The corpus's `oversized` case is just above this.
const MAX_VALUE_BYTES: &str = "8192";

struct Case {
    file: String,
    stream: Stream,
    class: String,
    field: Option<String>,
    value: Vec<u8>,
}

fn corpus() -> Vec<Case> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let tsv = std::fs::read_to_string(dir.join("malformed.tsv")).unwrap();
    tsv.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let c: Vec<&str> = l.split('\t').collect();
            Case {
                file: c[0].into(),
                stream: c[1].parse().unwrap(),
                class: c[2].into(),
                field: Some(c[3].to_owned()).filter(|f| f != "-"),
                value: std::fs::read(dir.join("malformed").join(c[0])).unwrap(),
            }
        })
        .collect()
}

fn create_topics(prefix: &str) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", brokers()).create().unwrap();
    let names: Vec<String> = Stream::ALL.iter().map(|s| format!("{prefix}{s}")).collect();
    let topics: Vec<NewTopic> = names.iter().map(|n| NewTopic::new(n, PARTITIONS, TopicReplication::Fixed(1))).collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for r in futures::executor::block_on(admin.create_topics(&topics, &opts)).unwrap() {
        r.unwrap();
    }
}

/// Every `*.parquet` data file under `dir` (not the Delta log's checkpoints).
fn parquet_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() && p.file_name().is_some_and(|n| n == "_delta_log") {
                continue;
            } else if p.is_dir() {
                out.extend(parquet_files(&p));
            } else if p.extension().is_some_and(|x| x == "parquet") {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn malformed_corpus_goes_to_dead_letters_and_valid_records_are_unaffected() {
    let cases = corpus();
    let prefix = format!("{}.", unique("badinput"));
    create_topics(&prefix);

    // Per stream: valid records round-robin over the partitions, a corpus case before every
    // third valid record, in the partition of the valid records that follow it.
    let producer: BaseProducer = ClientConfig::new().set("bootstrap.servers", brokers()).set("enable.idempotence", "true").create().unwrap();
    let mut fleet = Fleet::new(FleetConfig { vehicles: 3, late_fraction: 0.0, malformed_fraction: 0.0, seed: 7, ..FleetConfig::default() });
    let mut pending: HashMap<Stream, Vec<&Case>> = HashMap::new();
    for c in cases.iter().rev() {
        pending.entry(c.stream).or_default().push(c);
    }
    let (mut valid, mut sent_cases) = (0u64, 0u64);
    let mut n = [0usize; 5];
    for _ in 0..60 {
        for rec in fleet.step() {
            let i = &mut n[rec.stream.index()];
            let partition = (*i % PARTITIONS as usize) as i32;
            let topic = format!("{prefix}{}", rec.stream);
            if *i % 3 == 0
                && let Some(c) = pending.get_mut(&rec.stream).and_then(Vec::pop)
            {
                let key = c.file.clone();
                let mut r = BaseRecord::to(&topic).key(&key).partition(partition);
                if !c.value.is_empty() {
                    r = r.payload(&c.value);
                }
                producer.send(r).map_err(|(e, _)| e).unwrap();
                sent_cases += 1;
            }
            producer.send(BaseRecord::to(&topic).key(&rec.key).payload(&rec.value).partition(partition)).map_err(|(e, _)| e).unwrap();
            valid += 1;
            *i += 1;
            producer.poll(Duration::ZERO);
        }
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    assert_eq!(sent_cases as usize, cases.len(), "every case was interleaved");

    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("lake");
    let args: Vec<String> = [
        "run",
        "-w",
        "2",
        "--brokers",
        &brokers(),
        "--topic-prefix",
        &prefix,
        "--group",
        &unique("g"),
        "--until-caught-up",
        "--max-value-bytes",
        MAX_VALUE_BYTES,
        "--output",
        output.to_str().unwrap(),
    ]
    .map(String::from)
    .to_vec();
    let mut run = Proc::start(dir.path(), "run", &args, &[]);
    let status = run.wait(Duration::from_secs(180));
    let log = run.output();
    assert!(status.success(), "run failed: {status}\n{log}");
    assert!(!log.contains("panicked"), "{log}");

    let check = lake_check(output.to_str().unwrap(), &prefix, valid + sent_cases);
    assert_eq!(check.dead_letters, sent_cases, "exactly the corpus is dead-lettered");
    assert_eq!(check.data_rows, valid, "every valid record is a data row");
    assert_eq!(check.late_rows, 0, "no valid record became late: the far-future case did not move the watermark");

    // Each case's own dead letter: found by its exact bytes, with its class and field.
    let mut dead: HashMap<(String, Vec<u8>), (String, String)> = HashMap::new();
    for path in parquet_files(&output.join("_dead_letter")) {
        let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&path).unwrap()).unwrap().build().unwrap();
        for batch in reader {
            let b = batch.unwrap();
            let col = |name: &str| b.column_by_name(name).unwrap().clone();
            let (topic, class, reason, raw) = (col("topic"), col("error_class"), col("reason"), col("raw"));
            for i in 0..b.num_rows() {
                let key = (topic.as_string::<i32>().value(i).to_owned(), raw.as_binary::<i32>().value(i).to_vec());
                dead.insert(key, (class.as_string::<i32>().value(i).to_owned(), reason.as_string::<i32>().value(i).to_owned()));
            }
        }
    }
    for c in &cases {
        let (class, reason) = dead.get(&(format!("{prefix}{}", c.stream), c.value.clone())).unwrap_or_else(|| panic!("{} is not a dead letter", c.file));
        assert_eq!(class, &c.class, "{}: {reason}", c.file);
        if let Some(f) = &c.field {
            assert!(reason.contains(&format!("`{f}`")), "{}: the reason names {f}: {reason}", c.file);
        }
    }
}
