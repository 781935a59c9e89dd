#!/usr/bin/env bash
# Serving benchmark: prints `BENCH <name> <value> <unit>` lines on stdout, progress on stderr.
# The driver is e2e-tests/benches/serving_bench.rs (release build): ingest, the
# stream-processor and serving run in its one process on a fresh embedded log in a temporary
# folder, and it talks to them over loopback gRPC as a client would.
#
# query_p50_ms, query_p99_ms, query_qps: QueryWindows of a random user (all its windows), with
#   BENCH_SERVING_KEYS (default 100,000) users held by serving, 3 one-minute windows each. The
#   data goes into `clicks` straight through the log; the live stream-processor computes
#   the final results into the job's results topic and serving reads them into its speed
#   view (waited for with ListJobs). The load is open loop: BENCH_SERVING_QPS (default
#   10,000) calls a second on a fixed schedule, kept by a thread of the driver's own, spread
#   round robin over 4 HTTP/2 connections, 2 s of warm-up then BENCH_SERVING_SECONDS
#   (default 10) counted. A call's latency runs from its scheduled send time to its answer,
#   so a stall counts for every call scheduled during it (no coordinated omission).
#   query_qps is the calls answered right a second over the counted span (or until the last
#   of them was answered, if later). A call not answered in 5 s counts as 5 s and as failed;
#   over 1% failed or wrong answers and the figures are unavailable.
# query_baseline_p50_ms, query_baseline_p99_ms, query_baseline_qps: the same load with
#   grpc.health.v1.Health/Check instead, just before, on the same connections in the same
#   process: the floor of a gRPC call over loopback on this (noisy, shared 2-core) machine,
#   where client and server share the cores. query_p50_vs_baseline and
#   query_p99_vs_baseline are the ratios.
# e2e_p50_ms, e2e_p99_ms: one user's events sent one at a time through the ingest gRPC API,
#   one every 50 ms for BENCH_SERVING_E2E_SECONDS (default 20) after a 1 s warm-up, to a
#   per-user COUNT over one-minute tumbling windows with early-emit-interval = "1s"
#   (max-out-of-orderness 500 ms), while a Subscribe call filtered to that user is open. An
#   event's latency runs from the return of its Ingest call (the acknowledgement: the event is
#   durable in the log) to the arrival on the Subscribe stream of the first update of its
#   window whose COUNT includes it. Each event's event time is one second after the one
#   before, so every event moves the watermark across an early-emission point and its result
#   is due at once: the figure is the pipeline's delay (ingest's log append to the
#   stream-processor's read, the operator, the results append, serving's read, the
#   broadcast and the gRPC stream), not the wait for the next emission point that events
#   with wall-clock times would add (up to the 1 s interval, by design).
# e2e_processes_p50_ms, e2e_processes_p99_ms: the same with ingest, the stream-processor and
#   serving as three `runnel` processes (release) on one embedded log folder: ingest writes
#   the stream's partitions and the stream-processor the results', and each other process
#   follows them through the partitions' `published` files (re-read every 5 ms while a
#   reader waits), so each hop between processes adds up to that poll interval.
#
# Goals: query_p99_ms < 2 at 10,000 queries/s; e2e_p99_ms < 200. A figure that cannot be
# measured prints `BENCH <name> unavailable (<reason>)`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

QPS="${BENCH_SERVING_QPS:-10000}"
SECONDS_MEASURED="${BENCH_SERVING_SECONDS:-10}"
KEYS="${BENCH_SERVING_KEYS:-100000}"
E2E_SECONDS="${BENCH_SERVING_E2E_SECONDS:-20}"
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
QUERY_NAMES="query_baseline_p50_ms query_baseline_p99_ms query_baseline_qps query_p50_ms query_p99_ms query_qps"
E2E_NAMES="e2e_p50_ms e2e_p99_ms"
E2E_PROCESS_NAMES="e2e_processes_p50_ms e2e_processes_p99_ms"

work_dir="$(mktemp -d "${TMPDIR:-/tmp}/runnel-bench-serving.XXXXXX")"
trap 'rm -rf "$work_dir"' EXIT
declare -A values=()
# shellcheck source=scripts/lib/bench.sh
source scripts/lib/bench.sh

echo "==> building the serving_bench driver and runnel (release)" >&2
if ! bench_bin="$(build_bench_driver serving_bench -p runnel --bin runnel)" || [[ -z "$bench_bin" ]]; then
  for name in $QUERY_NAMES $E2E_NAMES $E2E_PROCESS_NAMES query_p50_vs_baseline query_p99_vs_baseline; do
    unavailable "$name" "release build failed"
  done
  exit 1
fi
export RUST_LOG="${RUST_LOG:-warn}"
# A failure's last stderr line is its reason (run_figures), not the end of a backtrace.
export RUST_LIB_BACKTRACE=0

echo "==> query: $KEYS users held, QueryWindows at $QPS/s for ${SECONDS_MEASURED}s, health check baseline" >&2
run_figures "$QUERY_NAMES" "$bench_bin" --dir "$work_dir/query" query \
  --keys "$KEYS" --qps "$QPS" --seconds "$SECONDS_MEASURED"
ratio query_p50_vs_baseline query_p50_ms query_baseline_p50_ms
ratio query_p99_vs_baseline query_p99_ms query_baseline_p99_ms

echo "==> e2e: ingest acknowledgement to Subscribe update, early results every 1s, ${E2E_SECONDS}s" >&2
run_figures "$E2E_NAMES" "$bench_bin" --dir "$work_dir/e2e" e2e --seconds "$E2E_SECONDS"

echo "==> e2e_processes: the same with the services as three runnel processes on one embedded log" >&2
run_figures "$E2E_PROCESS_NAMES" "$bench_bin" --dir "$work_dir/e2e-processes" e2e \
  --seconds "$E2E_SECONDS" --processes "$TARGET_DIR/release/runnel"
