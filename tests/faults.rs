//! The fault suite: a 2-process cluster against the real Kafka broker and the real S3 server,
//! hit by the failures an operator meets — `kill -9` of a random process at random moments
//! (the cluster restarted each time), the Kafka broker stopped for 20 s mid-run, the S3
//! endpoint stopped for 20 s while epochs are being sealed, SIGTERM mid-run — and every time
//! the lake must end up holding every Kafka record exactly once, checked by the independent
//! reader (tests/python/lake_check.py: every (topic, partition, offset) once, values equal).
//!
//! Seeded and bounded in time: each test prints its seed (`CITYSTREAM_FAULTS_SEED=N` replays
//! the same kill moments, victims and records) and every wait has a limit. The sizes are those
//! CI runs; `CITYSTREAM_FAULTS_SCALE=large` (scripts/faults.sh) runs the documented large size,
//! and each `CITYSTREAM_FAULTS_<KNOB>` below overrides one size. Each test reports a
//! `FAULTS-RESULT {json}` line (see docs/operations.md for the large-size results).
//!
//! The outage tests stop the services `scripts/with-services.sh` started and always start them
//! again (also when a test fails); the tests of this binary run one at a time (SERIAL), and
//! cargo runs test binaries one after another, so no other test sees the outage.

mod common;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use citystream::simulate::rng::Rng;
use common::*;
use serde_json::json;

/// One fault test at a time: they share two cores with the services, and stop the services.
static SERIAL: Mutex<()> = Mutex::new(());

/// Bound on any one run, producer or check.
const LONG: Duration = Duration::from_secs(1200);

/// How long a service stays down in the outage tests.
fn outage_length() -> Duration {
    Duration::from_secs(fault_size("OUTAGE_SECS", 20, 20))
}

/// Flags of a cluster reading `prefix` into `output`. Commits are cut every 500 ms (not every
/// 10 s), so that these runs of a few seconds commit many times and kills and outages land
/// between commits, with objects of uncut commits left behind.
fn run_flags(prefix: &str, output: &str, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = ["--brokers", &brokers(), "--topic-prefix", prefix, "--group", prefix, "--output", output, "--commit-interval", "500ms"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

/// Produces `events` records (2 partitions per topic, some late, some malformed).
fn produce(prefix: &str, events: u64, seed: u64) {
    let args = fleet_args(100, events, seed);
    simulate(prefix, &args.iter().map(String::as_str).collect::<Vec<_>>());
}

/// Starts producing `events` records at `rate` per second in the background, in event time after
/// what [`produce`] made.
fn start_producer(dir: &std::path::Path, prefix: &str, events: u64, rate: u64, seed: u64) -> Proc {
    start_live_producer(dir, prefix, 100, events, rate, seed)
}

fn scale() -> String {
    std::env::var("CITYSTREAM_FAULTS_SCALE").unwrap_or_else(|_| "small".into())
}

/// Sleeps `d`, asserting every process stays up meanwhile.
fn sleep_while_alive(procs: &mut [Proc], d: Duration, what: &str) {
    let start = Instant::now();
    while start.elapsed() < d {
        for p in procs.iter_mut() {
            if let Some(status) = p.child.try_wait().unwrap() {
                panic!("{} exited ({status}) {what}: {}", p.name, p.output());
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until process 0 has logged `n` commits in this attempt, or some process exited.
fn wait_for_commits(procs: &mut [Proc], n: usize) {
    wait_until(LONG, "a commit", || log_count(&procs[0], "manifest committed") >= n || procs.iter_mut().any(|p| !alive(p)));
    for p in procs.iter_mut() {
        assert!(alive(p), "{} ended before the fault could be injected (make the run longer): {}", p.name, p.output());
    }
}

/// What a supervisor sees of the process that survived its peer's `kill -9`. Once the cluster
/// is connected, timely's network threads notice the dead peer and the process exits non-zero by
/// itself. If the peer died before the cluster connected, the survivor waits for it forever
/// (timely retries connecting): a supervisor stops it, and SIGTERM then ends it at once.
fn survivor_outcome(p: &mut Proc) -> &'static str {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if let Some(status) = p.child.try_wait().unwrap() {
            assert!(!status.success(), "the survivor of a kill -9 must exit non-zero: {}", p.output());
            return "exited";
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    p.term();
    let status = p.wait(Duration::from_secs(30));
    let log = p.output();
    assert!(
        status.success() && log.contains("before the cluster connected"),
        "a survivor that does not stop by itself must be one still waiting for its peer at start-up, and SIGTERM must end it: {log}"
    );
    "waiting_for_peer"
}

#[test]
fn kill_9_at_random_moments_then_restart_is_exactly_once() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let started = Instant::now();
    let (seed, test_seed) = fault_seed("kill_9");
    let mut rng = Rng::new(test_seed);
    let kills = fault_size("KILLS", 5, 12);
    let live = fault_size("KILL_RECORDS", 30_000, 400_000);
    let rate = fault_size("KILL_RATE", 2_000, 4_000);
    let max_delay_ms = fault_size("KILL_MAX_DELAY_MS", 5_000, 10_000);
    let on_s3 = fault_size("KILL_ON_S3", 0, 0) == 1;
    assert!(kills >= 1);

    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("{}.", unique("kill9"));
    // A first batch creates the topics; the rest arrives live, while the cluster is killed.
    let first = 5_000;
    produce(&prefix, first, test_seed);
    let output = if on_s3 { format!("s3://{}/{}", bucket(), prefix.trim_end_matches('.')) } else { dir.path().join("lake").display().to_string() };
    let mut producer = start_producer(dir.path(), &prefix, live, rate, test_seed ^ 1);

    let flags = run_flags(&prefix, &output, &["--window", "1m"]);
    let mut cycles = Vec::new();
    for k in 0..kills {
        let mut procs = start_cluster(dir.path(), &format!("attempt{k}"), 2, 1, &flags);
        let delay = Duration::from_millis(rng.int_inclusive(200, max_delay_ms as i64) as u64);
        let victim = (rng.next_u64() % 2) as usize;
        sleep_while_alive(&mut procs, delay, "before the kill (without --until-caught-up a cluster runs until stopped)");
        let commits = log_count(&procs[0], "manifest committed");
        procs[victim].kill9();
        let survivor = survivor_outcome(&mut procs[1 - victim]);
        eprintln!("faults: kill {}/{kills}: process {victim} after {delay:?} ({commits} commits in this attempt); survivor {survivor}", k + 1);
        cycles.push(json!({"delay_ms": delay.as_millis() as u64, "victim": victim, "commits_before": commits, "survivor": survivor}));
    }
    let status = producer.wait(LONG);
    assert!(status.success(), "the producer failed: {}", producer.output());

    // The last restart reads everything, seals, commits and exits.
    let mut last = start_cluster(dir.path(), "final", 2, 1, &run_flags(&prefix, &output, &["--until-caught-up", "--window", "1m"]));
    for p in &mut last {
        let status = p.wait(LONG);
        assert!(status.success(), "{}: {}", p.name, p.output());
    }
    let check = lake_check(&output, &prefix, first + live);
    let after_commit = cycles.iter().filter(|c| c["commits_before"].as_u64() > Some(0)).count();
    let waiting = cycles.iter().filter(|c| c["survivor"] == "waiting_for_peer").count();
    fault_result(json!({
        "test": "kill_9", "scale": scale(), "seed": seed, "output": if on_s3 { "s3" } else { "local" },
        "kills": kills, "kills_after_a_commit": after_commit, "survivors_waiting_for_peer": waiting,
        "records": first + live, "records_checked": check.kafka_records, "data_rows": check.data_rows, "late_rows": check.late_rows,
        "dead_letters": check.dead_letters, "files": check.files, "manifests": check.manifests, "lost": 0, "duplicated": 0,
        "seconds": started.elapsed().as_secs(), "cycles": cycles,
    }));
}

#[test]
fn kafka_down_for_20s_mid_run_then_the_run_finishes_by_itself_exactly_once() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let started = Instant::now();
    let (seed, test_seed) = fault_seed("kafka_outage");
    let mut rng = Rng::new(test_seed);
    let records = fault_size("KAFKA_RECORDS", 60_000, 300_000);
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("{}.", unique("kafkadown"));
    produce(&prefix, records, test_seed);
    let out = dir.path().join("lake");
    let out_s = out.display().to_string();
    // Reading is throttled so that the outage surely hits mid-read, on a machine of any speed: 64
    // KiB per fetch, at most 64 KiB queued per partition, and librdkafka's default 1 s pause before
    // fetching a full partition again (citystream sets 1 ms) — at most ~64 KiB/s per partition,
    // so the ~2 MB of each partition takes ~30 s to read.
    let flags = run_flags(
        &prefix,
        &out_s,
        &[
            "--until-caught-up",
            "--window",
            "5m",
            "--kafka-option",
            "queued.max.messages.kbytes=64",
            "--kafka-option",
            "max.partition.fetch.bytes=65536",
            "--kafka-option",
            "fetch.queue.backoff.ms=1000",
        ],
    );
    let mut procs = start_cluster(dir.path(), "kafka", 2, 1, &flags);
    wait_for_commits(&mut procs, 1);
    sleep_while_alive(&mut procs, Duration::from_millis(rng.int_inclusive(0, 1000) as u64), "before the outage");
    let rows_at_stop = committed_rows(&out);
    let outage = Outage::begin("kafka");
    sleep_while_alive(&mut procs, outage_length().saturating_sub(outage.elapsed()), "while Kafka was down");
    let rows_in_outage = committed_rows(&out) - rows_at_stop;
    let away = outage.end();
    for p in &mut procs {
        let status = p.wait(LONG);
        assert!(status.success(), "the run must ride out the outage and finish by itself: {}: {}", p.name, p.output());
    }
    // Reading went on after the outage, in the same processes.
    let resumed = procs.iter().filter(|p| p.output().contains("records arriving again")).count();
    assert!(resumed > 0, "no process read records after the outage: {}", procs[0].output());
    let check = lake_check(&out_s, &prefix, records);
    assert!(rows_at_stop < check.kafka_records, "the outage began before the end of the run");
    fault_result(json!({
        "test": "kafka_outage", "scale": scale(), "seed": seed, "outage_seconds": away.as_secs_f64().round(),
        "rows_committed_before_outage": rows_at_stop, "rows_committed_during_outage": rows_in_outage, "processes_resumed_reading": resumed,
        "records": records, "records_checked": check.kafka_records, "data_rows": check.data_rows, "late_rows": check.late_rows,
        "dead_letters": check.dead_letters, "files": check.files, "manifests": check.manifests, "lost": 0, "duplicated": 0,
        "seconds": started.elapsed().as_secs(),
    }));
}

#[test]
fn s3_down_for_20s_while_sealing_is_retried_and_the_run_finishes_exactly_once() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let started = Instant::now();
    let (seed, test_seed) = fault_seed("s3_outage");
    let mut rng = Rng::new(test_seed);
    let records = fault_size("S3_RECORDS", 60_000, 300_000);
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("{}.", unique("s3down"));
    produce(&prefix, records, test_seed);
    let output = format!("s3://{}/{}", bucket(), prefix.trim_end_matches('.'));
    let mut procs = start_cluster(dir.path(), "s3", 2, 1, &run_flags(&prefix, &output, &["--until-caught-up", "--window", "5m"]));
    // The outage begins once the cluster has claimed the output and its workers run, within the
    // first commit interval: the whole run takes a few seconds (a commit's objects are few), so
    // waiting for a commit first could miss it.
    wait_until(LONG, "the cluster running", || procs[0].output().contains("awaiting connections") || procs.iter_mut().any(|p| !alive(p)));
    sleep_while_alive(&mut procs, Duration::from_millis(rng.int_inclusive(0, 300) as u64), "before the outage");
    let commits_at_stop = log_count(&procs[0], "manifest committed");
    let outage = Outage::begin("s3");
    sleep_while_alive(&mut procs, outage_length().saturating_sub(outage.elapsed()), "while S3 was down");
    let away = outage.end();
    for p in &mut procs {
        let status = p.wait(LONG);
        assert!(status.success(), "the run must ride out the outage and finish by itself: {}: {}", p.name, p.output());
    }
    // Store requests failed during the outage and were retried with backoff (object_store logs each).
    let retries: usize = procs.iter().map(|p| log_count(p, "backing off")).sum();
    assert!(retries > 0, "no store request was retried: the outage missed the run: {}", procs[0].output());
    let check = lake_check(&output, &prefix, records);
    fault_result(json!({
        "test": "s3_outage", "scale": scale(), "seed": seed, "outage_seconds": away.as_secs_f64().round(),
        "commits_before_outage": commits_at_stop, "store_retries_logged": retries,
        "records": records, "records_checked": check.kafka_records, "data_rows": check.data_rows, "late_rows": check.late_rows,
        "dead_letters": check.dead_letters, "files": check.files, "manifests": check.manifests, "lost": 0, "duplicated": 0,
        "seconds": started.elapsed().as_secs(),
    }));
}

#[test]
fn sigterm_mid_run_is_a_clean_shutdown_and_a_restart_resumes_exactly_once() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let started = Instant::now();
    let (seed, test_seed) = fault_seed("sigterm");
    let mut rng = Rng::new(test_seed);
    let terms = fault_size("TERMS", 1, 4);
    let live = fault_size("TERM_RECORDS", 30_000, 200_000);
    let rate = fault_size("TERM_RATE", 2_000, 4_000);
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("{}.", unique("sigterm"));
    // A first batch creates the topics; the rest arrives live: SIGTERM comes while records flow.
    let first = 5_000;
    produce(&prefix, first, test_seed);
    let mut producer = start_producer(dir.path(), &prefix, live, rate, test_seed ^ 1);
    let out = dir.path().join("lake");
    let out_s = out.display().to_string();
    let flags = run_flags(&prefix, &out_s, &["--window", "1m"]);
    let mut rounds = Vec::new();
    for k in 0..terms {
        let mut procs = start_cluster(dir.path(), &format!("attempt{k}"), 2, 1, &flags);
        wait_for_commits(&mut procs, 1);
        sleep_while_alive(&mut procs, Duration::from_millis(rng.int_inclusive(500, 3000) as u64), "before SIGTERM");
        let live_at_term = alive(&mut producer);
        assert!(k > 0 || live_at_term, "records must still be arriving at the first SIGTERM (make the producer longer)");
        let before = manifests(&out).len();
        // Every process gets SIGTERM (as from workers/launch.sh or an orchestrator), in random order.
        let first = (rng.next_u64() % 2) as usize;
        procs[first].term();
        std::thread::sleep(Duration::from_millis(rng.int_inclusive(0, 200) as u64));
        procs[1 - first].term();
        for p in &mut procs {
            let status = p.wait(Duration::from_secs(120));
            assert!(status.success(), "SIGTERM is a clean shutdown: {}: {}", p.name, p.output());
            assert!(p.output().contains("signal received: finishing"), "{}", p.output());
        }
        let after = manifests(&out).len();
        assert!(after > before, "the shutdown seals and commits what was read");
        rounds
            .push(json!({"producer_running": live_at_term, "manifests_at_sigterm": before, "manifests_after": after, "rows_committed": committed_rows(&out)}));
    }
    let status = producer.wait(LONG);
    assert!(status.success(), "the producer failed: {}", producer.output());
    let mut last = start_cluster(dir.path(), "final", 2, 1, &run_flags(&prefix, &out_s, &["--until-caught-up", "--window", "1m"]));
    for p in &mut last {
        let status = p.wait(LONG);
        assert!(status.success(), "{}: {}", p.name, p.output());
    }
    let records = first + live;
    let check = lake_check(&out_s, &prefix, records);

    // A process whose peer never comes waits in start-up; SIGTERM ends it at once, cleanly.
    let hosts = hostfile(dir.path(), 2);
    let mut lonely = Proc::start(dir.path(), "lonely", &cluster_args(2, 1, 1, &hosts, &flags), &[]);
    wait_until(Duration::from_secs(60), "the lonely process to wait for its peer", || lonely.output().contains("retrying"));
    lonely.term();
    let status = lonely.wait(Duration::from_secs(30));
    assert!(status.success() && lonely.output().contains("before the cluster connected"), "{}", lonely.output());

    fault_result(json!({
        "test": "sigterm", "scale": scale(), "seed": seed, "sigterms": terms,
        "records": records, "records_checked": check.kafka_records, "data_rows": check.data_rows, "late_rows": check.late_rows,
        "dead_letters": check.dead_letters, "files": check.files, "manifests": check.manifests, "lost": 0, "duplicated": 0,
        "seconds": started.elapsed().as_secs(), "rounds": rounds,
    }));
}

/// Produces one batch of the live scenario: records shaped like the original producer's (a few
/// devices, keys = record ids over 4 partitions, some late and malformed), event times from
/// `start`.
fn produce_batch(prefix: &str, records: u64, start: &str, seed: u64) {
    let mut args = vec!["--key".to_owned(), "id".to_owned()];
    args.extend(simulate_args(5, records, 4, seed));
    args.extend(["--start".to_owned(), start.to_owned()]);
    simulate(prefix, &args.iter().map(String::as_str).collect::<Vec<_>>());
}

/// Rows committed so far in `output` (local or S3), by its manifests; `None` while they cannot
/// be read.
fn committed_rows_in(output: &str) -> Option<u64> {
    use citystream::commit::manifest::{Manifest, ManifestKind};
    use futures::TryStreamExt;
    use object_store::ObjectStoreExt;
    let lake = citystream::lake::Lake::open(output).ok()?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let listed: Vec<_> = lake.store.list(Some(&object_store::path::Path::from("_manifests"))).try_collect().await.ok()?;
        let mut rows = 0;
        for meta in listed {
            let bytes = lake.store.get(&meta.location).await.ok()?.bytes().await.ok()?;
            let m: Manifest = serde_json::from_slice(&bytes).ok()?;
            if m.kind == ManifestKind::Commit {
                // The records' rows: not the aggregate tables' files, which summarise them.
                rows += m.files.iter().filter(|f| f.kind != citystream::lake::FileKind::Aggregate).map(|f| f.rows).sum::<u64>();
            }
        }
        Some(rows)
    })
}

#[test]
fn a_live_cluster_reads_every_partition_through_kafka_and_s3_outages() {
    // A live 2-process cluster (no --until-caught-up) writing to S3;
    // Kafka restarted while its partitions are caught up; a batch a day later; S3 stopped while
    // a batch a day earlier arrives. Every partition must be read to its end by the running
    // cluster — a client that stops fetching is found by the stall guard and re-created — and
    // SIGTERM then commits everything, exactly once.
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let started = Instant::now();
    let (seed, test_seed) = fault_seed("live_outages");
    let mut rng = Rng::new(test_seed);
    let batch = fault_size("LIVE_BATCH_RECORDS", 15_000, 100_000);
    // Small enough that its rows cannot make up for a partition left unread (≥ 750 rows a batch).
    let tick = 200;
    let stall_timeout = fault_size("LIVE_STALL_TIMEOUT_SECS", 10, 15);
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("{}.", unique("live"));
    let output = format!("s3://{}/{}", bucket(), prefix.trim_end_matches('.'));

    // A batch spans 7.5 h of event time at CI size and 50 h at the large size (4,000 steps of the
    // fleet's clock): the batches below are days apart so that they do not overlap.
    // Batch 1 (March 1) is there when the cluster starts.
    produce_batch(&prefix, batch, "2025-03-01T10:00:00.000000", test_seed);
    let flags = run_flags(&prefix, &output, &["--window", "1m", "--stall-timeout", &format!("{stall_timeout}s")]);
    let mut procs = start_cluster(dir.path(), "live", 2, 1, &flags);

    // Kafka restarted at a random moment, likely after batch 1 was read.
    let before_kafka = Duration::from_millis(rng.int_inclusive(2_000, 8_000) as u64);
    sleep_while_alive(&mut procs, before_kafka, "before the Kafka outage");
    let kafka_down = Duration::from_secs(rng.int_inclusive(5, 20) as u64);
    let outage = Outage::begin("kafka");
    sleep_while_alive(&mut procs, kafka_down.saturating_sub(outage.elapsed()), "while Kafka was down");
    let kafka_away = outage.end();

    // Batch 2 jumps forward four days; batch 3 goes back two days (all late), produced while S3
    // is down.
    produce_batch(&prefix, batch, "2025-03-05T10:00:00.000000", test_seed ^ 2);
    sleep_while_alive(&mut procs, Duration::from_millis(rng.int_inclusive(0, 3_000) as u64), "before the S3 outage");
    let s3_down = Duration::from_secs(rng.int_inclusive(5, 20) as u64);
    let outage = Outage::begin("s3");
    produce_batch(&prefix, batch, "2025-03-03T10:00:00.000000", test_seed ^ 3);
    sleep_while_alive(&mut procs, s3_down.saturating_sub(outage.elapsed()), "while S3 was down");
    let s3_away = outage.end();

    // A last batch later than everything moves every watermark past the batches before it, so
    // that the running cluster commits all their rows: the proof that it read every partition.
    // (Had a partition been left unread and treated as idle, its rows would be missing; had it
    // been left unread and held the frontier, nothing after it would be committed.)
    // Two of them: a partition still reading batch 3 when the first arrives may follow the others
    // to its epoch while idle, and its late rows are then committed with that epoch, which the
    // second one seals.
    assert_eq!(kafka_records(&prefix, 20), 3 * batch, "the three batches are in Kafka (five topics of four partitions)");
    produce_batch(&prefix, tick, "2025-03-10T10:00:00.000000", test_seed ^ 4);
    sleep_while_alive(&mut procs, Duration::from_secs(5), "between the last two batches");
    produce_batch(&prefix, tick, "2025-03-12T10:00:00.000000", test_seed ^ 5);
    let waited = Instant::now();
    let mut committed = 0;
    while waited.elapsed() < LONG {
        for p in procs.iter_mut() {
            assert!(alive(p), "{} exited while reading: {}", p.name, p.output());
        }
        committed = committed_rows_in(&output).unwrap_or(0);
        // The three batches and the first tick: that tick is sealed only once every partition
        // has read into the second one or reached its end, so every partition was read.
        if committed >= 3 * batch + tick {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(
        committed >= 3 * batch + tick,
        "the running cluster committed {committed} of the {} rows before the last batch\n{}\n{}",
        3 * batch + tick,
        procs[0].output(),
        procs[1].output()
    );
    let read_after = waited.elapsed();
    // The rest of the second tick is in the partitions' last fetches: let them arrive before
    // SIGTERM seals what was read.
    sleep_while_alive(&mut procs, Duration::from_secs(3), "before SIGTERM");

    terminate_cleanly(&mut procs, Duration::from_secs(120));
    let stalls: usize = procs.iter().map(|p| log_count(p, "partition stalled")).sum();
    // The evidence of any stall: the guard's warning names the client's own view (fetch state).
    for p in &procs {
        for line in p.output().lines().filter(|l| l.contains("partition stalled") || l.contains("stalled partition is read again")) {
            eprintln!("faults: {}: {line}", p.name);
        }
    }
    let recreated: usize = procs.iter().map(|p| log_count(p, "re-creating the reading client")).sum();
    let records = 3 * batch + 2 * tick;
    let check = lake_check(&output, &prefix, records);
    fault_result(json!({
        "test": "live_outages", "scale": scale(), "seed": seed,
        "kafka_outage_seconds": kafka_away.as_secs_f64().round(), "s3_outage_seconds": s3_away.as_secs_f64().round(),
        "kafka_outage_after_ms": before_kafka.as_millis() as u64, "stall_timeout_seconds": stall_timeout,
        "stalls_detected": stalls, "clients_recreated": recreated, "seconds_to_read_everything_after_the_last_batch": read_after.as_secs(),
        "records": records, "records_checked": check.kafka_records, "data_rows": check.data_rows, "late_rows": check.late_rows,
        "dead_letters": check.dead_letters, "files": check.files, "manifests": check.manifests, "lost": 0, "duplicated": 0,
        "seconds": started.elapsed().as_secs(),
    }));
}

#[test]
fn the_final_group_offset_commit_does_not_hold_up_the_exit_when_kafka_is_down() {
    use citystream::commit::offsets::{FINAL_COMMIT_WAIT, OffsetCommitter};
    use citystream::contract::Stream;
    use citystream::kafka::KafkaOptions;
    use citystream::ownership::{Offset, PartitionId};
    // Nothing listens there: the broker is down for good.
    let opts = KafkaOptions {
        brokers: format!("127.0.0.1:{}", free_port()),
        topic_prefix: "down.".into(),
        group: "down".into(),
        timeout: Duration::from_secs(5),
        client: Default::default(),
        prefetch: citystream::kafka::DEFAULT_PREFETCH,
    };
    let mut committer = OffsetCommitter::new(&opts).unwrap();
    committer.commit(&[(PartitionId { stream: Stream::Gps, partition: 0 }, Offset(42))]);
    let start = Instant::now();
    drop(committer);
    // librdkafka's synchronous commit and close would block ~45 s here.
    assert!(start.elapsed() < FINAL_COMMIT_WAIT + Duration::from_secs(10), "the end of a run waited {:?} for an unreachable broker", start.elapsed());
}
