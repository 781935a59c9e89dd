//! The state of one window: its groups (keys interned by DataFusion's `GroupValues`) and one
//! `GroupsAccumulator` per aggregate, updated a batch at a time.

use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray};
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};
use datafusion::physical_expr::GroupsAccumulatorAdapter;
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_plan::aggregates::group_values::{GroupValues, new_group_values};
use datafusion::physical_plan::aggregates::order::GroupOrdering;

use crate::error::EngineError;
use crate::plan::{AggregatePlan, JobPlan};

/// Interns group keys to dense group indices.
enum KeyTable {
    /// The job has keys besides the window.
    Keys(Box<dyn GroupValues>),
    /// The job groups by the window alone: one group, once any row arrived.
    Single { present: bool },
}

/// Groups and accumulators of one window (or session).
pub(crate) struct GroupTable {
    keys: KeyTable,
    accumulators: Vec<Box<dyn GroupsAccumulator>>,
    /// Per group: the version last emitted (0 = never).
    pub(crate) versions: Vec<u32>,
    /// Per group: changed since its last emission.
    pub(crate) dirty: Vec<bool>,
    /// Scratch: group index of each input row.
    group_indices: Vec<usize>,
}

/// Key columns (in key order) and aggregate results (in aggregate order) of every group.
pub(crate) struct Evaluated {
    pub(crate) keys: Vec<ArrayRef>,
    pub(crate) aggregates: Vec<ArrayRef>,
}

/// Creates the vectorised accumulator of `aggregate`, or wraps its row accumulator.
fn new_accumulator(aggregate: &AggregatePlan) -> Result<Box<dyn GroupsAccumulator>, EngineError> {
    new_groups_accumulator(&aggregate.expr)
}

/// Creates the vectorised accumulator of `expr`, or wraps its row accumulator.
pub(crate) fn new_groups_accumulator(
    expr: &Arc<AggregateFunctionExpr>,
) -> Result<Box<dyn GroupsAccumulator>, EngineError> {
    let expr = Arc::clone(expr);
    if expr.groups_accumulator_supported() {
        Ok(expr.create_groups_accumulator()?)
    } else {
        Ok(Box::new(GroupsAccumulatorAdapter::new(move || {
            expr.create_accumulator()
        })))
    }
}

/// Every group's keys, leaving `group_values` empty. DataFusion 55's multi-column
/// `GroupValues` forgets its values on `emit(EmitTo::All)` but keeps its hash map, so keys
/// interned after would be compared with values it no longer has (an index out of bounds in
/// DataFusion, at the first snapshot of a job grouped by two columns): `clear_shrink` empties
/// the map too.
fn emit_all(group_values: &mut dyn GroupValues) -> Result<Vec<ArrayRef>, EngineError> {
    let keys = group_values.emit(EmitTo::All)?;
    group_values.clear_shrink(0);
    Ok(keys)
}

fn new_accumulators(plan: &JobPlan) -> Result<Vec<Box<dyn GroupsAccumulator>>, EngineError> {
    plan.aggregates.iter().map(new_accumulator).collect()
}

impl GroupTable {
    pub(crate) fn new(plan: &JobPlan) -> Result<GroupTable, EngineError> {
        let keys = if plan.keys.is_empty() {
            KeyTable::Single { present: false }
        } else {
            KeyTable::Keys(new_group_values(
                Arc::clone(&plan.key_schema),
                &GroupOrdering::None,
            )?)
        };
        Ok(GroupTable {
            keys,
            accumulators: new_accumulators(plan)?,
            versions: Vec::new(),
            dirty: Vec::new(),
            group_indices: Vec::new(),
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.versions.len()
    }

    /// Adds rows: `keys` are the key columns, `args[a]` the argument columns of aggregate
    /// `a`, `filters[a]` its FILTER (already combined with row membership). Returns the
    /// group index of every row.
    pub(crate) fn update(
        &mut self,
        n_rows: usize,
        keys: &[ArrayRef],
        args: &[Vec<ArrayRef>],
        filters: &[Option<BooleanArray>],
    ) -> Result<&[usize], EngineError> {
        self.group_indices.clear();
        match &mut self.keys {
            KeyTable::Keys(group_values) => group_values.intern(keys, &mut self.group_indices)?,
            KeyTable::Single { present } => {
                *present = n_rows > 0 || *present;
                self.group_indices.resize(n_rows, 0);
            }
        }
        let n_groups = match &self.keys {
            KeyTable::Keys(group_values) => group_values.len(),
            KeyTable::Single { present } => usize::from(*present),
        };
        self.versions.resize(n_groups, 0);
        self.dirty.resize(n_groups, false);
        for (accumulator, (values, filter)) in
            self.accumulators.iter_mut().zip(args.iter().zip(filters))
        {
            accumulator.update_batch(values, &self.group_indices, filter.as_ref(), n_groups)?;
        }
        for group in &self.group_indices {
            self.dirty[*group] = true;
        }
        Ok(&self.group_indices)
    }

    /// Evaluates every group. With `keep`, the state stays as it was (at the cost of
    /// copying it out and back); without, the table is left empty.
    pub(crate) fn evaluate(
        &mut self,
        plan: &JobPlan,
        keep: bool,
    ) -> Result<Evaluated, EngineError> {
        let n_groups = self.len();
        let keys = match &mut self.keys {
            KeyTable::Keys(group_values) => {
                let keys = emit_all(group_values.as_mut())?;
                if keep {
                    // Interning the emitted keys into the now empty table gives back the same
                    // indices in the same order.
                    let mut restored = Vec::with_capacity(n_groups);
                    group_values.intern(&keys, &mut restored)?;
                    debug_assert!(
                        restored
                            .iter()
                            .enumerate()
                            .all(|(idx, group)| idx == *group)
                    );
                }
                keys
            }
            KeyTable::Single { .. } => Vec::new(),
        };
        let all_groups: Vec<usize> = if keep {
            (0..n_groups).collect()
        } else {
            Vec::new()
        };
        let mut aggregates = Vec::with_capacity(self.accumulators.len());
        for (accumulator_idx, accumulator) in self.accumulators.iter_mut().enumerate() {
            if keep {
                let state = accumulator.state(EmitTo::All)?;
                accumulator.merge_batch(&state, &all_groups, n_groups)?;
                let mut scratch = new_accumulator(&plan.aggregates[accumulator_idx])?;
                scratch.merge_batch(&state, &all_groups, n_groups)?;
                aggregates.push(scratch.evaluate(EmitTo::All)?);
            } else {
                aggregates.push(accumulator.evaluate(EmitTo::All)?);
            }
        }
        if !keep {
            self.versions.clear();
            self.dirty.clear();
            if let KeyTable::Single { present } = &mut self.keys {
                *present = false;
            }
        }
        Ok(Evaluated { keys, aggregates })
    }

    /// Returns the accumulators' intermediate state and the keys, leaving the table as it was.
    pub(crate) fn state(&mut self) -> Result<(Vec<ArrayRef>, Vec<ArrayRef>), EngineError> {
        let n_groups = self.len();
        let all_groups: Vec<usize> = (0..n_groups).collect();
        let keys = match &mut self.keys {
            KeyTable::Keys(group_values) => {
                let keys = emit_all(group_values.as_mut())?;
                let mut restored = Vec::with_capacity(n_groups);
                group_values.intern(&keys, &mut restored)?;
                keys
            }
            KeyTable::Single { .. } => Vec::new(),
        };
        let mut states = Vec::new();
        for accumulator in &mut self.accumulators {
            let state = accumulator.state(EmitTo::All)?;
            accumulator.merge_batch(&state, &all_groups, n_groups)?;
            states.extend(state);
        }
        Ok((keys, states))
    }

    /// Rebuilds a table from `state` output: the keys and the accumulators' state columns.
    pub(crate) fn restore(
        plan: &JobPlan,
        keys: &[ArrayRef],
        states: &[ArrayRef],
        versions: Vec<u32>,
        dirty: Vec<bool>,
    ) -> Result<GroupTable, EngineError> {
        let mut table = GroupTable::new(plan)?;
        let n_groups = versions.len();
        match &mut table.keys {
            KeyTable::Keys(group_values) => {
                let mut restored = Vec::with_capacity(n_groups);
                group_values.intern(keys, &mut restored)?;
                if restored.len() != n_groups
                    || restored
                        .iter()
                        .enumerate()
                        .any(|(idx, group)| idx != *group)
                {
                    return Err(EngineError::Snapshot(
                        "group keys are not distinct".to_string(),
                    ));
                }
            }
            KeyTable::Single { present } => *present = n_groups > 0,
        }
        let all_groups: Vec<usize> = (0..n_groups).collect();
        let mut offset = 0;
        for (accumulator, aggregate) in table.accumulators.iter_mut().zip(&plan.aggregates) {
            let n_fields = aggregate.expr.state_fields()?.len();
            let Some(state) = states.get(offset..offset + n_fields) else {
                return Err(EngineError::Snapshot(
                    "fewer state columns than aggregates need".to_string(),
                ));
            };
            accumulator.merge_batch(state, &all_groups, n_groups)?;
            offset += n_fields;
        }
        table.versions = versions;
        table.dirty = dirty;
        Ok(table)
    }

    /// Returns an estimate of the bytes this table holds.
    pub(crate) fn size(&self) -> usize {
        let keys = match &self.keys {
            KeyTable::Keys(group_values) => group_values.size(),
            KeyTable::Single { .. } => 0,
        };
        keys + self
            .accumulators
            .iter()
            .map(|accumulator| accumulator.size())
            .sum::<usize>()
            + self.versions.capacity() * 4
            + self.dirty.capacity()
    }
}
