//! Fuzzes the decoder: the first byte picks the stream, the rest is the Kafka value.
//!
//! Properties: `decode` never panics; its error always renders; an accepted record's JSON
//! decodes to the same record; an accepted record always fits its stream's Arrow schema;
//! `decode_borrowed` (what the pipeline uses) gives the same verdict and the same record.
//! Run: `cargo +nightly fuzz run decode fuzz/corpus/decode` (see docs/operations.md).
#![no_main]

use citystream::contract::schema::BatchBuilder;
use citystream::contract::{DecodeOptions, Stream, decode, decode_borrowed};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, value)) = data.split_first() else { return };
    let stream = Stream::ALL[usize::from(pick) % Stream::ALL.len()];
    // As in production: values above 1 MiB are refused unread, event times after 2100 are
    // implausible (the source bounds them by the wall clock plus --max-future).
    let opts = DecodeOptions { not_after: 4_102_444_800_000_000, ..DecodeOptions::default() };
    let decoded = decode(stream, value, &opts);
    match (&decoded, decode_borrowed(stream, value, &opts)) {
        (Ok(owned), Ok(borrowed)) => assert_eq!(owned.to_json(), borrowed.to_json()),
        (Err(e), Err(f)) => assert_eq!(*e, f),
        (o, b) => panic!("decode and decode_borrowed disagree: {o:?} / {b:?}"),
    }
    match decoded {
        Err(e) => {
            assert_eq!(e.stream, stream);
            assert!(!e.to_string().is_empty());
        }
        Ok(record) => {
            assert_eq!(record.stream(), stream);
            let json = record.to_json();
            let again = decode(stream, &json, &opts).expect("an accepted record's JSON decodes again");
            assert_eq!(record, again);
            let mut b = BatchBuilder::new(stream, false);
            b.append(&record, None);
            assert_eq!(b.finish().expect("a record fits its schema").num_rows(), 1);
        }
    }
});
