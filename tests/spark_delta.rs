//! Spark with delta-spark reads every Delta table of a finished citystream run and counts the
//! same rows as Python `deltalake` and the manifests.
//!
//! A 2-process cluster reads records shaped like the original producer's (its time model, keyed
//! by record id; 1 % late, 0.5 % malformed) from the real Kafka broker into a local lake: a
//! preloaded backlog, then live records while it runs until every table has a checkpoint (version
//! 100, written by delta-rs), then SIGTERM and a final `--until-caught-up` run.
//! `tests/python/lake_check.py` checks the lake against Kafka; `citystream compact` merges its
//! small files; then `scripts/spark.sh` installs pyspark and the delta-spark jars (pinned in
//! `tests/python/spark-requirements.txt`, cached after the first run) and
//! `tests/python/spark_delta_check.py` reads every table with Spark: rows, duplicates, the types
//! Spark sees, versions, rows per partition and per-column aggregates, each against delta-rs, and
//! the rows against the manifests. An install failure fails the test: there is no silent skip.

mod common;

use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Records of the preloaded backlog.
const BACKLOG: u64 = 20_000;
/// Records per second of the live producer.
const LIVE_RATE: u64 = 250;

/// The tables of a lake: one per stream, and the dead letters.
const TABLES: [&str; 6] = ["vehicle_data", "gps_data", "traffic_data", "weather_data", "emergency_data", "_dead_letter"];

/// Flags of a cluster reading `prefix` into `output`, committing every 200 ms.
fn run_flags(prefix: &str, output: &str, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> =
        ["--brokers", &brokers(), "--topic-prefix", prefix, "--group", prefix, "--output", output, "--commit-interval", "200ms", "--window", "1m"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

/// `citystream simulate` arguments for records of the original producer: its time model (one
/// clock per device, 30–60 s per step), 3 devices, key = record id, 2 partitions per topic.
fn original_producer(prefix: &str, events: u64, seed: u64, start: &str, rate: u64) -> Vec<String> {
    let mut args: Vec<String> =
        ["simulate", "--brokers", &brokers(), "--topic-prefix", prefix, "--time-model", "original", "--key", "id"].map(str::to_owned).to_vec();
    args.extend(simulate_args(3, events, 2, seed));
    args.extend(["--rate".to_owned(), rate.to_string(), "--start".to_owned(), start.to_owned()]);
    args
}

/// Runs `cmd` with stdout and stderr in `dir/<name>.{out,err}`, killing it after `limit`;
/// returns the status, stdout and stderr.
fn run_logged(dir: &Path, name: &str, cmd: &mut Command, limit: Duration) -> (ExitStatus, String, String) {
    let (out, err) = (dir.join(format!("{name}.out")), dir.join(format!("{name}.err")));
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{name} did not finish within {limit:?}; stderr:\n{}", std::fs::read_to_string(&err).unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    (status, std::fs::read_to_string(&out).unwrap_or_default(), std::fs::read_to_string(&err).unwrap_or_default())
}

#[test]
fn spark_with_delta_spark_reads_every_table_of_a_finished_run() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("{}.", unique("spark"));
    let lake = dir.path().join("lake");
    let output = lake.display().to_string();

    // A backlog of ~17 h of event time (2 dates), read by a 2-process cluster; then live
    // records until the publisher has written a checkpoint of every table (at version 100), as
    // every table of a real lake has: Spark then reads the checkpoint delta-rs wrote, not only
    // JSON commits.
    let mut backlog = Proc::start(dir.path(), "backlog", &original_producer(&prefix, BACKLOG, 21, "2025-03-01T08:00:00.123456", 0), &[]);
    let status = backlog.wait(Duration::from_secs(300));
    assert!(status.success(), "the backlog producer failed: {}", backlog.output());
    let mut procs = start_cluster(dir.path(), "live", 2, 1, &run_flags(&prefix, &output, &[]));
    wait_until(Duration::from_secs(120), "a commit", || log_count(&procs[0], "manifest committed") >= 1 || !alive(&mut procs[0]));
    assert!(alive(&mut procs[0]), "{}", procs[0].output());
    // Live records at a low rate (the number of table versions grows with time, not records)
    // until the publisher has checkpointed every table; the producer is then stopped, and Kafka's
    // end offsets say how many records there are.
    let started = Instant::now();
    let mut producer = Proc::start(dir.path(), "producer", &original_producer(&prefix, 300 * LIVE_RATE, 22, "2025-03-02T08:00:00", LIVE_RATE), &[]);
    wait_until(Duration::from_secs(300), "a checkpoint of every table", || {
        TABLES.iter().all(|t| lake.join(t).join("_delta_log/_last_checkpoint").exists()) || !alive(&mut procs[0]) || !alive(&mut producer)
    });
    assert!(alive(&mut procs[0]) && alive(&mut procs[1]), "a process stopped: {}", procs[0].output());
    assert!(alive(&mut producer), "the producer ended before every table had a checkpoint: {}", producer.output());
    producer.kill9();
    // A produce request the broker received before the kill may still be appended: count until
    // two reads a second apart agree.
    let mut total = kafka_records(&prefix, 10);
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let again = kafka_records(&prefix, 10);
        if again == total {
            break;
        }
        total = again;
    }
    eprintln!("live: {} records in {:.1} s until every table had a checkpoint", total - BACKLOG, started.elapsed().as_secs_f64());
    terminate_cleanly(&mut procs, Duration::from_secs(120));
    let mut last = start_cluster(dir.path(), "final", 2, 1, &run_flags(&prefix, &output, &["--until-caught-up"]));
    wait_all_succeed(&mut last, Duration::from_secs(300));
    let check = lake_check(&output, &prefix, total);
    eprintln!("lake check: {check:?}");
    assert!(check.late_rows > 0 && check.dead_letters > 0, "the run must hold late rows and dead letters: {check:?}");
    let committed = committed_rows_by_table(&lake);
    assert_eq!(committed.values().sum::<u64>(), check.kafka_records, "{committed:?}");

    // A compaction, as an operator runs it hourly: Spark then also reads `remove` actions and
    // files delta-rs wrote (rows unchanged, so the manifests' totals still hold).
    let out = Command::new(bin()).args(["compact", "--output", &output, "--older-than", "0s", "--target-size", "1MiB"]).output().unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "citystream compact failed: {report}{}", String::from_utf8_lossy(&out.stderr));
    assert!(report.contains("rewrote"), "the compaction rewrote nothing: {report}");
    eprint!("{report}");

    // Spark: install (cached after the first run), then read every table.
    let started = Instant::now();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/spark.sh");
    let (status, stdout, stderr) = run_logged(dir.path(), "spark-install", Command::new("bash").arg(script), Duration::from_secs(1800));
    eprint!("{stderr}");
    assert!(status.success(), "scripts/spark.sh failed (pyspark or the delta-spark jars could not be installed):\n{stderr}");
    let install = started.elapsed();
    let var = |name: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("scripts/spark.sh printed no {name}=…:\n{stdout}"))
            .to_string()
    };
    let (spark_python, jars, versions) = (var("CITYSTREAM_SPARK_PYTHON"), var("CITYSTREAM_SPARK_JARS"), var("CITYSTREAM_SPARK_VERSIONS"));

    let started = Instant::now();
    let checker = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/spark_delta_check.py");
    let mut cmd = Command::new(&spark_python);
    cmd.args([checker, &output, "--jars", &jars, "--deltalake-python", &python().display().to_string()]);
    let (status, stdout, stderr) = run_logged(dir.path(), "spark-check", &mut cmd, Duration::from_secs(600));
    let read = started.elapsed();
    print!("{stdout}");
    assert!(status.success(), "Spark's read of the Delta tables differs or failed:\n{stdout}\n{stderr}");
    let summary: serde_json::Value = serde_json::from_str(stdout.trim().lines().last().unwrap()).unwrap();
    eprintln!("spark ({versions}): install step {:.1} s, check {:.1} s: {summary}", install.as_secs_f64(), read.as_secs_f64());

    let tables = summary["tables"].as_object().unwrap();
    let mut stream_rows = 0;
    for name in TABLES {
        let t = &tables.get(name).unwrap_or_else(|| panic!("Spark did not read {name}: {summary}"));
        let spark = t["spark_rows"].as_u64().unwrap();
        assert_eq!(spark, t["deltalake_rows"].as_u64().unwrap(), "{name}: Spark and deltalake count differently: {t}");
        assert_eq!(spark, committed.get(name).copied().unwrap_or(0), "{name}: Spark's count differs from the manifests': {t}");
        assert!(t["checkpoint"].as_u64().is_some_and(|v| v >= 100), "{name}: no checkpoint read: {t}");
        assert_eq!(t["spark_version"], t["deltalake_version"], "{name}: {t}");
        assert_eq!(t["duplicates"], 0, "{name}: {t}");
        assert!(spark > 0, "{name}: an empty table checks nothing: {t}");
        if name != "_dead_letter" {
            assert_eq!(t["types"]["timestamp"], "timestamp", "{name}: {t}");
            stream_rows += spark;
        }
        assert_eq!((&t["types"]["date"], &t["types"]["hour"]), (&"date".into(), &"int".into()), "{name}: {t}");
    }
    assert_eq!(stream_rows, check.data_rows + check.late_rows, "{summary}");
    // The aggregate tables, whose partitions are rewritten (remove + add): Spark reads the rows of
    // their current files only, with their keys once each and their times as timestamps.
    for (name, time) in [
        ("agg/vehicle_speed_minute", "window_start"),
        ("agg/weather_hourly", "hour_start"),
        ("agg/emergency_hourly", "hour_start"),
        ("agg/vehicle_latest", "last_seen"),
    ] {
        let t = &tables.get(name).unwrap_or_else(|| panic!("Spark did not read {name}: {summary}"));
        let spark = t["spark_rows"].as_u64().unwrap();
        assert!(spark > 0, "{name}: an empty table checks nothing: {t}");
        assert_eq!((spark, spark), (t["deltalake_rows"].as_u64().unwrap(), t["manifest_rows"].as_u64().unwrap()), "{name}: {t}");
        assert_eq!(t["duplicates"], 0, "{name}: {t}");
        assert_eq!(t["types"][time], "timestamp", "{name}: {t}");
    }
    assert_eq!(tables["_dead_letter"]["spark_rows"].as_u64().unwrap(), check.dead_letters, "{summary}");
    assert_eq!(summary["problems"], 0, "{summary}");
}
