//! Keeping the views current: the speed view follows each job version's results topic from
//! its first record; the job catalog (versions registered by backfills, each job's active
//! version) and the batch views are looked up on the object store every
//! `view-poll-interval`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use arrow::array::RecordBatch;
use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use runnel_config::Config;
use runnel_jobs::Catalog;
use runnel_jobs::Job;
use runnel_jobs::view::{VIEWS_PREFIX, ViewFile, load_view};
use runnel_log::{Log, LogError, Record, StartOffset};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, warn};

use crate::ServingError;
use crate::views::{
    BatchView, JobView, Jobs, ResultLayout, Update, VersionView, ViewTable, Window,
};

/// Results records read at once.
const READ_RECORDS: usize = 4096;
/// How long a read waits for new results before looking at shutdown again.
const READ_WAIT: Duration = Duration::from_millis(100);

/// Result records (JSON objects) as windows; a batch that does not decode is decoded record
/// by record, and records that still fail are logged and left out.
fn decode_results(layout: &ResultLayout, records: &[Record]) -> Vec<Window> {
    let decode = |records: &[Record]| -> Result<Vec<Window>, ServingError> {
        let mut windows = Vec::with_capacity(records.len());
        for batch in runnel_jobs::records::decode_results(&layout.schema, records)
            .map_err(|error| ServingError::Results(error.to_string()))?
        {
            windows.extend(layout.windows(&batch)?);
        }
        Ok(windows)
    };
    match decode(records) {
        Ok(windows) => windows,
        Err(_) => records
            .iter()
            .filter_map(|record| match decode(std::slice::from_ref(record)) {
                Ok(windows) => Some(windows),
                Err(error) => {
                    warn!(
                        topic = %record.topic,
                        partition = record.partition,
                        offset = record.offset,
                        %error,
                        "skipping a result record that does not decode"
                    );
                    None
                }
            })
            .flatten()
            .collect(),
    }
}

/// Follows partition `partition` of `view`'s results topic from its first record into the
/// speed view, publishing each stored window to `job`'s subscribers. `pending` counts the
/// version's partitions not yet read up to `end` (the log's end at the start); the last one
/// to get there marks the version ready.
pub(crate) async fn follow_results(
    log: Arc<dyn Log>,
    job: Arc<JobView>,
    view: Arc<VersionView>,
    partition: u32,
    end: u64,
    pending: Arc<AtomicUsize>,
    shutdown: CancellationToken,
) -> Result<(), ServingError> {
    let topic = runnel_jobs::results_topic(&view.id);
    let log_error = |source: LogError| ServingError::Log {
        topic: topic.clone(),
        source: Box::new(source),
    };
    let mut reader = log
        .reader(&topic, partition, StartOffset::Earliest)
        .await
        .map_err(log_error)?;
    let mut caught_up = false;
    loop {
        if !caught_up && reader.position() >= end {
            caught_up = true;
            if pending.fetch_sub(1, Ordering::AcqRel) == 1 {
                view.ready.store(true, Ordering::Release);
                info!(job = %view.id, "speed view rebuilt from the results topic");
            }
        }
        let records = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            read = reader.next_batch(READ_RECORDS, READ_WAIT) => match read {
                Ok(records) => records,
                Err(LogError::OffsetOutOfRange { .. }) => {
                    // Retention removed records before they were read: what is left still
                    // holds every window's later versions.
                    let earliest = log.earliest_offset(&topic, partition).await.map_err(log_error)?;
                    warn!(%topic, partition, from = reader.position(), to = earliest,
                        "results were removed by retention before serving read them");
                    reader.seek(earliest).await.map_err(log_error)?;
                    continue;
                }
                Err(source) => return Err(log_error(source)),
            },
        };
        if records.is_empty() {
            continue;
        }
        let windows = decode_results(&view.layout, &records);
        let stored: Vec<Arc<Window>> = {
            let mut speed = view
                .speed
                .write()
                .map_err(|_| ServingError::Results("the speed view's lock is poisoned".into()))?;
            windows
                .into_iter()
                .filter_map(|window| speed.upsert(window))
                .collect()
        };
        for window in stored {
            // No subscriber is not an error.
            let _ = job.updates.send(Update {
                version: view.version,
                window,
            });
        }
    }
}

/// Reads the batch view files of `manifest` into a table.
async fn read_batch_view(
    store: &dyn ObjectStore,
    layout: &ResultLayout,
    files: &[ViewFile],
) -> Result<ViewTable, ServingError> {
    let mut table = ViewTable::default();
    for file in files {
        let path = Path::from(file.path.as_str());
        let bytes: Bytes = store
            .get(&path)
            .await
            .map_err(|error| ServingError::BatchView {
                path: path.to_string(),
                message: error.to_string(),
            })?
            .bytes()
            .await
            .map_err(|error| ServingError::BatchView {
                path: path.to_string(),
                message: error.to_string(),
            })?;
        let parquet = |message: String| ServingError::BatchView {
            path: path.to_string(),
            message,
        };
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .map_err(|error| parquet(error.to_string()))?
            .build()
            .map_err(|error| parquet(error.to_string()))?;
        for batch in reader {
            let batch: RecordBatch = batch.map_err(|error| parquet(error.to_string()))?;
            let batch = RecordBatch::try_new(Arc::clone(&layout.schema), batch.columns().to_vec())
                .map_err(|error| parquet(format!("not the job's result columns: {error}")))?;
            for window in layout.windows(&batch)? {
                table.upsert(window);
            }
        }
    }
    Ok(table)
}

/// The versions serving reads: where each job version's results are followed from.
pub(crate) struct Followers {
    log: Arc<dyn Log>,
    tasks: JoinSet<Result<(), ServingError>>,
    shutdown: CancellationToken,
}

impl Followers {
    pub(crate) fn new(log: Arc<dyn Log>, shutdown: CancellationToken) -> Followers {
        Followers {
            log,
            tasks: JoinSet::new(),
            shutdown,
        }
    }

    /// Starts following every partition of `view`'s results topic into its speed view.
    pub(crate) async fn follow(
        &mut self,
        job: &Arc<JobView>,
        view: &Arc<VersionView>,
    ) -> Result<(), ServingError> {
        let topic = runnel_jobs::results_topic(&view.id);
        let log_error = |source| ServingError::Log {
            topic: topic.clone(),
            source: Box::new(source),
        };
        let partitions = self.log.partition_count(&topic).await.map_err(log_error)?;
        let pending = Arc::new(AtomicUsize::new(partitions as usize));
        if partitions == 0 {
            view.ready.store(true, Ordering::Release);
        }
        for partition in 0..partitions {
            let end = self
                .log
                .latest_offset(&topic, partition)
                .await
                .map_err(log_error)?;
            self.tasks.spawn(
                follow_results(
                    Arc::clone(&self.log),
                    Arc::clone(job),
                    Arc::clone(view),
                    partition,
                    end,
                    Arc::clone(&pending),
                    self.shutdown.clone(),
                )
                .in_current_span(),
            );
        }
        Ok(())
    }

    /// The first error of a follower; pending while none fails.
    pub(crate) async fn failed(&mut self) -> ServingError {
        loop {
            match self.tasks.join_next().await {
                None => std::future::pending::<()>().await,
                Some(Ok(Ok(()))) => {}
                Some(Ok(Err(error))) => return error,
                Some(Err(join)) => {
                    return ServingError::Results(format!("a view task failed: {join}"));
                }
            }
        }
    }
}

/// Adds `job`'s views to `jobs` and ensures its results topic; returns the job's and the
/// version's views when the version is new.
pub(crate) async fn add_version(
    jobs: &Jobs,
    job: &Job,
    log: &dyn Log,
) -> Result<Option<(Arc<JobView>, Arc<VersionView>)>, ServingError> {
    let stream = job.stream.name().to_string();
    let log_error = |topic: &str| {
        let topic = topic.to_string();
        move |source| ServingError::Log {
            topic,
            source: Box::new(source),
        }
    };
    let partitions = log
        .partition_count(&stream)
        .await
        .map_err(log_error(&stream))?;
    let results = runnel_jobs::results_topic(&job.name);
    log.ensure_topic(&results, partitions)
        .await
        .map_err(log_error(&results))?;
    let source_topic = if job.repartition {
        runnel_jobs::repartition_topic(&job.name)
    } else {
        stream
    };
    let layout = ResultLayout::new(job.result_schema(), job.plan.window());
    let view = Arc::new(VersionView::new(
        job.name.clone(),
        job.version,
        source_topic,
        layout,
    ));
    let job_view = jobs.get_or_add(&job.job_name, || {
        JobView::new(job.job_name.clone(), job.version, crate::SUBSCRIBER_BUFFER)
    });
    Ok(job_view
        .add_version(Arc::clone(&view))
        .then_some((job_view, view)))
}

/// Starts serving each version in `catalog` that serving does not have yet (registered by
/// a backfill since it started). A version that does not compile here (its stream is not in
/// this config, say) is reported once in `reported` and left out.
pub(crate) async fn add_catalog_versions(
    catalog: &Catalog,
    config: &Config,
    jobs: &Jobs,
    followers: &mut Followers,
    reported: &mut BTreeSet<String>,
) -> Result<(), ServingError> {
    for conflict in &catalog.conflicts {
        let message = conflict.to_string();
        if reported.insert(message.clone()) {
            error!(error = %message, "a declared job version differs from its registration; serving the declared one's results");
        }
    }
    for version in catalog.versions.values() {
        if jobs
            .get(&version.job.name)
            .is_some_and(|job| job.version(version.job.version).is_some())
        {
            continue;
        }
        let id = version.job.id();
        let job = match Job::compile(config, &version.job) {
            Ok(job) => job,
            Err(error) => {
                if reported.insert(format!("{id}: {error}")) {
                    error!(job = %id, %error, "a job version registered in the job catalog does not compile here (is its stream declared in this config?); not serving it");
                }
                continue;
            }
        };
        let log = Arc::clone(&followers.log);
        if let Some((job_view, view)) = add_version(jobs, &job, log.as_ref()).await? {
            info!(job = %id, "serving a job version registered in the job catalog");
            followers.follow(&job_view, &view).await?;
        }
    }
    Ok(())
}

/// Looks up each job's active version and each version's batch view once: a new active
/// version is switched to once its speed view is rebuilt (queries answer from it from then
/// on), a new batch view generation is read whole and then replaces the old one.
pub(crate) async fn poll_views(
    store: &dyn ObjectStore,
    catalog: &Catalog,
    jobs: &Jobs,
) -> Result<(), ServingError> {
    for job in jobs.all() {
        let active = catalog
            .active_version(store, &job.name)
            .await
            .map_err(|error| ServingError::BatchView {
                path: runnel_jobs::active_path(&job.name).to_string(),
                message: error.to_string(),
            })?;
        if let Some(active) = active
            && let Some(view) = job.version(active)
        {
            let previous = job.active.load(Ordering::Acquire);
            if previous != active {
                if view.ready.load(Ordering::Acquire) {
                    job.active.store(active, Ordering::Release);
                    info!(job = %job.name, from = previous, to = active, "active version switched");
                } else {
                    debug!(job = %job.name, to = active, "the new active version's speed view is still being rebuilt; switching once it is");
                }
            }
        }
        for view in job.versions() {
            let manifest = load_view(store, VIEWS_PREFIX, &job.name, view.version)
                .await
                .map_err(|error| ServingError::BatchView {
                    path: format!("{VIEWS_PREFIX}/{}/{}", job.name, view.version),
                    message: error.to_string(),
                })?;
            let Some(manifest) = manifest else {
                continue;
            };
            let held = view
                .batch
                .read()
                .ok()
                .and_then(|batch| batch.as_ref().map(|batch| batch.generation));
            if held == Some(manifest.generation) {
                continue;
            }
            let table = read_batch_view(store, &view.layout, &manifest.files).await?;
            info!(
                job = %view.id,
                generation = manifest.generation,
                windows = table.len(),
                horizon = manifest.horizon_ms,
                "batch view loaded"
            );
            let loaded = Arc::new(BatchView {
                table,
                from_ms: manifest.from_ms,
                horizon_ms: manifest.horizon_ms,
                generation: manifest.generation,
            });
            if let Ok(mut batch) = view.batch.write() {
                *batch = Some(loaded);
            }
        }
    }
    Ok(())
}
