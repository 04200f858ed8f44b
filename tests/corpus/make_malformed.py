#!/usr/bin/env python3
"""Writes the malformed-input corpus: tests/corpus/malformed/*.json and cases.tsv.

Each case is one Kafka value that the decoder must refuse, with the class and the field the
dead-letter reason must name. The files are committed; this script documents how they were
made and remakes them (python3 tests/corpus/make_malformed.py). The corpus is decoded by the
unit test `contract::decode::tests::corpus_cases_are_refused_with_their_reason` and sent through
a real Kafka broker and `citystream run` by tests/bad_input.rs (with --max-value-bytes 8192).
It also writes the seeds of the cargo-fuzz target (fuzz/corpus/decode/seed-*).
"""
import os

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "malformed")
UUID = "6f1c1a52-3b0e-4c5d-9f3a-2b7c8d9e0f11"
TS = "2025-03-01T10:15:42.123456"
VEHICLE = ('{"id": "%s", "deviceId": "Vehicle-CodeWithYu-123", "timestamp": "%s", "location": [51.5074, -0.1278], '
           '"speed": 27.3, "direction": "North-East", "maker": "BMW", "model": "C500", "year": 2024, "fueltype": "Hybrid"}') % (UUID, TS)
GPS = ('{"id": "%s", "deviceId": "Vehicle-CodeWithYu-123", "timestamp": "%s", "speed": 12.5, "direction": "North-East", '
       '"vehicleType": "private"}') % (UUID, TS)
TRAFFIC = ('{"id": "%s", "deviceId": "Vehicle-CodeWithYu-123", "cameraId": "Nikon-Cam123", "location": [52.1, -1.5], '
           '"timestamp": "%s", "snapshot": "Base64EncodedString"}') % (UUID, TS)
WEATHER = ('{"id": "%s", "deviceId": "Vehicle-CodeWithYu-123", "location": [52.1, -1.2], "timestamp": "%s", "temperature": 21.5, '
           '"weatherCondition": "sunny", "precipitation": 0.5, "windspeed": 10.0, "humidity": 40, "airQualityIndex": 33.3}') % (UUID, TS)
EMERGENCY = ('{"id": "%s", "deviceId": "Vehicle-CodeWithYu-123", "incidentId": "%s", "incident": "Fire", "timestamp": "%s", '
             '"location": [52.1, -1.2], "status": "Active", "description": "Description of the incident"}') % (UUID, UUID, TS)


def sub(template, old, new):
    assert old in template, (old, template)
    return template.replace(old, new, 1)


# (name, stream, bytes, class, field or "-", what)
CASES = [
    ("empty", "vehicle_data", b"", "empty", "-", "empty value (tombstone)"),
    ("whitespace", "gps_data", b" \n\t ", "empty", "-", "only whitespace"),
    ("truncated", "traffic_data", TRAFFIC[: len(TRAFFIC) // 2].encode(), "truncated", "-", "JSON cut in the middle"),
    ("not-json", "weather_data", b"temperature=21.5;humidity=40", "syntax", "-", "not JSON at all"),
    ("invalid-utf8", "vehicle_data", sub(VEHICLE, "BMW", "BM\xff").encode("latin-1"), "syntax", "-", "invalid UTF-8 in a string"),
    ("bom", "gps_data", b"\xef\xbb\xbf" + GPS.encode(), "syntax", "-", "UTF-8 byte-order mark before the object"),
    ("trailing-garbage", "emergency_data", (EMERGENCY + " }").encode(), "syntax", "-", "garbage after the object"),
    ("control-char", "traffic_data", sub(TRAFFIC, "Nikon-Cam123", "Nikon\x01Cam").encode(), "syntax", "-", "raw control character in a string"),
    ("lone-surrogate", "weather_data", sub(WEATHER, '"deviceId": "Vehicle-CodeWithYu-123"', '"deviceId": "dev\\ud800"').encode(), "syntax", "-", "lone UTF-16 surrogate escape"),
    ("array", "vehicle_data", b'[1, 2, 3]', "not_object", "-", "a JSON array, not an object"),
    ("string", "gps_data", b'"vehicle"', "not_object", "-", "a JSON string, not an object"),
    ("null", "traffic_data", b"null", "not_object", "-", "JSON null"),
    ("deep-nesting-root", "weather_data", b"[" * 3000 + b"]" * 3000, "not_object", "-", "3,000 nested arrays"),
    ("deep-nesting-field", "emergency_data", sub(EMERGENCY, '"Fire"', "[" * 1000 + "1" + "]" * 1000).encode(), "wrong_type", "incident", "deep nesting in a field"),
    ("missing-field", "vehicle_data", sub(VEHICLE, '"speed": 27.3, ', "").encode(), "missing_field", "speed", "required field absent"),
    ("null-field", "gps_data", sub(GPS, '"speed": 12.5', '"speed": null').encode(), "wrong_type", "speed", "required field null"),
    ("string-for-number", "weather_data", sub(WEATHER, '"temperature": 21.5', '"temperature": "warm"').encode(), "wrong_type", "temperature", "string where a number is expected"),
    ("number-for-string", "traffic_data", sub(TRAFFIC, '"cameraId": "Nikon-Cam123"', '"cameraId": 123').encode(), "wrong_type", "cameraId", "number where a string is expected"),
    ("float-for-int", "weather_data", sub(WEATHER, '"humidity": 40', '"humidity": 40.5').encode(), "wrong_type", "humidity", "fraction where an integer is expected"),
    ("int-overflow", "vehicle_data", sub(VEHICLE, '"year": 2024', '"year": 99999999999').encode(), "wrong_type", "year", "integer beyond 32 bits"),
    ("float-overflow", "gps_data", sub(GPS, '"speed": 12.5', '"speed": 1e400').encode(), "wrong_type", "speed", "number beyond f64"),
    ("nan", "weather_data", sub(WEATHER, '"windspeed": 10.0', '"windspeed": NaN').encode(), "syntax", "-", "NaN literal"),
    ("infinity", "vehicle_data", sub(VEHICLE, '"speed": 27.3', '"speed": Infinity').encode(), "syntax", "-", "Infinity literal"),
    ("short-location", "traffic_data", sub(TRAFFIC, "[52.1, -1.5]", "[52.1]").encode(), "wrong_type", "location", "location with one coordinate"),
    ("long-location", "emergency_data", sub(EMERGENCY, "[52.1, -1.2]", "[52.1, -1.2, 80.0]").encode(), "wrong_type", "location", "location with three coordinates"),
    ("location-object", "weather_data", sub(WEATHER, "[52.1, -1.2]", '{"lat": 52.1, "lon": -1.2}').encode(), "wrong_type", "location", "location as an object"),
    ("location-off-earth", "vehicle_data", sub(VEHICLE, "[51.5074, -0.1278]", "[151.5, -0.1278]").encode(), "bad_value", "location", "latitude beyond 90"),
    ("impossible-date", "gps_data", sub(GPS, TS, "2025-02-30T10:15:42").encode(), "bad_timestamp", "timestamp", "February 30th"),
    ("impossible-time", "traffic_data", sub(TRAFFIC, TS, "2025-03-01T25:61:00").encode(), "bad_timestamp", "timestamp", "hour 25"),
    ("bad-zone", "weather_data", sub(WEATHER, TS, "2025-03-01T10:15:42+25:00").encode(), "bad_timestamp", "timestamp", "zone offset +25:00"),
    ("not-a-timestamp", "emergency_data", sub(EMERGENCY, TS, "yesterday").encode(), "bad_timestamp", "timestamp", "words, not a timestamp"),
    ("epoch-number-timestamp", "vehicle_data", sub(VEHICLE, '"%s"' % TS, "1740824142").encode(), "wrong_type", "timestamp", "Unix seconds instead of ISO-8601"),
    ("far-future", "gps_data", sub(GPS, TS, "2999-01-01T00:00:00").encode(), "implausible_timestamp", "timestamp", "year 2999: would drag the watermark"),
    ("far-past", "traffic_data", sub(TRAFFIC, TS, "1900-01-01T00:00:00").encode(), "implausible_timestamp", "timestamp", "year 1900"),
    ("duplicate-key", "weather_data", sub(WEATHER, '"humidity": 40', '"humidity": 40, "humidity": 41').encode(), "duplicate_field", "humidity", "the same key twice"),
    ("bad-uuid", "emergency_data", sub(EMERGENCY, '"incidentId": "%s"' % UUID, '"incidentId": "incident-42"').encode(), "bad_value", "incidentId", "not a UUID"),
    ("unknown-enum", "weather_data", sub(WEATHER, '"sunny"', '"foggy"').encode(), "bad_value", "weatherCondition", "value outside the producer's set"),
    ("empty-device", "gps_data", sub(GPS, '"deviceId": "Vehicle-CodeWithYu-123"', '"deviceId": ""').encode(), "bad_value", "deviceId", "empty deviceId"),
    ("oversized", "emergency_data", sub(EMERGENCY, "Description of the incident", "x" * 10000).encode(), "oversized", "-", "10 KB value over --max-value-bytes 8192"),
]


def main():
    os.makedirs(OUT, exist_ok=True)
    for f in os.listdir(OUT):
        os.remove(os.path.join(OUT, f))
    lines = ["# file\tstream\tclass\tfield\twhat (made by tests/corpus/make_malformed.py)"]
    for i, (name, stream, value, cls, field, what) in enumerate(CASES, 1):
        file = "%02d-%s.json" % (i, name)
        with open(os.path.join(OUT, file), "wb") as fh:
            fh.write(value)
        lines.append("\t".join([file, stream, cls, field, what]))
    with open(os.path.join(HERE, "malformed.tsv"), "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print("wrote %d cases" % len(CASES))
    write_fuzz_seeds()


STREAMS = ["vehicle_data", "gps_data", "traffic_data", "weather_data", "emergency_data"]
VALID = {"vehicle_data": VEHICLE, "gps_data": GPS, "traffic_data": TRAFFIC, "weather_data": WEATHER, "emergency_data": EMERGENCY}


def write_fuzz_seeds():
    """Seeds of the cargo-fuzz target fuzz/fuzz_targets/decode.rs: one byte picks the stream."""
    seeds = os.path.join(HERE, "..", "..", "fuzz", "corpus", "decode")
    os.makedirs(seeds, exist_ok=True)
    for stream, value in VALID.items():
        with open(os.path.join(seeds, "seed-valid-" + stream), "wb") as fh:
            fh.write(bytes([STREAMS.index(stream)]) + value.encode())
    for i, (name, stream, value, _, _, _) in enumerate(CASES, 1):
        with open(os.path.join(seeds, "seed-%02d-%s" % (i, name)), "wb") as fh:
            fh.write(bytes([STREAMS.index(stream)]) + value)


if __name__ == "__main__":
    main()
