//! How fast `citystream simulate` fills the local Kafka broker.
//!
//! Two measurements on the same machine, in the same run:
//! 1. **generate**: `Fleet::step` with JSON serialisation, no Kafka: the simulator's ceiling.
//! 2. **produce**: `simulate::producer::produce` of N records (idempotent, acks=all) into fresh
//!    topics on the broker named by `CITYSTREAM_BROKERS`, timed from the first send to the last
//!    acknowledgement.
//!
//! Prints records/s, MB/s (JSON value bytes) and produce/generate, and writes them with the
//! machine's description to `target/bench-simulate.json`.
//!
//! Run: `scripts/with-services.sh cargo bench --bench simulate`
//! Environment: `CITYSTREAM_BENCH_EVENTS` (default 1,000,000), `CITYSTREAM_BENCH_RUNS`
//! (produce runs, default 3; the best and the median are reported), `CITYSTREAM_BENCH_VEHICLES`
//! (default 100), `CITYSTREAM_BENCH_PARTITIONS` (default 6), `CITYSTREAM_BENCH_KAFKA_OPTIONS`
//! (extra librdkafka producer settings, `key=value,key=value`, to try alternatives to the
//! producer's own settings).
//!
//! Under `cargo test --all-targets` (no `--bench` argument) it runs a 10,000-record smoke
//! version and writes nothing, so the benchmark cannot rot unnoticed.

use std::hint::black_box;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use citystream::contract::Stream;
use citystream::kafka::settings::{KafkaClientSettings, KafkaOption};
use citystream::simulate::producer::{ProduceOptions, Summary, produce};
use citystream::simulate::{Fleet, FleetConfig};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;

fn env_or(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v.replace('_', "").parse().unwrap_or_else(|_| panic!("{name}={v:?} is not a whole number")),
        Err(_) => default,
    }
}

/// One generation-only pass: returns (records/s, value bytes/s, seconds).
fn generate(cfg: &FleetConfig, events: u64) -> (f64, f64, f64) {
    let mut fleet = Fleet::new(cfg.clone());
    let (mut n, mut bytes) = (0u64, 0u64);
    let start = Instant::now();
    while n < events {
        for rec in fleet.step() {
            bytes += rec.value.len() as u64;
            n += 1;
            black_box(&rec);
        }
    }
    let secs = start.elapsed().as_secs_f64();
    (n as f64 / secs, bytes as f64 / secs, secs)
}

fn delete_topics(brokers: &str, prefixes: &[String]) {
    let admin: AdminClient<DefaultClientContext> = match ClientConfig::new().set("bootstrap.servers", brokers).create() {
        Ok(a) => a,
        Err(e) => return eprintln!("warning: cannot delete benchmark topics: {e}"),
    };
    let names: Vec<String> = prefixes.iter().flat_map(|p| Stream::ALL.iter().map(move |s| format!("{p}{}", s.name()))).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    if let Err(e) = futures::executor::block_on(admin.delete_topics(&names, &opts)) {
        eprintln!("warning: cannot delete benchmark topics: {e}");
    }
}

fn machine() -> serde_json::Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo.lines().find_map(|l| l.strip_prefix("model name").map(|r| r.trim_start_matches([' ', '\t', ':']).to_owned()));
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: Option<u64> = meminfo.lines().find_map(|l| l.strip_prefix("MemTotal:")).and_then(|r| r.trim().trim_end_matches("kB").trim().parse().ok());
    serde_json::json!({
        "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu": cpu,
        "mem_gib": mem_kib.map(|k| (k as f64 / 1024.0 / 1024.0 * 10.0).round() / 10.0),
    })
}

/// CPU seconds (user + system, all threads) that process `pid` ("self" for this one) has used
/// so far; Linux only, 0 if unknown.
fn cpu_s(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<f64> = rest.split_whitespace().map(|x| x.parse().unwrap_or(0.0)).collect();
    // Clock ticks are 100 per second on every Linux this runs on (USER_HZ).
    f.get(11).zip(f.get(12)).map(|(u, s)| (u + s) / 100.0).unwrap_or(0.0)
}

/// The local broker's process id, to measure its CPU too: `CITYSTREAM_BENCH_BROKER_PID`, or the
/// pid file of `scripts/services.sh`.
fn broker_pid() -> Option<String> {
    if let Ok(pid) = std::env::var("CITYSTREAM_BENCH_BROKER_PID") {
        return Some(pid);
    }
    let state = std::env::var("CITYSTREAM_STATE").unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/.services").into());
    let pid = std::fs::read_to_string(format!("{state}/kafka/kafka.pid")).ok()?.trim().to_owned();
    std::path::Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
}

/// Peak resident memory of this process so far, in MiB.
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib: f64 = status.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|r| r.trim().trim_end_matches("kB").trim().parse().ok()).unwrap_or(0.0);
    kib / 1024.0
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` does not.
    let bench_mode = std::env::args().any(|a| a == "--bench");
    let brokers = std::env::var("CITYSTREAM_BROKERS")
        .unwrap_or_else(|_| panic!("CITYSTREAM_BROKERS is not set: run `scripts/with-services.sh cargo bench --bench simulate`"));
    let events = if bench_mode { env_or("CITYSTREAM_BENCH_EVENTS", 1_000_000) } else { 10_000 };
    let runs = if bench_mode { env_or("CITYSTREAM_BENCH_RUNS", 3).max(1) } else { 1 };
    let vehicles = env_or("CITYSTREAM_BENCH_VEHICLES", 100) as u32;
    let partitions = env_or("CITYSTREAM_BENCH_PARTITIONS", 6) as i32;
    let extra_config: Vec<(String, String)> = std::env::var("CITYSTREAM_BENCH_KAFKA_OPTIONS")
        .unwrap_or_default()
        .split(',')
        .filter(|kv| !kv.trim().is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.trim().to_owned(), v.trim().to_owned()),
            None => panic!("CITYSTREAM_BENCH_KAFKA_OPTIONS: {kv:?} is not key=value"),
        })
        .collect();
    let cfg = FleetConfig { vehicles, seed: 1, ..FleetConfig::default() };

    // Baseline: generation only (warm up once, then take the best of three).
    generate(&cfg, events.min(100_000));
    let gens: Vec<(f64, f64, f64)> = (0..3).map(|_| generate(&cfg, events)).collect();
    let (gen_rate, gen_bps, _) = gens.iter().copied().fold((0.0, 0.0, 0.0), |a, g| if g.0 > a.0 { g } else { a });
    println!("generate: {events} records, best of 3: {gen_rate:>12.0} records/s {:>8.1} MB/s", gen_bps / 1e6);

    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let mut prefixes = Vec::new();
    let mut summaries: Vec<Summary> = Vec::new();
    let mut cpus: Vec<f64> = Vec::new();
    let mut broker_cpus: Vec<Option<f64>> = Vec::new();
    let broker = broker_pid();
    for run in 0..runs {
        let prefix = format!("bench-{}-{nanos}-{run}.", std::process::id());
        prefixes.push(prefix.clone());
        let opts = ProduceOptions {
            brokers: brokers.clone(),
            topic_prefix: prefix,
            events: Some(events),
            duration: None,
            rate: 0,
            partitions,
            connect_timeout: Duration::from_secs(10),
            kafka: KafkaClientSettings::with_options(extra_config.iter().map(|(k, v)| KafkaOption { key: k.clone(), value: v.clone() }).collect()),
            progress: false,
        };
        let (cpu0, broker0) = (cpu_s("self"), broker.as_deref().map(cpu_s));
        let s = match produce(cfg.clone(), &opts) {
            Ok(s) => s,
            Err(e) => {
                delete_topics(&brokers, &prefixes);
                panic!("produce into {brokers} failed: {e}");
            }
        };
        let cpu = cpu_s("self") - cpu0;
        let broker_cpu = broker.as_deref().map(cpu_s).zip(broker0).map(|(b1, b0)| b1 - b0);
        assert_eq!(s.delivered, events, "every record acknowledged");
        println!(
            "produce:  {events} records, run {}: {:>12.0} records/s {:>8.1} MB/s  ({:.2} s wall; CPU s: client {:.2}, broker {})",
            run + 1,
            s.rate(),
            s.bytes as f64 / s.seconds / 1e6,
            s.seconds,
            cpu,
            broker_cpu.map_or("?".into(), |b| format!("{b:.2}"))
        );
        cpus.push(cpu);
        broker_cpus.push(broker_cpu);
        summaries.push(s);
    }
    delete_topics(&brokers, &prefixes);

    let rates: Vec<f64> = summaries.iter().map(Summary::rate).collect();
    let mbps: Vec<f64> = summaries.iter().map(|s| s.bytes as f64 / s.seconds / 1e6).collect();
    let (best, med) = (rates.iter().copied().fold(0.0, f64::max), median(rates.clone()));
    println!(
        "produce:  best {best:.0} records/s, median {med:.0} records/s ({:.1} MB/s median); produce/generate = {:.2}",
        median(mbps.clone()),
        med / gen_rate
    );
    if !bench_mode {
        println!("(smoke run under `cargo test`; run `cargo bench --bench simulate` to measure)");
        return;
    }
    let report = serde_json::json!({
        "benchmark": "simulate",
        "command": "scripts/with-services.sh cargo bench --bench simulate",
        "events": events,
        "vehicles": vehicles,
        "partitions": partitions,
        "extra_kafka_options": extra_config.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
        "brokers": brokers,
        "generate": { "records_per_s": gen_rate, "mb_per_s": gen_bps / 1e6 },
        "produce": {
            "runs": rates.len(),
            "records_per_s": rates,
            "mb_per_s": mbps,
            "best_records_per_s": best,
            "median_records_per_s": med,
            "seconds": summaries.iter().map(|s| s.seconds).collect::<Vec<_>>(),
            "value_bytes": summaries[0].bytes,
            "client_cpu_s": cpus,
            "broker_cpu_s": broker_cpus,
            "client_peak_rss_mib": peak_rss_mib(),
        },
        "produce_over_generate": med / gen_rate,
        "machine": machine(),
    });
    let dir = std::env::var_os("CARGO_TARGET_DIR").map(std::path::PathBuf::from).unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/target").into());
    let path = dir.join("bench-simulate.json");
    std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(&path, serde_json::to_string_pretty(&report).expect("json") + "\n"))
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    println!("wrote {}", path.display());
}
