#!/usr/bin/env bash
# Window benchmark (issue 3): prints `BENCH <name> <value> <unit>` lines on stdout, progress on
# stderr. Three jobs, per key COUNT/SUM/MIN/MAX/AVG(value): TUMBLE 1 min, HOP 10 s / 1 min and
# SESSION 10 s, watermark lag 5 s, over a deterministic Parquet file of BENCH_EVENTS events
# (default 10,000,000; 5,000 per event-time second, 10,000 keys, 5% shifted back by up to 5 s).
# Figures, best of BENCH_RUNS (default 3): live_* (the window operator fed the file's batches from
# memory), recompute_* (runnel_engine::recompute over the registered file, reading included),
# duckdb_* (DuckDB from PyPI, the same GROUP BYs on the same file), state_bytes_per_window, and
# the ratios ours / DuckDB. A figure that fails prints `BENCH <name> unavailable (<reason>)`.
# The data file and the Python venv stay in ${RUNNEL_CACHE:-$HOME/.cache/runnel}.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

RUNNEL_CACHE="${RUNNEL_CACHE:-$HOME/.cache/runnel}"
export BENCH_EVENTS="${BENCH_EVENTS:-10000000}"
export BENCH_RUNS="${BENCH_RUNS:-3}"
# The bench binary names the file the same way when BENCH_DATA is unset.
export BENCH_DATA="${BENCH_DATA:-$RUNNEL_CACHE/bench-windows/events-v1-$BENCH_EVENTS.parquet}"
VENV="$RUNNEL_CACHE/bench-venv"
DUCKDB_VERSION="${BENCH_DUCKDB_VERSION:-1.5.6}"
LIVE_FIGURES=(live_tumble live_hop live_session)
RECOMPUTE_FIGURES=(recompute_tumble recompute_hop recompute_session)
DUCKDB_FIGURES=(duckdb_tumble duckdb_hop duckdb_session)

work_dir="$(mktemp -d "${TMPDIR:-/tmp}/runnel-bench-windows.XXXXXX")"
trap 'rm -rf "$work_dir"' EXIT
declare -A values=()
# shellcheck source=scripts/lib/bench.sh
source scripts/lib/bench.sh

echo "==> building the benchmark (release)" >&2
bench_bin=""
build_error="build failed"
if cargo bench -p runnel-engine --bench windows --no-run --message-format=json-render-diagnostics \
  >"$work_dir/build.json"; then
  bench_bin="$(python3 -c '
import json, sys
for line in open(sys.argv[1]):
    message = json.loads(line)
    if message.get("reason") == "compiler-artifact" and message["target"]["name"] == "windows" \
            and message.get("executable"):
        print(message["executable"])
' "$work_dir/build.json")"
  [[ -n "$bench_bin" ]] || build_error="no executable in cargo's output"
fi

data_ready=0
if [[ -n "$bench_bin" ]]; then
  echo "==> data: $BENCH_DATA" >&2
  if "$bench_bin" generate >&2; then
    data_ready=1
  fi
elif [[ -f "$BENCH_DATA" ]]; then
  # Without the binary the cached file (written by an earlier build) still serves DuckDB.
  echo "==> no benchmark binary; using the cached $BENCH_DATA for DuckDB" >&2
  data_ready=1
fi

for name in "${LIVE_FIGURES[@]}" "${RECOMPUTE_FIGURES[@]}" state_bytes_per_window; do
  if [[ -z "$bench_bin" ]]; then
    unavailable "$name" "$build_error"
  elif ((data_ready == 0)); then
    unavailable "$name" "could not generate $BENCH_DATA"
  else
    run_figures "$name" "$bench_bin" "$name"
  fi
done

duckdb_error=""
if ((data_ready == 0)); then
  duckdb_error="no data file"
elif ! "$VENV/bin/python" -c "import duckdb, sys; sys.exit(duckdb.__version__ != '$DUCKDB_VERSION')" 2>/dev/null; then
  echo "==> installing duckdb $DUCKDB_VERSION into $VENV" >&2
  if ! { python3 -m venv "$VENV" && "$VENV/bin/pip" install --quiet "duckdb==$DUCKDB_VERSION"; } >&2; then
    duckdb_error="could not install duckdb $DUCKDB_VERSION into $VENV"
  fi
fi
if [[ -n "$duckdb_error" ]]; then
  for name in "${DUCKDB_FIGURES[@]}"; do
    unavailable "$name" "$duckdb_error"
  done
else
  run_figures "${DUCKDB_FIGURES[*]}" \
    "$VENV/bin/python" scripts/lib/bench_windows_duckdb.py "$BENCH_DATA" "$BENCH_EVENTS" "$BENCH_RUNS"
fi

# Ratios of events/s, ours over DuckDB's: above 1 means faster than DuckDB.
for mode in live recompute; do
  for job in tumble hop session; do
    ratio "${mode}_${job}_vs_duckdb" "${mode}_$job" "duckdb_$job"
  done
done
