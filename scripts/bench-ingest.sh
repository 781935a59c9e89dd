#!/usr/bin/env bash
# Ingest benchmark (issue 4): prints `BENCH <name> <value> <unit>` lines on stdout, progress on
# stderr. The ingest service runs as its own process (release build) on the embedded log in a
# temporary folder, archiver off; a separate load-generator process
# (e2e-tests/benches/ingest_load.rs) sends ~100-byte events of the default `clicks`
# stream (4 partitions, keyed by user) over loopback and counts the events the service
# acknowledged, that is, fsynced in the log.
# grpc_ingest: unary Ingest calls of BENCH_INGEST_BATCH events (default 1000),
#   BENCH_INGEST_CONNECTIONS connections (default 4) with 2 calls in flight on each.
# http_ingest: POST /v1/streams/clicks/events with NDJSON bodies of the same batches,
#   BENCH_INGEST_HTTP_CONNECTIONS keep-alive connections (default 8).
# Each figure is measured over BENCH_INGEST_SECONDS (default 10) after a 2 s warm-up.
# archive, hybrid_read: see the end of this script.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

SECONDS_MEASURED="${BENCH_INGEST_SECONDS:-10}"
BATCH="${BENCH_INGEST_BATCH:-1000}"
CONNECTIONS="${BENCH_INGEST_CONNECTIONS:-4}"
HTTP_CONNECTIONS="${BENCH_INGEST_HTTP_CONNECTIONS:-8}"
TARGET_DIR="${CARGO_TARGET_DIR:-target}"

echo "==> building the ingest service and the load generator (release)" >&2
# shellcheck source=scripts/lib/bench.sh
source scripts/lib/bench.sh
ingest_load="$(build_bench_driver ingest_load -p runnel-ingest --bin runnel-ingest)"
[[ -n "$ingest_load" ]] || { echo "the load generator did not build" >&2; exit 1; }

work_dir="$(mktemp -d "${TMPDIR:-/tmp}/runnel-bench-ingest.XXXXXX")"
service_pid=""
cleanup() {
  if [[ -n "$service_pid" ]]; then
    kill "$service_pid" 2>/dev/null || true
    wait "$service_pid" 2>/dev/null || true
  fi
  rm -rf "$work_dir"
}
trap cleanup EXIT

echo "==> starting the ingest service on the embedded log in $work_dir" >&2
RUNNEL__STORAGE__DATA_DIR="$work_dir/data" \
  RUNNEL__INGEST__LISTEN="127.0.0.1:0" \
  RUNNEL__INGEST__RUN_ARCHIVER=false \
  RUST_LOG=info \
  "$TARGET_DIR/release/runnel-ingest" --log-json 2>"$work_dir/service.log" &
service_pid=$!
address=""
for _ in $(seq 1 300); do
  address="$(grep -o '"address":"[^"]*"' "$work_dir/service.log" | head -n1 | cut -d'"' -f4 || true)"
  [[ -n "$address" ]] && break
  if ! kill -0 "$service_pid" 2>/dev/null; then
    cat "$work_dir/service.log" >&2
    echo "the ingest service exited before listening" >&2
    exit 1
  fi
  sleep 0.1
done
if [[ -z "$address" ]]; then
  echo "the ingest service did not report its address" >&2
  exit 1
fi
echo "==> ingest service listening on $address" >&2

load() {
  "$ingest_load" --url "http://$address" --batch-size "$BATCH" \
    --duration "${SECONDS_MEASURED}s" "$@"
}

echo "==> gRPC: $CONNECTIONS connections x 2 calls in flight, $BATCH events per call" >&2
load --api grpc --connections "$CONNECTIONS" --in-flight 2
echo "==> HTTP: $HTTP_CONNECTIONS connections, $BATCH events per request" >&2
load --api http --connections "$HTTP_CONNECTIONS"

kill "$service_pid" 2>/dev/null || true
wait "$service_pid" 2>/dev/null || true
service_pid=""

# archive, hybrid_read (and decode_baseline, the same records read from the log and decoded
# with nothing written, measured in the same run): libs/archive/benches/history.rs over
# BENCH_ARCHIVE_EVENTS (default 2,000,000) events in a temporary embedded log.
echo "==> archive and hybrid_read: cargo bench -p runnel-archive --bench history" >&2
RUNNEL_BENCH_EVENTS="${BENCH_ARCHIVE_EVENTS:-2000000}" \
  cargo bench --quiet -p runnel-archive --bench history
