//! Windowed SQL jobs: one job definition that runs live, on an unbounded stream with
//! event-time semantics, and over a bounded history as a batch plan ([`recompute`]).
//!
//! The crate does no I/O and knows nothing of the log, Kafka or config files: Arrow record
//! batches and arrival times go in, upserts and late events come out.
//! - [`JobPlan::compile`] checks the SQL against the supported subset (errors carry the
//!   position of the unsupported part) and lets DataFusion plan and lower it.
//! - [`WindowOperator`] runs a plan: watermarks per partition, firing, allowed lateness,
//!   late events, early results, snapshots. DataFusion evaluates the expressions and
//!   aggregates; the window logic is ours.
//! - [`ShardedOperator`] runs one [`WindowOperator`] per shard of the keys, in parallel, with
//!   one watermark and an output that does not depend on the number of shards.
//! - [`recompute`] runs the same plan as a DataFusion batch query, every event counted.
//! - A job may join its stream ([`JobPlan::compile_joined`]): with a table as of each row's
//!   event time ([`TemporalJoin`] over a [`VersionedTable`]), or with a second stream within
//!   an interval of event time ([`IntervalJoin`], its rows put back in order by
//!   [`TimeOrder`]); the windows then run over the joined rows, and recompute joins in
//!   DataFusion ([`register_joined`]). A router of a repartitioned interval join job puts
//!   the joined rows back in their stream's offset order ([`OffsetOrder`]).
//! - A job may join two windowed aggregates on their windows ([`WindowJoinPlan`], Nexmark
//!   q8 as written): each side runs as its own job, and [`WindowJoin`] pairs their final
//!   results of a window once neither side can change them; recompute joins the two sides'
//!   recomputed results ([`recompute_window_join`]).
#![warn(missing_docs)]

mod error;
mod groups;
mod guard;
mod interval_join;
mod join_plan;
mod live_join;
mod offset_order;
mod operator;
mod plan;
mod recompute;
mod reorder;
mod session;
mod sharded;
mod snapshot;
mod table;
mod temporal_join;
mod versions;
mod window;
mod window_join;

pub use error::{EngineError, EventError, SqlPosition};
pub use interval_join::{IntervalJoin, IntervalJoinOutput, IntervalJoinSpec};
pub use join_plan::{JoinForm, JoinPlan, JoinSources, StreamSource, TableSource};
pub use live_join::{LiveJoin, LiveJoinOptions, LiveJoinOutput};
pub use offset_order::{OffsetOrder, OffsetOrdered};
pub use operator::{
    LATE_PARTITION_COLUMN, LATE_REASON_COLUMN, LATE_WATERMARK_COLUMN, LATE_WINDOW_START_COLUMN,
    OperatorOptions, OperatorOutput, WindowOperator,
};
pub use plan::{
    FINAL_COLUMN, JobLimits, JobPlan, KEY_COLUMN, VERSION_COLUMN, WINDOW_END, WINDOW_START,
    WINDOW_START_COLUMN,
};
pub use recompute::{
    WindowResults, partition_streams_exec, recompute, recompute_config, recompute_context,
    recompute_runtime, recompute_windows, register_joined,
};
pub use reorder::TimeOrder;
pub use sharded::{MAX_SHARDS, PreparedBatch, ShardedOperator};
pub use snapshot::{join_parts as join_snapshot_parts, split_parts as split_snapshot_parts};
pub use table::{Lookup, VersionedTable};
pub use temporal_join::{
    JOIN_LATE_REASON_COLUMN, JOIN_LATE_WATERMARK_COLUMN, JoinKind, JoinOutput, TemporalJoin,
    TemporalJoinSpec,
};
pub use window::{EVENT_TIME_RANGE_MS, MAX_WINDOW_INTERVAL_MS, WindowSpec};
pub use window_join::{WindowJoin, WindowJoinPlan, recompute_window_join};
