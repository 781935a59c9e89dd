//! The archiver's status on the ingest port, when the service runs the archiver
//! (`ingest.run-archiver`): `GET /metrics` (Prometheus text) and `GET /status` (JSON), per
//! stream and partition, e.g. `runnel_archiver_partition_corrupt{stream,partition} 1` while a
//! partition waits for `runnel log repair`.

use axum::Router;

/// Returns the routes over the process's archiver status (what `runnel_archive::run_archiver`
/// reports into), to merge into the service's router.
pub(crate) fn router() -> Router {
    runnel_archive::status::router(runnel_archive::ArchiverStatus::process())
}
