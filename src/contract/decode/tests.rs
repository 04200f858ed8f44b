use super::*;
use proptest::prelude::*;

const UUID: &str = "6f1c1a52-3b0e-4c5d-9f3a-2b7c8d9e0f11";

fn vehicle() -> String {
    format!(
        r#"{{"id": "{UUID}", "deviceId": "Vehicle-CodeWithYu-123", "timestamp": "2025-03-01T10:15:42.123456", "location": [51.5074, -0.1278], "speed": 27.3, "direction": "North-East", "maker": "BMW", "model": "C500", "year": 2024, "fueltype": "Hybrid"}}"#
    )
}

fn dec(stream: Stream, s: &str) -> Result<Record, DecodeError> {
    decode(stream, s.as_bytes(), &DecodeOptions::default())
}

fn class_of(stream: Stream, s: &str) -> (ErrorClass, Option<String>) {
    let e = dec(stream, s).expect_err(s);
    (e.class, e.field)
}

#[test]
fn decodes_every_stream_in_the_original_shape() {
    let Record::Vehicle(v) = dec(Stream::Vehicle, &vehicle()).unwrap() else { panic!() };
    assert_eq!(v.device_id, "Vehicle-CodeWithYu-123");
    assert_eq!(v.timestamp, EventTime(1_740_824_142_123_456));
    assert_eq!(v.location, Location { latitude: 51.5074, longitude: -0.1278 });
    assert_eq!((v.speed, v.year, v.maker.as_str(), v.fueltype.as_str()), (27.3, 2024, "BMW", "Hybrid"));

    let gps =
        format!(r#"{{"id": "{UUID}", "deviceId": "d", "timestamp": "2025-03-01T10:15:42", "speed": 12, "direction": "North-East", "vehicleType": "private"}}"#);
    let Record::Gps(g) = dec(Stream::Gps, &gps).unwrap() else { panic!() };
    assert_eq!((g.speed, g.timestamp.micros() % 1_000_000), (12.0, 0), "an int where a float is expected");

    let traffic = format!(
        r#"{{"id": "{UUID}", "deviceId": "d", "cameraId": "Nikon-Cam123", "location": [52, -1.5], "timestamp": "2025-03-01T10:15:42Z", "snapshot": "Base64EncodedString"}}"#
    );
    let Record::Traffic(t) = dec(Stream::Traffic, &traffic).unwrap() else { panic!() };
    assert_eq!((t.camera_id.as_str(), t.location.latitude), ("Nikon-Cam123", 52.0));

    let weather = format!(
        r#"{{"id": "{UUID}", "deviceId": "d", "location": [52.1, -1.2], "timestamp": "2025-03-01T10:15:42.5+01:00", "temperature": -3.25, "weatherCondition": "snowy", "precipitation": 4, "windspeed": 55.5, "humidity": 81, "airQualityIndex": 120.0}}"#
    );
    let Record::Weather(w) = dec(Stream::Weather, &weather).unwrap() else { panic!() };
    assert_eq!((w.temperature, w.humidity, w.precipitation), (-3.25, 81, 4.0), "temperature is a float");
    assert_eq!(w.timestamp, EventTime(1_740_820_542_500_000));

    let emergency = format!(
        r#"{{"id": "{UUID}", "deviceId": "d", "incidentId": "{}", "incident": "None", "timestamp": "2025-03-01T10:15:42.000001", "location": [52.1, -1.2], "status": "Resolved", "description": "Description of the incident"}}"#,
        UUID.to_uppercase()
    );
    let Record::Emergency(e) = dec(Stream::Emergency, &emergency).unwrap() else { panic!() };
    assert_eq!((e.incident.as_str(), e.status.as_str()), ("None", "Resolved"));
}

#[test]
fn ignores_unknown_fields_and_round_trips_through_json() {
    let with_extra = vehicle().replace("\"year\": 2024", "\"year\": 2024, \"extra\": {\"nested\": [1, 2, null]}");
    let r = dec(Stream::Vehicle, &with_extra).unwrap();
    let again = dec(Stream::Vehicle, std::str::from_utf8(&r.to_json()).unwrap()).unwrap();
    assert_eq!(r, again);
    // Field for field, in the producer's order.
    let json = String::from_utf8(r.to_json()).unwrap();
    assert!(
        json.starts_with(&format!(
            r#"{{"id":"{UUID}","deviceId":"Vehicle-CodeWithYu-123","timestamp":"2025-03-01T10:15:42.123456","location":[51.5074,-0.1278],"speed":27.3"#
        )),
        "{json}"
    );
}

#[test]
fn refuses_bad_input_with_a_reason_naming_the_field() {
    let v = vehicle();
    let cases: Vec<(String, ErrorClass, Option<&str>)> = vec![
        (String::new(), ErrorClass::Empty, None),
        ("   ".into(), ErrorClass::Empty, None),
        (v[..v.len() / 2].to_owned(), ErrorClass::Truncated, None),
        ("{not json}".into(), ErrorClass::Syntax, None),
        ("[1, 2, 3]".into(), ErrorClass::NotObject, None),
        ("\"a string\"".into(), ErrorClass::NotObject, None),
        (v.replace("\"speed\": 27.3, ", ""), ErrorClass::MissingField, Some("speed")),
        (v.replace("27.3", "null"), ErrorClass::WrongType, Some("speed")),
        (v.replace("27.3", "\"fast\""), ErrorClass::WrongType, Some("speed")),
        (v.replace("2024", "2024.5"), ErrorClass::WrongType, Some("year")),
        (v.replace("2024", "99999999999"), ErrorClass::WrongType, Some("year")),
        (v.replace("27.3", "1e400"), ErrorClass::WrongType, Some("speed")),
        (v.replace("27.3", "NaN"), ErrorClass::Syntax, None),
        (v.replace("[51.5074, -0.1278]", "[51.5074]"), ErrorClass::WrongType, Some("location")),
        (v.replace("[51.5074, -0.1278]", "\"(51.5, -0.12)\""), ErrorClass::WrongType, Some("location")),
        (v.replace("[51.5074, -0.1278]", "[151.5, -0.1278]"), ErrorClass::BadValue, Some("location")),
        (v.replace("2025-03-01T10:15:42.123456", "2025-02-30T10:15:42"), ErrorClass::BadTimestamp, Some("timestamp")),
        (v.replace("2025-03-01T10:15:42.123456", "yesterday"), ErrorClass::BadTimestamp, Some("timestamp")),
        (v.replace("\"2025-03-01T10:15:42.123456\"", "1740824142"), ErrorClass::WrongType, Some("timestamp")),
        (v.replace(UUID, "not-a-uuid"), ErrorClass::BadValue, Some("id")),
        (v.replace("\"year\": 2024", "\"year\": 2024, \"year\": 2025"), ErrorClass::DuplicateField, Some("year")),
        (format!("{}{}", "[".repeat(200), "]".repeat(200)), ErrorClass::NotObject, None),
        (v.replace("27.3", &format!("{}1{}", "[".repeat(5000), "]".repeat(5000))), ErrorClass::WrongType, Some("speed")),
    ];
    for (input, class, field) in cases {
        let e = dec(Stream::Vehicle, &input).expect_err(&input);
        assert_eq!((e.class, e.field.as_deref()), (class, field), "{input:.80}: {e}");
        let text = e.to_string();
        assert!(text.starts_with("vehicle_data: "), "{text}");
        if let Some(f) = field {
            assert!(text.contains(f), "reason names the field: {text}");
        }
    }
    assert_eq!(
        class_of(
            Stream::Weather,
            &format!(
                r#"{{"id": "{UUID}", "deviceId": "d", "location": [1, 2], "timestamp": "2025-03-01T10:15:42", "temperature": 1.5, "weatherCondition": "foggy", "precipitation": 0, "windspeed": 0, "humidity": 5, "airQualityIndex": 1}}"#
            )
        ),
        (ErrorClass::BadValue, Some("weatherCondition".into()))
    );
    // Deep nesting in an unknown field is skipped without recursion: no stack overflow.
    let deep = v.replace("\"year\": 2024", &format!("\"year\": 2024, \"x\": {}1{}", "[".repeat(100_000), "]".repeat(100_000)));
    assert!(dec(Stream::Vehicle, &deep).is_ok());
    let tiny = DecodeOptions { max_value_bytes: 16, ..DecodeOptions::default() };
    assert_eq!(decode(Stream::Vehicle, v.as_bytes(), &tiny).unwrap_err().class, ErrorClass::Oversized);
}

proptest! {
    // As many cases as the hand-rolled sweep this replaced; the cargo-fuzz target goes much further.
    #![proptest_config(ProptestConfig::with_cases(20_000))]

    /// A valid value with one byte replaced by any byte and up to 6 bytes cut off its end:
    /// decoding it as any stream returns, whatever it returns.
    #[test]
    fn never_panics_on_arbitrary_bytes(pos in any::<prop::sample::Index>(), byte in any::<u8>(), cut in 0..7usize) {
        let mut bytes = vehicle().into_bytes();
        let at = pos.index(bytes.len());
        bytes[at] = byte;
        bytes.truncate(bytes.len() - cut);
        for s in Stream::ALL {
            let _ = decode(s, &bytes, &DecodeOptions::default());
        }
    }
}

#[test]
fn refuses_invalid_utf8() {
    assert!(decode(Stream::Gps, &[0xff, 0xfe, b'{'], &DecodeOptions::default()).is_err());
    assert!(decode(Stream::Gps, b"{\"id\": \"\xff\xfe\"}", &DecodeOptions::default()).is_err());
}

#[test]
fn refuses_implausible_event_times_naming_the_bound() {
    let v = vehicle();
    let now = 1_795_000_000_000_000; // 2026-11-18
    let opts = DecodeOptions { not_after: EventTime(now + 86_400_000_000), ..DecodeOptions::default() };
    let at = |ts: &str| decode(Stream::Vehicle, v.replace("2025-03-01T10:15:42.123456", ts).as_bytes(), &opts);
    assert!(at("2026-11-18T00:00:00").is_ok(), "within a day ahead is fine");
    for far in ["2099-01-01T00:00:00", "9999-12-31T23:59:59.999999", "2026-11-21T00:00:00Z"] {
        let e = at(far).expect_err(far);
        assert_eq!((e.class, e.field.as_deref()), (ErrorClass::ImplausibleTimestamp, Some("timestamp")), "{far}");
        assert!(e.to_string().contains("--max-future") && e.to_string().contains(far), "{e}");
    }
    for past in ["1999-12-31T23:59:59.999999", "1970-01-01T00:00:00", "0001-01-01T00:00:00"] {
        let e = at(past).expect_err(past);
        assert_eq!(e.class, ErrorClass::ImplausibleTimestamp, "{past}");
        assert!(e.to_string().contains("2000-01-01T00:00:00Z"), "{e}");
    }
    assert!(at("2000-01-01T00:00:00").is_ok(), "the bound itself is plausible");
    // Without a bound (the default), far-future times are valid records.
    assert!(dec(Stream::Vehicle, &v.replace("2025-03-01T10:15:42.123456", "2099-01-01T00:00:00")).is_ok());
    assert_eq!(ErrorClass::ImplausibleTimestamp.as_str(), "implausible_timestamp");
}

/// One case of the committed malformed-input corpus (`tests/corpus/malformed.tsv`).
pub(crate) struct CorpusCase {
    pub file: String,
    pub stream: Stream,
    pub class: String,
    pub field: Option<String>,
    pub value: Vec<u8>,
}

/// The `--max-value-bytes` the corpus assumes (its `oversized` case is just above it).
pub(crate) const CORPUS_MAX_VALUE_BYTES: usize = 8192;

pub(crate) fn corpus() -> Vec<CorpusCase> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let tsv = std::fs::read_to_string(dir.join("malformed.tsv")).unwrap();
    tsv.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let cols: Vec<&str> = l.split('\t').collect();
            CorpusCase {
                file: cols[0].to_owned(),
                stream: cols[1].parse().unwrap(),
                class: cols[2].to_owned(),
                field: Some(cols[3].to_owned()).filter(|f| f != "-"),
                value: std::fs::read(dir.join("malformed").join(cols[0])).unwrap(),
            }
        })
        .collect()
}

#[test]
fn corpus_cases_are_refused_with_their_reason() {
    let cases = corpus();
    let opts = DecodeOptions { max_value_bytes: CORPUS_MAX_VALUE_BYTES, not_after: EventTime(1_795_000_000_000_000), ..DecodeOptions::default() };
    let mut classes = std::collections::BTreeSet::new();
    for c in &cases {
        let e = decode(c.stream, &c.value, &opts).expect_err(&c.file);
        assert_eq!((e.class.as_str(), e.field.as_deref()), (c.class.as_str(), c.field.as_deref()), "{}: {e}", c.file);
        let reason = e.to_string();
        assert!(reason.starts_with(&format!("{}: {}", c.stream, c.class)), "{}: {reason}", c.file);
        if let Some(f) = &c.field {
            assert!(reason.contains(&format!("`{f}`")), "{}: the reason names the field: {reason}", c.file);
        }
        classes.insert(c.file.split_once('-').unwrap().1.to_owned());
    }
    assert!(cases.len() >= 20 && classes.len() == cases.len(), "at least 20 distinct cases: {}", cases.len());
    for s in Stream::ALL {
        assert!(cases.iter().filter(|c| c.stream == s).count() >= 5, "{s} has cases");
    }
}

#[test]
fn uuids_are_checked_character_by_character() {
    let v = Validator { stream: Stream::Vehicle, opts: &DecodeOptions::default() };
    assert!(v.uuid("id", UUID.into()).is_ok());
    assert!(v.uuid("id", UUID.to_uppercase().into()).is_ok());
    for (i, &good) in UUID.as_bytes().iter().enumerate() {
        // A non-hex letter, a misplaced hyphen, a digit where a hyphen belongs: each is refused.
        for c in [b'g', b'-', b'0', b' ', 0xff] {
            if c == good || (good != b'-' && c == b'0') {
                continue;
            }
            let mut bad = UUID.as_bytes().to_vec();
            bad[i] = c;
            let s = String::from_utf8_lossy(&bad).into_owned();
            let e = v.uuid("id", s.clone().into()).expect_err(&s);
            assert_eq!((e.class, e.field.as_deref()), (ErrorClass::BadValue, Some("id")), "{s}");
        }
    }
    for s in [&UUID[..35], &format!("{UUID}0"), "", &UUID.replace('-', "")] {
        assert!(v.uuid("id", s.into()).is_err(), "{s:?}");
    }
}

#[test]
fn borrowed_decoding_agrees_with_owned_decoding_and_borrows_plain_strings() {
    let opts = DecodeOptions::default();
    // A string with escapes gets its own allocation, unescaped; plain ones point into the value.
    let v = vehicle().replace("Vehicle-CodeWithYu-123", r#"Vehicle-\u00e9\"q"#);
    let r = decode_borrowed(Stream::Vehicle, v.as_bytes(), &opts).unwrap();
    let Record::Vehicle(b) = &r else { panic!("a vehicle record: {r:?}") };
    assert!(matches!(b.id, Cow::Borrowed(_)) && matches!(b.maker, Cow::Borrowed(_)), "{b:?}");
    assert!(matches!(b.device_id, Cow::Owned(_)) && b.device_id == "Vehicle-é\"q", "{b:?}");
    assert_eq!(r.to_json(), dec(Stream::Vehicle, &v).unwrap().to_json());

    // The same verdict and the same record for the corpus and for mutated values of every stream.
    let same = |stream: Stream, bytes: &[u8], opts: &DecodeOptions| {
        let owned = decode(stream, bytes, opts).map(|r| r.to_json());
        let borrowed = decode_borrowed(stream, bytes, opts).map(|r| r.to_json());
        assert_eq!(owned, borrowed, "{stream}: {}", String::from_utf8_lossy(bytes));
        owned.is_ok()
    };
    let corpus_opts = DecodeOptions { max_value_bytes: CORPUS_MAX_VALUE_BYTES, not_after: EventTime(1_795_000_000_000_000), ..opts };
    for c in corpus() {
        assert!(!same(c.stream, &c.value, &corpus_opts), "{}", c.file);
    }
    // One byte of a valid value replaced by a digit, a letter, a hyphen, a backslash, a quote,
    // a space or a brace: decoded as every stream. A runner rather than `proptest!`, so that
    // the cases can be counted across the run (a failing case is still shrunk).
    const MUTATIONS: &[u8] = b"0a-\\\" x9}";
    let decoded = std::cell::Cell::new(0usize);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(5_000));
    let mutation = (any::<prop::sample::Index>(), prop::sample::select(MUTATIONS));
    let run = runner.run(&mutation, |(pos, byte)| {
        let mut bytes = vehicle().into_bytes();
        let at = pos.index(bytes.len());
        bytes[at] = byte;
        for s in Stream::ALL {
            decoded.set(decoded.get() + usize::from(same(s, &bytes, &opts)));
        }
        Ok(())
    });
    if let Err(e) = run {
        panic!("{e}");
    }
    // Each of the 5,000 cases ran once (nothing failed, so nothing was shrunk or re-run).
    let decoded = decoded.get();
    assert!(decoded > 1_000, "the mutations leave many values valid: {decoded}");
}
