//! The ingest validator (`runnel_events::validate::Validator::validate_json`) on arbitrary
//! bytes, as ingest calls it on each event of a request.
//!
//! Besides "no panic": an accepted event is the record format, so validating it again gives
//! it back unchanged, and the stream-processor's decoder reads it as one row with the same
//! event time and key.
#![no_main]

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use arrow::array::{Array, AsArray};
use arrow::datatypes::TimestampMillisecondType;
use libfuzzer_sys::fuzz_target;
use runnel_events::StreamSchema;
use runnel_events::decode::EventDecoder;
use runnel_events::validate::{ValidateBuffer, ValidationLimits, Validator};
use runnel_fuzz::{NOW_MILLIS, stream_config};
use runnel_log::Record;

struct Fixture {
    /// With the stream's default event-time bounds.
    validator: Validator,
    /// With `max-event-time-behind` set to 30 days.
    bounded_validator: Validator,
    decoder: EventDecoder,
    key_index: usize,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let stream = stream_config();
    let mut bounded = stream.clone();
    bounded.max_event_time_behind = Duration::from_secs(30 * 86_400);
    // As `config/runnel.toml` sets ingest up.
    let limits = ValidationLimits {
        max_event_bytes: 1 << 20,
    };
    let schema = StreamSchema::new(&stream);
    Fixture {
        validator: Validator::new(&stream, limits),
        bounded_validator: Validator::new(&bounded, limits),
        decoder: EventDecoder::new(&schema),
        key_index: schema.key_index().expect("the fuzz stream has a key"),
    }
});

fuzz_target!(|data: &[u8]| {
    let fixture = &*FIXTURE;
    let mut buffer = ValidateBuffer::new();
    let _ = fixture
        .bounded_validator
        .validate_json(data, NOW_MILLIS, &mut buffer);
    let Ok(event) = fixture
        .validator
        .validate_json(data, NOW_MILLIS, &mut buffer)
    else {
        return;
    };

    let again = fixture
        .validator
        .validate_json(&event.value, NOW_MILLIS, &mut buffer)
        .expect("an accepted event's record-format value is accepted again");
    assert_eq!(
        again, event,
        "the record format is not a fixed point of validation"
    );

    let record = Record {
        topic: Arc::from("clicks"),
        partition: 0,
        offset: 0,
        timestamp: NOW_MILLIS,
        key: event.key.clone(),
        value: event.value.clone(),
        headers: Vec::new(),
    };
    let decoded = fixture
        .decoder
        .decode(std::slice::from_ref(&record))
        .expect("decoding builds a batch");
    assert!(
        decoded.undecodable.is_empty(),
        "an accepted event does not decode: {:?}",
        decoded.undecodable
    );
    assert_eq!(decoded.batch.num_rows(), 1);
    let schema = fixture.decoder.schema();
    let event_time = decoded
        .batch
        .column(schema.event_time_index())
        .as_primitive::<TimestampMillisecondType>();
    assert_eq!(event_time.value(0), event.event_time);
    let key = decoded.batch.column(fixture.key_index).as_string::<i32>();
    let decoded_key = key.is_valid(0).then(|| key.value(0).as_bytes());
    assert_eq!(decoded_key, event.key.as_deref());
});
