//! Validation of incoming events into the record format.
//!
//! A [`Validator`] is built once per stream from its declared schema and checks one event at
//! a time, either a JSON document ([`Validator::validate_json`]) or a row of typed values
//! ([`Validator::validate_row`], the gRPC typed path). Both go through the same per-field
//! checks and produce a [`ValidEvent`]: the record value in the record format (see the crate
//! docs), the record key and the event time. An event that fails is answered with a
//! [`RejectReason`] (`reject.rs`) naming the field at fault.
//!
//! What is accepted, per declared type:
//! - `string`: a JSON string.
//! - `int64`: a JSON integer in the `i64` range (`1.0` is a float and is refused).
//! - `float64`: any JSON number; written back in its shortest round-trip form.
//! - `bool`: `true` or `false`.
//! - `timestamp`: integer epoch milliseconds, or RFC 3339 text with a time-zone offset
//!   (`2024-05-01T12:00:00Z`, `2024-05-01 14:00:00.250+02:00`; fractions beyond
//!   milliseconds are truncated); written back as epoch milliseconds.
//!
//! Fields the stream does not declare are dropped without a word (a producer may send more
//! than the stream keeps). A declared field that appears twice is refused. A missing or
//! `null` field is written as `null` when the field is nullable and refused otherwise; the
//! event-time field is always required, and its value must lie within the limits around
//! the caller's clock ([`ValidationLimits`]).
//!
//! Speed: the JSON path is one pass of serde_json driving a visitor over the declared
//! fields, writing each value's canonical text into a reused scratch buffer; no
//! `serde_json::Value` is built. Accepted values are cut from one shared arena
//! ([`ValidateBuffer`]), so a batch of events costs a few allocations, not one per event.

use std::fmt;
use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};
use runnel_config::{FieldType, StreamConfig};
use runnel_time::parse_rfc3339_millis;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::json_write::{write_f64, write_i64, write_json_str};
use crate::reject::{RejectReason, ValueKind, field_type_name};
use crate::{EventTimeBounds, EventTimeOutOfBounds};

/// Bounds an event must respect besides its schema and its stream's event-time bounds
/// ([`crate::EventTimeBounds`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValidationLimits {
    /// An event larger than this many bytes is refused: the raw JSON document, or the
    /// canonical value of a typed row.
    pub max_event_bytes: usize,
}

/// An accepted event, ready to be appended to the stream's topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidEvent {
    /// The record value: the declared fields as a JSON object in the record format.
    pub value: Bytes,
    /// The record key: the key field's value as text; `None` when the stream has no key
    /// field or the event's key is null.
    pub key: Option<Bytes>,
    /// The event time, epoch milliseconds.
    pub event_time: i64,
}

/// A typed value of a row, for events that arrive already typed (gRPC typed rows).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TypedValue<'a> {
    /// No value: the field is absent.
    Null,
    /// Text.
    String(&'a str),
    /// A 64-bit integer; also accepted by `float64` fields and, as epoch milliseconds, by
    /// `timestamp` fields.
    Int64(i64),
    /// A 64-bit float.
    Float64(f64),
    /// A boolean.
    Bool(bool),
    /// An instant, epoch milliseconds; accepted by `timestamp` fields.
    TimestampMillis(i64),
}

/// A declared field, with what writing it needs precomputed.
#[derive(Debug, Clone)]
struct DeclaredField {
    name: String,
    field_type: FieldType,
    /// Absent or null is refused: not nullable, or the event-time field.
    required: bool,
    /// `"name":`, preceded by a comma for every field but the first.
    prefix: Vec<u8>,
}

/// Checks events of one stream and writes them in the record format.
#[derive(Debug, Clone)]
pub struct Validator {
    fields: Vec<DeclaredField>,
    event_time_index: usize,
    key_index: Option<usize>,
    limits: ValidationLimits,
    bounds: EventTimeBounds,
}

/// Reusable buffers for validating events: scratch space and the arena accepted values are
/// cut from. Keep one per task and pass it to every call.
#[derive(Debug)]
pub struct ValidateBuffer {
    state: EventState,
    arena: BytesMut,
}

/// Bytes the arena allocates at a time; values of one batch share these allocations.
const ARENA_CHUNK: usize = 64 * 1024;

impl Default for ValidateBuffer {
    fn default() -> Self {
        Self::new()
    }
}

impl ValidateBuffer {
    /// Returns empty buffers.
    pub fn new() -> Self {
        Self {
            state: EventState::default(),
            arena: BytesMut::with_capacity(ARENA_CHUNK),
        }
    }
}

/// The one event being validated.
#[derive(Debug, Default)]
struct EventState {
    /// Canonical text of the values seen so far, in arrival order.
    scratch: Vec<u8>,
    /// Per declared field, its value's range in `scratch`.
    slots: Vec<Option<Range<usize>>>,
    /// The key's text; meaningful when `has_key`.
    key: Vec<u8>,
    has_key: bool,
    event_time: Option<i64>,
    /// Why the visitor stopped, when it stopped on a reject rather than a JSON error.
    reason: Option<RejectReason>,
}

impl EventState {
    fn reset(&mut self, n_fields: usize) {
        self.scratch.clear();
        self.slots.clear();
        self.slots.resize(n_fields, None);
        self.key.clear();
        self.has_key = false;
        self.event_time = None;
        self.reason = None;
    }
}

/// A scalar seen in the input, JSON or typed.
#[derive(Debug, Clone, Copy)]
enum Scalar<'a> {
    Null,
    Str(&'a str),
    I64(i64),
    U64(u64),
    F64(f64),
    Bool(bool),
    TimestampMillis(i64),
    Object,
    Array,
}

impl Scalar<'_> {
    fn kind(&self) -> ValueKind {
        match self {
            Scalar::Null => ValueKind::Null,
            Scalar::Str(_) => ValueKind::String,
            Scalar::I64(_) => ValueKind::Integer,
            Scalar::U64(value) if i64::try_from(*value).is_ok() => ValueKind::Integer,
            Scalar::U64(_) => ValueKind::LargeInteger,
            Scalar::F64(_) => ValueKind::Float,
            Scalar::Bool(_) => ValueKind::Bool,
            Scalar::TimestampMillis(_) => ValueKind::Timestamp,
            Scalar::Object => ValueKind::Object,
            Scalar::Array => ValueKind::Array,
        }
    }
}

impl Validator {
    /// Builds the validator of `stream`, a stream that passed config validation (its
    /// event-time and key fields are declared).
    pub fn new(stream: &StreamConfig, limits: ValidationLimits) -> Self {
        let fields: Vec<DeclaredField> = stream
            .schema
            .iter()
            .enumerate()
            .map(|(field_idx, field)| {
                let mut prefix = Vec::with_capacity(field.name.len() + 4);
                if field_idx > 0 {
                    prefix.push(b',');
                }
                write_json_str(&mut prefix, &field.name);
                prefix.push(b':');
                DeclaredField {
                    name: field.name.clone(),
                    field_type: field.field_type,
                    required: !field.nullable || field.name == stream.event_time,
                    prefix,
                }
            })
            .collect();
        let position = |name: &str| fields.iter().position(|field| field.name == name);
        // Config validation guarantees the event-time field exists; should it not, no event
        // passes (the missing event time is reported), which is loud enough.
        let event_time_index = position(&stream.event_time).unwrap_or(usize::MAX);
        let key_index = stream.key.as_deref().and_then(position);
        Self {
            fields,
            event_time_index,
            key_index,
            limits,
            bounds: EventTimeBounds::of(stream),
        }
    }

    /// The limits events are checked against.
    pub fn limits(&self) -> &ValidationLimits {
        &self.limits
    }

    /// Checks one JSON document and returns it in the record format.
    ///
    /// `now` is the clock (epoch milliseconds) the event-time bounds are measured from;
    /// pass the same value for every event of a request.
    ///
    /// # Errors
    ///
    /// The [`RejectReason`] of the first problem found: size, then JSON syntax and types
    /// in document order, then missing fields in declared order, then event-time bounds.
    pub fn validate_json(
        &self,
        raw: &[u8],
        now: i64,
        buffer: &mut ValidateBuffer,
    ) -> Result<ValidEvent, RejectReason> {
        if raw.len() > self.limits.max_event_bytes {
            return Err(RejectReason::TooLarge {
                size: raw.len(),
                limit: self.limits.max_event_bytes,
            });
        }
        let state = &mut buffer.state;
        state.reset(self.fields.len());
        let mut deserializer = serde_json::Deserializer::from_slice(raw);
        let parsed = EventSeed {
            validator: self,
            state: &mut *state,
        }
        .deserialize(&mut deserializer)
        .and_then(|()| deserializer.end());
        if let Err(error) = parsed {
            return Err(match state.reason.take() {
                Some(reason) => reason,
                None => invalid_json(&error),
            });
        }
        self.finish(now, buffer)
    }

    /// Checks one typed row, whose values are the declared fields in declared order (fewer
    /// values than fields leaves the rest absent), and returns it in the record format.
    ///
    /// # Errors
    ///
    /// [`RejectReason::TooManyValues`], or the reason of the first problem found as for
    /// [`Validator::validate_json`]; the size limit applies to the canonical value.
    pub fn validate_row(
        &self,
        values: &[TypedValue<'_>],
        now: i64,
        buffer: &mut ValidateBuffer,
    ) -> Result<ValidEvent, RejectReason> {
        if values.len() > self.fields.len() {
            return Err(RejectReason::TooManyValues {
                found: values.len(),
                declared: self.fields.len(),
            });
        }
        buffer.state.reset(self.fields.len());
        for (field_idx, value) in values.iter().enumerate() {
            let scalar = match *value {
                TypedValue::Null => continue,
                TypedValue::String(text) => Scalar::Str(text),
                TypedValue::Int64(value) => Scalar::I64(value),
                TypedValue::Float64(value) => Scalar::F64(value),
                TypedValue::Bool(value) => Scalar::Bool(value),
                TypedValue::TimestampMillis(value) => Scalar::TimestampMillis(value),
            };
            self.accept(&mut buffer.state, field_idx, scalar)?;
        }
        let event = self.finish(now, buffer)?;
        if event.value.len() > self.limits.max_event_bytes {
            return Err(RejectReason::TooLarge {
                size: event.value.len(),
                limit: self.limits.max_event_bytes,
            });
        }
        Ok(event)
    }

    /// Type-checks `scalar` for field `field_idx` and writes its canonical text.
    fn accept(
        &self,
        state: &mut EventState,
        field_idx: usize,
        scalar: Scalar<'_>,
    ) -> Result<(), RejectReason> {
        let field = &self.fields[field_idx];
        if state.slots[field_idx].is_some() {
            return Err(RejectReason::DuplicateField {
                field: field.name.clone(),
            });
        }
        let wrong_type = || RejectReason::WrongType {
            field: field.name.clone(),
            expected: field_type_name(field.field_type),
            found: scalar.kind(),
        };
        let start = state.scratch.len();
        let is_key = self.key_index == Some(field_idx);
        let out = &mut state.scratch;
        // The key's text equals the canonical text for every type but strings.
        let mut key_is_text = true;
        let mut millis = None;
        match (field.field_type, scalar) {
            (_, Scalar::Null) => {
                if field.required {
                    return Err(RejectReason::NullField {
                        field: field.name.clone(),
                    });
                }
                out.extend_from_slice(b"null");
                state.slots[field_idx] = Some(start..out.len());
                // A null key means no key.
                return Ok(());
            }
            (FieldType::String, Scalar::Str(text)) => {
                write_json_str(out, text);
                if is_key {
                    state.key.clear();
                    state.key.extend_from_slice(text.as_bytes());
                    state.has_key = true;
                }
                key_is_text = false;
            }
            (FieldType::Int64, Scalar::I64(value)) => {
                write_i64(out, value);
                millis = Some(value);
            }
            (FieldType::Int64, Scalar::U64(value)) => {
                let value = i64::try_from(value).map_err(|_| wrong_type())?;
                write_i64(out, value);
                millis = Some(value);
            }
            (FieldType::Float64, Scalar::F64(value)) => write_f64(out, value),
            (FieldType::Float64, Scalar::I64(value)) => write_f64(out, value as f64),
            (FieldType::Float64, Scalar::U64(value)) => write_f64(out, value as f64),
            (FieldType::Bool, Scalar::Bool(value)) => {
                out.extend_from_slice(if value { b"true" } else { b"false" });
            }
            (FieldType::Timestamp, Scalar::I64(value) | Scalar::TimestampMillis(value)) => {
                write_i64(out, value);
                millis = Some(value);
            }
            (FieldType::Timestamp, Scalar::U64(value)) => {
                let value = i64::try_from(value).map_err(|_| wrong_type())?;
                write_i64(out, value);
                millis = Some(value);
            }
            (FieldType::Timestamp, Scalar::Str(text)) => {
                let value = parse_rfc3339_millis(text).map_err(|problem| {
                    RejectReason::UnparsableTimestamp {
                        field: field.name.clone(),
                        text: text.chars().take(64).collect(),
                        problem,
                    }
                })?;
                write_i64(out, value);
                millis = Some(value);
            }
            _ => return Err(wrong_type()),
        }
        let end = out.len();
        if is_key && key_is_text {
            state.key.clear();
            state.key.extend_from_slice(&state.scratch[start..end]);
            state.has_key = true;
        }
        if field_idx == self.event_time_index {
            state.event_time = millis;
        }
        state.slots[field_idx] = Some(start..end);
        Ok(())
    }

    /// Checks presence and event-time bounds, then cuts the value and key from the arena.
    fn finish(&self, now: i64, buffer: &mut ValidateBuffer) -> Result<ValidEvent, RejectReason> {
        let state = &buffer.state;
        let mut value_len = 2;
        for (field_idx, (field, slot)) in self.fields.iter().zip(&state.slots).enumerate() {
            match slot {
                Some(range) => value_len += field.prefix.len() + range.len(),
                None if field_idx == self.event_time_index => {
                    return Err(RejectReason::MissingEventTime {
                        field: field.name.clone(),
                    });
                }
                None if field.required => {
                    return Err(RejectReason::MissingField {
                        field: field.name.clone(),
                    });
                }
                None => value_len += field.prefix.len() + 4,
            }
        }
        let event_time = match state.event_time {
            Some(event_time) => event_time,
            None => {
                // Only reachable when the event-time field is not declared at all.
                return Err(RejectReason::MissingEventTime {
                    field: String::from("(undeclared)"),
                });
            }
        };
        self.check_event_time(event_time, now)?;

        let arena = &mut buffer.arena;
        let key_len = if state.has_key { state.key.len() } else { 0 };
        if arena.capacity() - arena.len() < value_len + key_len {
            arena.reserve((value_len + key_len).max(ARENA_CHUNK));
        }
        let key = if state.has_key {
            arena.put_slice(&state.key);
            Some(arena.split().freeze())
        } else {
            None
        };
        arena.put_u8(b'{');
        for (field, slot) in self.fields.iter().zip(&state.slots) {
            arena.put_slice(&field.prefix);
            match slot {
                Some(range) => arena.put_slice(&state.scratch[range.clone()]),
                None => arena.put_slice(b"null"),
            }
        }
        arena.put_u8(b'}');
        debug_assert_eq!(arena.len(), value_len);
        let value = arena.split().freeze();
        Ok(ValidEvent {
            value,
            key,
            event_time,
        })
    }

    fn check_event_time(&self, event_time: i64, now: i64) -> Result<(), RejectReason> {
        let field = || {
            self.fields
                .get(self.event_time_index)
                .map(|field| field.name.clone())
                .unwrap_or_default()
        };
        match self.bounds.check(event_time, now) {
            Ok(()) => Ok(()),
            Err(EventTimeOutOfBounds::Ahead) => Err(RejectReason::EventTimeTooFarAhead {
                field: field(),
                event_time,
                now,
                max_ahead: self.bounds.max_ahead,
            }),
            Err(EventTimeOutOfBounds::Behind) => Err(RejectReason::EventTimeTooFarBehind {
                field: field(),
                event_time,
                now,
                max_behind: self.bounds.max_behind,
            }),
        }
    }

    /// Returns the index of the declared field called `name`.
    fn field_index(&self, name: &str) -> Option<usize> {
        self.fields.iter().position(|field| field.name == name)
    }
}

/// Turns a serde_json syntax error into [`RejectReason::InvalidJson`].
fn invalid_json(error: &serde_json::Error) -> RejectReason {
    let mut message = error.to_string();
    // serde_json appends " at line L column C"; the reason carries them as fields.
    let suffix = format!(" at line {} column {}", error.line(), error.column());
    if message.ends_with(&suffix) {
        message.truncate(message.len() - suffix.len());
    }
    RejectReason::InvalidJson {
        message,
        line: error.line(),
        column: error.column(),
    }
}

/// The top level of a document: must be an object.
struct EventSeed<'a> {
    validator: &'a Validator,
    state: &'a mut EventState,
}

impl EventSeed<'_> {
    /// Records `reason` and returns the error that stops serde_json.
    fn reject<E: de::Error>(self, reason: RejectReason) -> E {
        self.state.reason = Some(reason);
        E::custom("rejected")
    }
}

impl<'de> DeserializeSeed<'de> for EventSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for EventSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(field_idx) = map.next_key_seed(KeySeed(self.validator))? {
            match field_idx {
                Some(field_idx) => map.next_value_seed(FieldSeed {
                    validator: self.validator,
                    state: &mut *self.state,
                    field_idx,
                })?,
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, _seq: A) -> Result<(), A::Error> {
        Err(self.reject(RejectReason::NotAnObject {
            found: ValueKind::Array,
        }))
    }

    fn visit_bool<E: de::Error>(self, _value: bool) -> Result<(), E> {
        Err(self.reject(RejectReason::NotAnObject {
            found: ValueKind::Bool,
        }))
    }

    fn visit_i64<E: de::Error>(self, _value: i64) -> Result<(), E> {
        Err(self.reject(RejectReason::NotAnObject {
            found: ValueKind::Integer,
        }))
    }

    fn visit_u64<E: de::Error>(self, _value: u64) -> Result<(), E> {
        Err(self.reject(RejectReason::NotAnObject {
            found: ValueKind::Integer,
        }))
    }

    fn visit_f64<E: de::Error>(self, _value: f64) -> Result<(), E> {
        Err(self.reject(RejectReason::NotAnObject {
            found: ValueKind::Float,
        }))
    }

    fn visit_str<E: de::Error>(self, _value: &str) -> Result<(), E> {
        Err(self.reject(RejectReason::NotAnObject {
            found: ValueKind::String,
        }))
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(self.reject(RejectReason::NotAnObject {
            found: ValueKind::Null,
        }))
    }
}

/// A map key: the index of the declared field it names, or `None` for an unknown field.
struct KeySeed<'a>(&'a Validator);

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Option<usize>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Option<usize>, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: de::Error>(self, name: &str) -> Result<Option<usize>, E> {
        Ok(self.0.field_index(name))
    }
}

/// The value of declared field `field_idx`.
struct FieldSeed<'a> {
    validator: &'a Validator,
    state: &'a mut EventState,
    field_idx: usize,
}

impl FieldSeed<'_> {
    fn accept<E: de::Error>(self, scalar: Scalar<'_>) -> Result<(), E> {
        match self.validator.accept(self.state, self.field_idx, scalar) {
            Ok(()) => Ok(()),
            Err(reason) => {
                self.state.reason = Some(reason);
                Err(E::custom("rejected"))
            }
        }
    }
}

impl<'de> DeserializeSeed<'de> for FieldSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for FieldSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field value")
    }

    fn visit_bool<E: de::Error>(self, value: bool) -> Result<(), E> {
        self.accept(Scalar::Bool(value))
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<(), E> {
        self.accept(Scalar::I64(value))
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<(), E> {
        self.accept(Scalar::U64(value))
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<(), E> {
        self.accept(Scalar::F64(value))
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<(), E> {
        self.accept(Scalar::Str(value))
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.accept(Scalar::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.accept(Scalar::Null)
    }

    fn visit_map<A: MapAccess<'de>>(self, _map: A) -> Result<(), A::Error> {
        self.accept(Scalar::Object)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, _seq: A) -> Result<(), A::Error> {
        self.accept(Scalar::Array)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use runnel_config::FieldConfig;

    use super::*;

    /// 2024-05-01T12:00:00Z.
    const NOW: i64 = 1_714_564_800_000;

    fn field(name: &str, field_type: FieldType, nullable: bool) -> FieldConfig {
        FieldConfig {
            name: name.to_string(),
            field_type,
            nullable,
        }
    }

    fn clicks() -> StreamConfig {
        let mut stream = StreamConfig::new(
            "clicks",
            4,
            Some("user_id".to_string()),
            "event_time",
            vec![
                field("event_time", FieldType::Timestamp, false),
                field("user_id", FieldType::String, false),
                field("page", FieldType::String, true),
                field("duration_ms", FieldType::Int64, true),
                field("score", FieldType::Float64, true),
                field("bot", FieldType::Bool, true),
            ],
        );
        stream.max_event_time_behind = Duration::from_secs(86_400);
        stream
    }

    fn limits() -> ValidationLimits {
        ValidationLimits {
            max_event_bytes: 1024,
        }
    }

    fn validator() -> Validator {
        Validator::new(&clicks(), limits())
    }

    #[track_caller]
    fn accept(json: &str) -> ValidEvent {
        validator()
            .validate_json(json.as_bytes(), NOW, &mut ValidateBuffer::new())
            .unwrap_or_else(|reason| panic!("{json} rejected: {reason}"))
    }

    #[track_caller]
    fn check(json: &str, expect_value: &str, expect_key: Option<&str>) {
        let event = accept(json);
        assert_eq!(
            std::str::from_utf8(&event.value).expect("utf-8"),
            expect_value
        );
        assert_eq!(event.key.as_deref(), expect_key.map(str::as_bytes));
        serde_json::from_slice::<serde_json::Value>(&event.value).expect("valid JSON");
    }

    #[track_caller]
    fn reject(json: &str) -> RejectReason {
        match validator().validate_json(json.as_bytes(), NOW, &mut ValidateBuffer::new()) {
            Ok(event) => panic!("{json} accepted as {event:?}"),
            Err(reason) => reason,
        }
    }

    #[test]
    fn canonical_output_has_declared_fields_in_declared_order() {
        check(
            r#"{"bot": false, "score": 2, "page": "/a", "extra": {"x": [1, 2]}, "user_id": "u1", "event_time": "2024-05-01T12:00:00.123Z", "duration_ms": 17}"#,
            r#"{"event_time":1714564800123,"user_id":"u1","page":"/a","duration_ms":17,"score":2.0,"bot":false}"#,
            Some("u1"),
        );
    }

    #[test]
    fn absent_and_null_nullable_fields_are_written_as_null() {
        check(
            r#"{"event_time": 1714564800000, "user_id": "u\"2", "page": null}"#,
            r#"{"event_time":1714564800000,"user_id":"u\"2","page":null,"duration_ms":null,"score":null,"bot":null}"#,
            Some("u\"2"),
        );
    }

    /// Found by the `ingest_validate` fuzz target: floats must parse correctly rounded, or
    /// the written value parses to another float and the record format stops being a fixed
    /// point of validation (libs/fuzz/regressions/ingest_validate/).
    #[test]
    fn floats_round_trip_through_the_record_format() {
        for score in ["1.25e300", "5082e60", "0.1", "2.2250738585072014e-308"] {
            let event = accept(&format!(
                r#"{{"event_time": 1714564800000, "user_id": "u", "score": {score}}}"#
            ));
            let again = validator()
                .validate_json(&event.value, NOW, &mut ValidateBuffer::new())
                .expect("the record format is accepted");
            assert_eq!(again, event, "{score}");
        }
    }

    #[test]
    fn strings_are_re_escaped_and_unicode_kept() {
        check(
            r#"{"event_time": 1714564800000, "user_id": "\u00e9t\u00e9", "page": "line\nbreak \ud83d\ude00 ü"}"#,
            "{\"event_time\":1714564800000,\"user_id\":\"été\",\"page\":\"line\\nbreak 😀 ü\",\"duration_ms\":null,\"score\":null,\"bot\":null}",
            Some("été"),
        );
    }

    #[test]
    fn floats_are_written_in_shortest_form() {
        let event = accept(r#"{"event_time": 1714564800000, "user_id": "u", "score": 1.5e3}"#);
        assert!(
            std::str::from_utf8(&event.value)
                .expect("utf-8")
                .contains(r#""score":1500.0"#)
        );
    }

    #[test]
    fn keys_of_other_types_are_their_canonical_text() {
        let mut stream = clicks();
        stream.key = Some("duration_ms".to_string());
        let validator = Validator::new(&stream, limits());
        let mut buffer = ValidateBuffer::new();
        let event = validator
            .validate_json(
                br#"{"event_time": 1714564800000, "user_id": "u", "duration_ms": -42}"#,
                NOW,
                &mut buffer,
            )
            .expect("valid");
        assert_eq!(event.key.as_deref(), Some(&b"-42"[..]));
        let event = validator
            .validate_json(
                br#"{"event_time": 1714564800000, "user_id": "u"}"#,
                NOW,
                &mut buffer,
            )
            .expect("valid");
        assert_eq!(event.key, None, "a null key is no key");
        stream.key = None;
        let event = Validator::new(&stream, limits())
            .validate_json(
                br#"{"event_time": 1714564800000, "user_id": "u"}"#,
                NOW,
                &mut buffer,
            )
            .expect("valid");
        assert_eq!(event.key, None, "no key field, no key");
    }

    #[test]
    fn event_time_is_returned_and_int64_event_times_work() {
        assert_eq!(
            accept(r#"{"event_time": "2024-05-01T14:00:00+02:00", "user_id": "u"}"#).event_time,
            NOW
        );
        let mut stream = clicks();
        stream.schema[0].field_type = FieldType::Int64;
        let event = Validator::new(&stream, limits())
            .validate_json(
                br#"{"event_time": 1714564800001, "user_id": "u"}"#,
                NOW,
                &mut ValidateBuffer::new(),
            )
            .expect("valid");
        assert_eq!(event.event_time, NOW + 1);
    }

    #[test]
    fn one_buffer_serves_many_events() {
        let validator = validator();
        let mut buffer = ValidateBuffer::new();
        let mut values = Vec::new();
        for idx in 0..5000 {
            let json = format!(
                r#"{{"event_time": {}, "user_id": "user-{idx}"}}"#,
                NOW + idx
            );
            let event = validator
                .validate_json(json.as_bytes(), NOW, &mut buffer)
                .expect("valid");
            assert_eq!(event.key.as_deref(), Some(format!("user-{idx}").as_bytes()));
            values.push(event.value);
        }
        for (idx, value) in values.iter().enumerate() {
            let expect = format!(
                r#"{{"event_time":{},"user_id":"user-{idx}","page":null,"duration_ms":null,"score":null,"bot":null}}"#,
                NOW + idx as i64
            );
            assert_eq!(value, expect.as_bytes());
        }
    }

    #[test]
    fn invalid_json_reports_line_and_column() {
        let reason = reject("{\"event_time\": 1714564800000,\n \"user_id\": \"u\",,}");
        assert_eq!(
            reason,
            RejectReason::InvalidJson {
                message: "key must be a string".to_string(),
                line: 2,
                column: 17,
            }
        );
        assert_eq!(reason.code(), "invalid_json");
        assert_eq!(
            reason.to_string(),
            "invalid JSON at line 2, column 17: key must be a string"
        );
        assert!(matches!(reject(""), RejectReason::InvalidJson { .. }));
        assert!(matches!(
            reject(r#"{"event_time": 1714564800000, "user_id": "u"} x"#),
            RejectReason::InvalidJson { message, .. } if message == "trailing characters"
        ));
        assert!(matches!(
            reject("{\"event_time\": 1714564800000, \"user_id\": \"\u{1}\"}"),
            RejectReason::InvalidJson { .. }
        ));
    }

    #[test]
    fn invalid_utf8_is_invalid_json() {
        let mut raw = br#"{"event_time": 1714564800000, "user_id": "x"#.to_vec();
        raw.extend_from_slice(&[0xff, b'"', b'}']);
        let reason = validator()
            .validate_json(&raw, NOW, &mut ValidateBuffer::new())
            .expect_err("invalid UTF-8");
        assert_eq!(reason.code(), "invalid_json");
    }

    #[test]
    fn documents_that_are_not_objects_are_refused() {
        for (json, found) in [
            ("[1, 2]", ValueKind::Array),
            ("\"text\"", ValueKind::String),
            ("42", ValueKind::Integer),
            ("-1.5", ValueKind::Float),
            ("true", ValueKind::Bool),
            ("null", ValueKind::Null),
        ] {
            assert_eq!(reject(json), RejectReason::NotAnObject { found }, "{json}");
        }
        assert_eq!(
            reject("[]").to_string(),
            "the event is an array, not a JSON object"
        );
    }

    #[test]
    fn missing_required_fields_are_named() {
        let reason = reject(r#"{"event_time": 1714564800000, "page": "/a"}"#);
        assert_eq!(
            reason,
            RejectReason::MissingField {
                field: "user_id".to_string()
            }
        );
        assert_eq!(
            reason.to_string(),
            "missing field `user_id`, which is not nullable"
        );
        let reason = reject(r#"{"user_id": "u"}"#);
        assert_eq!(
            reason,
            RejectReason::MissingEventTime {
                field: "event_time".to_string()
            }
        );
        assert_eq!(reason.to_string(), "missing event-time field `event_time`");
    }

    #[test]
    fn event_time_is_required_even_when_declared_nullable() {
        let mut stream = clicks();
        stream.schema[0].nullable = true;
        let validator = Validator::new(&stream, limits());
        let mut buffer = ValidateBuffer::new();
        assert_eq!(
            validator.validate_json(br#"{"user_id": "u"}"#, NOW, &mut buffer),
            Err(RejectReason::MissingEventTime {
                field: "event_time".to_string()
            })
        );
        assert_eq!(
            validator.validate_json(br#"{"user_id": "u", "event_time": null}"#, NOW, &mut buffer),
            Err(RejectReason::NullField {
                field: "event_time".to_string()
            })
        );
    }

    #[test]
    fn null_in_a_non_nullable_field_is_refused() {
        let reason = reject(r#"{"event_time": 1714564800000, "user_id": null}"#);
        assert_eq!(
            reason,
            RejectReason::NullField {
                field: "user_id".to_string()
            }
        );
        assert_eq!(
            reason.to_string(),
            "field `user_id` is null, but it is not nullable"
        );
    }

    #[test]
    fn wrong_types_name_expected_and_found() {
        let cases = [
            (r#""user_id": 7"#, "user_id", "string", ValueKind::Integer),
            (
                r#""user_id": "u", "duration_ms": "7""#,
                "duration_ms",
                "int64",
                ValueKind::String,
            ),
            (
                r#""user_id": "u", "duration_ms": 7.0"#,
                "duration_ms",
                "int64",
                ValueKind::Float,
            ),
            (
                r#""user_id": "u", "duration_ms": 9223372036854775808"#,
                "duration_ms",
                "int64",
                ValueKind::LargeInteger,
            ),
            (
                r#""user_id": "u", "score": "1.5""#,
                "score",
                "float64",
                ValueKind::String,
            ),
            (
                r#""user_id": "u", "bot": 1"#,
                "bot",
                "bool",
                ValueKind::Integer,
            ),
            (
                r#""user_id": "u", "page": {"a": 1}"#,
                "page",
                "string",
                ValueKind::Object,
            ),
            (r#""user_id": ["u"]"#, "user_id", "string", ValueKind::Array),
        ];
        for (fields, field, expected, found) in cases {
            let json = format!(r#"{{"event_time": 1714564800000, {fields}}}"#);
            assert_eq!(
                reject(&json),
                RejectReason::WrongType {
                    field: field.to_string(),
                    expected,
                    found
                },
                "{json}"
            );
        }
        let reason = reject(r#"{"event_time": true, "user_id": "u"}"#);
        assert_eq!(
            reason.to_string(),
            "field `event_time`: expected timestamp, found a boolean"
        );
        assert_eq!(reason.code(), "wrong_type");
    }

    #[test]
    fn unparsable_timestamps_say_why() {
        let reason = reject(r#"{"event_time": "yesterday", "user_id": "u"}"#);
        assert_eq!(
            reason,
            RejectReason::UnparsableTimestamp {
                field: "event_time".to_string(),
                text: "yesterday".to_string(),
                problem: "expected a date YYYY-MM-DD",
            }
        );
        assert_eq!(reason.code(), "unparsable_timestamp");
        assert!(
            reason
                .to_string()
                .starts_with("field `event_time`: `yesterday` is not a timestamp")
        );
        let reason = reject(r#"{"event_time": "2024-05-01T12:00:00", "user_id": "u"}"#);
        assert!(
            matches!(&reason, RejectReason::UnparsableTimestamp { problem, .. } if problem.contains("offset")),
            "{reason}"
        );
        let reason = reject(r#"{"event_time": "2024-02-30T12:00:00Z", "user_id": "u"}"#);
        assert!(
            matches!(&reason, RejectReason::UnparsableTimestamp { problem, .. } if *problem == "day out of range"),
            "{reason}"
        );
    }

    #[test]
    fn event_times_far_from_now_are_refused() {
        let ahead = NOW + 3_600_001;
        let reason = reject(&format!(r#"{{"event_time": {ahead}, "user_id": "u"}}"#));
        assert_eq!(
            reason,
            RejectReason::EventTimeTooFarAhead {
                field: "event_time".to_string(),
                event_time: ahead,
                now: NOW,
                max_ahead: Duration::from_secs(3600),
            }
        );
        assert_eq!(
            reason.to_string(),
            "event time 2024-05-01T13:00:00.001Z in field `event_time` is more than 1h ahead of the service clock (2024-05-01T12:00:00.000Z) (streams.max-event-time-ahead)"
        );
        accept(&format!(
            r#"{{"event_time": {}, "user_id": "u"}}"#,
            NOW + 3_600_000
        ));
        let reason = reject(r#"{"event_time": "2024-04-30T11:59:59.999Z", "user_id": "u"}"#);
        assert_eq!(reason.code(), "event_time_too_far_behind");
        assert_eq!(
            reason.to_string(),
            "event time 2024-04-30T11:59:59.999Z in field `event_time` is more than 1day behind the service clock (2024-05-01T12:00:00.000Z) (streams.max-event-time-behind)"
        );
        accept(r#"{"event_time": "2024-04-30T12:00:00Z", "user_id": "u"}"#);
        // The default bound is ten years: 1970 is refused, and so are the ends of i64.
        let mut default_bounds = clicks();
        default_bounds.max_event_time_behind =
            StreamConfig::new("s", 1, None, "t", Vec::new()).max_event_time_behind;
        let default_validator = Validator::new(&default_bounds, limits());
        for (json, code) in [
            (
                r#"{"event_time": -5000, "user_id": "u"}"#,
                "event_time_too_far_behind",
            ),
            (
                r#"{"event_time": -9223372036854775808, "user_id": "u"}"#,
                "event_time_too_far_behind",
            ),
            (
                r#"{"event_time": "0001-01-01T00:00:00Z", "user_id": "u"}"#,
                "event_time_too_far_behind",
            ),
            (
                r#"{"event_time": 9223372036854775807, "user_id": "u"}"#,
                "event_time_too_far_ahead",
            ),
        ] {
            let reason = default_validator
                .validate_json(json.as_bytes(), NOW, &mut ValidateBuffer::new())
                .expect_err(json);
            assert_eq!(reason.code(), code, "{json}");
        }
        default_validator
            .validate_json(
                br#"{"event_time": "2016-05-02T00:00:00Z", "user_id": "u"}"#,
                NOW,
                &mut ValidateBuffer::new(),
            )
            .expect("eight years back is accepted by default");
        assert_eq!(
            reject(&format!(
                r#"{{"event_time": {}, "user_id": "u"}}"#,
                i64::MAX
            ))
            .code(),
            "event_time_too_far_ahead"
        );
    }

    #[test]
    fn oversized_events_are_refused_before_parsing() {
        let json = format!(
            r#"{{"event_time": 1714564800000, "user_id": "{}"}}"#,
            "x".repeat(1000)
        );
        assert_eq!(
            reject(&json),
            RejectReason::TooLarge {
                size: json.len(),
                limit: 1024
            }
        );
        assert_eq!(
            reject(&format!("{json} garbage")).to_string(),
            format!(
                "the event is {} bytes, over the limit of 1024 bytes",
                json.len() + 8
            )
        );
    }

    #[test]
    fn duplicate_declared_fields_are_refused_unknown_ones_ignored() {
        let reason = reject(r#"{"event_time": 1714564800000, "user_id": "u", "user_id": "v"}"#);
        assert_eq!(
            reason,
            RejectReason::DuplicateField {
                field: "user_id".to_string()
            }
        );
        assert_eq!(reason.to_string(), "field `user_id` appears more than once");
        accept(r#"{"event_time": 1714564800000, "user_id": "u", "x": 1, "x": [2]}"#);
    }

    #[test]
    fn typed_rows_give_the_same_record_as_json() {
        let validator = validator();
        let mut buffer = ValidateBuffer::new();
        let row = validator
            .validate_row(
                &[
                    TypedValue::TimestampMillis(NOW + 123),
                    TypedValue::String("u1"),
                    TypedValue::String("/a"),
                    TypedValue::Int64(17),
                    TypedValue::Int64(2),
                    TypedValue::Bool(false),
                ],
                NOW,
                &mut buffer,
            )
            .expect("valid row");
        let json = accept(
            r#"{"bot": false, "score": 2, "page": "/a", "user_id": "u1", "event_time": "2024-05-01T12:00:00.123Z", "duration_ms": 17}"#,
        );
        assert_eq!(row, json);
        let short = validator
            .validate_row(
                &[
                    TypedValue::String("2024-05-01T12:00:00Z"),
                    TypedValue::String("u"),
                ],
                NOW,
                &mut buffer,
            )
            .expect("trailing fields may be left out");
        assert_eq!(
            short.value,
            &br#"{"event_time":1714564800000,"user_id":"u","page":null,"duration_ms":null,"score":null,"bot":null}"#[..]
        );
    }

    #[test]
    fn typed_rows_share_the_checks() {
        let validator = validator();
        let mut buffer = ValidateBuffer::new();
        let mut check = |values: &[TypedValue<'_>], code: &str| {
            let reason = validator
                .validate_row(values, NOW, &mut buffer)
                .expect_err("rejected");
            assert_eq!(reason.code(), code, "{values:?}: {reason}");
        };
        check(
            &[TypedValue::Int64(NOW), TypedValue::Int64(1)],
            "wrong_type",
        );
        check(
            &[TypedValue::Null, TypedValue::String("u")],
            "missing_event_time",
        );
        check(&[TypedValue::Int64(NOW)], "missing_field");
        check(
            &[TypedValue::String("now"), TypedValue::String("u")],
            "unparsable_timestamp",
        );
        check(
            &[TypedValue::Int64(NOW + 7_200_000), TypedValue::String("u")],
            "event_time_too_far_ahead",
        );
        check(
            &[TypedValue::Int64(0), TypedValue::String("u")],
            "event_time_too_far_behind",
        );
        check(
            &[
                TypedValue::Int64(NOW),
                TypedValue::String(&"x".repeat(2000)),
            ],
            "too_large",
        );
        check(&[TypedValue::Null; 7], "too_many_values");
        check(
            &[
                TypedValue::Int64(NOW),
                TypedValue::String("u"),
                TypedValue::Null,
                TypedValue::Float64(1.5),
            ],
            "wrong_type",
        );
    }
}
