#!/usr/bin/env bash
# Stream-processor benchmark (issue 5): prints `BENCH <name> <value> <unit>` lines on stdout,
# progress on stderr. The driver is e2e-tests/benches/stream_bench.rs.
#
# Data: BENCH_STREAM_EVENTS (default 5,000,000) events of the default `clicks` stream
# (4 partitions, keyed by user_id), ~108 bytes of JSON each, written straight into an embedded
# log in a temporary folder, shaped as scripts/bench-windows.sh's data (5,000 per event-time
# second, 10,000 users, 5% shifted back by up to 5 s). The jobs are bench-windows.sh's three,
# per user COUNT/SUM/MIN/MAX/AVG(duration_ms): TUMBLE 1 min, HOP 10 s / 1 min, SESSION 10 s,
# watermark lag 5 s (max-out-of-orderness), no allowed lateness.
#
# stream_tumble, stream_hop, stream_session: events/s of the whole service. The release
#   runnel-stream-processor binary is started as its own process with that one job, over the
#   filled log (the page cache holds it), with a checkpoint every BENCH_STREAM_CHECKPOINT_INTERVAL
#   (default 1s; RUNNEL__STREAM_PROCESSOR__CHECKPOINT_INTERVAL). The figure is the number of
#   events over the time from spawning the process until every task's newest checkpoint
#   manifest (data/objects/checkpoints/<job>/<partition>/<epoch>/_checkpoint.json, polled every
#   10 ms) has `source_offset` at its partition's end offset. Nothing is subtracted: process
#   start, opening the log (which scans the newest segment), compiling the job, reading,
#   decoding, the operator, writing results to <job>.results, and the wait for the next
#   checkpoint after the last batch (up to one interval) all count. On stderr, from the
#   service's JSON log and its GET /status: when the job started, when every partition was
#   processed to its end, the rate of the processing alone, and how long /status took to answer.
# decode_baseline: the same log opened, read and decoded to Arrow with arrow_json
#   (EventDecoder::decode_general, the yardstick of every run so far), one task per partition
#   on a two-worker tokio runtime as in the service, no operator, nothing written, in the
#   driver's process (opening the log counted, process start not).
# decode_record_format: the same with EventDecoder::decode, the decoder the service uses
#   (the record format's own parser, falling back to arrow_json).
# stream_<job>_vs_decode: ratios of the two (1 would be the service at the decode floor).
# stage_<job>_<step>: events/s of each step of a task alone, on one thread, one partition
#   after the other: read (log to records), decode (records to Arrow), operator
#   (WindowOperator::process), encode (result rows to keyed JSON, as the service's runnel_jobs::records
#   does; not appended), all (the whole loop). Where the time goes when the service is slow.
#   For the jobs in BENCH_STREAM_STAGES (default "tumble"; empty: none).
# latency_p50_ms, latency_p99_ms: the tumbling job with early-emit-interval 1s, measured IN
#   PROCESS (so that the driver times each append's acknowledgement itself): the driver opens
#   the log, runs the service with runnel_stream_processor::run_with_log on it, and appends BENCH_STREAM_RATE (default
#   100,000) events/s from one generator task (one append at a time, every 5 ms, each
#   waiting for its fsync; event time = the wall clock, 5% shifted back by up to 5 s), while a
#   reader per partition tails <job>.results. Latency of an event = the time from its
#   acknowledgement (its `append` call returned) to the moment a results reader first
#   returned a result record for the event's (user, window) whose COUNT(*) `n` covers it.
#   A user's events sit in one partition in append order, so a result with count n covers
#   exactly that user's first n events of the window. Measured: every event acknowledged
#   during BENCH_STREAM_LATENCY_SECONDS (default 20) after a 5 s warm-up; events keep flowing
#   4 s longer so the watermark crosses the next emission points. An early result appears
#   when the watermark (largest event time less 5 s) crosses a whole second, so the wait for
#   it is up to the 1 s emission interval by design; the goal is p99 < 100 ms + 1 s. Checkpoints
#   are taken every BENCH_STREAM_CHECKPOINT_INTERVAL here too.
# latency_pipeline_p50_ms, latency_pipeline_p99_ms: the same results, timed from the
#   acknowledgement of the event that released them instead: the first event, from the
#   measured one on in its partition, whose event time raised the partition's watermark to the
#   next whole second above the watermark the measured event met (the operator emits the
#   groups changed before it right after it; window ends are whole seconds too). That is the
#   service's own delay (read, decode, operator, results appended and fsynced, read back),
#   without the wait for the emission point; the goal's 100 ms.
#
# stream_tumble_kafka, stream_tumble_kafka_exactly_once: stream_tumble with the events on an
#   Apache Kafka broker (scripts/lib/kafka.sh, one node) instead of the embedded log, at least
#   once and with stream-processor.exactly-once (results in Kafka transactions, committed with
#   the source offsets at each checkpoint); the ratios stream_tumble_kafka_vs_embedded and
#   stream_tumble_exactly_once_vs_at_least_once. BENCH_STREAM_KAFKA=0 leaves them out.
#
# Goal (issue 5): stream_tumble >= 2,000,000 events/s; latency_p99_ms < 1100. A figure that
# fails prints `BENCH <name> unavailable (<reason>)`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

EVENTS="${BENCH_STREAM_EVENTS:-5000000}"
CHECKPOINT_INTERVAL="${BENCH_STREAM_CHECKPOINT_INTERVAL:-1s}"
RATE="${BENCH_STREAM_RATE:-100000}"
LATENCY_SECONDS="${BENCH_STREAM_LATENCY_SECONDS:-20}"
STAGES="${BENCH_STREAM_STAGES-tumble}"
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
JOBS=(tumble hop session)

# shellcheck source=scripts/lib/kafka.sh
source scripts/lib/kafka.sh
work_dir="$(mktemp -d "${TMPDIR:-/tmp}/runnel-bench-stream.XXXXXX")"
trap 'stop_kafka; rm -rf "$work_dir"' EXIT
declare -A values=()
# shellcheck source=scripts/lib/bench.sh
source scripts/lib/bench.sh

all_names() {
  local job step
  echo decode_baseline decode_record_format
  for job in "${JOBS[@]}"; do echo "stream_$job"; done
  for job in $STAGES; do
    for step in read decode operator encode all; do echo "stage_${job}_$step"; done
  done
  echo latency_p50_ms latency_p99_ms latency_pipeline_p50_ms latency_pipeline_p99_ms
}

echo "==> building runnel-stream-processor and the stream_bench driver (release)" >&2
if ! bench_bin="$(build_bench_driver stream_bench -p runnel-stream-processor \
  --bin runnel-stream-processor)" || [[ -z "$bench_bin" ]]; then
  for name in $(all_names); do unavailable "$name" "release build failed"; done
  exit 1
fi
service_bin="$TARGET_DIR/release/runnel-stream-processor"
throughput=("$bench_bin" --dir "$work_dir/throughput")

echo "==> filling an embedded log in $work_dir/throughput with $EVENTS events" >&2
if "${throughput[@]}" fill --events "$EVENTS" >&2; then
  # The log is fsynced; this settles the folder's metadata before anything is timed.
  sync
  echo "==> decode_baseline, decode_record_format" >&2
  run_figures "decode_baseline decode_record_format" "${throughput[@]}" decode
  for job in "${JOBS[@]}"; do
    echo "==> stream_$job: the service process with the one job, checkpoints every $CHECKPOINT_INTERVAL" >&2
    run_figures "stream_$job" "${throughput[@]}" service --bin "$service_bin" --job "$job" \
      --checkpoint-interval "$CHECKPOINT_INTERVAL"
  done
  for job in $STAGES; do
    echo "==> stages of the $job job, one thread" >&2
    run_figures "$(printf "stage_${job}_%s " read decode operator encode all)" \
      "${throughput[@]}" stages --job "$job"
  done
else
  for name in decode_baseline decode_record_format "${JOBS[@]/#/stream_}"; do unavailable "$name" "could not fill the log"; done
  for job in $STAGES; do
    for step in read decode operator encode all; do unavailable "stage_${job}_$step" "could not fill the log"; done
  done
fi

# Ratios of events/s, the service over the decode baseline.
for job in "${JOBS[@]}"; do
  ratio "stream_${job}_vs_decode" "stream_$job" decode_baseline
done

if [[ "${BENCH_STREAM_KAFKA:-1}" == 1 ]]; then
  echo "==> stream_tumble_kafka: the same events on an Apache Kafka broker" >&2
  kafka_names="stream_tumble_kafka stream_tumble_kafka_exactly_once"
  if ensure_kafka >&2 && start_kafka >&2; then
    kafka=("$bench_bin" --dir "$work_dir/kafka")
    if "${kafka[@]}" fill --events "$EVENTS" --kafka "$KAFKA_BOOTSTRAP" >&2; then
      run_figures stream_tumble_kafka "${kafka[@]}" service --bin "$service_bin" --job tumble \
        --checkpoint-interval "$CHECKPOINT_INTERVAL" --kafka "$KAFKA_BOOTSTRAP"
      run_figures stream_tumble_kafka_exactly_once "${kafka[@]}" service --bin "$service_bin" \
        --job tumble --checkpoint-interval "$CHECKPOINT_INTERVAL" --kafka "$KAFKA_BOOTSTRAP" \
        --exactly-once
    else
      for name in $kafka_names; do unavailable "$name" "could not fill Kafka"; done
    fi
    stop_kafka
  else
    for name in $kafka_names; do unavailable "$name" "could not start Kafka"; done
  fi
  ratio stream_tumble_kafka_vs_embedded stream_tumble_kafka stream_tumble
  ratio stream_tumble_exactly_once_vs_at_least_once stream_tumble_kafka_exactly_once stream_tumble_kafka
fi

echo "==> latency: $RATE events/s for ${LATENCY_SECONDS}s measured, tumbling job with early results every 1s, service in process" >&2
RUST_LOG="${RUST_LOG:-warn}" run_figures \
  "latency_p50_ms latency_p99_ms latency_pipeline_p50_ms latency_pipeline_p99_ms" \
  "$bench_bin" --dir "$work_dir/latency" latency --rate "$RATE" \
  --duration "${LATENCY_SECONDS}s" --early-emit-interval 1s \
  --checkpoint-interval "$CHECKPOINT_INTERVAL"
