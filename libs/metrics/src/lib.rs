//! Prometheus' text exposition format (version 0.0.4), written by hand for every service's
//! `GET /metrics`: an [`Exposition`] writes each family's `# HELP` and `# TYPE` once, then
//! its samples, with label values escaped; a [`Histogram`] counts observations in fixed
//! buckets; a [`CounterMap`] holds counters keyed by bounded label values; [`parse_text`]
//! reads an exposition back, strictly, for the tests.
//!
//! Names follow Prometheus' conventions: snake_case with the `runnel_` prefix, counters end
//! in `_total`, units are base units named last (`_seconds`, `_bytes`). Every label takes a
//! bounded set of values (declared streams and jobs, partitions, fixed codes), never text a
//! client chose, so the number of series is bounded by the config.
#![warn(missing_docs)]

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Write as _};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

/// The content type of the text exposition format.
pub const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Bucket bounds, in seconds, of the services' request-latency histograms: from 100 µs (a
/// query answered from memory) to 10 s.
pub const LATENCY_BUCKETS_SECONDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// A family's type, as `# TYPE` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricType {
    /// Only goes up (from 0 when the process starts); the name ends in `_total`.
    Counter,
    /// Goes up and down.
    Gauge,
    /// Observations counted in buckets, with their sum and count.
    Histogram,
}

impl MetricType {
    fn name(self) -> &'static str {
        match self {
            MetricType::Counter => "counter",
            MetricType::Gauge => "gauge",
            MetricType::Histogram => "histogram",
        }
    }
}

/// A sample's value: integers are written exactly, floats in Prometheus' spelling (`NaN`,
/// `+Inf`, `-Inf`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    /// A count, offset or size.
    Unsigned(u64),
    /// A signed integer, e.g. epoch milliseconds.
    Signed(i64),
    /// Anything else.
    Float(f64),
}

impl From<u64> for Value {
    fn from(value: u64) -> Value {
        Value::Unsigned(value)
    }
}

impl From<u32> for Value {
    fn from(value: u32) -> Value {
        Value::Unsigned(value.into())
    }
}

impl From<usize> for Value {
    fn from(value: usize) -> Value {
        Value::Unsigned(value as u64)
    }
}

impl From<i64> for Value {
    fn from(value: i64) -> Value {
        Value::Signed(value)
    }
}

impl From<f64> for Value {
    fn from(value: f64) -> Value {
        Value::Float(value)
    }
}

impl From<bool> for Value {
    fn from(value: bool) -> Value {
        Value::Unsigned(value.into())
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Value::Unsigned(value) => write!(f, "{value}"),
            Value::Signed(value) => write!(f, "{value}"),
            Value::Float(value) => write_float(f, value),
        }
    }
}

fn write_float(out: &mut impl fmt::Write, value: f64) -> fmt::Result {
    if value.is_nan() {
        out.write_str("NaN")
    } else if value == f64::INFINITY {
        out.write_str("+Inf")
    } else if value == f64::NEG_INFINITY {
        out.write_str("-Inf")
    } else {
        write!(out, "{value}")
    }
}

/// The labels of one series, escaped once and reused by every family that has the series.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Labels {
    /// `name="value"` pairs joined by commas, values escaped.
    text: String,
}

impl Labels {
    /// No labels.
    pub fn new() -> Labels {
        Labels::default()
    }

    /// These labels and `name="value"`.
    pub fn with(mut self, name: &'static str, value: impl fmt::Display) -> Labels {
        self.push(name, value);
        self
    }

    /// Adds `name="value"`; `value` is escaped (`\`, `"` and line feeds).
    pub fn push(&mut self, name: &'static str, value: impl fmt::Display) {
        debug_assert!(is_label_name(name), "label name {name:?}");
        if !self.text.is_empty() {
            self.text.push(',');
        }
        self.text.push_str(name);
        self.text.push_str("=\"");
        // Writing to a `String` cannot fail.
        let _ = write!(Escaped(&mut self.text), "{value}");
        self.text.push('"');
    }
}

/// Writes through to a `String`, escaping a label value.
struct Escaped<'a>(&'a mut String);

impl fmt::Write for Escaped<'_> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        for character in text.chars() {
            match character {
                '\\' => self.0.push_str("\\\\"),
                '"' => self.0.push_str("\\\""),
                '\n' => self.0.push_str("\\n"),
                other => self.0.push(other),
            }
        }
        Ok(())
    }
}

fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic() || first == '_' || first == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(name: &str) -> bool {
    is_metric_name(name) && !name.contains(':')
}

/// One family of a table of families ([`Exposition::table`]): its samples are read from
/// rows of type `T`, with a context `C` shared by the rows (say, the clock).
#[derive(Debug)]
pub struct TableFamily<T, C = ()> {
    /// The family's name.
    pub name: &'static str,
    /// Its type: a counter or a gauge.
    pub metric_type: MetricType,
    /// What it measures, one line.
    pub help: &'static str,
    /// The row's sample, or `None` to leave the series out (not known yet).
    pub value: fn(&T, &C) -> Option<Value>,
}

/// A text exposition being written: families, each with its `# HELP` and `# TYPE` once, then
/// its samples.
#[derive(Debug, Default)]
pub struct Exposition {
    text: String,
    families: BTreeSet<String>,
}

impl Exposition {
    /// An empty exposition.
    pub fn new() -> Exposition {
        Exposition::default()
    }

    /// Begins the family `name`: writes its `# HELP` and `# TYPE`; its samples follow.
    ///
    /// # Panics
    ///
    /// In debug builds, when `name` is not a metric name or the family was begun before.
    pub fn family<'a>(
        &'a mut self,
        name: &'a str,
        metric_type: MetricType,
        help: &str,
    ) -> Family<'a> {
        debug_assert!(is_metric_name(name), "metric name {name:?}");
        let first = self.families.insert(name.to_string());
        debug_assert!(first, "family {name} written twice");
        self.text.push_str("# HELP ");
        self.text.push_str(name);
        self.text.push(' ');
        for character in help.chars() {
            match character {
                '\\' => self.text.push_str("\\\\"),
                '\n' => self.text.push_str("\\n"),
                other => self.text.push(other),
            }
        }
        self.text.push('\n');
        // Writing to a `String` cannot fail.
        let _ = writeln!(self.text, "# TYPE {name} {}", metric_type.name());
        Family {
            text: &mut self.text,
            name,
            metric_type,
        }
    }

    /// Writes every family of `families`, each with one sample per row of `rows` (a `T` or
    /// a reference to one) whose value is known, labelled with the row's labels.
    pub fn table<T, C, R: Borrow<T>>(
        &mut self,
        families: &[TableFamily<T, C>],
        rows: &[(Labels, R)],
        context: &C,
    ) {
        for table_family in families {
            debug_assert!(table_family.metric_type != MetricType::Histogram);
            let mut family = self.family(
                table_family.name,
                table_family.metric_type,
                table_family.help,
            );
            for (labels, row) in rows {
                if let Some(value) = (table_family.value)(row.borrow(), context) {
                    family.sample(labels, value);
                }
            }
        }
    }

    /// The text, to serve.
    pub fn into_text(self) -> String {
        self.text
    }
}

impl IntoResponse for Exposition {
    fn into_response(self) -> Response {
        ([(header::CONTENT_TYPE, TEXT_FORMAT)], self.text).into_response()
    }
}

/// The samples of one family, as they are written.
#[derive(Debug)]
pub struct Family<'a> {
    text: &'a mut String,
    name: &'a str,
    metric_type: MetricType,
}

impl Family<'_> {
    /// Writes the sample of the series `labels` (a counter's or a gauge's).
    pub fn sample(&mut self, labels: &Labels, value: impl Into<Value>) -> &mut Self {
        debug_assert!(self.metric_type != MetricType::Histogram);
        self.line("", labels, None, value.into());
        self
    }

    /// Writes the series `labels` of a histogram: its cumulative buckets (`_bucket`, with
    /// `le`), `_sum` and `_count`.
    pub fn histogram(&mut self, labels: &Labels, histogram: &HistogramSnapshot) -> &mut Self {
        debug_assert!(self.metric_type == MetricType::Histogram);
        for (bound, count) in histogram.bounds.iter().zip(&histogram.cumulative) {
            self.line("_bucket", labels, Some(*bound), Value::Unsigned(*count));
        }
        let count = histogram.count();
        self.line(
            "_bucket",
            labels,
            Some(f64::INFINITY),
            Value::Unsigned(count),
        );
        self.line("_sum", labels, None, Value::Float(histogram.sum));
        self.line("_count", labels, None, Value::Unsigned(count));
        self
    }

    fn line(&mut self, suffix: &str, labels: &Labels, le: Option<f64>, value: Value) {
        let text = &mut *self.text;
        text.push_str(self.name);
        text.push_str(suffix);
        if !labels.text.is_empty() || le.is_some() {
            text.push('{');
            text.push_str(&labels.text);
            if let Some(le) = le {
                if !labels.text.is_empty() {
                    text.push(',');
                }
                text.push_str("le=\"");
                // Writing to a `String` cannot fail.
                let _ = write_float(text, le);
                text.push('"');
            }
            text.push('}');
        }
        let _ = writeln!(text, " {value}");
    }
}

/// A metrics endpoint's listener, bound (so its address is known) and ready to serve.
#[derive(Debug)]
pub struct MetricsListener {
    listener: TcpListener,
    local_addr: SocketAddr,
}

impl MetricsListener {
    /// Binds `address` (a service's `metrics-listen`; port 0 picks a free port).
    ///
    /// # Errors
    ///
    /// The bind's I/O error.
    pub async fn bind(address: &str) -> Result<MetricsListener, std::io::Error> {
        let listener = TcpListener::bind(address).await?;
        let local_addr = listener.local_addr()?;
        Ok(MetricsListener {
            listener,
            local_addr,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves `router` over plain HTTP until `shutdown` is cancelled; logs `message` (say,
    /// "metrics listening") with the address first.
    ///
    /// # Errors
    ///
    /// The server's I/O errors.
    pub async fn serve(
        self,
        router: Router,
        message: &'static str,
        shutdown: CancellationToken,
    ) -> Result<(), std::io::Error> {
        info!(address = %self.local_addr, "{message}");
        axum::serve(self.listener, router)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
    }
}

/// Observations counted in fixed buckets, lock-free; [`Histogram::snapshot`] reads them for
/// an exposition.
#[derive(Debug)]
pub struct Histogram {
    /// Upper bounds, increasing.
    bounds: &'static [f64],
    /// Observations per bucket (not cumulative); the last is above every bound.
    counts: Box<[AtomicU64]>,
    /// The sum of the observations, as `f64` bits.
    sum_bits: AtomicU64,
}

impl Histogram {
    /// A histogram with buckets up to each of `bounds` (increasing) and one above them.
    pub fn new(bounds: &'static [f64]) -> Histogram {
        debug_assert!(bounds.windows(2).all(|pair| pair[0] < pair[1]));
        debug_assert!(bounds.iter().all(|bound| bound.is_finite()));
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_bits: AtomicU64::new(0f64.to_bits()),
        }
    }

    /// Counts `value` in the first bucket whose bound is at least `value`.
    pub fn observe(&self, value: f64) {
        debug_assert!(!value.is_nan());
        let bucket = self.bounds.partition_point(|bound| *bound < value);
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        let mut current = self.sum_bits.load(Ordering::Relaxed);
        loop {
            let sum = (f64::from_bits(current) + value).to_bits();
            match self.sum_bits.compare_exchange_weak(
                current,
                sum,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(actual) => current = actual,
            }
        }
    }

    /// Counts `elapsed`, in seconds.
    pub fn observe_duration(&self, elapsed: Duration) {
        self.observe(elapsed.as_secs_f64());
    }

    /// The counts so far, cumulative as the exposition wants them.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut total = 0;
        let mut cumulative: Vec<u64> = self
            .counts
            .iter()
            .map(|count| {
                total += count.load(Ordering::Relaxed);
                total
            })
            .collect();
        let count = cumulative.pop().unwrap_or(0);
        HistogramSnapshot {
            bounds: self.bounds,
            cumulative,
            count,
            sum: f64::from_bits(self.sum_bits.load(Ordering::Relaxed)),
        }
    }
}

/// A histogram's counts at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    bounds: &'static [f64],
    /// Observations at most each bound.
    cumulative: Vec<u64>,
    count: u64,
    sum: f64,
}

impl HistogramSnapshot {
    /// Every observation.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The sum of the observations.
    pub fn sum(&self) -> f64 {
        self.sum
    }
}

/// Counters keyed by bounded label values (say, method and code), each series appearing
/// when it is first counted. Counting takes a lock: use it per request, not per event.
#[derive(Debug)]
pub struct CounterMap<K> {
    counts: Mutex<BTreeMap<K, u64>>,
}

impl<K> Default for CounterMap<K> {
    fn default() -> Self {
        CounterMap {
            counts: Mutex::new(BTreeMap::new()),
        }
    }
}

impl<K: Ord + Clone> CounterMap<K> {
    /// No series yet.
    pub fn new() -> CounterMap<K> {
        CounterMap::default()
    }

    /// Adds `n` to the series `key`.
    pub fn add(&self, key: K, n: u64) {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        *counts.entry(key).or_insert(0) += n;
    }

    /// Every series, by key.
    pub fn snapshot(&self) -> Vec<(K, u64)> {
        let counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        counts.iter().map(|(key, n)| (key.clone(), *n)).collect()
    }
}

/// A text exposition that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("line {line}: {message}: {text}")]
pub struct ParseMetricsError {
    /// The line, from 1.
    pub line: usize,
    /// What is wrong.
    pub message: String,
    /// The line's text.
    pub text: String,
}

/// One sample read back.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The sample's name (a histogram's carry `_bucket`, `_sum`, `_count`).
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its value.
    pub value: f64,
}

/// An exposition read back by [`parse_text`].
#[derive(Debug, Clone, Default)]
pub struct ParsedMetrics {
    /// The families' types, by name.
    pub types: BTreeMap<String, MetricType>,
    /// Every sample, in order.
    pub samples: Vec<Sample>,
}

impl ParsedMetrics {
    /// The value of the sample `name` whose labels are exactly `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|sample| {
                sample.name == name
                    && sample.labels.len() == labels.len()
                    && labels.iter().all(|(key, value)| {
                        sample.labels.get(*key).map(String::as_str) == Some(value)
                    })
            })
            .map(|sample| sample.value)
    }

    /// Checks that the sample `name` whose labels are exactly `labels` has the value
    /// `expect`, for tests.
    ///
    /// # Panics
    ///
    /// When it has not, listing the samples of its family.
    #[track_caller]
    pub fn assert_value(&self, name: &str, labels: &[(&str, &str)], expect: f64) {
        let found = self.value(name, labels);
        if found != Some(expect) {
            let family = self
                .samples
                .iter()
                .filter(|sample| sample.name == name)
                .map(|sample| format!("{:?} {}", sample.labels, sample.value))
                .collect::<Vec<_>>();
            panic!("{name}{labels:?} is {found:?}, not {expect}; the samples are {family:#?}");
        }
    }

    /// The samples of the family `name` (for a histogram, its `_bucket`, `_sum` and
    /// `_count` samples).
    pub fn family(&self, name: &str) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|sample| family_of(&sample.name, &self.types) == Some(name))
            .collect()
    }
}

/// The family a sample belongs to: its name, or for a histogram's series the name
/// without the suffix.
fn family_of<'a>(sample: &'a str, types: &BTreeMap<String, MetricType>) -> Option<&'a str> {
    if types.contains_key(sample) {
        return Some(sample);
    }
    ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
        let family = sample.strip_suffix(suffix)?;
        (types.get(family) == Some(&MetricType::Histogram)).then_some(family)
    })
}

/// Reads a text exposition strictly: every family has one `# HELP` and one `# TYPE` before
/// its samples, which follow each other; every sample line is `name{labels} value` with
/// valid names, escapes and value, and belongs to the family declared last; a histogram's
/// buckets are cumulative, end at `+Inf` and agree with its `_count`.
///
/// # Errors
///
/// [`ParseMetricsError`] naming the first line at fault.
pub fn parse_text(text: &str) -> Result<ParsedMetrics, ParseMetricsError> {
    let mut parsed = ParsedMetrics::default();
    let mut helped = BTreeSet::new();
    let mut current: Option<String> = None;
    let mut buckets = HistogramBuckets::new();
    for (index, line) in text.lines().enumerate() {
        let error = |message: &str| ParseMetricsError {
            line: index + 1,
            message: message.to_string(),
            text: line.to_string(),
        };
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, _) = rest
                .split_once(' ')
                .ok_or_else(|| error("HELP without text"))?;
            if !is_metric_name(name) || !helped.insert(name.to_string()) {
                return Err(error("a second HELP, or a bad name"));
            }
            current = Some(name.to_string());
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest
                .split_once(' ')
                .ok_or_else(|| error("TYPE without type"))?;
            let metric_type = match kind {
                "counter" => MetricType::Counter,
                "gauge" => MetricType::Gauge,
                "histogram" => MetricType::Histogram,
                _ => return Err(error("an unknown type")),
            };
            if current.as_deref() != Some(name) || parsed.types.contains_key(name) {
                return Err(error("TYPE not right after its family's HELP, or repeated"));
            }
            parsed.types.insert(name.to_string(), metric_type);
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            return Err(error("a comment or blank line the services never write"));
        }
        let sample = parse_sample(line).map_err(|message| error(&message))?;
        let family = family_of(&sample.name, &parsed.types)
            .ok_or_else(|| error("a sample of no declared family"))?;
        if current.as_deref() != Some(family) {
            return Err(error("a sample apart from its family"));
        }
        let metric_type = parsed.types[family];
        if metric_type == MetricType::Counter && !family.ends_with("_total") {
            return Err(error("a counter whose name does not end in _total"));
        }
        if metric_type == MetricType::Histogram {
            check_histogram_sample(family, &sample, &mut buckets).map_err(|m| error(&m))?;
        }
        parsed.samples.push(sample);
    }
    if let Some(((family, _), _)) = buckets.iter().find(|(_, (_, done))| !done) {
        return Err(ParseMetricsError {
            line: 0,
            message: "a histogram series without its +Inf bucket and _count".to_string(),
            text: family.clone(),
        });
    }
    Ok(parsed)
}

/// Per histogram series (family, labels without `le`): the last bucket's count, and
/// whether the `+Inf` bucket was read.
type HistogramBuckets = BTreeMap<(String, Vec<(String, String)>), (u64, bool)>;

fn check_histogram_sample(
    family: &str,
    sample: &Sample,
    buckets: &mut HistogramBuckets,
) -> Result<(), String> {
    let series: Vec<(String, String)> = sample
        .labels
        .iter()
        .filter(|(key, _)| *key != "le")
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    let key = (family.to_string(), series);
    let suffix = &sample.name[family.len()..];
    match suffix {
        "_bucket" => {
            let le = sample.labels.get("le").ok_or("a bucket without `le`")?;
            let count = sample.value as u64;
            let (last, done) = buckets.entry(key).or_insert((0, false));
            if *done || count < *last {
                return Err("buckets not cumulative".to_string());
            }
            *last = count;
            if le == "+Inf" {
                *done = true;
            }
        }
        "_count" => {
            let (last, done) = buckets.get(&key).ok_or("_count before the buckets")?;
            if !done || *last != sample.value as u64 {
                return Err("_count is not the +Inf bucket".to_string());
            }
        }
        _ => {
            if sample.labels.contains_key("le") {
                return Err("`le` on _sum".to_string());
            }
        }
    }
    Ok(())
}

/// Parses `name{label="value",...} value`.
fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("no value after the name")?;
    let name = &line[..name_end];
    if !is_metric_name(name) {
        return Err("a bad metric name".to_string());
    }
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(mut inner) = rest.strip_prefix('{') {
        loop {
            if let Some(after) = inner.strip_prefix('}') {
                rest = after;
                break;
            }
            let eq = inner.find('=').ok_or("a label without `=`")?;
            let label = &inner[..eq];
            let quoted = inner[eq + 1..]
                .strip_prefix('"')
                .filter(|_| is_label_name(label))
                .ok_or_else(|| format!("a bad label `{label}`"))?;
            let (value, after) = unescape_label_value(quoted)?;
            if labels.insert(label.to_string(), value).is_some() {
                return Err(format!("label `{label}` twice"));
            }
            inner = match after.strip_prefix(',') {
                Some(next) => next,
                None if after.starts_with('}') => after,
                None => return Err("labels not separated by commas".to_string()),
            };
        }
    }
    let value = rest.strip_prefix(' ').ok_or("no space before the value")?;
    let value = match value {
        "NaN" => f64::NAN,
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        number => number
            .parse::<f64>()
            .map_err(|_| format!("`{number}` is not a value"))?,
    };
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// Reads a label value up to its closing quote: the value, and what follows the quote.
fn unescape_label_value(quoted: &str) -> Result<(String, &str), String> {
    let mut value = String::new();
    let mut chars = quoted.char_indices();
    while let Some((at, character)) = chars.next() {
        match character {
            '"' => return Ok((value, &quoted[at + 1..])),
            '\\' => match chars.next() {
                Some((_, '\\')) => value.push('\\'),
                Some((_, '"')) => value.push('"'),
                Some((_, 'n')) => value.push('\n'),
                _ => return Err("a bad escape in a label value".to_string()),
            },
            other => value.push(other),
        }
    }
    Err("an unclosed label value".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_have_help_and_type_once_and_escaped_labels() {
        let mut exposition = Exposition::new();
        let job = Labels::new().with("job", "views \"v2\"\\x\ny");
        exposition
            .family(
                "runnel_test_events_total",
                MetricType::Counter,
                "Events.\nAll of them.",
            )
            .sample(&job.clone().with("partition", 0), 120u64)
            .sample(&job.clone().with("partition", 1), 0u64);
        exposition
            .family("runnel_test_delay_seconds", MetricType::Gauge, "A delay.")
            .sample(&Labels::new(), 2.5)
            .sample(&Labels::new().with("kind", "inf"), f64::INFINITY)
            .sample(&Labels::new().with("kind", "ms"), 1_795_305_598_000i64);
        let text = exposition.into_text();
        let expected = r#"# HELP runnel_test_events_total Events.\nAll of them.
# TYPE runnel_test_events_total counter
runnel_test_events_total{job="views \"v2\"\\x\ny",partition="0"} 120
runnel_test_events_total{job="views \"v2\"\\x\ny",partition="1"} 0
# HELP runnel_test_delay_seconds A delay.
# TYPE runnel_test_delay_seconds gauge
runnel_test_delay_seconds 2.5
runnel_test_delay_seconds{kind="inf"} +Inf
runnel_test_delay_seconds{kind="ms"} 1795305598000
"#;
        assert_eq!(text, expected);
        let parsed = parse_text(&text).expect("parses");
        assert_eq!(
            parsed.value(
                "runnel_test_events_total",
                &[("job", "views \"v2\"\\x\ny"), ("partition", "0")]
            ),
            Some(120.0)
        );
        assert_eq!(parsed.value("runnel_test_delay_seconds", &[]), Some(2.5));
        assert_eq!(parsed.family("runnel_test_delay_seconds").len(), 3);
    }

    #[test]
    fn histograms_count_in_cumulative_buckets() {
        static BOUNDS: &[f64] = &[0.01, 0.1, 1.0];
        let histogram = Histogram::new(BOUNDS);
        for value in [0.005, 0.01, 0.05, 0.5, 3.0] {
            histogram.observe(value);
        }
        histogram.observe_duration(Duration::from_millis(100));
        let mut exposition = Exposition::new();
        exposition
            .family(
                "runnel_test_duration_seconds",
                MetricType::Histogram,
                "How long.",
            )
            .histogram(&Labels::new().with("method", "Get"), &histogram.snapshot())
            .histogram(&Labels::new(), &Histogram::new(BOUNDS).snapshot());
        let text = exposition.into_text();
        let expected = r#"# HELP runnel_test_duration_seconds How long.
# TYPE runnel_test_duration_seconds histogram
runnel_test_duration_seconds_bucket{method="Get",le="0.01"} 2
runnel_test_duration_seconds_bucket{method="Get",le="0.1"} 4
runnel_test_duration_seconds_bucket{method="Get",le="1"} 5
runnel_test_duration_seconds_bucket{method="Get",le="+Inf"} 6
runnel_test_duration_seconds_sum{method="Get"} 3.665
runnel_test_duration_seconds_count{method="Get"} 6
runnel_test_duration_seconds_bucket{le="0.01"} 0
runnel_test_duration_seconds_bucket{le="0.1"} 0
runnel_test_duration_seconds_bucket{le="1"} 0
runnel_test_duration_seconds_bucket{le="+Inf"} 0
runnel_test_duration_seconds_sum 0
runnel_test_duration_seconds_count 0
"#;
        assert_eq!(text, expected);
        let parsed = parse_text(&text).expect("parses");
        assert_eq!(
            parsed.value(
                "runnel_test_duration_seconds_bucket",
                &[("method", "Get"), ("le", "0.1")]
            ),
            Some(4.0)
        );
        assert_eq!(parsed.family("runnel_test_duration_seconds").len(), 12);
    }

    #[test]
    fn tables_write_a_family_per_entry_and_leave_out_unknown_values() {
        const FAMILIES: &[TableFamily<(u64, Option<i64>), i64>] = &[
            TableFamily {
                name: "runnel_test_rows_total",
                metric_type: MetricType::Counter,
                help: "Rows.",
                value: |row, _| Some(row.0.into()),
            },
            TableFamily {
                name: "runnel_test_offset",
                metric_type: MetricType::Gauge,
                help: "An offset, shifted.",
                value: |row, shift| row.1.map(|offset| (offset + shift).into()),
            },
        ];
        let rows = [
            (Labels::new().with("partition", 0), (5, Some(10))),
            (Labels::new().with("partition", 1), (0, None)),
        ];
        let mut exposition = Exposition::new();
        exposition.table(FAMILIES, &rows, &100);
        assert_eq!(
            exposition.into_text(),
            r#"# HELP runnel_test_rows_total Rows.
# TYPE runnel_test_rows_total counter
runnel_test_rows_total{partition="0"} 5
runnel_test_rows_total{partition="1"} 0
# HELP runnel_test_offset An offset, shifted.
# TYPE runnel_test_offset gauge
runnel_test_offset{partition="0"} 110
"#
        );
    }

    #[test]
    fn counter_maps_count_per_key() {
        let counters = CounterMap::new();
        counters.add(("QueryWindows", "OK"), 1);
        counters.add(("QueryWindows", "NOT_FOUND"), 1);
        counters.add(("QueryWindows", "OK"), 2);
        assert_eq!(
            counters.snapshot(),
            [
                (("QueryWindows", "NOT_FOUND"), 1),
                (("QueryWindows", "OK"), 3)
            ]
        );
    }

    #[track_caller]
    fn check_refused(text: &str, expect: &str) {
        match parse_text(text) {
            Ok(parsed) => panic!("{text:?} parsed: {parsed:?}"),
            Err(error) => assert!(error.to_string().contains(expect), "{error} for {text:?}"),
        }
    }

    #[test]
    fn the_parser_refuses_what_prometheus_would() {
        let head = "# HELP a_total A.\n# TYPE a_total counter\n";
        check_refused(
            &format!("{head}a_total{{x=\"1\"}}\n"),
            "no space before the value",
        );
        check_refused(
            &format!("{head}a_total{{x=\"1}} 1\n"),
            "an unclosed label value",
        );
        check_refused(&format!("{head}a_total{{x=\"\\t\"}} 1\n"), "a bad escape");
        check_refused(&format!("{head}a_total{{x=\"1\" y=\"2\"}} 1\n"), "commas");
        check_refused(&format!("{head}a_total x\n"), "is not a value");
        check_refused(&format!("{head}b_total 1\n"), "no declared family");
        check_refused(&format!("{head}{head}"), "a second HELP");
        check_refused("# HELP a A.\n# TYPE a counter\na 1\n", "_total");
        check_refused(
            "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\n",
            "cumulative",
        );
        check_refused(
            "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_sum 1\n",
            "+Inf bucket",
        );
        let parsed = parse_text(&format!("{head}a_total{{x=\"1\",}} 1\na_total 2\n"))
            .expect("a trailing comma is allowed");
        assert_eq!(parsed.value("a_total", &[("x", "1")]), Some(1.0));
        assert_eq!(parsed.value("a_total", &[]), Some(2.0));
    }
}
