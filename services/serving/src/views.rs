//! The views serving answers from: per job version, the speed view (latest result per key
//! and window, from the results topic) and the batch view (a recompute's Parquet files), and
//! the Lambda merge of the two.

use std::collections::{BTreeMap, HashMap};
use std::ops::{Bound, Range};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, RwLock};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{
    DataType, Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type, SchemaRef,
    TimeUnit, TimestampMillisecondType, UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use runnel_engine::WindowSpec;
use tokio::sync::broadcast;

use crate::ServingError;
use crate::proto::ViewSource;
use runnel_proto::common::v1::value::Kind;

/// One key in one window: a result row.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Window {
    /// The group key as a JSON array text.
    pub key: Arc<str>,
    /// Window start, epoch milliseconds.
    pub start: i64,
    /// Window end, when known (fixed windows; sessions selecting `window_end`).
    pub end: Option<i64>,
    /// The job's SELECT columns.
    pub values: Vec<runnel_proto::common::v1::Value>,
    /// Result version.
    pub version: u32,
    pub is_final: bool,
}

/// Windows by key and by window start.
#[derive(Debug, Default)]
pub(crate) struct ViewTable {
    by_key: HashMap<Arc<str>, BTreeMap<i64, Arc<Window>>>,
    by_start: BTreeMap<i64, BTreeMap<Arc<str>, Arc<Window>>>,
    windows: usize,
}

impl ViewTable {
    /// Stores `window` unless the table holds a later version of it; returns it if stored.
    pub(crate) fn upsert(&mut self, window: Window) -> Option<Arc<Window>> {
        let slot = self
            .by_key
            .entry(Arc::clone(&window.key))
            .or_default()
            .entry(window.start);
        let window = Arc::new(window);
        match slot {
            std::collections::btree_map::Entry::Occupied(mut held) => {
                if held.get().version > window.version {
                    return None;
                }
                held.insert(Arc::clone(&window));
            }
            std::collections::btree_map::Entry::Vacant(empty) => {
                empty.insert(Arc::clone(&window));
                self.windows += 1;
            }
        }
        self.by_start
            .entry(window.start)
            .or_default()
            .insert(Arc::clone(&window.key), Arc::clone(&window));
        Some(window)
    }

    pub(crate) fn len(&self) -> usize {
        self.windows
    }

    fn get(&self, key: &str, start: i64) -> Option<&Arc<Window>> {
        self.by_key.get(key)?.get(&start)
    }

    fn key_windows(&self, key: &str, starts: &Range<i64>) -> impl Iterator<Item = &Arc<Window>> {
        self.by_key
            .get(key)
            .into_iter()
            .flat_map(move |windows| windows.range(starts.clone()).map(|(_, window)| window))
    }

    fn window_keys<'a>(
        &'a self,
        start: i64,
        after: Option<&'a str>,
    ) -> impl Iterator<Item = &'a Arc<Window>> + 'a {
        let lower = match after {
            Some(after) => Bound::Excluded(after),
            None => Bound::Unbounded,
        };
        self.by_start.get(&start).into_iter().flat_map(move |keys| {
            keys.range::<str, _>((lower, Bound::Unbounded))
                .map(|(_, window)| window)
        })
    }

    fn all(&self) -> impl Iterator<Item = &Arc<Window>> {
        self.by_start.values().flat_map(BTreeMap::values)
    }

    /// The earliest window start held, if any.
    fn first_start(&self) -> Option<i64> {
        self.by_start.keys().next().copied()
    }
}

/// A recompute's batch view, loaded.
#[derive(Debug)]
pub(crate) struct BatchView {
    pub table: ViewTable,
    /// Windows starting before this are not in it (`None`: from the first event).
    pub from_ms: Option<i64>,
    /// Event time up to which it is complete.
    pub horizon_ms: Option<i64>,
    pub generation: u64,
}

impl BatchView {
    /// Whether `window` is the batch view's to answer: it starts in the view's range, at or
    /// after the earliest window the view holds, and is known to end by its horizon.
    ///
    /// A recompute counts every archived event, so a speed-view window before the view's
    /// first window was not recomputed (a view written with a wrong range, or with no
    /// window at all): the view does not hide it.
    fn covers(&self, window: &Window) -> bool {
        let Some(first_start) = self.table.first_start() else {
            return false;
        };
        window.start >= first_start
            && self.from_ms.is_none_or(|from| window.start >= from)
            && matches!((window.end, self.horizon_ms), (Some(end), Some(horizon)) if end <= horizon)
    }
}

/// How result rows of one job version become [`Window`]s.
#[derive(Debug)]
pub(crate) struct ResultLayout {
    /// The results' schema: the SELECT columns, `_key`, `_window_start`, `_version`, `_final`.
    pub schema: SchemaRef,
    /// The SELECT columns' names.
    pub columns: Vec<String>,
    pub window: WindowSpec,
    /// The SELECT column named `window_end`, if any.
    window_end_column: Option<usize>,
}

impl ResultLayout {
    pub(crate) fn new(schema: SchemaRef, window: WindowSpec) -> Self {
        let n_user = schema.fields().len().saturating_sub(4);
        let columns: Vec<String> = schema.fields()[..n_user]
            .iter()
            .map(|field| field.name().clone())
            .collect();
        let window_end_column = columns.iter().position(|name| name == "window_end");
        ResultLayout {
            schema,
            columns,
            window,
            window_end_column,
        }
    }

    /// The rows of a batch in [`Self::schema`] as windows.
    pub(crate) fn windows(&self, batch: &RecordBatch) -> Result<Vec<Window>, ServingError> {
        let n_user = self.columns.len();
        let invalid = |message: String| ServingError::Results(message);
        let keys = batch
            .column(n_user)
            .as_string_opt::<i32>()
            .ok_or_else(|| invalid("`_key` is not text".to_string()))?;
        let starts = arrow::compute::cast(
            batch.column(n_user + 1),
            &DataType::Timestamp(TimeUnit::Millisecond, None),
        )
        .map_err(|error| invalid(format!("`_window_start`: {error}")))?;
        let starts = starts.as_primitive::<TimestampMillisecondType>();
        let versions = batch
            .column(n_user + 2)
            .as_primitive_opt::<UInt32Type>()
            .ok_or_else(|| invalid("`_version` is not a UInt32".to_string()))?;
        let finals = batch
            .column(n_user + 3)
            .as_boolean_opt()
            .ok_or_else(|| invalid("`_final` is not a boolean".to_string()))?;
        let columns = &batch.columns()[..n_user];
        let mut windows = Vec::with_capacity(batch.num_rows());
        for row in 0..batch.num_rows() {
            if keys.is_null(row) || starts.is_null(row) {
                return Err(invalid(format!(
                    "row {row} has no `_key` or `_window_start`"
                )));
            }
            let start = starts.value(row);
            let values = columns
                .iter()
                .map(|column| value(column.as_ref(), row))
                .collect::<Result<Vec<_>, _>>()?;
            let end = match (self.window, self.window_end_column) {
                (_, Some(index)) => match values[index].kind {
                    Some(Kind::TimestampMs(end) | Kind::Int64Value(end)) => Some(end),
                    _ => None,
                },
                (WindowSpec::Tumble { size_ms } | WindowSpec::Hop { size_ms, .. }, None) => {
                    start.checked_add(size_ms)
                }
                (WindowSpec::Session { .. }, None) => None,
            };
            windows.push(Window {
                key: Arc::from(keys.value(row)),
                start,
                end,
                values,
                version: if versions.is_null(row) {
                    1
                } else {
                    versions.value(row)
                },
                is_final: !finals.is_null(row) && finals.value(row),
            });
        }
        Ok(windows)
    }
}

/// Row `row` of `column` as a result value.
fn value(column: &dyn Array, row: usize) -> Result<runnel_proto::common::v1::Value, ServingError> {
    if column.is_null(row) {
        return Ok(runnel_proto::common::v1::Value { kind: None });
    }
    let kind = match column.data_type() {
        DataType::Int8 => Kind::Int64Value(column.as_primitive::<Int8Type>().value(row).into()),
        DataType::Int16 => Kind::Int64Value(column.as_primitive::<Int16Type>().value(row).into()),
        DataType::Int32 => Kind::Int64Value(column.as_primitive::<Int32Type>().value(row).into()),
        DataType::Int64 => Kind::Int64Value(column.as_primitive::<Int64Type>().value(row)),
        DataType::UInt8 => Kind::Int64Value(column.as_primitive::<UInt8Type>().value(row).into()),
        DataType::UInt16 => Kind::Int64Value(column.as_primitive::<UInt16Type>().value(row).into()),
        DataType::UInt32 => Kind::Int64Value(column.as_primitive::<UInt32Type>().value(row).into()),
        DataType::UInt64 => {
            let value = column.as_primitive::<UInt64Type>().value(row);
            match i64::try_from(value) {
                Ok(value) => Kind::Int64Value(value),
                Err(_) => Kind::Float64Value(value as f64),
            }
        }
        DataType::Float32 => {
            Kind::Float64Value(column.as_primitive::<Float32Type>().value(row).into())
        }
        DataType::Float64 => Kind::Float64Value(column.as_primitive::<Float64Type>().value(row)),
        DataType::Boolean => Kind::BoolValue(column.as_boolean().value(row)),
        DataType::Utf8 => Kind::StringValue(column.as_string::<i32>().value(row).to_string()),
        DataType::LargeUtf8 => Kind::StringValue(column.as_string::<i64>().value(row).to_string()),
        DataType::Utf8View => Kind::StringValue(column.as_string_view().value(row).to_string()),
        DataType::Timestamp(_, _) => {
            let millis = arrow::compute::cast(
                &column.slice(row, 1),
                &DataType::Timestamp(TimeUnit::Millisecond, None),
            )
            .map_err(|error| ServingError::Results(format!("a timestamp: {error}")))?;
            Kind::TimestampMs(millis.as_primitive::<TimestampMillisecondType>().value(0))
        }
        _ => {
            let formatter = ArrayFormatter::try_new(column, &FormatOptions::default())
                .map_err(|error| ServingError::Results(error.to_string()))?;
            Kind::StringValue(formatter.value(row).to_string())
        }
    };
    Ok(runnel_proto::common::v1::Value { kind: Some(kind) })
}

/// One version of a job: its speed and batch views.
#[derive(Debug)]
pub(crate) struct VersionView {
    /// The version's id (`JobConfig::id`): names its results topic.
    pub id: String,
    pub version: u32,
    /// The topic its tasks read (the stream's, or the repartition topic), for its lag.
    pub source_topic: String,
    pub layout: ResultLayout,
    pub speed: RwLock<ViewTable>,
    pub batch: RwLock<Option<Arc<BatchView>>>,
    /// The speed view has read its results topic to the end as of the service's start.
    pub ready: AtomicBool,
}

/// A merged answer: a window and which view it came from.
pub(crate) type Answer = (Arc<Window>, ViewSource);

impl VersionView {
    pub(crate) fn new(
        id: String,
        version: u32,
        source_topic: String,
        layout: ResultLayout,
    ) -> Self {
        VersionView {
            id,
            version,
            source_topic,
            layout,
            speed: RwLock::new(ViewTable::default()),
            batch: RwLock::new(None),
            ready: AtomicBool::new(false),
        }
    }

    fn batch(&self) -> Option<Arc<BatchView>> {
        self.batch.read().ok().and_then(|batch| batch.clone())
    }

    /// Whether a speed-view window is the one to answer with (the batch view neither covers
    /// it nor holds it).
    fn speed_answers(batch: Option<&BatchView>, window: &Window) -> bool {
        batch.is_none_or(|batch| {
            !batch.covers(window) && batch.table.get(&window.key, window.start).is_none()
        })
    }

    /// `key`'s windows starting in `starts`, by start.
    pub(crate) fn key_windows(&self, key: &str, starts: &Range<i64>) -> Vec<Answer> {
        let batch = self.batch();
        let mut answers: Vec<Answer> = Vec::new();
        if let Some(batch) = &batch {
            answers.extend(
                batch
                    .table
                    .key_windows(key, starts)
                    .map(|window| (Arc::clone(window), ViewSource::Batch)),
            );
        }
        if let Ok(speed) = self.speed.read() {
            answers.extend(
                speed
                    .key_windows(key, starts)
                    .filter(|window| Self::speed_answers(batch.as_deref(), window))
                    .map(|window| (Arc::clone(window), ViewSource::Speed)),
            );
        }
        answers.sort_by_key(|(window, _)| window.start);
        answers
    }

    /// Up to `limit` keys of the window starting at `start`, by key, after key `after`; and
    /// whether more follow.
    pub(crate) fn window_keys(
        &self,
        start: i64,
        after: Option<&str>,
        limit: usize,
    ) -> (Vec<Answer>, bool) {
        let batch = self.batch();
        let Ok(speed) = self.speed.read() else {
            return (Vec::new(), false);
        };
        let mut from_batch = batch
            .as_deref()
            .into_iter()
            .flat_map(|batch| batch.table.window_keys(start, after))
            .peekable();
        let mut from_speed = speed
            .window_keys(start, after)
            .filter(|window| Self::speed_answers(batch.as_deref(), window))
            .peekable();
        let mut answers = Vec::new();
        loop {
            let next = match (from_batch.peek(), from_speed.peek()) {
                (Some(b), Some(s)) if b.key <= s.key => from_batch
                    .next()
                    .map(|window| (Arc::clone(window), ViewSource::Batch)),
                (_, Some(_)) => from_speed
                    .next()
                    .map(|window| (Arc::clone(window), ViewSource::Speed)),
                (Some(_), None) => from_batch
                    .next()
                    .map(|window| (Arc::clone(window), ViewSource::Batch)),
                (None, None) => None,
            };
            let Some(next) = next else {
                return (answers, false);
            };
            if answers.len() == limit {
                return (answers, true);
            }
            answers.push(next);
        }
    }

    /// Every window, merged, in no particular order.
    pub(crate) fn all(&self) -> Vec<Answer> {
        let batch = self.batch();
        let mut answers: Vec<Answer> = Vec::new();
        if let Some(batch) = &batch {
            answers.extend(
                batch
                    .table
                    .all()
                    .map(|window| (Arc::clone(window), ViewSource::Batch)),
            );
        }
        if let Ok(speed) = self.speed.read() {
            answers.extend(
                speed
                    .all()
                    .filter(|window| Self::speed_answers(batch.as_deref(), window))
                    .map(|window| (Arc::clone(window), ViewSource::Speed)),
            );
        }
        answers
    }

    /// Windows held: speed view, batch view.
    pub(crate) fn sizes(&self) -> (usize, usize) {
        let speed = self.speed.read().map_or(0, |speed| speed.len());
        let batch = self.batch().map_or(0, |batch| batch.table.len());
        (speed, batch)
    }

    pub(crate) fn horizon(&self) -> Option<i64> {
        self.batch().and_then(|batch| batch.horizon_ms)
    }
}

/// A speed-view update, for subscribers.
#[derive(Debug, Clone)]
pub(crate) struct Update {
    pub version: u32,
    pub window: Arc<Window>,
}

/// One job: its versions (declared, or registered in the job catalog) and which one is
/// active. Versions are added while serving, never removed.
#[derive(Debug)]
pub(crate) struct JobView {
    pub name: String,
    versions: RwLock<BTreeMap<u32, Arc<VersionView>>>,
    pub active: AtomicU32,
    pub updates: broadcast::Sender<Update>,
}

impl JobView {
    /// A job with no version yet; `active` names its first one.
    pub(crate) fn new(name: String, active: u32, buffer: usize) -> JobView {
        let (updates, _) = broadcast::channel(buffer);
        JobView {
            name,
            versions: RwLock::new(BTreeMap::new()),
            active: AtomicU32::new(active),
            updates,
        }
    }

    /// Its versions, lowest first.
    pub(crate) fn versions(&self) -> Vec<Arc<VersionView>> {
        self.versions
            .read()
            .map(|versions| versions.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Version `version`'s views.
    pub(crate) fn version(&self, version: u32) -> Option<Arc<VersionView>> {
        self.versions
            .read()
            .ok()
            .and_then(|versions| versions.get(&version).cloned())
    }

    /// Adds `view` unless the job has its version; returns whether it was added.
    pub(crate) fn add_version(&self, view: Arc<VersionView>) -> bool {
        let Ok(mut versions) = self.versions.write() else {
            return false;
        };
        match versions.entry(view.version) {
            std::collections::btree_map::Entry::Occupied(_) => false,
            std::collections::btree_map::Entry::Vacant(slot) => {
                slot.insert(view);
                true
            }
        }
    }

    /// The active version's views.
    pub(crate) fn active(&self) -> Option<Arc<VersionView>> {
        self.version(self.active.load(Ordering::Acquire))
    }
}

/// Every job's views, by job name. Jobs are added while serving, never removed.
#[derive(Debug, Default)]
pub(crate) struct Jobs {
    by_name: RwLock<BTreeMap<String, Arc<JobView>>>,
}

impl Jobs {
    /// Job `name`'s views.
    pub(crate) fn get(&self, name: &str) -> Option<Arc<JobView>> {
        self.by_name
            .read()
            .ok()
            .and_then(|jobs| jobs.get(name).cloned())
    }

    /// Every job, by name.
    pub(crate) fn all(&self) -> Vec<Arc<JobView>> {
        self.by_name
            .read()
            .map(|jobs| jobs.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Job `name`'s views, made with `make` when it has none yet.
    pub(crate) fn get_or_add(&self, name: &str, make: impl FnOnce() -> JobView) -> Arc<JobView> {
        if let Some(job) = self.get(name) {
            return job;
        }
        match self.by_name.write() {
            Ok(mut jobs) => Arc::clone(
                jobs.entry(name.to_string())
                    .or_insert_with(|| Arc::new(make())),
            ),
            // A poisoned lock: a job nobody can look up.
            Err(_) => Arc::new(make()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(key: &str, start: i64, count: i64, version: u32) -> Window {
        Window {
            key: Arc::from(key),
            start,
            end: Some(start + 10),
            values: vec![runnel_proto::common::v1::Value {
                kind: Some(Kind::Int64Value(count)),
            }],
            version,
            is_final: true,
        }
    }

    fn view() -> VersionView {
        let schema = Arc::new(arrow::datatypes::Schema::new(vec![
            arrow::datatypes::Field::new("n", DataType::Int64, true),
            arrow::datatypes::Field::new("_key", DataType::Utf8, false),
            arrow::datatypes::Field::new(
                "_window_start",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            ),
            arrow::datatypes::Field::new("_version", DataType::UInt32, false),
            arrow::datatypes::Field::new("_final", DataType::Boolean, false),
        ]));
        VersionView::new(
            "job".to_string(),
            1,
            "events".to_string(),
            ResultLayout::new(schema, WindowSpec::Tumble { size_ms: 10 }),
        )
    }

    #[test]
    fn an_older_version_does_not_replace_a_newer_one() {
        let mut table = ViewTable::default();
        assert!(table.upsert(window("a", 0, 2, 2)).is_some());
        assert!(table.upsert(window("a", 0, 1, 1)).is_none());
        assert!(
            table.upsert(window("a", 0, 2, 2)).is_some(),
            "a rewrite is idempotent"
        );
        assert_eq!(table.len(), 1);
        assert_eq!(table.get("a", 0).map(|held| held.version), Some(2));
    }

    #[test]
    fn windows_the_batch_view_covers_come_from_it_and_later_ones_from_the_speed_view() {
        let view = view();
        {
            let mut speed = view.speed.write().expect("lock");
            for start in [0, 10, 20, 30] {
                speed.upsert(window("a", start, 1, 1));
            }
            speed.upsert(window("b", 30, 1, 1));
        }
        let mut table = ViewTable::default();
        for start in [0, 10] {
            table.upsert(window("a", start, 5, 1));
        }
        // Ends by the horizon (20) but missing in the batch view: it counted no events there.
        *view.batch.write().expect("lock") = Some(Arc::new(BatchView {
            table,
            from_ms: None,
            horizon_ms: Some(30),
            generation: 1,
        }));
        let answers: Vec<(i64, ViewSource)> = view
            .key_windows("a", &(0..100))
            .iter()
            .map(|(window, source)| (window.start, *source))
            .collect();
        assert_eq!(
            answers,
            vec![
                (0, ViewSource::Batch),
                (10, ViewSource::Batch),
                (30, ViewSource::Speed)
            ]
        );
        assert_eq!(view.all().len(), 4);
    }

    #[test]
    fn a_batch_view_hides_no_speed_window_before_its_first_window_or_when_empty() {
        let view = view();
        {
            let mut speed = view.speed.write().expect("lock");
            for start in [0, 10, 20, 30] {
                speed.upsert(window("a", start, 1, 1));
            }
        }
        let starts = |view: &VersionView| -> Vec<(i64, ViewSource)> {
            view.key_windows("a", &(0..100))
                .iter()
                .map(|(window, source)| (window.start, *source))
                .collect()
        };
        // A generation with no window over a range up to 40 (what a recompute cut short by
        // an out-of-range event time wrote): every speed window still answers.
        *view.batch.write().expect("lock") = Some(Arc::new(BatchView {
            table: ViewTable::default(),
            from_ms: None,
            horizon_ms: Some(40),
            generation: 2,
        }));
        assert_eq!(
            starts(&view),
            vec![
                (0, ViewSource::Speed),
                (10, ViewSource::Speed),
                (20, ViewSource::Speed),
                (30, ViewSource::Speed)
            ]
        );
        assert_eq!(view.all().len(), 4);
        // A view whose first window starts at 20 (it claims the range from the first event)
        // answers from 20 on; before, the speed view does.
        let mut table = ViewTable::default();
        table.upsert(window("b", 20, 7, 1));
        *view.batch.write().expect("lock") = Some(Arc::new(BatchView {
            table,
            from_ms: None,
            horizon_ms: Some(40),
            generation: 3,
        }));
        assert_eq!(
            starts(&view),
            vec![(0, ViewSource::Speed), (10, ViewSource::Speed)]
        );
        let (page, _) = view.window_keys(10, None, 10);
        assert_eq!(
            page.len(),
            1,
            "the window before the view's first still answers"
        );
        let (page, _) = view.window_keys(20, None, 10);
        assert_eq!(
            page.iter()
                .map(|(window, source)| (window.key.to_string(), *source))
                .collect::<Vec<_>>(),
            vec![("b".to_string(), ViewSource::Batch)],
            "from its first window on, the view covers the range"
        );
    }

    #[test]
    fn window_keys_page_through_both_views_in_key_order() {
        let view = view();
        {
            let mut speed = view.speed.write().expect("lock");
            for key in ["b", "d", "e"] {
                speed.upsert(window(key, 100, 1, 1));
            }
        }
        let mut table = ViewTable::default();
        for key in ["a", "c"] {
            table.upsert(window(key, 100, 1, 1));
        }
        *view.batch.write().expect("lock") = Some(Arc::new(BatchView {
            table,
            from_ms: None,
            horizon_ms: Some(50),
            generation: 1,
        }));
        let keys = |answers: &[Answer]| -> Vec<String> {
            answers
                .iter()
                .map(|(window, _)| window.key.to_string())
                .collect()
        };
        let (page, more) = view.window_keys(100, None, 2);
        assert_eq!(
            (keys(&page), more),
            (vec!["a".to_string(), "b".to_string()], true)
        );
        let (page, more) = view.window_keys(100, Some("b"), 2);
        assert_eq!(
            (keys(&page), more),
            (vec!["c".to_string(), "d".to_string()], true)
        );
        let (page, more) = view.window_keys(100, Some("d"), 2);
        assert_eq!((keys(&page), more), (vec!["e".to_string()], false));
    }
}
