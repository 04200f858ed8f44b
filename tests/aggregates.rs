//! The aggregate tables (`agg/<name>/`) through a real Kafka broker and `citystream run`.
//!
//! - A record far behind the watermark, for a window whose partition was committed and has left
//!   memory (`--aggregate-horizon 1h`, watermark 10 h later), changes that window's row in the
//!   next commit: the partition's file is loaded back, rewritten, and the old one removed in the
//!   same manifest.
//! - Property: random histories (batches of records at random event times, some far behind the
//!   watermark), cut by restarts after random batches, with the aggregates switched off for some
//!   of the runs, end with the same tables as one uninterrupted run over the same topics.
//!
//! After every run the independent checker (tests/python/lake_check.py) asserts that each
//! aggregate table equals the SQL of its definition computed by duckdb over the committed raw
//! tables.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use proptest::prelude::*;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use common::{Proc, bin, brokers, lake_check, lake_check_with, manifests, python, simulate, simulate_args, unique};

fn create_topics(prefix: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", brokers()).create().unwrap();
    let names: Vec<String> = citystream::contract::Stream::ALL.iter().map(|s| format!("{prefix}{s}")).collect();
    let topics: Vec<NewTopic> = names.iter().map(|n| NewTopic::new(n, partitions, TopicReplication::Fixed(1))).collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for r in futures::executor::block_on(admin.create_topics(&topics, &opts)).unwrap() {
        r.unwrap();
    }
}

/// A `vehicle_data` record of the original producer's shape.
fn vehicle(n: u32, device: &str, timestamp: &str, speed: f64) -> String {
    format!(
        r#"{{"id": "00000000-0000-4000-8000-{n:012}", "deviceId": "{device}", "timestamp": "{timestamp}", "location": [51.5074, -0.1278], "speed": {speed}, "direction": "North-East", "maker": "BMW", "model": "C500", "year": 2024, "fueltype": "Hybrid"}}"#
    )
}

fn produce(prefix: &str, values: &[String]) {
    let producer: BaseProducer = ClientConfig::new().set("bootstrap.servers", brokers()).set("enable.idempotence", "true").create().unwrap();
    let topic = format!("{prefix}vehicle_data");
    for v in values {
        producer.send(BaseRecord::<str, str>::to(&topic).payload(v).partition(0)).map_err(|(e, _)| e).unwrap();
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(30)).unwrap();
}

/// The aggregate tables of `output`, read through Delta by tests/python/agg_tables.py.
fn tables(output: &str) -> serde_json::Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/agg_tables.py");
    let out = Command::new(python()).args([script, "--output", output]).output().unwrap();
    assert!(out.status.success(), "agg_tables.py failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The row of `table` whose `column` is `value` (and, for windows, whose `window_start` is `at`).
fn row<'a>(t: &'a serde_json::Value, table: &str, device: &str, window_start: Option<i64>) -> &'a serde_json::Value {
    t[table]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["device_id"] == device && window_start.is_none_or(|w| r["window_start"].as_i64() == Some(w)))
        .unwrap_or_else(|| panic!("no {table} row for {device} at {window_start:?} in {t}"))
}

/// `run` over the topics `prefix…` into `output`, committing offsets as group `output`'s name.
fn run_flags(prefix: &str, output: &str, extra: &[&str]) -> Vec<String> {
    let group = format!("{prefix}{}", Path::new(output).file_name().unwrap().to_string_lossy());
    let mut v: Vec<String> = ["run", "--brokers", &brokers(), "--topic-prefix", prefix, "--group", &group, "--output", output, "--commit-interval", "300ms"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

/// Starts `citystream run` with the aggregate stages' debug lines in its log.
fn start(dir: &Path, name: &str, args: &[String]) -> Proc {
    let log = dir.join(format!("{name}.log"));
    let file = std::fs::File::create(&log).unwrap();
    let child = Command::new(bin())
        .args(args)
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .stdin(Stdio::null())
        .env("RUST_LOG", "info,rdkafka=warn,buoyant_kernel=warn,deltalake_core=warn,citystream::aggregate=debug")
        .spawn()
        .unwrap();
    Proc { child, name: name.into(), log }
}

/// Waits up to two minutes until `pred` holds; on timeout fails with `p`'s log.
fn wait_for(p: &Proc, what: &str, mut pred: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !pred() {
        assert!(start.elapsed() < Duration::from_secs(120), "timed out waiting for {what}; log of {}:\n{}", p.name, p.output());
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn run_until_caught_up(dir: &Path, name: &str, args: &[String]) -> Proc {
    let mut args = args.to_vec();
    args.push("--until-caught-up".into());
    let mut p = start(dir, name, &args);
    let status = p.wait(Duration::from_secs(180));
    assert!(status.success(), "{name}: {status}\n{}", p.output());
    p
}

/// µs since the Unix epoch of `2025-03-01T<hh:mm:ss>Z`.
fn at(hms: &str) -> i64 {
    citystream::contract::timestamp::parse_timestamp(&format!("2025-03-01T{hms}Z"), 0).unwrap().micros()
}

#[test]
fn a_record_far_behind_the_watermark_corrects_its_committed_window_in_the_next_commit() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique("agglate");
    let output = dir.path().join("lake").to_str().unwrap().to_owned();
    create_topics(&prefix, 1);
    let flags = run_flags(&prefix, &output, &["--window", "1m", "--aggregate-horizon", "1h"]);

    // 1. Six readings of one vehicle in the 10:02 minute, and one at 10:05: committed.
    let mut first: Vec<String> = (0..6).map(|i| vehicle(i, "Vehicle-L", &format!("2025-03-01T10:02:{:02}", i * 10), 40.0 + i as f64)).collect();
    first.push(vehicle(6, "Vehicle-L", "2025-03-01T10:05:00", 50.0));
    produce(&prefix, &first);
    run_until_caught_up(dir.path(), "first", &flags);
    lake_check(&output, &prefix, 7);
    let t = tables(&output);
    let w = row(&t, "vehicle_speed_minute", "Vehicle-L", Some(at("10:02:00")));
    assert_eq!((w["records"].as_i64(), w["speed_min"].as_f64(), w["speed_max"].as_f64()), (Some(6), Some(40.0), Some(45.0)), "{w}");
    assert!((w["speed_avg"].as_f64().unwrap() - 42.5).abs() < 1e-12);

    // 2. A live run: readings ten hours later move the watermark on, and the 10:00 hour (beyond
    //    the 1 h horizon) leaves memory; then one reading of 10:02, ten hours behind, which
    //    must load the partition's rows back from its file.
    let mut live = start(dir.path(), "live", &flags);
    let mut later: Vec<String> = (0..5).map(|i| vehicle(10 + i, "Vehicle-L", &format!("2025-03-01T20:0{i}:00"), 60.0)).collect();
    // The watermark trails the greatest time by --lateness (2 min): this one seals 20:04.
    later.push(vehicle(15, "Vehicle-L", "2025-03-01T20:10:00", 70.0));
    produce(&prefix, &later);
    let committed_rows = |n: u64| {
        let dir = Path::new(&output);
        move || common::committed_rows(dir) >= n
    };
    wait_for(&live, "the later readings committed", committed_rows(12));
    wait_for(&live, "the 10:00 partition left memory", || live.output().contains("aggregate partitions left memory"));
    let before = manifests(Path::new(&output)).len();
    // The late reading joins the epoch the source is in; a later on-time reading moves the
    // watermark past that epoch, which seals and commits it.
    produce(&prefix, &[vehicle(99, "Vehicle-L", "2025-03-01T10:02:30", 99.5), vehicle(16, "Vehicle-L", "2025-03-01T20:20:00", 80.0)]);
    wait_for(&live, "the late reading committed", committed_rows(14));
    live.term();
    let status = live.wait(Duration::from_secs(60));
    assert!(status.success(), "{status}\n{}", live.output());
    assert!(live.output().contains("aggregate partition loaded back"), "the late record's partition was read back from its file:\n{}", live.output());

    let check = lake_check(&output, &prefix, 15);
    assert_eq!(check.late_rows, 1, "the 10:02:30 reading is late");
    let t = tables(&output);
    let w = row(&t, "vehicle_speed_minute", "Vehicle-L", Some(at("10:02:00")));
    assert_eq!((w["records"].as_i64(), w["speed_min"].as_f64(), w["speed_max"].as_f64()), (Some(7), Some(40.0), Some(99.5)), "corrected: {w}");
    assert!((w["speed_avg"].as_f64().unwrap() - (255.0 + 99.5) / 7.0).abs() < 1e-12);
    let latest = row(&t, "vehicle_latest", "Vehicle-L", None);
    assert_eq!((latest["records"].as_i64(), latest["last_seen"].as_i64(), latest["speed"].as_f64()), (Some(15), Some(at("20:20:00")), Some(80.0)), "{latest}");

    // The commit that carries the late row replaces the 10:00 partition's file: the new one
    // added, the old one removed, in the same manifest.
    let all = manifests(Path::new(&output));
    let partition = "agg/vehicle_speed_minute/date=2025-03-01/hour=10/";
    let carrying = all[before..]
        .iter()
        .find(|m| m["files"].as_array().unwrap().iter().any(|f| f["path"].as_str().unwrap().starts_with(partition)))
        .expect("a later manifest rewrites the 10:00 partition");
    let removed: Vec<&str> = carrying["removed"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
    assert!(removed.iter().any(|p| p.starts_with(partition)), "the old file is removed in the same manifest: {removed:?}");
    assert!(carrying["files"].as_array().unwrap().iter().any(|f| f["kind"] == "late"), "and it is the manifest of the late row");
}

/// One batch of a history: `events` simulator records from `start`, on `seed`.
#[derive(Debug, Clone)]
struct Batch {
    events: u32,
    start_hour: u32,
    seed: u64,
    /// Restart (a new `run --until-caught-up`) after this batch, and with which tables.
    restart: Option<&'static str>,
}

fn batch() -> impl Strategy<Value = Batch> {
    (200u32..1500, 0u32..30, any::<u64>(), prop::sample::select(vec![None, Some("all"), Some("all"), Some("none"), Some("vehicle_latest,weather_hourly")]))
        .prop_map(|(events, start_hour, seed, restart)| Batch { events, start_hour, seed, restart })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3, max_shrink_iters: 0, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn restarts_at_random_commits_give_the_tables_of_one_uninterrupted_run(history in prop::collection::vec(batch(), 2..5)) {
        let dir = tempfile::tempdir().unwrap();
        let prefix = unique("aggprop");
        let cut = dir.path().join("cut").to_str().unwrap().to_owned();
        let whole = dir.path().join("whole").to_str().unwrap().to_owned();
        let mut produced = 0u64;
        let mut runs = 0;
        for (i, b) in history.iter().enumerate() {
            let start = format!("2025-03-0{}T{:02}:00:00", 1 + b.start_hour / 24, b.start_hour % 24);
            let mut args = simulate_args(20, b.events as u64, 2, b.seed);
            args.extend(["--start".into(), start]);
            simulate(&prefix, &args.iter().map(String::as_str).collect::<Vec<_>>());
            produced += b.events as u64;
            let last = i + 1 == history.len();
            // The last run maintains every table: the property is about the tables it ends with.
            if let Some(tables) = if last { Some("all") } else { b.restart } {
                let flags = run_flags(&prefix, &cut, &["--window", "1m", "--aggregate-horizon", "1h", "--aggregates", tables]);
                run_until_caught_up(dir.path(), &format!("cut-{i}"), &flags);
                runs += 1;
                lake_check_with(&cut, &prefix, produced, &["--aggregates", tables]);
            }
        }
        let flags = run_flags(&prefix, &whole, &["--window", "1m", "--aggregate-horizon", "1h"]);
        run_until_caught_up(dir.path(), "whole", &flags);
        lake_check(&whole, &prefix, produced);
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/agg_tables.py");
        let out = Command::new(python()).args([script, "--output", &cut, "--against", &whole]).output().unwrap();
        prop_assert!(out.status.success(), "after {runs} runs the tables differ from one run's:\n{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
}
