//! Why an event is refused: [`RejectReason`], whose message names the field at fault and
//! whose code (`missing_field`, `wrong_type`, ...) goes with it to the client and the
//! dead-letter topic.

use std::fmt;
use std::time::Duration;

use runnel_config::FieldType;
use runnel_time::format_millis;

/// What kind of value was found where another was expected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    /// `null`.
    Null,
    /// A string.
    String,
    /// An integer in the `i64` range.
    Integer,
    /// An integer beyond the `i64` range.
    LargeInteger,
    /// A number with a fraction or exponent.
    Float,
    /// `true` or `false`.
    Bool,
    /// A JSON object.
    Object,
    /// A JSON array.
    Array,
    /// A typed timestamp (typed rows only).
    Timestamp,
}

impl fmt::Display for ValueKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ValueKind::Null => "null",
            ValueKind::String => "a string",
            ValueKind::Integer => "an integer",
            ValueKind::LargeInteger => "an integer beyond the int64 range",
            ValueKind::Float => "a float",
            ValueKind::Bool => "a boolean",
            ValueKind::Object => "an object",
            ValueKind::Array => "an array",
            ValueKind::Timestamp => "a timestamp",
        })
    }
}

/// Returns the name of a declared field type as config spells it (`int64`).
pub fn field_type_name(field_type: FieldType) -> &'static str {
    match field_type {
        FieldType::String => "string",
        FieldType::Int64 => "int64",
        FieldType::Float64 => "float64",
        FieldType::Bool => "bool",
        FieldType::Timestamp => "timestamp",
    }
}

/// Why an event was refused. The message names the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RejectReason {
    /// The bytes are not one JSON document.
    #[error("invalid JSON at line {line}, column {column}: {message}")]
    InvalidJson {
        /// serde_json's description, without the position.
        message: String,
        /// Line of the fault, from 1.
        line: usize,
        /// Column of the fault, from 1 (0 at the very start).
        column: usize,
    },
    /// The document is valid JSON but not an object.
    #[error("the event is {found}, not a JSON object")]
    NotAnObject {
        /// What the document is.
        found: ValueKind,
    },
    /// A field that is not nullable is absent.
    #[error("missing field `{field}`, which is not nullable")]
    MissingField {
        /// The field.
        field: String,
    },
    /// The event-time field is absent.
    #[error("missing event-time field `{field}`")]
    MissingEventTime {
        /// The event-time field.
        field: String,
    },
    /// A field that is not nullable (or the event-time field) is `null`.
    #[error("field `{field}` is null, but it is not nullable")]
    NullField {
        /// The field.
        field: String,
    },
    /// A field's value has the wrong type.
    #[error("field `{field}`: expected {expected}, found {found}")]
    WrongType {
        /// The field.
        field: String,
        /// The declared type, as config spells it.
        expected: &'static str,
        /// What was found.
        found: ValueKind,
    },
    /// A timestamp field holds text that is not an RFC 3339 time.
    #[error(
        "field `{field}`: `{text}` is not a timestamp ({problem}); expected RFC 3339 text such as 2024-05-01T12:00:00Z, or integer epoch milliseconds"
    )]
    UnparsableTimestamp {
        /// The field.
        field: String,
        /// The text, cut to 64 characters.
        text: String,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// The event time is further ahead of the clock than allowed.
    #[error(
        "event time {} in field `{field}` is more than {} ahead of the service clock ({}) (streams.max-event-time-ahead)",
        format_millis(*event_time),
        humantime::format_duration(*max_ahead),
        format_millis(*now)
    )]
    EventTimeTooFarAhead {
        /// The event-time field.
        field: String,
        /// The event time, epoch milliseconds.
        event_time: i64,
        /// The clock, epoch milliseconds.
        now: i64,
        /// The bound.
        max_ahead: Duration,
    },
    /// The event time is further behind the clock than allowed.
    #[error(
        "event time {} in field `{field}` is more than {} behind the service clock ({}) (streams.max-event-time-behind)",
        format_millis(*event_time),
        humantime::format_duration(*max_behind),
        format_millis(*now)
    )]
    EventTimeTooFarBehind {
        /// The event-time field.
        field: String,
        /// The event time, epoch milliseconds.
        event_time: i64,
        /// The clock, epoch milliseconds.
        now: i64,
        /// The bound.
        max_behind: Duration,
    },
    /// The event is larger than allowed.
    #[error("the event is {size} bytes, over the limit of {limit} bytes")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A declared field appears more than once.
    #[error("field `{field}` appears more than once")]
    DuplicateField {
        /// The field.
        field: String,
    },
    /// A typed row has more values than the stream has fields.
    #[error("the row has {found} values, but the stream declares {declared} fields")]
    TooManyValues {
        /// Values in the row.
        found: usize,
        /// Declared fields.
        declared: usize,
    },
}

impl RejectReason {
    /// Returns a stable, snake_case name of the reason (`wrong_type`), for headers,
    /// API responses and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            RejectReason::InvalidJson { .. } => "invalid_json",
            RejectReason::NotAnObject { .. } => "not_an_object",
            RejectReason::MissingField { .. } => "missing_field",
            RejectReason::MissingEventTime { .. } => "missing_event_time",
            RejectReason::NullField { .. } => "null_field",
            RejectReason::WrongType { .. } => "wrong_type",
            RejectReason::UnparsableTimestamp { .. } => "unparsable_timestamp",
            RejectReason::EventTimeTooFarAhead { .. } => "event_time_too_far_ahead",
            RejectReason::EventTimeTooFarBehind { .. } => "event_time_too_far_behind",
            RejectReason::TooLarge { .. } => "too_large",
            RejectReason::DuplicateField { .. } => "duplicate_field",
            RejectReason::TooManyValues { .. } => "too_many_values",
        }
    }

    /// Returns the declared field the reason is about, if it is about one.
    pub fn field(&self) -> Option<&str> {
        match self {
            RejectReason::MissingField { field }
            | RejectReason::MissingEventTime { field }
            | RejectReason::NullField { field }
            | RejectReason::WrongType { field, .. }
            | RejectReason::UnparsableTimestamp { field, .. }
            | RejectReason::EventTimeTooFarAhead { field, .. }
            | RejectReason::EventTimeTooFarBehind { field, .. }
            | RejectReason::DuplicateField { field } => Some(field),
            RejectReason::InvalidJson { .. }
            | RejectReason::NotAnObject { .. }
            | RejectReason::TooLarge { .. }
            | RejectReason::TooManyValues { .. } => None,
        }
    }
}
