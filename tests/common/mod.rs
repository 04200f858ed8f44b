//! Shared helpers of the integration tests: the real services' addresses, the binary, child
//! processes that are always stopped, and the independent lake check (pyarrow).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_citystream")
}

/// The broker address, from the environment `scripts/services.sh env` sets.
pub fn brokers() -> String {
    std::env::var("CITYSTREAM_BROKERS").expect("CITYSTREAM_BROKERS is not set: run the tests with scripts/test.sh, which starts Kafka and S3")
}

/// The S3 bucket of the test server.
pub fn bucket() -> String {
    std::env::var("CITYSTREAM_S3_BUCKET").unwrap_or_else(|_| "citystream".into())
}

/// The project's Python (with pyarrow, duckdb, confluent-kafka).
pub fn python() -> PathBuf {
    std::env::var_os("CITYSTREAM_PYTHON").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python")))
}

/// A name no other test run uses.
pub fn unique(tag: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{tag}-{}-{}", std::process::id(), nanos % 1_000_000_000)
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Runs the simulator and asserts it succeeded.
pub fn simulate(prefix: &str, args: &[&str]) {
    let out = Command::new(bin()).args(["simulate", "--brokers", &brokers(), "--topic-prefix", prefix]).args(args).output().unwrap();
    assert!(out.status.success(), "simulate failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// A child process that is killed when dropped; its output goes to files in `dir`.
pub struct Proc {
    pub child: Child,
    pub name: String,
    pub log: PathBuf,
}

impl Proc {
    /// Starts `citystream <args>` with logs in `dir/<name>.log` (log filter: `CITYSTREAM_TEST_LOG`,
    /// default `info,rdkafka=warn,buoyant_kernel=warn,deltalake_core=warn`).
    pub fn start(dir: &Path, name: &str, args: &[String], env_remove: &[&str]) -> Proc {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(bin());
        cmd.args(args)
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .stdin(Stdio::null())
            .env("RUST_LOG", std::env::var("CITYSTREAM_TEST_LOG").unwrap_or_else(|_| "info,rdkafka=warn,buoyant_kernel=warn,deltalake_core=warn".into()));
        for k in env_remove {
            cmd.env_remove(k);
        }
        Proc { child: cmd.spawn().unwrap(), name: name.into(), log }
    }

    /// Waits up to `limit` for exit; panics (after killing it) on timeout.
    pub fn wait(&mut self, limit: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            if start.elapsed() > limit {
                let _ = self.child.kill();
                panic!("{} did not finish within {limit:?}; log:\n{}", self.name, self.output());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// What it printed so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM.
    pub fn term(&self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The flags of process `p` of an `n`-process cluster with `w` threads each.
pub fn cluster_args(n: usize, w: usize, p: usize, hostfile: &Path, rest: &[String]) -> Vec<String> {
    let mut a: Vec<String> = vec!["run".into(), "-w".into(), w.to_string(), "-n".into(), n.to_string(), "-p".into(), p.to_string()];
    if n > 1 {
        a.extend(["-h".into(), hostfile.display().to_string()]);
    }
    a.extend(rest.iter().cloned());
    a
}

/// Writes a hostfile with `n` free local ports.
pub fn hostfile(dir: &Path, n: usize) -> PathBuf {
    let path = dir.join(format!("hosts-{}", unique("h")));
    let lines: Vec<String> = (0..n).map(|_| format!("127.0.0.1:{}", free_port())).collect();
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

/// Starts a whole cluster.
pub fn start_cluster(dir: &Path, tag: &str, n: usize, w: usize, rest: &[String]) -> Vec<Proc> {
    let hosts = hostfile(dir, n);
    (0..n).map(|p| Proc::start(dir, &format!("{tag}-p{p}"), &cluster_args(n, w, p, &hosts, rest), &[])).collect()
}

/// SIGTERM to every process at once, then waits for each: each must seal, commit and exit 0.
pub fn terminate_cleanly(procs: &mut [Proc], limit: Duration) {
    for p in procs.iter() {
        p.term();
    }
    wait_all_succeed(procs, limit);
}

/// Waits for every process to end; each must exit 0.
pub fn wait_all_succeed(procs: &mut [Proc], limit: Duration) {
    for p in procs.iter_mut() {
        let status = p.wait(limit);
        assert!(status.success(), "{} must exit 0: {}", p.name, p.output());
    }
}

/// The independent check's summary.
#[derive(Debug, serde::Deserialize)]
pub struct Check {
    pub kafka_records: u64,
    pub data_rows: u64,
    pub late_rows: u64,
    pub dead_letters: u64,
    pub files: u64,
    pub manifests: u64,
}

/// Runs tests/python/lake_check.py (pyarrow + confluent-kafka) and asserts it found no problem.
pub fn lake_check(output: &str, prefix: &str, expect_records: u64) -> Check {
    lake_check_with(output, prefix, expect_records, &[])
}

/// [`lake_check`] with extra checker flags (e.g. `--expect-group G`).
pub fn lake_check_with(output: &str, prefix: &str, expect_records: u64, extra: &[&str]) -> Check {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/lake_check.py");
    let out = Command::new(python())
        .args([script, "--output", output, "--brokers", &brokers(), "--prefix", prefix, "--expect-records", &expect_records.to_string()])
        .args(extra)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "lake check failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let check: Check = serde_json::from_str(stdout.trim().lines().last().unwrap()).unwrap();
    assert_eq!(check.data_rows + check.late_rows + check.dead_letters, check.kafka_records);
    check
}

/// Manifests written so far in a local output (claims included).
pub fn manifests(dir: &Path) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir.join("_manifests")) {
        for e in entries.flatten() {
            if e.path().extension().is_some_and(|x| x == "json")
                && let Ok(text) = std::fs::read_to_string(e.path())
                && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
            {
                out.push(v);
            }
        }
    }
    out.sort_by_key(|m| m["sequence"].as_u64());
    out
}

/// Waits until `pred` holds, up to `limit`.
pub fn wait_until(limit: Duration, what: &str, mut pred: impl FnMut() -> bool) {
    let start = Instant::now();
    while !pred() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// True while the process has not exited.
pub fn alive(p: &mut Proc) -> bool {
    p.child.try_wait().unwrap().is_none()
}

/// How often `needle` occurs in the process's output so far.
pub fn log_count(p: &Proc, needle: &str) -> usize {
    p.output().matches(needle).count()
}

/// Records held by the `partitions` partitions of the topics named `prefix…` (the sum of each
/// partition's high − low watermark); asserts that there are exactly that many partitions.
pub fn kafka_records(prefix: &str, partitions: usize) -> u64 {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let client: BaseConsumer = rdkafka::ClientConfig::new().set("bootstrap.servers", brokers()).create().unwrap();
    let metadata = client.fetch_metadata(None, Duration::from_secs(30)).unwrap();
    let mut total = 0;
    let mut seen = 0;
    for t in metadata.topics().iter().filter(|t| t.name().starts_with(prefix)) {
        for p in t.partitions() {
            let (low, high) = client.fetch_watermarks(t.name(), p.id(), Duration::from_secs(30)).unwrap();
            total += (high - low) as u64;
            seen += 1;
        }
    }
    assert_eq!(seen, partitions, "partitions of the topics {prefix}*");
    total
}

/// Rows committed so far in a local output (every commit manifest's files).
pub fn committed_rows(dir: &Path) -> u64 {
    committed_rows_by_table(dir).values().sum()
}

/// Rows committed so far in a local output, per table (the object path's top folder: a stream,
/// or `_dead_letter`); the aggregate tables' files (rows of a summary, rewritten) are not counted.
pub fn committed_rows_by_table(dir: &Path) -> std::collections::BTreeMap<String, u64> {
    let mut rows = std::collections::BTreeMap::new();
    for m in manifests(dir).iter().filter(|m| m["kind"] == "commit") {
        for f in m["files"].as_array().cloned().unwrap_or_default().into_iter().filter(|f| f["kind"] != "aggregate") {
            let table = f["path"].as_str().unwrap().split('/').next().unwrap().to_owned();
            *rows.entry(table).or_insert(0) += f["rows"].as_u64().unwrap();
        }
    }
    rows
}

/// scripts/services.sh of this repository. It acts on the services `scripts/with-services.sh`
/// started, because the test inherits their `CITYSTREAM_STATE` / `CITYSTREAM_PORT_OFFSET`.
pub fn services_script() -> &'static str {
    concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/services.sh")
}

fn services(command: &str, service: &str) -> Result<(), String> {
    let out = Command::new("bash").args([services_script(), command, service]).stdin(Stdio::null()).output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("services.sh {command} {service}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    }
}

/// One of the shared services (`kafka` or `s3`) stopped with `scripts/services.sh down`; it is
/// brought back with `up` by [`Outage::end`] or, whatever happens to the test, when dropped —
/// the other tests need it. Service data is kept across the outage.
pub struct Outage {
    service: &'static str,
    began: Instant,
    restored: bool,
}

impl Outage {
    /// Stops `service`.
    pub fn begin(service: &'static str) -> Outage {
        eprintln!("faults: stopping {service}");
        let outage = Outage { service, began: Instant::now(), restored: false };
        services("down", service).unwrap_or_else(|e| panic!("{e}"));
        outage
    }

    /// Time since the service was asked to stop.
    pub fn elapsed(&self) -> Duration {
        self.began.elapsed()
    }

    /// Starts the service again (three attempts) and returns how long it was away.
    pub fn end(mut self) -> Duration {
        self.restore().unwrap_or_else(|e| panic!("{e}"));
        self.began.elapsed()
    }

    fn restore(&mut self) -> Result<(), String> {
        if self.restored {
            return Ok(());
        }
        let mut last = String::new();
        for attempt in 1..=3 {
            match services("up", self.service) {
                Ok(()) => {
                    self.restored = true;
                    eprintln!("faults: {} back after {:.1} s", self.service, self.began.elapsed().as_secs_f64());
                    return Ok(());
                }
                Err(e) => {
                    eprintln!("faults: bringing {} back, attempt {attempt} failed: {e}", self.service);
                    last = e;
                    std::thread::sleep(Duration::from_secs(2));
                }
            }
        }
        Err(last)
    }
}

impl Drop for Outage {
    fn drop(&mut self) {
        if let Err(e) = self.restore() {
            eprintln!("faults: could not bring {} back: {e}", self.service);
        }
    }
}

/// The seed of a fault test: `CITYSTREAM_FAULTS_SEED` to replay, else fresh. Printed, so that a
/// failure can be replayed. Returns it, and the test's own seed derived from it and the test's
/// name (so that the tests of one run draw differently).
pub fn fault_seed(test: &str) -> (u64, u64) {
    let base = match std::env::var("CITYSTREAM_FAULTS_SEED") {
        Ok(s) => s.trim().parse().unwrap_or_else(|_| panic!("CITYSTREAM_FAULTS_SEED={s:?} is not an unsigned integer")),
        Err(_) => std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 % 1_000_000_007,
    };
    eprintln!("faults: {test}: seed {base} (replay with CITYSTREAM_FAULTS_SEED={base})");
    (base, test.bytes().fold(base, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)))
}

/// A size knob of the fault suite: `CITYSTREAM_FAULTS_<NAME>` if set, else `small` or `large`
/// by `CITYSTREAM_FAULTS_SCALE` (`small`, the default, is what CI runs).
pub fn fault_size(name: &str, small: u64, large: u64) -> u64 {
    let var = format!("CITYSTREAM_FAULTS_{name}");
    if let Ok(v) = std::env::var(&var) {
        return v.trim().parse().unwrap_or_else(|_| panic!("{var}={v:?} is not an unsigned integer"));
    }
    match std::env::var("CITYSTREAM_FAULTS_SCALE").as_deref() {
        Ok("large") => large,
        Ok("small") | Err(_) => small,
        Ok(other) => panic!("CITYSTREAM_FAULTS_SCALE={other:?}: expected small or large"),
    }
}

/// Reports a fault test's result: one `FAULTS-RESULT {json}` line on stdout, and appended to the
/// file `CITYSTREAM_FAULTS_RESULTS` names, if any (scripts/faults.sh collects them).
pub fn fault_result(result: serde_json::Value) {
    println!("FAULTS-RESULT {result}");
    if let Ok(path) = std::env::var("CITYSTREAM_FAULTS_RESULTS") {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path).unwrap_or_else(|e| panic!("CITYSTREAM_FAULTS_RESULTS={path}: {e}"));
        writeln!(f, "{result}").unwrap();
    }
}

/// What a bounded run of the binary printed (see [`run_bounded`]).
pub struct Bounded {
    /// Exit code (`None`: killed by a signal).
    pub code: Option<i32>,
    /// Everything on stdout.
    pub stdout: String,
    /// Everything on stderr.
    pub stderr: String,
    /// How long it ran.
    pub elapsed: Duration,
}

/// Runs `citystream args` with no inherited `CITYSTREAM_*` variable (the `AWS_*` ones stay)
/// plus `env`; kills it and fails the test if it runs longer than `limit` (a hang guard).
pub fn run_bounded(args: &[&str], env: &[(&str, &str)], limit: Duration) -> Bounded {
    use std::io::Read;
    let mut cmd = Command::new(bin());
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("CITYSTREAM_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied());
    let start = Instant::now();
    let mut child = cmd.spawn().expect("spawn citystream");
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`citystream {}` did not finish within {limit:?}; stderr:\n{}", args.join(" "), err.join().unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Bounded { code: status.code(), stdout: out.join().unwrap(), stderr: err.join().unwrap(), elapsed: start.elapsed() }
}

/// Starts `citystream simulate` in the background: `events` records of `vehicles` vehicles at
/// `rate` per second (2 partitions per topic, 1 % late, 0.5 % malformed), in event time from
/// 2025-03-01T10:00 — after what a `simulate` with the default start made before.
pub fn start_live_producer(dir: &Path, prefix: &str, vehicles: u32, events: u64, rate: u64, seed: u64) -> Proc {
    let mut args: Vec<String> = ["simulate", "--brokers", &brokers(), "--topic-prefix", prefix].map(str::to_owned).to_vec();
    args.extend(fleet_args(vehicles, events, seed));
    args.extend(["--rate".into(), rate.to_string(), "--start".into(), "2025-03-01T10:00:00".into()]);
    Proc::start(dir, "producer", &args, &[])
}

/// The simulator flags of the fault and Delta suites: `vehicles` vehicles, `events` records on 2
/// partitions per topic, 1 % late and 0.5 % malformed, from `seed`.
pub fn fleet_args(vehicles: u32, events: u64, seed: u64) -> Vec<String> {
    simulate_args(vehicles, events, 2, seed)
}

/// `vehicles` vehicles, `events` records on `partitions` partitions per topic, 1 % late and
/// 0.5 % malformed, from `seed`: the mix every fault, Delta and Spark test produces.
pub fn simulate_args(vehicles: u32, events: u64, partitions: u32, seed: u64) -> Vec<String> {
    let (vehicles, events, partitions, seed) = (vehicles.to_string(), events.to_string(), partitions.to_string(), seed.to_string());
    ["--vehicles", &vehicles, "--events", &events, "--partitions", &partitions, "--late-fraction", "0.01", "--malformed-fraction", "0.005", "--seed", &seed]
        .map(str::to_owned)
        .to_vec()
}
