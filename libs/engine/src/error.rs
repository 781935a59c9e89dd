//! The engine's errors: job errors (bad SQL, bad plans, bad snapshots) and per-event errors.

use datafusion::error::DataFusionError;

/// A position in the job's SQL text, 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SqlPosition {
    /// Line, from 1.
    pub line: u64,
    /// Column, from 1.
    pub column: u64,
}

impl std::fmt::Display for SqlPosition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}, column {}", self.line, self.column)
    }
}

/// Everything that stops a job from compiling or running.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The SQL does not parse.
    #[error("parse job SQL: {0}")]
    Parse(String),
    /// The SQL parses but uses something outside the supported subset.
    #[error("unsupported job SQL at {position}: {message}")]
    Unsupported {
        /// Where the unsupported part starts.
        position: SqlPosition,
        /// What is unsupported, and what to write instead.
        message: String,
    },
    /// The SQL is in the subset but does not make a valid job: an unknown column or function,
    /// arguments of the wrong type, at the expression where it goes wrong.
    #[error("invalid job SQL at {position}: {message}")]
    Invalid {
        /// Where the offending expression starts.
        position: SqlPosition,
        /// What is wrong, in the planner's words.
        message: String,
    },
    /// The job does not fit the stream it reads (its event time column, a column named like
    /// a window column), or the planner failed without pointing at the SQL.
    #[error("plan job: {0}")]
    Plan(String),
    /// DataFusion failed while evaluating.
    #[error("evaluate: {0}")]
    DataFusion(#[from] DataFusionError),
    /// Arrow failed while evaluating.
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    /// An input batch does not have the stream's schema.
    #[error("input batch does not match the stream schema: {0}")]
    Schema(String),
    /// A snapshot could not be read back.
    #[error("restore snapshot: {0}")]
    Snapshot(String),
    /// The operator was used out of order (e.g. input after `finish`).
    #[error("operator misuse: {0}")]
    Misuse(String),
}

impl EngineError {
    pub(crate) fn plan(message: impl Into<String>) -> EngineError {
        EngineError::Plan(message.into())
    }
}

/// An event the operator could not use; it is reported, never silently dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventError {
    /// Source partition.
    pub partition: u32,
    /// Row of the input batch.
    pub row: usize,
    /// What is wrong with it.
    pub reason: String,
}
