//! `runnel.serving.v1.Serving` over the views.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::{Stream, StreamExt};
use object_store::ObjectStore;
use runnel_config::Config;
use runnel_log::Log;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tonic::{Request, Response, Status};

use crate::proto::{self, ViewSource};
use crate::views::{Answer, JobView, Jobs, VersionView, Window};
use runnel_proto::common::v1::value::Kind;

/// The service's state.
pub(crate) struct GrpcServing {
    pub jobs: Arc<Jobs>,
    pub config: Arc<Config>,
    pub log: Arc<dyn Log>,
    pub store: Arc<dyn ObjectStore>,
}

type ResultStream = Pin<Box<dyn Stream<Item = Result<proto::WindowResult, Status>> + Send>>;

fn result(job: &str, version: u32, (window, source): &Answer) -> proto::WindowResult {
    result_of(job, version, window, *source)
}

fn result_of(job: &str, version: u32, window: &Window, source: ViewSource) -> proto::WindowResult {
    proto::WindowResult {
        job: job.to_string(),
        job_version: version,
        key: window.key.to_string(),
        window_start_ms: window.start,
        window_end_ms: window.end,
        values: window.values.clone(),
        version: window.version,
        r#final: window.is_final,
        source: source as i32,
    }
}

/// A key filter as the `_key` text results carry: a JSON array as given; a JSON scalar or
/// bare text as the one-element array.
pub(crate) fn key_text(field: &str, text: &str) -> Result<String, Status> {
    let text = text.trim();
    if text.is_empty() {
        return Err(Status::invalid_argument(format!(
            "{field}: a key is required"
        )));
    }
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Array(_)) => Ok(text.to_string()),
        Ok(serde_json::Value::Object(_)) => Err(Status::invalid_argument(format!(
            "{field}: `{text}` is an object; a key is a JSON array or one value"
        ))),
        Ok(_) => Ok(format!("[{text}]")),
        Err(_) => {
            let mut quoted = String::from("[\"");
            for ch in text.chars() {
                match ch {
                    '"' => quoted.push_str("\\\""),
                    '\\' => quoted.push_str("\\\\"),
                    ch if ch.is_control() => quoted.push_str(&format!("\\u{:04x}", ch as u32)),
                    ch => quoted.push(ch),
                }
            }
            quoted.push_str("\"]");
            Ok(quoted)
        }
    }
}

fn encode_token(key: &str) -> String {
    key.bytes().map(|byte| format!("{byte:02x}")).collect()
}

fn decode_token(token: &str) -> Result<String, Status> {
    let invalid = || Status::invalid_argument("page_token: not a token this service issued");
    if !token.len().is_multiple_of(2) {
        return Err(invalid());
    }
    let bytes = (0..token.len())
        .step_by(2)
        .map(|at| {
            token
                .get(at..at + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
        })
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(invalid)?;
    String::from_utf8(bytes).map_err(|_| invalid())
}

impl GrpcServing {
    fn job(&self, name: &str) -> Result<Arc<JobView>, Status> {
        if name.is_empty() {
            return Err(Status::invalid_argument("job: a job name is required"));
        }
        self.jobs.get(name).ok_or_else(|| {
            let declared: Vec<String> =
                self.jobs.all().iter().map(|job| job.name.clone()).collect();
            Status::not_found(format!(
                "job: `{name}` is not declared (declared: {})",
                if declared.is_empty() {
                    "none".to_string()
                } else {
                    declared.join(", ")
                }
            ))
        })
    }

    /// The version `requested` (0: the active one) of `job`, once its speed view is rebuilt.
    fn version(&self, job: &JobView, requested: u32) -> Result<Arc<VersionView>, Status> {
        let view = if requested == 0 {
            job.active()
                .ok_or_else(|| Status::not_found(format!("job `{}` has no version", job.name)))?
        } else {
            job.version(requested).ok_or_else(|| {
                Status::not_found(format!(
                    "version: job `{}` has no version {requested} (declared or registered: {})",
                    job.name,
                    job.versions()
                        .iter()
                        .map(|view| view.version.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?
        };
        if !view.ready.load(Ordering::Acquire) {
            return Err(Status::unavailable(format!(
                "job `{}` version {}: the speed view is still being rebuilt from its results topic",
                job.name, view.version
            )));
        }
        Ok(view)
    }

    fn page_size(&self, field: &str, requested: u32) -> Result<usize, Status> {
        let serving = &self.config.serving;
        match requested {
            0 => Ok(serving.default_page_size as usize),
            size if size > serving.max_page_size => Err(Status::invalid_argument(format!(
                "{field}: {size} is over the maximum of {}",
                serving.max_page_size
            ))),
            size => Ok(size as usize),
        }
    }

    async fn version_info(&self, view: &VersionView) -> Result<proto::JobVersionInfo, Status> {
        let unavailable = |error: String| Status::unavailable(error);
        let partitions = self
            .log
            .partition_count(&view.source_topic)
            .await
            .map_err(|error| unavailable(error.to_string()))?;
        let mut watermark: Option<i64> = None;
        let mut all_checkpointed = true;
        let mut lag = 0u64;
        for partition in 0..partitions {
            let checkpoint = runnel_jobs::checkpoint::latest_checkpoint(
                self.store.as_ref(),
                &self.config.stream_processor.checkpoint_prefix,
                &view.id,
                partition,
            )
            .await
            .map_err(|error| unavailable(error.to_string()))?;
            let end = self
                .log
                .latest_offset(&view.source_topic, partition)
                .await
                .map_err(|error| unavailable(error.to_string()))?;
            match checkpoint {
                Some(checkpoint) => {
                    watermark = Some(
                        watermark.map_or(checkpoint.watermark, |w| w.min(checkpoint.watermark)),
                    );
                    lag += end.saturating_sub(checkpoint.source_offset);
                }
                None => {
                    all_checkpointed = false;
                    let earliest = self
                        .log
                        .earliest_offset(&view.source_topic, partition)
                        .await
                        .map_err(|error| unavailable(error.to_string()))?;
                    lag += end.saturating_sub(earliest);
                }
            }
        }
        let failure = runnel_jobs::checkpoint::job_failure(
            self.store.as_ref(),
            &self.config.stream_processor.checkpoint_prefix,
            &view.id,
        )
        .await
        .map_err(|error| unavailable(error.to_string()))?
        .map(|failure| {
            format!(
                "failed after {} restarts: {}",
                failure.restarts, failure.error
            )
        });
        let (speed, batch) = view.sizes();
        Ok(proto::JobVersionInfo {
            failure,
            version: view.version,
            watermark_ms: watermark.filter(|_| all_checkpointed),
            lag_records: lag,
            batch_horizon_ms: view.horizon(),
            speed_windows: speed as u64,
            batch_windows: batch as u64,
            ready: view.ready.load(Ordering::Acquire),
            column_names: view.layout.columns.clone(),
        })
    }
}

#[tonic::async_trait]
impl proto::serving_server::Serving for GrpcServing {
    async fn query_windows(
        &self,
        request: Request<proto::QueryWindowsRequest>,
    ) -> Result<Response<proto::QueryWindowsResponse>, Status> {
        let request = request.into_inner();
        let job = self.job(&request.job)?;
        let key = key_text("key", &request.key)?;
        let to = if request.to_ms == 0 {
            i64::MAX
        } else {
            request.to_ms
        };
        if request.from_ms >= to {
            return Err(Status::invalid_argument(format!(
                "to_ms: {} is not after from_ms ({})",
                request.to_ms, request.from_ms
            )));
        }
        let view = self.version(&job, 0)?;
        let windows = view
            .key_windows(&key, &(request.from_ms..to))
            .iter()
            .map(|answer| result(&job.name, view.version, answer))
            .collect();
        Ok(Response::new(proto::QueryWindowsResponse {
            windows,
            column_names: view.layout.columns.clone(),
        }))
    }

    async fn get_window(
        &self,
        request: Request<proto::GetWindowRequest>,
    ) -> Result<Response<proto::GetWindowResponse>, Status> {
        let request = request.into_inner();
        let job = self.job(&request.job)?;
        let size = self.page_size("page_size", request.page_size)?;
        let after = if request.page_token.is_empty() {
            None
        } else {
            Some(decode_token(&request.page_token)?)
        };
        let view = self.version(&job, 0)?;
        let (answers, more) = view.window_keys(request.window_start_ms, after.as_deref(), size);
        let next_page_token = match (more, answers.last()) {
            (true, Some((last, _))) => encode_token(&last.key),
            _ => String::new(),
        };
        Ok(Response::new(proto::GetWindowResponse {
            windows: answers
                .iter()
                .map(|answer| result(&job.name, view.version, answer))
                .collect(),
            next_page_token,
            column_names: view.layout.columns.clone(),
        }))
    }

    async fn top_k(
        &self,
        request: Request<proto::TopKRequest>,
    ) -> Result<Response<proto::TopKResponse>, Status> {
        let request = request.into_inner();
        let job = self.job(&request.job)?;
        if request.k == 0 {
            return Err(Status::invalid_argument("k: must be at least 1"));
        }
        let k = self.page_size("k", request.k)?;
        let view = self.version(&job, 0)?;
        let column = view
            .layout
            .columns
            .iter()
            .position(|name| name == &request.order_by)
            .ok_or_else(|| {
                Status::invalid_argument(format!(
                    "order_by: job `{}` has no result column `{}` (columns: {})",
                    job.name,
                    request.order_by,
                    view.layout.columns.join(", ")
                ))
            })?;
        let field = view.layout.schema.field(column);
        if !(field.data_type().is_numeric()
            || matches!(
                field.data_type(),
                arrow::datatypes::DataType::Timestamp(_, _)
            ))
        {
            return Err(Status::invalid_argument(format!(
                "order_by: column `{}` is {}, not a number or timestamp",
                request.order_by,
                field.data_type()
            )));
        }
        let (mut answers, _) = view.window_keys(request.window_start_ms, None, usize::MAX);
        let rank = |(window, _): &Answer| -> Option<f64> {
            match window
                .values
                .get(column)
                .and_then(|value| value.kind.as_ref())
            {
                #[allow(clippy::cast_precision_loss)]
                Some(Kind::Int64Value(value) | Kind::TimestampMs(value)) => Some(*value as f64),
                Some(Kind::Float64Value(value)) => Some(*value),
                _ => None,
            }
        };
        // Nulls last, ties by key.
        answers.sort_by(|a, b| {
            let order = match (rank(a), rank(b)) {
                (Some(x), Some(y)) if request.ascending => x.total_cmp(&y),
                (Some(x), Some(y)) => y.total_cmp(&x),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (None, None) => std::cmp::Ordering::Equal,
            };
            order.then_with(|| a.0.key.cmp(&b.0.key))
        });
        answers.truncate(k);
        Ok(Response::new(proto::TopKResponse {
            windows: answers
                .iter()
                .map(|answer| result(&job.name, view.version, answer))
                .collect(),
            column_names: view.layout.columns.clone(),
        }))
    }

    async fn list_jobs(
        &self,
        _request: Request<proto::ListJobsRequest>,
    ) -> Result<Response<proto::ListJobsResponse>, Status> {
        let mut jobs = Vec::new();
        for job in self.jobs.all() {
            let mut versions = Vec::new();
            for view in job.versions() {
                versions.push(self.version_info(&view).await?);
            }
            jobs.push(proto::JobInfo {
                name: job.name.clone(),
                active_version: job.active.load(Ordering::Acquire),
                versions,
            });
        }
        Ok(Response::new(proto::ListJobsResponse { jobs }))
    }

    type SubscribeStream = ResultStream;

    async fn subscribe(
        &self,
        request: Request<proto::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let request = request.into_inner();
        let job = self.job(&request.job)?;
        let key = if request.key.trim().is_empty() {
            None
        } else {
            Some(key_text("key", &request.key)?)
        };
        self.version(&job, 0)?;
        let updates = BroadcastStream::new(job.updates.subscribe());
        let name = job.name.clone();
        let stream = updates
            .filter_map(move |update| {
                let answer = match update {
                    Ok(update) => {
                        let wanted = update.version == job.active.load(Ordering::Acquire)
                            && key.as_deref().is_none_or(|key| *update.window.key == *key);
                        wanted.then(|| {
                            Ok(result_of(
                                &name,
                                update.version,
                                &update.window,
                                ViewSource::Speed,
                            ))
                        })
                    }
                    Err(BroadcastStreamRecvError::Lagged(missed)) => {
                        Some(Err(Status::resource_exhausted(format!(
                            "the subscriber fell {missed} updates behind and was dropped; \
                             query the current results and subscribe again"
                        ))))
                    }
                };
                futures::future::ready(answer)
            })
            // A lagging subscriber's error ends its stream.
            .scan(false, |ended, item| {
                let next = if *ended { None } else { Some(item) };
                *ended = matches!(next, Some(Err(_)));
                futures::future::ready(next)
            });
        Ok(Response::new(Box::pin(stream)))
    }

    type ExportResultsStream = ResultStream;

    async fn export_results(
        &self,
        request: Request<proto::ExportResultsRequest>,
    ) -> Result<Response<Self::ExportResultsStream>, Status> {
        let request = request.into_inner();
        let job = self.job(&request.job)?;
        let view = self.version(&job, request.version)?;
        let (name, version) = (job.name.clone(), view.version);
        let answers = view.all();
        let stream =
            futures::stream::iter(answers).map(move |answer| Ok(result(&name, version, &answer)));
        Ok(Response::new(Box::pin(stream)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_filters_become_the_key_text_of_results() {
        assert_eq!(key_text("key", "u1").expect("valid"), r#"["u1"]"#);
        assert_eq!(key_text("key", r#""u1""#).expect("valid"), r#"["u1"]"#);
        assert_eq!(key_text("key", "42").expect("valid"), "[42]");
        assert_eq!(
            key_text("key", r#"[42,"de"]"#).expect("valid"),
            r#"[42,"de"]"#
        );
        assert_eq!(key_text("key", r#"a"b"#).expect("valid"), r#"["a\"b"]"#);
        let refused = key_text("key", " ").unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        assert!(
            refused.message().starts_with("key:"),
            "{}",
            refused.message()
        );
        assert!(key_text("key", r#"{"a":1}"#).is_err());
    }

    #[test]
    fn page_tokens_round_trip_and_foreign_ones_are_refused() {
        let key = r#"["ü",1]"#;
        assert_eq!(decode_token(&encode_token(key)).expect("valid"), key);
        for foreign in ["abc", "zz", "ff"] {
            assert_eq!(
                decode_token(foreign).unwrap_err().code(),
                tonic::Code::InvalidArgument
            );
        }
    }
}
