#!/usr/bin/env bash
# Window benchmark (issues 3 and 20): prints `BENCH <name> <value> <unit>` lines on stdout,
# progress on stderr. Three jobs, per key COUNT/SUM/MIN/MAX/AVG(value): TUMBLE 1 min, HOP 10 s /
# 1 min and SESSION 10 s, watermark lag 5 s, over a deterministic Parquet file of BENCH_EVENTS
# events (default 10,000,000; 5,000 per event-time second, 10,000 keys, 5% shifted back by up to
# 5 s, so no event is late; `event_time` is an Int64 of epoch milliseconds).
# Figures, best of BENCH_RUNS (default 3), for <w> in tumble, hop and session:
#   live_<w>, recompute_<w>  in process: the window operator fed the file's batches from memory,
#                  and runnel_engine::recompute over the registered file, reading included
#   duckdb_<w>     DuckDB from PyPI, the same GROUP BYs on the same file, folded into a checksum
#   state_bytes_per_window, and the ratios live_<w>_vs_duckdb, recompute_<w>_vs_duckdb
#   run_live_<w>, run_recompute_<w>  the whole `runnel run --mode live|recompute` process (the
#                  release CLI) over the file, writing its results to Parquet, by wall clock;
#                  live with --max-out-of-orderness 5s and no allowed lateness
#   duckdb_write_<w>  DuckDB (`bench_windows_duckdb.py --copy`, one process per job): a new
#                  connection, `SET threads`, `COPY (<job query>) TO '<file>.parquet'`, by wall
#                  clock; Python's start and `import duckdb` are not in the time
#   <each of those>_rss  peak RSS in MiB: the largest of runnel run's runs (from wait4), the
#                  DuckDB process's over its runs (Python's own few MiB included)
#   run_live_<w>_vs_duckdb, run_recompute_<w>_vs_duckdb  ours / duckdb_write_<w>
# All ratios are of events/s, ours over DuckDB's: above 1 means faster than DuckDB. DuckDB gets
# `nproc` threads; runnel run's live mode runs with its default shard count (see `runnel run
# --help`), or BENCH_WINDOWS_SHARDS shards when set; recompute uses every core as it is.
# Not timed: the row count and sum(n) of runnel's recompute results, and of its live results
# (all rows, and the `_final` ones), are compared with DuckDB's; a difference is a warning on
# stderr. Result files go to a scratch folder and are deleted.
# BENCH_WINDOWS_OPERATOR=0 leaves out the in-process figures (and the build of their benchmark,
# which resolves other features than the CLI and so compiles DataFusion again); the data file
# must then be in the cache already.
# A figure that fails prints `BENCH <name> unavailable (<reason>)`.
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
JOBS=(tumble hop session)
THREADS="$(nproc)"

work_dir="$(mktemp -d "${TMPDIR:-/tmp}/runnel-bench-windows.XXXXXX")"
trap 'rm -rf "$work_dir"' EXIT
declare -A values=()
# shellcheck source=scripts/lib/bench.sh
source scripts/lib/bench.sh

bench_bin=""
build_error="build failed"
if [[ "${BENCH_WINDOWS_OPERATOR:-1}" == 0 ]]; then
  build_error="skipped (BENCH_WINDOWS_OPERATOR=0)"
elif echo "==> building the benchmark (release)" >&2 &&
  cargo bench -p runnel-engine --bench windows --no-run --message-format=json-render-diagnostics \
    >"$work_dir/build.json"; then
  bench_bin="$(cargo_executable windows bench <"$work_dir/build.json")"
  [[ -n "$bench_bin" ]] || build_error="no executable in cargo's output"
fi

echo "==> building runnel (release)" >&2
runnel_bin=""
runnel_error="runnel build failed"
if ! runnel_bin="$(build_release_bin runnel runnel)"; then
  runnel_bin=""
elif [[ -z "$runnel_bin" ]]; then
  runnel_error="no runnel executable in cargo's output"
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

# The SQL of the bench's jobs (libs/engine/benches/windows.rs, Job::sql): `runnel run` takes
# the stream from the FROM and the schema from the Parquet file.
job_sql() {
  local window
  case "$1" in
    tumble) window="TUMBLE(events, event_time, INTERVAL '1' MINUTE)" ;;
    hop) window="HOP(events, event_time, INTERVAL '10' SECOND, INTERVAL '1' MINUTE)" ;;
    session) window="SESSION(events, event_time, INTERVAL '10' SECOND)" ;;
  esac
  printf '%s\n' \
    "SELECT key, window_start, window_end, COUNT(*) AS n, SUM(value) AS total, MIN(value) AS lo, MAX(value) AS hi, AVG(value) AS mean" \
    "FROM $window" \
    "GROUP BY key, window_start, window_end"
}

# Prints `<rows> <sum of n>` of a results file ([final]: of its `_final` rows), or nothing.
count_results() {
  [[ -z "$duckdb_error" && -f "$1" ]] || return 0
  "$VENV/bin/python" scripts/lib/bench_windows_duckdb.py --count "$@" || true
}

# Warns on stderr when runnel's counts ($2) differ from DuckDB's ($3).
check_counts() {
  local what="$1" ours="$2" theirs="$3"
  if [[ -z "$ours" || -z "$theirs" ]]; then
    echo "==> check $what: skipped (no counts)" >&2
  elif [[ "$ours" != "$theirs" ]]; then
    echo "WARNING: $what: runnel has $ours (rows, sum(n)), DuckDB $theirs" >&2
  else
    echo "==> check $what: $ours (rows, sum(n)) as DuckDB" >&2
  fi
}

live_flags=(--max-out-of-orderness 5s --allowed-lateness 0s)
if [[ -n "${BENCH_WINDOWS_SHARDS:-}" ]]; then
  live_flags+=(--shards "$BENCH_WINDOWS_SHARDS")
fi
echo "==> whole processes: $THREADS threads; runnel run live ${live_flags[*]}" >&2
for job in "${JOBS[@]}"; do
  job_sql "$job" >"$work_dir/$job.sql"
  for mode in live recompute; do
    name="run_${mode}_$job"
    if [[ -z "$runnel_bin" ]]; then
      unavailable "$name" "$runnel_error"
      unavailable "${name}_rss" "$runnel_error"
    elif ((data_ready == 0)); then
      unavailable "$name" "no data file"
      unavailable "${name}_rss" "no data file"
    else
      flags=()
      if [[ "$mode" == live ]]; then
        flags=("${live_flags[@]}")
      fi
      echo "==> $name" >&2
      run_figures "$name ${name}_rss" \
        python3 scripts/lib/bench_process.py "$name" "$BENCH_EVENTS" "$BENCH_RUNS" -- \
        "$runnel_bin" run --sql "$work_dir/$job.sql" --input "$BENCH_DATA" \
        --out "$work_dir/$name.parquet" --mode "$mode" "${flags[@]}"
    fi
  done
  name="duckdb_write_$job"
  if [[ -n "$duckdb_error" ]]; then
    unavailable "$name" "$duckdb_error"
    unavailable "${name}_rss" "$duckdb_error"
  else
    echo "==> $name" >&2
    run_figures "$name ${name}_rss" \
      "$VENV/bin/python" scripts/lib/bench_windows_duckdb.py --copy "$job" "$BENCH_DATA" \
      "$work_dir/$name.parquet" "$THREADS" "$BENCH_EVENTS" "$BENCH_RUNS"
  fi
  duckdb_counts="$(count_results "$work_dir/duckdb_write_$job.parquet")"
  check_counts "$job recompute" "$(count_results "$work_dir/run_recompute_$job.parquet")" \
    "$duckdb_counts"
  check_counts "$job live" "$(count_results "$work_dir/run_live_$job.parquet")" "$duckdb_counts"
  check_counts "$job live _final" "$(count_results "$work_dir/run_live_$job.parquet" final)" \
    "$duckdb_counts"
  rm -f "$work_dir"/*"_$job.parquet" "$work_dir"/*"_$job.late.parquet"
done

# Ratios of events/s, ours over DuckDB's: above 1 means faster than DuckDB.
for mode in live recompute; do
  for job in "${JOBS[@]}"; do
    ratio "${mode}_${job}_vs_duckdb" "${mode}_$job" "duckdb_$job"
  done
done
for mode in live recompute; do
  for job in "${JOBS[@]}"; do
    ratio "run_${mode}_${job}_vs_duckdb" "run_${mode}_$job" "duckdb_write_$job"
  done
done
