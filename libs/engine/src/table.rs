//! A table from a changelog: each key's values by event time, for joins that ask what a key's
//! value was "as of" a time (Flink SQL's `FOR SYSTEM_TIME AS OF`).
//!
//! The state of [`crate::TemporalJoin`].
//!
//! Semantics:
//! - A changelog row carries a key, an event time and a value, or a tombstone (a delete). Per
//!   key the table keeps versions in event-time order. A version is valid from its event
//!   time up to the next version's; a tombstone's version says the key has no value from
//!   then.
//! - Rows may come in any event-time order: each version lands where its time puts it. Two
//!   rows of a key at one event time: the later row replaces the earlier, so the changelog's
//!   order decides, and a replay of it decides the same.
//! - A key with a null in it never matches, as SQL's `=` never holds for NULL: such rows are
//!   not kept, and [`VersionedTable::apply`] returns them for the caller to report.
//! - [`VersionedTable::compact`] drops what no lookup at or after a watermark can see: the
//!   versions before the last one at or before the watermark. It also drops a key whose
//!   only version left is a tombstone at or before the time up to which no version can
//!   still come (the table's own watermark, at or after the lookups'): a lookup of that
//!   key finds no value at any time, as of a key never seen, and no earlier version can
//!   come to be ended by it. Lookups at or after the watermark answer as before; earlier
//!   ones are the caller's to refuse (they are late).
//!
//! Keys and values are held in Arrow's row format (one [`RowConverter`] each), so any column
//! types DataFusion groups by can key a table.

use std::borrow::Borrow;
use std::hash::BuildHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use hashbrown::{DefaultHashBuilder, HashTable};

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Int64Array, RecordBatch, UInt32Array};
use arrow::datatypes::{DataType, Field, Fields, Int64Type, Schema, SchemaRef};
use arrow::row::{RowConverter, SortField};

use crate::error::EngineError;

/// Snapshot column: the event time a version is valid from.
const VALID_FROM_COLUMN: &str = "_valid_from";
/// Snapshot column: the version is a tombstone.
const TOMBSTONE_COLUMN: &str = "_tombstone";

/// One version of a key's value: valid from `valid_from`; `None` is a tombstone.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Version {
    valid_from: i64,
    value: Option<RowBytes>,
}

/// A key's versions in event-time order: the only one inside the map's slot (most keys of
/// a changelog have one, and a lookup then reads nothing outside the slot), more on the
/// heap.
// Invariant: `Many` holds at least two versions.
#[derive(Debug, Clone)]
enum Versions {
    One(Version),
    Many(Vec<Version>),
}

impl Versions {
    fn as_slice(&self) -> &[Version] {
        match self {
            Versions::One(version) => std::slice::from_ref(version),
            Versions::Many(versions) => versions,
        }
    }

    fn as_mut_slice(&mut self) -> &mut [Version] {
        match self {
            Versions::One(version) => std::slice::from_mut(version),
            Versions::Many(versions) => versions,
        }
    }

    /// Versions held on the heap.
    fn n_on_heap(&self) -> usize {
        match self {
            Versions::One(_) => 0,
            Versions::Many(versions) => versions.len(),
        }
    }

    /// Puts `version` at `at` (in event-time order).
    fn insert(&mut self, at: usize, version: Version) {
        let mut versions = match std::mem::replace(self, Versions::Many(Vec::new())) {
            Versions::One(only) => {
                let mut versions = Vec::with_capacity(2);
                versions.push(only);
                versions
            }
            Versions::Many(versions) => versions,
        };
        versions.insert(at, version);
        *self = Versions::Many(versions);
    }

    /// Drops the first `n` versions (fewer than held), and returns them.
    fn drain_first(&mut self, n: usize) -> Vec<Version> {
        let Versions::Many(versions) = self else {
            return Vec::new();
        };
        let dropped: Vec<Version> = versions.drain(..n).collect();
        let only = if versions.len() == 1 {
            versions.pop()
        } else {
            None
        };
        if let Some(only) = only {
            *self = Versions::One(only);
        }
        dropped
    }
}

/// Longest row, in row-format bytes, held inline.
const INLINE_ROW_BYTES: usize = 22;

/// A key's or a value's row-format bytes: inline when short (an int64 is 9 bytes, a string
/// of up to 8 bytes 10), so that a probe compares a key and reads its value without
/// following a pointer to another cache line; on the heap otherwise.
#[derive(Debug, Clone)]
enum RowBytes {
    Inline {
        len: u8,
        bytes: [u8; INLINE_ROW_BYTES],
    },
    Heap(Box<[u8]>),
}

impl RowBytes {
    fn new(row: &[u8]) -> RowBytes {
        if row.len() <= INLINE_ROW_BYTES {
            let mut bytes = [0; INLINE_ROW_BYTES];
            bytes[..row.len()].copy_from_slice(row);
            RowBytes::Inline {
                len: row.len() as u8,
                bytes,
            }
        } else {
            RowBytes::Heap(row.into())
        }
    }

    fn as_slice(&self) -> &[u8] {
        match self {
            RowBytes::Inline { len, bytes } => &bytes[..usize::from(*len)],
            RowBytes::Heap(bytes) => bytes,
        }
    }

    /// Bytes held outside the map's slot.
    fn heap_bytes(&self) -> usize {
        match self {
            RowBytes::Inline { .. } => 0,
            RowBytes::Heap(bytes) => bytes.len(),
        }
    }
}

impl Borrow<[u8]> for RowBytes {
    fn borrow(&self) -> &[u8] {
        self.as_slice()
    }
}

// As `[u8]` hashes and compares, so that a map of `RowBytes` is probed with `&[u8]`.
impl Hash for RowBytes {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_slice().hash(state);
    }
}

impl PartialEq for RowBytes {
    fn eq(&self, other: &RowBytes) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for RowBytes {}

/// The bytes a value holds on the heap.
fn value_heap_bytes(value: &Option<RowBytes>) -> usize {
    value.as_ref().map_or(0, RowBytes::heap_bytes)
}

/// The versions of each key's value by event time (see the module docs).
#[derive(Debug)]
pub struct VersionedTable {
    key_fields: Fields,
    value_fields: Fields,
    keys: RowConverter,
    values: RowConverter,
    /// Each key with its versions, found by the hash of its bytes (`hasher`).
    versions: HashTable<(RowBytes, Versions)>,
    hasher: DefaultHashBuilder,
    /// Bytes of the keys and values held on the heap.
    held_bytes: usize,
    /// Versions held, over every key.
    n_versions: usize,
    /// Versions held on the heap (of keys with more than one).
    n_on_heap: usize,
}

/// What [`VersionedTable::lookup`] found for each probe row.
#[derive(Debug)]
pub struct Lookup {
    /// The value columns, one row per probe: the version valid at the probe's time, null
    /// where there is none.
    pub values: Vec<ArrayRef>,
    /// Per probe: a value was valid at its time.
    pub matched: BooleanArray,
}

impl VersionedTable {
    /// An empty table keyed by `key_fields`, holding `value_fields`.
    ///
    /// # Errors
    ///
    /// A column type Arrow's row format cannot hold.
    pub fn new(key_fields: Fields, value_fields: Fields) -> Result<VersionedTable, EngineError> {
        let sort_fields = |fields: &Fields| -> Vec<SortField> {
            fields
                .iter()
                .map(|field| SortField::new(field.data_type().clone()))
                .collect()
        };
        Ok(VersionedTable {
            keys: RowConverter::new(sort_fields(&key_fields))?,
            values: RowConverter::new(sort_fields(&value_fields))?,
            key_fields,
            value_fields,
            versions: HashTable::new(),
            hasher: DefaultHashBuilder::default(),
            held_bytes: 0,
            n_versions: 0,
            n_on_heap: 0,
        })
    }

    /// Applies changelog rows, in order: row `i` sets key `keys[..][i]` from `times[i]` to the
    /// value `values[..][i]`, or deletes it there where `tombstones` says so. Returns the rows
    /// left out because their key has a null.
    ///
    /// # Errors
    ///
    /// Columns that do not match the table's fields or each other's length.
    pub fn apply(
        &mut self,
        keys: &[ArrayRef],
        times: &[i64],
        values: &[ArrayRef],
        tombstones: Option<&BooleanArray>,
    ) -> Result<Vec<usize>, EngineError> {
        let n_rows = times.len();
        self.check_columns(keys, &self.key_fields, n_rows, "key")?;
        self.check_columns(values, &self.value_fields, n_rows, "value")?;
        if tombstones.is_some_and(|tombstones| tombstones.len() != n_rows) {
            return Err(EngineError::Schema(format!(
                "{} tombstone flags for {n_rows} changelog rows",
                tombstones.map_or(0, Array::len)
            )));
        }
        let key_rows = self.keys.convert_columns(keys)?;
        let value_rows = self.values.convert_columns(values)?;
        let mut skipped = Vec::new();
        for (row, &valid_from) in times.iter().enumerate() {
            if keys.iter().any(|column| column.is_null(row)) {
                skipped.push(row);
                continue;
            }
            let deleted = tombstones
                .is_some_and(|tombstones| tombstones.is_valid(row) && tombstones.value(row));
            let version = Version {
                valid_from,
                value: (!deleted).then(|| RowBytes::new(value_rows.row(row).as_ref())),
            };
            self.insert(key_rows.row(row).as_ref(), version);
        }
        Ok(skipped)
    }

    /// Key columns as the table holds keys (Arrow's row format).
    ///
    /// # Errors
    ///
    /// Columns that do not match the table's key fields.
    pub(crate) fn key_rows(&self, keys: &[ArrayRef]) -> Result<arrow::row::Rows, EngineError> {
        let n_rows = keys.first().map_or(0, |column| column.len());
        self.check_columns(keys, &self.key_fields, n_rows, "key")?;
        Ok(self.keys.convert_columns(keys)?)
    }

    /// The versions of `key`, if the table holds it.
    fn versions_of(&self, key: &[u8]) -> Option<&Versions> {
        self.versions
            .find(self.hasher.hash_one(key), |(held, _)| {
                held.as_slice() == key
            })
            .map(|(_, versions)| versions)
    }

    /// Puts `version` among `key`'s versions where its time puts it, replacing one at the
    /// same time.
    fn insert(&mut self, key: &[u8], version: Version) {
        self.held_bytes += value_heap_bytes(&version.value);
        let hash = self.hasher.hash_one(key);
        let Some((_, versions)) = self
            .versions
            .find_mut(hash, |(held, _)| held.as_slice() == key)
        else {
            let key = RowBytes::new(key);
            self.held_bytes += key.heap_bytes();
            let hasher = &self.hasher;
            self.versions
                .insert_unique(hash, (key, Versions::One(version)), |(key, _)| {
                    hasher.hash_one(key.as_slice())
                });
            self.n_versions += 1;
            return;
        };
        let at = versions
            .as_slice()
            .partition_point(|held| held.valid_from < version.valid_from);
        match versions.as_mut_slice().get_mut(at) {
            Some(held) if held.valid_from == version.valid_from => {
                self.held_bytes -= value_heap_bytes(&held.value);
                *held = version;
            }
            _ => {
                let on_heap = versions.n_on_heap();
                versions.insert(at, version);
                self.n_on_heap += versions.n_on_heap() - on_heap;
                self.n_versions += 1;
            }
        }
    }

    /// For each probe row (`keys[..][i]` at `times[i]`), the value valid at that time.
    ///
    /// # Errors
    ///
    /// Key columns that do not match the table's, or `times` of another length.
    pub fn lookup(&self, keys: &[ArrayRef], times: &[i64]) -> Result<Lookup, EngineError> {
        let n_rows = times.len();
        self.check_columns(keys, &self.key_fields, n_rows, "key")?;
        let key_rows = self.keys.convert_columns(keys)?;
        // The hashes first, then the probes: a loop that only probes keeps more of them
        // waiting on memory at once (a probe of a large table is a cache miss).
        let hashes: Vec<u64> = (0..n_rows)
            .map(|row| self.hasher.hash_one(key_rows.row(row).as_ref()))
            .collect();
        let mut found: Vec<&[u8]> = Vec::new();
        let mut indices: Vec<Option<u32>> = Vec::with_capacity(n_rows);
        for (row, (&time, &hash)) in times.iter().zip(&hashes).enumerate() {
            let value = if keys.iter().any(|column| column.is_null(row)) {
                None
            } else {
                let key = key_rows.row(row);
                self.versions
                    .find(hash, |(held, _)| held.as_slice() == key.as_ref())
                    .and_then(|(_, versions)| valid_at(versions.as_slice(), time))
            };
            indices.push(value.map(|value| {
                found.push(value);
                (found.len() - 1) as u32
            }));
        }
        let parser = self.values.parser();
        let columns = self
            .values
            .convert_rows(found.iter().map(|bytes| parser.parse(bytes)))?;
        let indices = UInt32Array::from(indices);
        let values = columns
            .iter()
            .map(|column| arrow::compute::take(column.as_ref(), &indices, None))
            .collect::<Result<Vec<_>, _>>()?;
        let matched = BooleanArray::from_iter(indices.iter().map(|index| Some(index.is_some())));
        Ok(Lookup { values, matched })
    }

    /// Drops what no lookup at or after `watermark` can see, where no version at or before
    /// `settled` (at least `watermark`) can still come (see the module docs).
    pub fn compact(&mut self, watermark: i64, settled: i64) {
        let settled = settled.max(watermark);
        let (mut freed_bytes, mut freed_versions, mut freed_on_heap) = (0, 0, 0);
        self.versions.retain(|(key, versions)| {
            let at_or_before = versions
                .as_slice()
                .partition_point(|held| held.valid_from <= watermark);
            if at_or_before > 1 {
                let on_heap = versions.n_on_heap();
                for dropped in versions.drain_first(at_or_before - 1) {
                    freed_bytes += value_heap_bytes(&dropped.value);
                    freed_versions += 1;
                }
                freed_on_heap += on_heap - versions.n_on_heap();
            }
            let deleted = match versions {
                Versions::One(only) => only.value.is_none() && only.valid_from <= settled,
                Versions::Many(_) => false,
            };
            if deleted {
                freed_bytes += key.heap_bytes();
                freed_versions += 1;
            }
            !deleted
        });
        self.held_bytes -= freed_bytes;
        self.n_versions -= freed_versions;
        self.n_on_heap -= freed_on_heap;
    }

    /// Makes room for `keys` more keys at once, for a caller that knows how many are coming
    /// (growing a million-key table step by step was a fifth of a `runnel run` join's time,
    /// most of it the kernel zeroing each larger table's fresh pages).
    pub fn reserve(&mut self, keys: usize) {
        let hasher = &self.hasher;
        self.versions
            .reserve(keys, |(key, _)| hasher.hash_one(key.as_slice()));
    }

    /// Keys held (a key whose last version is a tombstone counts until it is compacted away).
    pub fn len(&self) -> usize {
        self.versions.len()
    }

    /// No key is held.
    pub fn is_empty(&self) -> bool {
        self.versions.is_empty()
    }

    /// Versions held, over every key.
    pub fn n_versions(&self) -> usize {
        self.n_versions
    }

    /// Bytes of state: the map's slots (with the keys, values and versions inside them), and
    /// the keys, values and versions held on the heap.
    pub fn size(&self) -> usize {
        let per_key = std::mem::size_of::<(RowBytes, Versions)>() + 1;
        self.held_bytes
            + self.n_on_heap * std::mem::size_of::<Version>()
            + self.versions.capacity() * per_key
    }

    /// The schema of [`snapshot`](Self::snapshot)'s batch: the key columns, `_valid_from`,
    /// `_tombstone`, the value columns (nullable: null in a tombstone's row).
    pub fn snapshot_schema(&self) -> SchemaRef {
        let mut fields: Vec<Field> = self
            .key_fields
            .iter()
            .map(|field| field.as_ref().clone())
            .collect();
        fields.push(Field::new(VALID_FROM_COLUMN, DataType::Int64, false));
        fields.push(Field::new(TOMBSTONE_COLUMN, DataType::Boolean, false));
        fields.extend(
            self.value_fields
                .iter()
                .map(|field| field.as_ref().clone().with_nullable(true)),
        );
        Arc::new(Schema::new(fields))
    }

    /// Every version as one batch, keys in their row format's order and each key's versions
    /// by time, so equal tables give equal snapshots.
    ///
    /// # Errors
    ///
    /// Arrow failures.
    pub fn snapshot(&self) -> Result<RecordBatch, EngineError> {
        let mut keys: Vec<(&RowBytes, &Versions)> = self
            .versions
            .iter()
            .map(|(key, versions)| (key, versions))
            .collect();
        keys.sort_unstable_by(|(a, _), (b, _)| a.as_slice().cmp(b.as_slice()));
        let (mut key_bytes, mut times, mut tombstones, mut values) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (key, versions) in keys {
            for version in versions.as_slice() {
                key_bytes.push(key.as_slice());
                times.push(version.valid_from);
                tombstones.push(version.value.is_none());
                values.push(version.value.as_ref().map(RowBytes::as_slice));
            }
        }
        let key_parser = self.keys.parser();
        let mut columns = self
            .keys
            .convert_rows(key_bytes.iter().map(|bytes| key_parser.parse(bytes)))?;
        columns.push(Arc::new(Int64Array::from(times)));
        columns.push(Arc::new(BooleanArray::from(tombstones)));
        // Tombstones have no value row: convert the others, then spread them with nulls.
        let mut present = Vec::new();
        let indices: UInt32Array = values
            .iter()
            .map(|value| {
                value.map(|bytes| {
                    present.push(bytes);
                    (present.len() - 1) as u32
                })
            })
            .collect();
        let value_parser = self.values.parser();
        for column in self
            .values
            .convert_rows(present.iter().map(|bytes| value_parser.parse(bytes)))?
        {
            columns.push(arrow::compute::take(column.as_ref(), &indices, None)?);
        }
        Ok(RecordBatch::try_new(self.snapshot_schema(), columns)?)
    }

    /// A table keyed by `key_fields`, holding `value_fields`, with the versions of
    /// `snapshot` (a batch of [`snapshot`](Self::snapshot)'s schema).
    ///
    /// # Errors
    ///
    /// [`EngineError::Snapshot`] for a batch of another schema, or whose versions of a key
    /// are not in strictly increasing time order.
    pub fn restore(
        key_fields: Fields,
        value_fields: Fields,
        snapshot: &RecordBatch,
    ) -> Result<VersionedTable, EngineError> {
        let mut table = VersionedTable::new(key_fields, value_fields)?;
        if snapshot.schema() != table.snapshot_schema() {
            return Err(EngineError::Snapshot(
                "the table's snapshot has another schema than the table".to_string(),
            ));
        }
        let n_keys = table.key_fields.len();
        let key_columns = &snapshot.columns()[..n_keys];
        let times = snapshot.column(n_keys).as_primitive::<Int64Type>();
        let tombstones = snapshot.column(n_keys + 1).as_boolean();
        let value_columns = &snapshot.columns()[n_keys + 2..];
        if times.null_count() > 0 || tombstones.null_count() > 0 {
            return Err(EngineError::Snapshot(
                "a table version without a time or a tombstone flag".to_string(),
            ));
        }
        let key_rows = table.keys.convert_columns(key_columns)?;
        let value_rows = table.values.convert_columns(value_columns)?;
        for row in 0..snapshot.num_rows() {
            let key = key_rows.row(row);
            let valid_from = times.value(row);
            if table
                .versions_of(key.as_ref())
                .and_then(|versions| versions.as_slice().last())
                .is_some_and(|last| last.valid_from >= valid_from)
            {
                return Err(EngineError::Snapshot(format!(
                    "a table key's versions are out of time order at row {row}"
                )));
            }
            let value =
                (!tombstones.value(row)).then(|| RowBytes::new(value_rows.row(row).as_ref()));
            table.insert(key.as_ref(), Version { valid_from, value });
        }
        Ok(table)
    }

    /// A table of this one's fields with the versions of `snapshot` (see
    /// [`restore`](Self::restore)).
    pub(crate) fn restore_like(
        &self,
        snapshot: &RecordBatch,
    ) -> Result<VersionedTable, EngineError> {
        VersionedTable::restore(self.key_fields.clone(), self.value_fields.clone(), snapshot)
    }

    fn check_columns(
        &self,
        columns: &[ArrayRef],
        fields: &Fields,
        n_rows: usize,
        what: &str,
    ) -> Result<(), EngineError> {
        if columns.len() != fields.len() {
            return Err(EngineError::Schema(format!(
                "{} {what} columns where the table has {}",
                columns.len(),
                fields.len()
            )));
        }
        for (column, field) in columns.iter().zip(fields.iter()) {
            if column.data_type() != field.data_type() || column.len() != n_rows {
                return Err(EngineError::Schema(format!(
                    "{what} column `{}`: {} rows of {}, where {n_rows} rows of {} were expected",
                    field.name(),
                    column.len(),
                    column.data_type(),
                    field.data_type()
                )));
            }
        }
        Ok(())
    }
}

/// The value of the last version at or before `time`, if that version is not a tombstone.
fn valid_at(versions: &[Version], time: i64) -> Option<&[u8]> {
    let at_or_before = versions.partition_point(|version| version.valid_from <= time);
    versions
        .get(at_or_before.checked_sub(1)?)?
        .value
        .as_ref()
        .map(RowBytes::as_slice)
}

#[cfg(test)]
mod tests {
    use arrow::array::StringArray;
    use proptest::prelude::*;

    use super::*;

    fn table() -> VersionedTable {
        VersionedTable::new(
            Fields::from(vec![Field::new("user_id", DataType::Utf8, true)]),
            Fields::from(vec![
                Field::new("country", DataType::Utf8, true),
                Field::new("age", DataType::Int64, true),
            ]),
        )
        .expect("table")
    }

    /// Changelog rows: (key, time, Some((country, age)) or None for a tombstone).
    type Change<'a> = (Option<&'a str>, i64, Option<(&'a str, i64)>);

    fn apply(table: &mut VersionedTable, changes: &[Change<'_>]) -> Vec<usize> {
        let keys: ArrayRef = Arc::new(StringArray::from_iter(changes.iter().map(|c| c.0)));
        let times: Vec<i64> = changes.iter().map(|c| c.1).collect();
        let countries: ArrayRef = Arc::new(StringArray::from_iter(
            changes.iter().map(|c| c.2.map(|v| v.0)),
        ));
        let ages: ArrayRef = Arc::new(Int64Array::from_iter(
            changes.iter().map(|c| c.2.map(|v| v.1)),
        ));
        let tombstones = BooleanArray::from_iter(changes.iter().map(|c| Some(c.2.is_none())));
        table
            .apply(&[keys], &times, &[countries, ages], Some(&tombstones))
            .expect("apply")
    }

    /// What each probe finds, as (country, age).
    fn lookup(
        table: &VersionedTable,
        probes: &[(Option<&str>, i64)],
    ) -> Vec<Option<(String, i64)>> {
        let keys: ArrayRef = Arc::new(StringArray::from_iter(probes.iter().map(|p| p.0)));
        let times: Vec<i64> = probes.iter().map(|p| p.1).collect();
        let found = table.lookup(&[keys], &times).expect("lookup");
        let countries = found.values[0].as_string::<i32>();
        let ages = found.values[1].as_primitive::<Int64Type>();
        (0..probes.len())
            .map(|row| {
                assert_eq!(found.matched.value(row), countries.is_valid(row));
                found
                    .matched
                    .value(row)
                    .then(|| (countries.value(row).to_string(), ages.value(row)))
            })
            .collect()
    }

    fn de(age: i64) -> Option<(String, i64)> {
        Some(("de".to_string(), age))
    }

    #[test]
    fn a_lookup_sees_the_version_valid_at_its_time() {
        let mut table = table();
        apply(
            &mut table,
            &[
                (Some("u1"), 10, Some(("de", 1))),
                (Some("u1"), 20, Some(("de", 2))),
            ],
        );
        let probes: Vec<(Option<&str>, i64)> = [5, 9, 10, 19, 20, 1_000]
            .iter()
            .map(|t| (Some("u1"), *t))
            .collect();
        assert_eq!(
            lookup(&table, &probes),
            [None, None, de(1), de(1), de(2), de(2)],
            "before the first version, at and after an update"
        );
        assert_eq!(
            lookup(&table, &[(Some("u2"), 20), (None, 20)]),
            [None, None]
        );
    }

    #[test]
    fn a_tombstone_ends_a_value_until_the_next_version() {
        let mut table = table();
        apply(
            &mut table,
            &[
                (Some("u1"), 10, Some(("de", 1))),
                (Some("u1"), 20, None),
                (Some("u1"), 30, Some(("de", 3))),
            ],
        );
        let probes: Vec<(Option<&str>, i64)> =
            [15, 20, 25, 30].iter().map(|t| (Some("u1"), *t)).collect();
        assert_eq!(lookup(&table, &probes), [de(1), None, None, de(3)]);
    }

    #[test]
    fn rows_out_of_time_order_land_in_place_and_a_later_row_at_one_time_wins() {
        let mut in_order = table();
        apply(
            &mut in_order,
            &[
                (Some("u1"), 10, Some(("de", 1))),
                (Some("u1"), 20, Some(("de", 3))),
            ],
        );
        let mut shuffled = table();
        apply(
            &mut shuffled,
            &[
                (Some("u1"), 20, Some(("de", 2))),
                (Some("u1"), 10, Some(("de", 1))),
                (Some("u1"), 20, Some(("de", 3))),
            ],
        );
        assert_eq!(shuffled.n_versions(), 2);
        assert_eq!(
            shuffled.snapshot().expect("snapshot"),
            in_order.snapshot().expect("snapshot")
        );
        assert_eq!(shuffled.size(), in_order.size());
    }

    #[test]
    fn a_key_with_a_null_is_left_out_and_returned() {
        let mut table = table();
        let skipped = apply(
            &mut table,
            &[
                (None, 10, Some(("de", 1))),
                (Some("u1"), 10, Some(("de", 2))),
            ],
        );
        assert_eq!(skipped, [0]);
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn a_key_of_a_tombstone_alone_goes_once_no_version_can_come_before_it() {
        let mut table = table();
        apply(
            &mut table,
            &[(Some("u1"), 30, None), (Some("u2"), 10, Some(("de", 1)))],
        );
        table.compact(5, 20);
        assert_eq!(table.len(), 2, "a version of u1 before 30 can still come");
        table.compact(5, 30);
        assert_eq!(table.len(), 1, "u1 goes");
        assert_eq!(table.n_versions(), 1);
    }

    #[test]
    fn compaction_keeps_what_lookups_from_the_watermark_on_can_see() {
        let mut table = table();
        apply(
            &mut table,
            &[
                (Some("u1"), 10, Some(("de", 1))),
                (Some("u1"), 20, Some(("de", 2))),
                (Some("u1"), 40, Some(("de", 4))),
                (Some("u2"), 10, Some(("de", 1))),
                (Some("u2"), 20, None),
            ],
        );
        let before = table.size();
        table.compact(25, 25);
        assert_eq!(
            table.n_versions(),
            2,
            "u1 keeps 20 and 40; u2, deleted at 20, goes"
        );
        assert_eq!(table.len(), 1);
        assert!(table.size() < before);
        let probes: Vec<(Option<&str>, i64)> = [25, 39, 40]
            .iter()
            .flat_map(|t| [(Some("u1"), *t), (Some("u2"), *t)])
            .collect();
        assert_eq!(
            lookup(&table, &probes),
            [de(2), None, de(2), None, de(4), None]
        );
    }

    #[test]
    fn a_snapshot_restores_the_same_table_and_refuses_another_schema() {
        let mut table = table();
        apply(
            &mut table,
            &[
                (Some("u2"), 30, None),
                (Some("u1"), 10, Some(("de", 1))),
                (Some("u1"), 20, Some(("fr", 2))),
                (Some("u2"), 10, Some(("de", 5))),
            ],
        );
        let snapshot = table.snapshot().expect("snapshot");
        let restored = VersionedTable::restore(
            table.key_fields.clone(),
            table.value_fields.clone(),
            &snapshot,
        )
        .expect("restore");
        let probes: Vec<(Option<&str>, i64)> = [5, 10, 20, 30]
            .iter()
            .flat_map(|t| [(Some("u1"), *t), (Some("u2"), *t)])
            .collect();
        assert_eq!(lookup(&restored, &probes), lookup(&table, &probes));
        assert_eq!(restored.snapshot().expect("snapshot"), snapshot);
        assert_eq!(restored.size(), table.size());
        let other = VersionedTable::restore(
            Fields::from(vec![Field::new("user_id", DataType::Utf8View, true)]),
            table.value_fields.clone(),
            &snapshot,
        );
        assert!(matches!(other, Err(EngineError::Snapshot(_))));
    }

    proptest! {
        /// Against a reference that keeps every changelog row: the value of a key at `t` is
        /// the last row (in changelog order) among those with the largest time at or before
        /// `t`, unless that row is a tombstone. After compaction at a watermark, lookups at
        /// or after it still agree.
        #[test]
        fn lookups_agree_with_the_whole_changelog(
            changes in prop::collection::vec((0u8..4, 0i64..50, prop::option::of(0i64..100)), 0..60),
            probes in prop::collection::vec((0u8..5, 0i64..60), 1..40),
            watermark in 0i64..60,
            settled in 0i64..60,
        ) {
            let names = ["u0", "u1", "u2", "u3", "u4"];
            let rows: Vec<Change<'_>> = changes
                .iter()
                .map(|(key, time, age)| (Some(names[*key as usize]), *time, age.map(|age| ("de", age))))
                .collect();
            let reference = |key: &str, t: i64| -> Option<(String, i64)> {
                let latest = rows
                    .iter()
                    .filter(|row| row.0 == Some(key) && row.1 <= t)
                    .map(|row| row.1)
                    .max()?;
                rows.iter()
                    .rfind(|row| row.0 == Some(key) && row.1 == latest)?
                    .2
                    .map(|(country, age)| (country.to_string(), age))
            };
            let mut table = table();
            apply(&mut table, &rows);
            let probes: Vec<(Option<&str>, i64)> = probes
                .iter()
                .map(|(key, t)| (Some(names[*key as usize]), *t))
                .collect();
            let want: Vec<_> = probes.iter().map(|(key, t)| reference(key.expect("key"), *t)).collect();
            prop_assert_eq!(lookup(&table, &probes), want.clone());
            table.compact(watermark, settled);
            let later: Vec<usize> = (0..probes.len()).filter(|i| probes[*i].1 >= watermark).collect();
            let found = lookup(&table, &later.iter().map(|i| probes[*i]).collect::<Vec<_>>());
            prop_assert_eq!(found, later.iter().map(|i| want[*i].clone()).collect::<Vec<_>>());
        }
    }
}
