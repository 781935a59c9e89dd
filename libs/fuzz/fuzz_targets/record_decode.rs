//! The record decoder (`runnel_events::decode::EventDecoder`) on arbitrary log records: each
//! line of the input is one record's value, in one partition at consecutive offsets, as the
//! stream-processor, the archiver and the hybrid source read a run of records.
//!
//! Besides "no panic": every record is either a row or named as undecodable, in log order,
//! and the record format's own parser gives the same batch as `arrow_json` alone
//! (`decode_general`), as `decode.rs` promises.
#![no_main]

use std::sync::{Arc, LazyLock};

use arrow::array::AsArray;
use arrow::datatypes::Int64Type;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use runnel_events::decode::{EventDecoder, event_time_range};
use runnel_events::{OFFSET_COLUMN, StreamSchema};
use runnel_fuzz::{NOW_MILLIS, stream_config};
use runnel_log::Record;

static DECODER: LazyLock<EventDecoder> =
    LazyLock::new(|| EventDecoder::new(&StreamSchema::new(&stream_config())));

fuzz_target!(|data: &[u8]| {
    let decoder = &*DECODER;
    let topic: Arc<str> = Arc::from("clicks");
    let data = Bytes::copy_from_slice(data);
    let mut records = Vec::new();
    let mut start = 0;
    for line in data.split(|byte| *byte == b'\n') {
        let offset = records.len() as u64;
        records.push(Record {
            topic: Arc::clone(&topic),
            partition: 3,
            offset,
            timestamp: NOW_MILLIS + offset as i64,
            key: None,
            value: data.slice(start..start + line.len()),
            headers: Vec::new(),
        });
        start += line.len() + 1;
    }

    let decoded = decoder.decode(&records).expect("decoding builds a batch");
    let general = decoder
        .decode_general(&records)
        .expect("decoding builds a batch");
    assert_eq!(
        decoded.batch, general.batch,
        "the record-format parser and arrow_json disagree"
    );
    assert_eq!(decoded.undecodable, general.undecodable);

    let schema = decoder.schema();
    assert_eq!(decoded.batch.schema(), *schema.with_position());
    assert_eq!(
        decoded.batch.num_rows() + decoded.undecodable.len(),
        records.len(),
        "a record is neither a row nor undecodable"
    );
    let column = schema
        .with_position()
        .index_of(OFFSET_COLUMN)
        .expect("positioned schema has _offset");
    let offsets = decoded.batch.column(column).as_primitive::<Int64Type>();
    let mut rows = offsets
        .values()
        .iter()
        .map(|&offset| offset as u64)
        .peekable();
    let mut bad = decoded.undecodable.iter().map(|bad| bad.offset).peekable();
    for record in &records {
        let next = if rows.peek() == Some(&record.offset) {
            rows.next()
        } else {
            bad.next()
        };
        assert_eq!(
            next,
            Some(record.offset),
            "rows and undecodable records out of log order"
        );
    }
    let _ = event_time_range(schema, &decoded.batch);
});
