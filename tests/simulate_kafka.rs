//! `citystream simulate` against the real Kafka broker.
//!
//! Runs the built binary (so the CLI is exercised too) into fresh, uniquely named topics,
//! consumes everything back with rdkafka and checks it against the data contract: counts per
//! topic, the original JSON shape of clean records, injected malformed records failing with
//! the announced error class, keys, determinism for a seed. Also checks that an unreachable
//! broker is reported in bounded time.
//!
//! Needs `CITYSTREAM_BROKERS` (set by `scripts/with-services.sh`); run through the project's
//! test command, `scripts/test.sh`. Without it these tests fail instead of skipping, so a
//! green run always means the real broker was exercised.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::io::Read;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use citystream::contract::{DecodeOptions, Stream, decode};
use citystream::simulate::INJECTED_HEADER;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::Value;

/// Bound on one simulator run (debug build, 50,000 records: a few seconds normally).
const SIMULATE_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on reading a run's topics back.
const CONSUME_TIMEOUT: Duration = Duration::from_secs(60);

fn brokers() -> String {
    match std::env::var("CITYSTREAM_BROKERS") {
        Ok(b) if !b.trim().is_empty() => b,
        _ => panic!(
            "CITYSTREAM_BROKERS is not set: this test needs the real Kafka broker. Run the \
             project's test command `scripts/test.sh` (README), or for this file alone \
             `scripts/with-services.sh cargo test --test simulate_kafka`."
        ),
    }
}

/// A topic prefix no other run has used: `it-<pid>-<nanos>-<tag>.`
fn unique_prefix(tag: &str) -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_nanos();
    format!("it-{}-{nanos}-{tag}.", std::process::id())
}

/// Deletes the five topics of a prefix when dropped (also when the test panics), so that
/// reruns against a kept broker stay clean.
struct Topics {
    brokers: String,
    prefix: String,
}

impl Topics {
    fn new(brokers: &str, prefix: &str) -> Self {
        Topics { brokers: brokers.to_owned(), prefix: prefix.to_owned() }
    }

    fn names(&self) -> Vec<String> {
        Stream::ALL.iter().map(|s| format!("{}{}", self.prefix, s.name())).collect()
    }
}

impl Drop for Topics {
    fn drop(&mut self) {
        let admin: AdminClient<DefaultClientContext> = match ClientConfig::new().set("bootstrap.servers", &self.brokers).create() {
            Ok(a) => a,
            Err(e) => return eprintln!("warning: cannot delete topics {}*: {e}", self.prefix),
        };
        let names = self.names();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        match futures::executor::block_on(admin.delete_topics(&names, &opts)) {
            Ok(results) => {
                for r in results {
                    if let Err((topic, code)) = r {
                        eprintln!("warning: cannot delete topic {topic}: {code}");
                    }
                }
            }
            Err(e) => eprintln!("warning: cannot delete topics {}*: {e}", self.prefix),
        }
    }
}

/// Runs the `citystream` binary with `args` and no inherited `CITYSTREAM_*` variables, killing
/// it (and failing) after `timeout`.
fn citystream(args: &[&str], timeout: Duration) -> (Output, Duration) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_citystream"));
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("CITYSTREAM_") {
            cmd.env_remove(k);
        }
    }
    let start = Instant::now();
    let mut child = cmd.spawn().expect("spawn the citystream binary");
    // Drain the pipes on threads so that a chatty child cannot block on a full pipe.
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("piped stdout")));
    let err = drain(Box::new(child.stderr.take().expect("piped stderr")));
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for citystream") {
            break status;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = err.join().unwrap_or_default();
            panic!("`citystream {}` did not finish within {timeout:?}; killed it. stderr:\n{}", args.join(" "), String::from_utf8_lossy(&stderr));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let elapsed = start.elapsed();
    let output = Output { status, stdout: out.join().unwrap_or_default(), stderr: err.join().unwrap_or_default() };
    (output, elapsed)
}

/// Runs `citystream simulate` into `prefix` and fails the test if it fails.
fn simulate(brokers: &str, prefix: &str, events: u64) {
    let events = events.to_string();
    #[rustfmt::skip]
    let args = [
        "simulate", "--brokers", brokers, "--topic-prefix", prefix,
        "--vehicles", "40", "--events", &events, "--partitions", "4", "--seed", "7",
        "--late-fraction", "0.01", "--malformed-fraction", "0.01",
    ];
    let (out, elapsed) = citystream(&args, SIMULATE_TIMEOUT);
    assert!(
        out.status.success(),
        "`citystream {}` failed ({}) after {elapsed:?}.\nstdout:\n{}\nstderr:\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One record as read back from Kafka.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Consumed {
    stream: Stream,
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    value: Vec<u8>,
    /// The value of the `citystream-injected` header, if present.
    injected: Option<String>,
}

/// Reads every record of the five topics of `prefix`, from the beginning up to each
/// partition's high watermark as it stands now.
fn consume_all(brokers: &str, prefix: &str, expect_partitions: usize) -> Vec<Consumed> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("{prefix}reader"))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("create the test consumer");
    let timeout = Duration::from_secs(10);
    let mut assignment = TopicPartitionList::new();
    // (topic, partition) -> high watermark (the offset after the last record).
    let mut remaining: HashMap<(String, i32), i64> = HashMap::new();
    for stream in Stream::ALL {
        let topic = format!("{prefix}{}", stream.name());
        let md = consumer.fetch_metadata(Some(&topic), timeout).unwrap_or_else(|e| panic!("metadata of {topic}: {e}"));
        let t = md.topics().iter().find(|t| t.name() == topic).unwrap_or_else(|| panic!("topic {topic} missing"));
        assert!(t.error().is_none(), "topic {topic}: {:?}", t.error());
        assert_eq!(t.partitions().len(), expect_partitions, "partitions of {topic}");
        for p in t.partitions() {
            let (low, high) = consumer.fetch_watermarks(&topic, p.id(), timeout).unwrap_or_else(|e| panic!("watermarks of {topic}/{}: {e}", p.id()));
            assert_eq!(low, 0, "{topic}/{} starts at offset 0", p.id());
            if high > low {
                remaining.insert((topic.clone(), p.id()), high);
                assignment.add_partition_offset(&topic, p.id(), Offset::Beginning).expect("add partition");
            }
        }
    }
    consumer.assign(&assignment).expect("assign partitions");

    let mut out = Vec::new();
    let start = Instant::now();
    while !remaining.is_empty() {
        if start.elapsed() > CONSUME_TIMEOUT {
            let mut left: Vec<_> = remaining.iter().map(|((t, p), h)| format!("{t}/{p} (high watermark {h})")).collect();
            left.sort();
            panic!(
                "timed out after {CONSUME_TIMEOUT:?} reading back {prefix}*: read {} records, \
                 still waiting on {}",
                out.len(),
                left.join(", ")
            );
        }
        let Some(msg) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let msg = msg.unwrap_or_else(|e| panic!("consuming {prefix}*: {e}"));
        let stream = Stream::from_topic(msg.topic(), prefix).unwrap_or_else(|| panic!("unexpected topic {}", msg.topic()));
        let injected = msg
            .headers()
            .and_then(|hs| hs.iter().find(|h| h.key == INJECTED_HEADER).map(|h| String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned()));
        let id = (msg.topic().to_owned(), msg.partition());
        if let Some(&high) = remaining.get(&id) {
            if msg.offset() + 1 >= high {
                remaining.remove(&id);
            }
        }
        out.push(Consumed {
            stream,
            partition: msg.partition(),
            offset: msg.offset(),
            key: msg.key().map(<[u8]>::to_vec),
            value: msg.payload().unwrap_or_default().to_vec(),
            injected,
        });
    }
    out
}

/// A JSON object with its keys in the order they were written (serde_json's own map sorts
/// them unless its `preserve_order` feature is on, which the crate does not need).
struct OrderedObject(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for OrderedObject {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OrderedObject;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<OrderedObject, A::Error> {
                let mut fields = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, Value>()? {
                    fields.push((k, v));
                }
                Ok(OrderedObject(fields))
            }
        }
        d.deserialize_map(V)
    }
}

/// What a field of the original producer's JSON holds.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Uuid,
    Str,
    Ts,
    Loc,
    Float,
    Int,
}

/// Field names, order and kinds per topic, as in design.md §2 (the original producer).
fn original_shape(stream: Stream) -> &'static [(&'static str, Kind)] {
    use Kind::*;
    match stream {
        Stream::Vehicle => &[
            ("id", Uuid),
            ("deviceId", Str),
            ("timestamp", Ts),
            ("location", Loc),
            ("speed", Float),
            ("direction", Str),
            ("maker", Str),
            ("model", Str),
            ("year", Int),
            ("fueltype", Str),
        ],
        Stream::Gps => &[("id", Uuid), ("deviceId", Str), ("timestamp", Ts), ("speed", Float), ("direction", Str), ("vehicleType", Str)],
        Stream::Traffic => &[("id", Uuid), ("deviceId", Str), ("cameraId", Str), ("location", Loc), ("timestamp", Ts), ("snapshot", Str)],
        Stream::Weather => &[
            ("id", Uuid),
            ("deviceId", Str),
            ("location", Loc),
            ("timestamp", Ts),
            ("temperature", Float),
            ("weatherCondition", Str),
            ("precipitation", Float),
            ("windspeed", Float),
            ("humidity", Int),
            ("airQualityIndex", Float),
        ],
        Stream::Emergency => &[
            ("id", Uuid),
            ("deviceId", Str),
            ("incidentId", Uuid),
            ("incident", Str),
            ("timestamp", Ts),
            ("location", Loc),
            ("status", Str),
            ("description", Str),
        ],
    }
}

/// `^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?$`: Python's naive `datetime.isoformat()`.
fn is_naive_iso(s: &str) -> bool {
    let b = s.as_bytes();
    let pattern = b"dddd-dd-ddTdd:dd:dd";
    let head_ok = b.len() >= pattern.len() && pattern.iter().zip(b).all(|(p, c)| if *p == b'd' { c.is_ascii_digit() } else { p == c });
    let tail = &b[pattern.len().min(b.len())..];
    head_ok && (tail.is_empty() || (tail.len() == 7 && tail[0] == b'.' && tail[1..].iter().all(u8::is_ascii_digit)))
}

fn is_uuid(s: &str) -> bool {
    s.len() == 36 && s.bytes().enumerate().all(|(i, c)| if matches!(i, 8 | 13 | 18 | 23) { c == b'-' } else { c.is_ascii_hexdigit() })
}

/// Checks that a clean value is field for field the original producer's JSON; returns its
/// `deviceId`.
fn check_original_shape(stream: Stream, value: &[u8]) -> Result<String, String> {
    let obj: OrderedObject = serde_json::from_slice(value).map_err(|e| format!("not a JSON object: {e}"))?;
    let want = original_shape(stream);
    let keys: Vec<&str> = obj.0.iter().map(|(k, _)| k.as_str()).collect();
    let want_keys: Vec<&str> = want.iter().map(|(k, _)| *k).collect();
    if keys != want_keys {
        return Err(format!("keys {keys:?}, want exactly {want_keys:?}"));
    }
    for ((name, kind), (_, v)) in want.iter().zip(&obj.0) {
        let ok = match kind {
            Kind::Uuid => v.as_str().is_some_and(is_uuid),
            Kind::Str => v.as_str().is_some_and(|s| !s.is_empty()),
            Kind::Ts => v.as_str().is_some_and(is_naive_iso),
            Kind::Loc => v.as_array().is_some_and(|a| a.len() == 2 && a.iter().all(Value::is_number)),
            Kind::Float => v.is_f64(),
            Kind::Int => v.is_i64() || v.is_u64(),
        };
        if !ok {
            return Err(format!("field {name}: {v} is not a {kind:?}"));
        }
    }
    Ok(obj.0[1].1.as_str().unwrap_or_default().to_owned())
}

#[test]
fn simulate_into_real_kafka_and_read_back() {
    let brokers = brokers();
    let prefix = unique_prefix("main");
    let _cleanup = Topics::new(&brokers, &prefix);
    simulate(&brokers, &prefix, 50_000);
    let records = consume_all(&brokers, &prefix, 4);

    assert_eq!(records.len(), 50_000, "records read back over the five topics");
    let mut per_stream: BTreeMap<&str, u64> = BTreeMap::new();
    for r in &records {
        *per_stream.entry(r.stream.name()).or_default() += 1;
    }
    for s in Stream::ALL {
        assert_eq!(per_stream.get(s.name()).copied().unwrap_or(0), 10_000, "records in {prefix}{s}; all: {per_stream:?}");
    }

    let opts = DecodeOptions::default();
    let (mut clean, mut late, mut malformed) = (0u64, 0u64, 0u64);
    let mut malformed_classes: BTreeMap<String, u64> = BTreeMap::new();
    let mut devices = BTreeSet::new();
    let mut failures = Vec::new();
    for r in &records {
        let at = format!("{prefix}{}/{}@{}", r.stream, r.partition, r.offset);
        let key = r.key.as_deref().map(String::from_utf8_lossy).unwrap_or_default().into_owned();
        let decoded = decode(r.stream, &r.value, &opts);
        match r.injected.as_deref() {
            None => {
                clean += 1;
                match decoded {
                    Ok(rec) if rec.device_id() == key => {}
                    Ok(rec) => failures.push(format!("{at}: key {key:?} is not the deviceId {:?}", rec.device_id())),
                    Err(e) => failures.push(format!("{at}: clean record does not decode: {e}")),
                }
                match check_original_shape(r.stream, &r.value) {
                    Ok(device) if device == key => {}
                    Ok(device) => failures.push(format!("{at}: key {key:?} is not the JSON deviceId {device:?}")),
                    Err(e) => failures.push(format!("{at}: not the original shape: {e}: {}", String::from_utf8_lossy(&r.value))),
                }
            }
            Some("late") => {
                late += 1;
                match decoded {
                    Ok(rec) if rec.device_id() == key => {}
                    Ok(rec) => failures.push(format!("{at}: key {key:?} is not the deviceId {:?}", rec.device_id())),
                    Err(e) => failures.push(format!("{at}: late record does not decode: {e}")),
                }
                if let Err(e) = check_original_shape(r.stream, &r.value) {
                    failures.push(format!("{at}: late record not in the original shape: {e}"));
                }
            }
            Some(h) => match h.strip_prefix("malformed:") {
                Some(class) => {
                    malformed += 1;
                    *malformed_classes.entry(class.to_owned()).or_default() += 1;
                    match decoded {
                        Err(e) if e.class.as_str() == class => {}
                        Err(e) => failures.push(format!("{at}: header says {class}, decoding failed with {}: {e}", e.class.as_str())),
                        Ok(_) => failures.push(format!("{at}: header says {class}, but it decodes: {}", String::from_utf8_lossy(&r.value))),
                    }
                }
                None => failures.push(format!("{at}: unknown {INJECTED_HEADER} header {h:?}")),
            },
        }
        if !key.starts_with("Vehicle-") {
            failures.push(format!("{at}: key {key:?} is not a device id"));
        }
        devices.insert(key);
    }
    assert!(failures.is_empty(), "{} problems, first ones:\n{}", failures.len(), failures[..failures.len().min(20)].join("\n"));
    assert_eq!(clean + late + malformed, 50_000);
    assert!(malformed > 0, "--malformed-fraction 0.01 injected no malformed records");
    assert!(late > 0, "--late-fraction 0.01 injected no late records");
    // 1% of 50,000 each: ~500, far from 0 and from 5,000.
    assert!((200..1_000).contains(&malformed) && (200..1_000).contains(&late), "late {late}, malformed {malformed}");
    assert_eq!(devices.len(), 40, "one key per vehicle");
    eprintln!("read back {} records: clean {clean}, late {late}, malformed {malformed} {malformed_classes:?}", records.len());
}

#[test]
fn same_seed_same_values() {
    let brokers = brokers();
    let (a, b) = (unique_prefix("seed-a"), unique_prefix("seed-b"));
    let (_ca, _cb) = (Topics::new(&brokers, &a), Topics::new(&brokers, &b));
    simulate(&brokers, &a, 10_000);
    simulate(&brokers, &b, 10_000);
    // The key decides the partition and the idempotent producer keeps per-partition order, so
    // the same seed must give the same sequence of (key, value, header) in every partition.
    type Sequences = BTreeMap<(Stream, i32), Vec<(Option<Vec<u8>>, Vec<u8>, Option<String>)>>;
    let by_partition = |records: Vec<Consumed>| {
        let mut m = Sequences::new();
        for r in records {
            m.entry((r.stream, r.partition)).or_default().push((r.key, r.value, r.injected));
        }
        m
    };
    let (ra, rb) = (by_partition(consume_all(&brokers, &a, 4)), by_partition(consume_all(&brokers, &b, 4)));
    assert_eq!(ra.values().map(Vec::len).sum::<usize>(), 10_000);
    assert_eq!(ra.keys().collect::<Vec<_>>(), rb.keys().collect::<Vec<_>>(), "the same partitions hold records");
    for (k, va) in &ra {
        let vb = &rb[k];
        assert_eq!(va.len(), vb.len(), "records in {:?}", k);
        if let Some(i) = va.iter().zip(vb).position(|(x, y)| x != y) {
            panic!(
                "{}/{}: record {i} differs between two runs with --seed 7:\n{}\n{}",
                k.0,
                k.1,
                String::from_utf8_lossy(&va[i].1),
                String::from_utf8_lossy(&vb[i].1)
            );
        }
    }
}

#[test]
fn unreachable_broker_fails_fast_naming_the_address() {
    let (out, elapsed) = citystream(&["simulate", "--brokers", "127.0.0.1:1", "--connect-timeout", "3s", "--events", "10"], Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "simulate against 127.0.0.1:1 succeeded?\n{stderr}");
    assert!(stderr.contains("127.0.0.1:1"), "stderr does not name the address:\n{stderr}");
    assert!(elapsed < Duration::from_secs(30), "took {elapsed:?}");
    eprintln!("unreachable broker reported after {elapsed:?}: {}", stderr.lines().last().unwrap_or_default());
}

#[test]
fn naive_iso_pattern() {
    assert!(is_naive_iso("2025-03-01T10:15:42.123456"));
    assert!(is_naive_iso("2025-03-01T10:15:42"));
    for bad in ["2025-03-01T10:15:42.123", "2025-03-01 10:15:42", "2025-03-01T10:15:42Z", "2025-03-01T10:15:42.123456+00:00", "2025-3-01T10:15:42", ""] {
        assert!(!is_naive_iso(bad), "{bad}");
    }
}

#[test]
fn shape_check_rejects_deviations() {
    let good = r#"{"id":"0b8e7d4c-2f1a-4c3b-9d5e-6f7a8b9c0d1e","deviceId":"Vehicle-CityStream-00001","timestamp":"2025-03-01T08:00:30.123456","speed":12.5,"direction":"North-East","vehicleType":"private"}"#;
    assert_eq!(check_original_shape(Stream::Gps, good.as_bytes()).as_deref(), Ok("Vehicle-CityStream-00001"));
    let swapped = good.replace(r#""speed":12.5,"direction":"North-East""#, r#""direction":"North-East","speed":12.5"#);
    let int_speed = good.replace("12.5", "12");
    let zoned = good.replace(".123456", ".123456Z");
    let extra = good.replace(r#""vehicleType":"private""#, r#""vehicleType":"private","x":1"#);
    for bad in [swapped, int_speed, zoned, extra] {
        assert!(check_original_shape(Stream::Gps, bad.as_bytes()).is_err(), "{bad}");
    }
    let loc = r#"{"id":"0b8e7d4c-2f1a-4c3b-9d5e-6f7a8b9c0d1e","deviceId":"d","cameraId":"c","location":"51.5,-0.1","timestamp":"2025-03-01T08:00:30","snapshot":"s"}"#;
    assert!(check_original_shape(Stream::Traffic, loc.as_bytes()).unwrap_err().contains("location"));
    let loc = loc.replace(r#""51.5,-0.1""#, "[51.5,-0.1]");
    assert!(check_original_shape(Stream::Traffic, loc.as_bytes()).is_ok(), "{loc}");
}
