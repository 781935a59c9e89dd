//! Recompute (the Lambda batch layer): the job as a plain DataFusion batch plan over a
//! table the caller registered (e.g. the Parquet history), every event counted, no
//! lateness cut-off.

use arrow::array::RecordBatch;
use datafusion::prelude::SessionContext;

use crate::error::EngineError;
use crate::plan::JobPlan;

/// Runs `plan` over `table` in `context` and returns its results, in the plan's result
/// schema, each with `_version` 1 and `_final` true.
///
/// # Errors
///
/// Planning or execution errors from DataFusion.
pub async fn recompute(
    plan: &JobPlan,
    context: &SessionContext,
    table: &str,
) -> Result<Vec<RecordBatch>, EngineError> {
    let _ = (plan, context, table);
    unimplemented!("recompute is being written (issue 3)")
}
