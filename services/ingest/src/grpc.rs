//! The gRPC front end: `runnel.ingest.v1.Ingest` (see `proto/runnel/ingest/v1/ingest.proto`).

use std::sync::Arc;

use prost::Message;
use tokio::time::Instant;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Request, Response, Status, Streaming};
use tracing::{Instrument, info_span, warn};

use crate::metrics::ResponseCode;
use crate::proto;
use crate::proto::ingest_request::Events;
use crate::service::{Api, Batch, IngestFailure, Ingestor};

/// Metadata entry of RESOURCE_EXHAUSTED answers: how long to wait before retrying, in
/// milliseconds.
pub const RETRY_AFTER_MS_METADATA: &str = "retry-after-ms";

/// Metadata entry of an `IngestStream` that failed part way: how many batches were
/// processed before the one that failed.
pub const BATCHES_DONE_METADATA: &str = "batches-done";

/// The `Ingest` service.
pub(crate) struct GrpcIngest {
    pub(crate) ingestor: Arc<Ingestor>,
}

impl GrpcIngest {
    async fn ingest_one(
        &self,
        request: proto::IngestRequest,
    ) -> Result<proto::IngestResponse, IngestFailure> {
        let size = request.encoded_len();
        self.ingestor.metrics().request_bytes(Api::Grpc, size);
        let _permit = self.ingestor.try_reserve(size)?;
        let proto::IngestRequest {
            stream,
            all_or_nothing,
            events,
        } = request;
        let batch = match events {
            Some(Events::Json(json)) => Batch::Json(json.events),
            Some(Events::Rows(rows)) => Batch::Rows(rows.rows),
            None => return Err(IngestFailure::NoEvents),
        };
        let outcome = self
            .ingestor
            .ingest(&stream, batch, all_or_nothing, Api::Grpc)
            .instrument(info_span!("grpc_ingest", stream = %stream))
            .await?;
        Ok(outcome.to_proto())
    }

    /// Ingests one message, counting it as a request of its stream.
    async fn ingest_counted(
        &self,
        request: proto::IngestRequest,
        metadata: impl FnOnce() -> MetadataMap,
    ) -> Result<proto::IngestResponse, Status> {
        let started = Instant::now();
        let stream = self.ingestor.metrics().stream_label(&request.stream);
        let result = self
            .ingest_one(request)
            .await
            .map_err(|failure| status(&failure, metadata()));
        let code = result.as_ref().map_or_else(Status::code, |_| Code::Ok);
        self.ingestor.metrics().request(
            Api::Grpc,
            stream,
            ResponseCode::grpc(code),
            started.elapsed(),
        );
        result
    }
}

#[tonic::async_trait]
impl proto::ingest_server::Ingest for GrpcIngest {
    async fn ingest(
        &self,
        request: Request<proto::IngestRequest>,
    ) -> Result<Response<proto::IngestResponse>, Status> {
        self.ingest_counted(request.into_inner(), MetadataMap::new)
            .await
            .map(Response::new)
    }

    async fn flush_archive(
        &self,
        request: Request<proto::FlushArchiveRequest>,
    ) -> Result<Response<proto::FlushArchiveResponse>, Status> {
        if !self.ingestor.config().run_archiver {
            return Err(Status::failed_precondition(
                "this ingest service does not run the archiver (ingest.run-archiver = false): \
                 flush the one that does, or run `runnel archive --once` where none runs",
            ));
        }
        let timeout_ms = match request.into_inner().timeout_ms {
            0 => 60_000,
            ms => ms,
        };
        let status = runnel_archive::ArchiverStatus::process();
        let generation = status.request_flush();
        let outcome = status
            .wait_flushed(
                generation,
                std::time::Duration::from_millis(u64::from(timeout_ms)),
            )
            .await;
        let partitions = outcome
            .partitions
            .into_iter()
            .map(|partition| {
                let flushed = partition.flushed_generation >= generation;
                let reason = match (&partition.corrupt, flushed) {
                    (_, true) => String::new(),
                    (Some(corrupt), false) => format!(
                        "stopped at a corrupt range at offset {}: {}",
                        corrupt.offset, corrupt.repair
                    ),
                    (None, false) => {
                        format!("not caught up with the log's end within {timeout_ms} ms")
                    }
                };
                proto::ArchivedPartition {
                    stream: partition.stream,
                    partition: partition.partition,
                    archived_until: partition.archived_until,
                    flushed,
                    reason,
                }
            })
            .collect();
        Ok(Response::new(proto::FlushArchiveResponse { partitions }))
    }

    async fn ingest_stream(
        &self,
        request: Request<Streaming<proto::IngestRequest>>,
    ) -> Result<Response<proto::IngestStreamResponse>, Status> {
        let mut requests = request.into_inner();
        let mut response = proto::IngestStreamResponse::default();
        while let Some(request) = requests.message().await? {
            let batches_done = response.batches.len() as u64;
            let batch = self
                .ingest_counted(request, || {
                    let mut metadata = MetadataMap::new();
                    metadata.insert(BATCHES_DONE_METADATA, MetadataValue::from(batches_done));
                    metadata
                })
                .await?;
            response.accepted += batch.accepted;
            response.rejected += batch.rejected;
            response.batches.push(batch);
        }
        Ok(Response::new(response))
    }
}

/// The status of a failed request, with the retry hint when busy.
fn status(failure: &IngestFailure, mut metadata: MetadataMap) -> Status {
    let code = match failure {
        IngestFailure::UnknownStream { .. } => Code::NotFound,
        IngestFailure::Busy { retry_after, .. } => {
            metadata.insert(
                RETRY_AFTER_MS_METADATA,
                MetadataValue::from(retry_after.as_millis() as u64),
            );
            Code::ResourceExhausted
        }
        IngestFailure::TooLarge { .. } => Code::OutOfRange,
        IngestFailure::NoEvents | IngestFailure::BadBody(_) | IngestFailure::ReadBody(_) => {
            Code::InvalidArgument
        }
        // HTTP's body timeouts; gRPC streams are watched by HTTP/2 keepalive instead.
        IngestFailure::BodyStalled { .. } | IngestFailure::BodyTooSlow { .. } => {
            Code::DeadlineExceeded
        }
        IngestFailure::Append { .. } => Code::Unavailable,
        IngestFailure::Validation(_) => Code::Internal,
    };
    if matches!(code, Code::Unavailable | Code::Internal) {
        warn!(error = %failure, "ingest request failed");
    }
    Status::with_metadata(code, failure.to_string(), metadata)
}
