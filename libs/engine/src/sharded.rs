//! Keys sharded over several window operators, one thread each, with one watermark.
//!
//! Each batch is prepared once (event times, WHERE, the key and argument expressions), its
//! rows go to the shard that owns their key (a hash of the key columns), and every shard
//! runs its rows against the watermark of the whole batch ([`Trace`]): before each of its
//! rows the watermark stands where the rows of every shard before it have put it, and a
//! firing happens at the position in the batch where the watermark crosses its trigger, as
//! in one operator that sees every row. Each shard therefore emits, for its keys, exactly
//! what one operator would; only the order across keys is the shards' own.
//!
//! The merge puts the shards' emissions back in one order that does not depend on the
//! number of shards: by position in the batch (a firing before the row at that position,
//! then what the row itself caused, a late update), and within one firing by
//! `(_window_start, _key, _version)`. So the output is byte-identical for any number of
//! shards, one included. Within a firing the order differs from [`WindowOperator`]'s own
//! (which emits groups in the order they were first seen), not its content.

use std::sync::Arc;

use arrow::array::{RecordBatch, UInt32Array};
use arrow::compute::{SortColumn, concat_batches, lexsort_to_indices, take_record_batch};
use arrow::datatypes::SchemaRef;
use datafusion::common::hash_utils::{RandomState, create_hashes};

use crate::error::{EngineError, EventError};
use crate::operator::{
    LateEvent, Mark, OperatorOptions, OperatorOutput, Phase, Prepared, ShardOutput, Trace,
    WindowOperator, add_late_events, check_schema, prefix_max, prepare_events,
};
use crate::plan::{JobPlan, KEY_COLUMN, VERSION_COLUMN, WINDOW_START_COLUMN};

/// The most shards an operator may have.
pub const MAX_SHARDS: usize = 256;

/// A [`WindowOperator`] per shard of the key space, run in parallel on bounded input.
///
/// It has the window operator's semantics (watermarks, firing, lateness, late events,
/// early results) but no snapshots: it serves whole runs such as `runnel run`.
pub struct ShardedOperator {
    plan: Arc<JobPlan>,
    shards: Vec<WindowOperator>,
    hasher: RandomState,
    late_schema: SchemaRef,
    late_count: u64,
}

impl ShardedOperator {
    /// Creates `shards` operators for `plan` (at least 1, at most [`MAX_SHARDS`]).
    ///
    /// # Errors
    ///
    /// What [`WindowOperator::new`] refuses, and a shard count out of range.
    pub fn new(
        plan: Arc<JobPlan>,
        options: OperatorOptions,
        shards: usize,
    ) -> Result<ShardedOperator, EngineError> {
        if !(1..=MAX_SHARDS).contains(&shards) {
            return Err(EngineError::plan(format!(
                "the operator's shard count must be between 1 and {MAX_SHARDS}, not {shards}"
            )));
        }
        let operators = (0..shards)
            .map(|_| WindowOperator::new(Arc::clone(&plan), options))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ShardedOperator {
            late_schema: operators[0].late_schema(),
            plan,
            shards: operators,
            hasher: RandomState::with_seed(0),
            late_count: 0,
        })
    }

    /// Returns the schema of late-event batches (see [`WindowOperator::late_schema`]).
    pub fn late_schema(&self) -> SchemaRef {
        Arc::clone(&self.late_schema)
    }

    /// Returns the watermark, the same in every shard (epoch ms; `i64::MIN` before any).
    pub fn watermark(&self) -> i64 {
        self.shards[0].watermark()
    }

    /// Returns how many (event, window) pairs were too late to count so far.
    pub fn late_count(&self) -> u64 {
        self.late_count
    }

    /// Processes a batch, as [`WindowOperator::process`] does.
    ///
    /// # Errors
    ///
    /// As [`WindowOperator::process`].
    pub fn process(
        &mut self,
        partition: u32,
        batch: &RecordBatch,
        arrival_ms: i64,
    ) -> Result<OperatorOutput, EngineError> {
        let prepared = PreparedBatch::new(&self.plan, partition, batch.clone())?;
        self.process_prepared(prepared, arrival_ms)
    }

    /// Processes a batch prepared with [`PreparedBatch::new`] (possibly on another thread,
    /// ahead of the operator), as [`WindowOperator::process`] does.
    ///
    /// # Errors
    ///
    /// As [`WindowOperator::process`], and a batch prepared for another plan.
    pub fn process_prepared(
        &mut self,
        batch: PreparedBatch,
        arrival_ms: i64,
    ) -> Result<OperatorOutput, EngineError> {
        if !Arc::ptr_eq(&batch.plan, &self.plan) {
            return Err(EngineError::Misuse(
                "a batch prepared for another plan".to_string(),
            ));
        }
        let PreparedBatch {
            partition,
            batch,
            prepared,
            prefix,
            errors,
            ..
        } = batch;
        self.shards[0].check_partition(partition)?;
        let mut output = OperatorOutput {
            errors,
            ..OperatorOutput::default()
        };
        let outputs: Vec<Result<ShardOutput, EngineError>> = match self.shards.as_mut_slice() {
            [only] => {
                let trace = Trace {
                    positions: None,
                    prefix: &prefix,
                };
                vec![only.process_shard(partition, arrival_ms, &prepared, &trace)]
            }
            shards => {
                let owned =
                    owned_rows(&self.hasher, shards.len(), prepared.keys(), prepared.len())?;
                let parts = owned
                    .iter()
                    .map(|rows| prepared.take(rows))
                    .collect::<Result<Vec<_>, _>>()?;
                let run = |shard: &mut WindowOperator, part, rows: &Vec<u32>| {
                    let trace = Trace {
                        positions: Some(rows.as_slice()),
                        prefix: &prefix,
                    };
                    shard.process_shard(partition, arrival_ms, part, &trace)
                };
                let (first, rest) = shards
                    .split_first_mut()
                    .expect("an operator has at least one shard");
                // The first shard runs on this thread, the others on their own.
                std::thread::scope(|scope| {
                    let handles: Vec<_> = rest
                        .iter_mut()
                        .zip(&parts[1..])
                        .zip(&owned[1..])
                        .map(|((shard, part), rows)| scope.spawn(move || run(shard, part, rows)))
                        .collect();
                    let mut outputs = vec![run(first, &parts[0], &owned[0])];
                    outputs.extend(handles.into_iter().map(|handle| {
                        handle.join().unwrap_or_else(|_| {
                            Err(EngineError::Misuse(
                                "an operator shard panicked".to_string(),
                            ))
                        })
                    }));
                    outputs
                })
            }
        };
        let outputs = outputs.into_iter().collect::<Result<Vec<_>, _>>()?;
        let mut late: Vec<LateEvent> = Vec::new();
        let mut emissions: Vec<Emission> = Vec::new();
        for shard_output in outputs {
            late.extend(shard_output.late);
            emissions.extend(Emission::split(shard_output.results, &shard_output.marks));
        }
        output.results = merge(emissions)?;
        let late_events = (&self.late_schema, &mut self.late_count);
        add_late_events(
            late_events,
            partition,
            (&batch, &prepared),
            &late,
            &mut output,
        )?;
        Ok(output)
    }

    /// Ends a bounded input, as [`WindowOperator::finish`] does.
    ///
    /// # Errors
    ///
    /// Failures inside DataFusion.
    pub fn finish(&mut self) -> Result<OperatorOutput, EngineError> {
        let mut emissions = Vec::new();
        for shard in &mut self.shards {
            emissions.push(Emission {
                position: 0,
                phase: Phase::Fire,
                results: shard.finish()?.results,
            });
        }
        Ok(OperatorOutput {
            results: merge(emissions)?,
            ..OperatorOutput::default()
        })
    }
}

/// A batch ready for [`ShardedOperator::process_prepared`]: its rows checked and their event
/// times, keys and aggregate arguments evaluated, with the running largest event time.
/// Preparing needs only the plan, so a reader can prepare the next batches on its own thread
/// while the operator works.
pub struct PreparedBatch {
    plan: Arc<JobPlan>,
    partition: u32,
    batch: RecordBatch,
    pub(crate) prepared: Prepared,
    pub(crate) prefix: Vec<i64>,
    /// The events left out, with their reasons.
    pub(crate) errors: Vec<EventError>,
}

impl PreparedBatch {
    /// Prepares `batch` of `partition` for `plan`.
    ///
    /// # Errors
    ///
    /// A batch whose schema is not the stream's; a failure inside DataFusion. Bad events
    /// are not errors: they come back in the operator's output.
    pub fn new(
        plan: &Arc<JobPlan>,
        partition: u32,
        batch: RecordBatch,
    ) -> Result<PreparedBatch, EngineError> {
        check_schema(plan, &batch)?;
        let mut errors = Vec::new();
        let prepared = prepare_events(plan, partition, &batch, &mut errors)?;
        let prefix = prefix_max(prepared.times());
        Ok(PreparedBatch {
            plan: Arc::clone(plan),
            partition,
            batch,
            prepared,
            prefix,
            errors,
        })
    }

    /// The number of rows of the batch, bad events included.
    pub fn num_rows(&self) -> usize {
        self.batch.num_rows()
    }
}

/// The rows (ascending) of each of `n_shards` shards, by a hash of their key columns (all to
/// the first shard when the job has no keys).
fn owned_rows(
    hasher: &RandomState,
    n_shards: usize,
    keys: &[arrow::array::ArrayRef],
    n_rows: usize,
) -> Result<Vec<Vec<u32>>, EngineError> {
    if keys.is_empty() {
        let mut owned = vec![Vec::new(); n_shards];
        owned[0] = (0..n_rows as u32).collect();
        return Ok(owned);
    }
    // Room for a fair share and a little more, so that the pushes rarely grow a list.
    let share = n_rows / n_shards + n_rows / (8 * n_shards) + 16;
    let mut owned: Vec<Vec<u32>> = (0..n_shards).map(|_| Vec::with_capacity(share)).collect();
    let mut hashes = vec![0u64; n_rows];
    create_hashes(keys, hasher, &mut hashes)?;
    for (row, hash) in hashes.iter().enumerate() {
        // The hash's share of the shard count by a multiplication: a division per row costs
        // more than the rest of the loop.
        let shard = ((u128::from(*hash) * n_shards as u128) >> 64) as usize;
        owned[shard].push(row as u32);
    }
    Ok(owned)
}

/// Results one shard emitted at one position of a batch.
struct Emission {
    position: usize,
    phase: Phase,
    results: Vec<RecordBatch>,
}

impl Emission {
    /// Cuts a shard's results at its marks.
    fn split(mut results: Vec<RecordBatch>, marks: &[Mark]) -> Vec<Emission> {
        let mut emissions = Vec::with_capacity(marks.len());
        for mark in marks.iter().rev() {
            emissions.push(Emission {
                position: mark.position,
                phase: mark.phase,
                results: results.split_off(mark.first_result),
            });
        }
        debug_assert!(results.is_empty(), "every result follows a mark");
        emissions.reverse();
        emissions
    }
}

/// Puts the shards' emissions in the order that does not depend on the sharding: by
/// position and phase; a firing's rows by `(_window_start, _key, _version)`; a row's own
/// emissions (from one shard) as they came.
fn merge(mut emissions: Vec<Emission>) -> Result<Vec<RecordBatch>, EngineError> {
    emissions.sort_by_key(|emission| (emission.position, emission.phase));
    let mut merged = Vec::new();
    let mut emissions = emissions.into_iter().peekable();
    while let Some(emission) = emissions.next() {
        if emission.phase == Phase::Row {
            merged.extend(emission.results);
            continue;
        }
        let mut firing = emission.results;
        while let Some(next) = emissions
            .next_if(|next| (next.position, next.phase) == (emission.position, emission.phase))
        {
            firing.extend(next.results);
        }
        if let Some(batch) = sorted_firing(&firing)? {
            merged.push(batch);
        }
    }
    Ok(merged)
}

/// One firing's rows in one batch, sorted by `(_window_start, _key, _version)`.
fn sorted_firing(batches: &[RecordBatch]) -> Result<Option<RecordBatch>, EngineError> {
    let Some(first) = batches.first() else {
        return Ok(None);
    };
    let batch = concat_batches(&first.schema(), batches)?;
    if batch.num_rows() == 0 {
        return Ok(None);
    }
    let column = |name: &str| {
        batch
            .column_by_name(name)
            .cloned()
            .ok_or_else(|| EngineError::Misuse(format!("a result batch has no `{name}` column")))
    };
    let columns = [WINDOW_START_COLUMN, KEY_COLUMN, VERSION_COLUMN]
        .into_iter()
        .map(|name| {
            Ok(SortColumn {
                values: column(name)?,
                options: None,
            })
        })
        .collect::<Result<Vec<_>, EngineError>>()?;
    let indices: UInt32Array = lexsort_to_indices(&columns, None)?;
    Ok(Some(take_record_batch(&batch, &indices)?))
}
