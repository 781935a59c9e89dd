#!/usr/bin/env bash
# Backfill benchmark (issue 6): prints `BENCH <name> <value> <unit>` lines on stdout, progress
# on stderr.
#
# Data: BENCH_BACKFILL_EVENTS (default 10,000,000) events of the default `clicks` stream in the
# record format ingest writes, shaped as scripts/bench-windows.sh's data set (5,000 per
# event-time second, 10,000 users, 5% shifted back by up to 5 s; stream_bench's `fill`), in an
# embedded log in a temporary folder, then archived into Parquet history with the release
# `runnel archive --once`. The jobs are bench-windows.sh's three, per user
# COUNT/SUM/MIN/MAX/AVG(duration_ms): TUMBLE 1 min, HOP 10 s / 1 min, SESSION 10 s, watermark
# lag 5 s. Every figure is events / the wall time of one release `runnel` process:
#
# recompute_<job>: `runnel backfill --mode recompute --workers 2` (the DataFusion batch plan
#   over the history files, into a batch view), process start and view writing included;
#   best of BENCH_RUNS=3 processes (each writes a new generation of the view), as DuckDB's.
# replay_<job>: `runnel backfill --mode replay --stop-when-caught-up` of a fresh job (no
#   checkpoint; one run, since a second would resume from the first's checkpoints): the stream-processor's tasks over the history, then the log's (empty) rest,
#   results appended to the log, until caught up.
# live_<job>: the same replay with the history hidden (`archive.prefix` pointing at an empty
#   folder): the same tasks reading the whole log, as the live stream-processor does. The
#   same-run baseline of the replay figures (goal: replay at least as fast as live).
# duckdb_<job>: DuckDB (PyPI, the version of bench-windows.sh) running the same GROUP BYs over
#   the same history files (scripts/lib/bench_windows_duckdb.py, best of BENCH_RUNS=3), the
#   baseline of the recompute figures (goal: recompute at least as fast as DuckDB).
# Ratios: recompute_<job>_vs_duckdb, replay_<job>_vs_live.
#
# A figure that fails prints `BENCH <name> unavailable (<reason>)`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

RUNNEL_CACHE="${RUNNEL_CACHE:-$HOME/.cache/runnel}"
EVENTS="${BENCH_BACKFILL_EVENTS:-10000000}"
RUNS="${BENCH_RUNS:-3}"
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
VENV="$RUNNEL_CACHE/bench-venv"
DUCKDB_VERSION="${BENCH_DUCKDB_VERSION:-1.5.6}"
JOBS=(tumble hop session)

work_dir="$(mktemp -d "${TMPDIR:-/tmp}/runnel-bench-backfill.XXXXXX")"
trap 'rm -rf "$work_dir"' EXIT
declare -A values=()
# shellcheck source=scripts/lib/bench.sh
source scripts/lib/bench.sh

all_names() {
  local job
  for job in "${JOBS[@]}"; do echo "recompute_$job replay_$job live_$job duckdb_$job"; done
}

window_of() {
  case "$1" in
    tumble) echo "TUMBLE(clicks, event_time, INTERVAL '1' MINUTE)" ;;
    hop) echo "HOP(clicks, event_time, INTERVAL '10' SECOND, INTERVAL '1' MINUTE)" ;;
    session) echo "SESSION(clicks, event_time, INTERVAL '10' SECOND)" ;;
  esac
}

# Declares job `$1` (a figure's name) running window `$2` in the bench config.
declare_job() {
  cat >>"$config" <<EOF

[[jobs]]
name = "$1"
sql = """
SELECT user_id, window_start, window_end, COUNT(*) AS n, SUM(duration_ms) AS total,
       MIN(duration_ms) AS lo, MAX(duration_ms) AS hi, AVG(duration_ms) AS mean
FROM $(window_of "$2")
GROUP BY user_id, window_start, window_end
"""
max-out-of-orderness = "5s"
EOF
}

# Runs `runnel` with the bench config `$2` times and prints figure `$1` from the shortest
# wall time.
time_runnel() {
  local name="$1" runs="$2" run started ended best=""
  shift 2
  for ((run = 1; run <= runs; run++)); do
    echo "==> $name ($run/$runs): runnel $*" >&2
    started="$(date +%s.%N)"
    if ! "$runnel_bin" --config "$config" "$@" >"$work_dir/out" 2>"$work_dir/err"; then
      cat "$work_dir/err" >&2
      unavailable "$name" "$(grep -v '^[[:space:]]*$' "$work_dir/err" | tail -n1)"
      return
    fi
    ended="$(date +%s.%N)"
    cat "$work_dir/out" >&2
    best="$(awk -v a="$started" -v b="$ended" -v best="$best" \
      'BEGIN { t = b - a; if (best == "" || t < best) print t; else print best }')"
  done
  emit "BENCH $name $(awk -v n="$EVENTS" -v t="$best" 'BEGIN { printf "%.0f", n / t }') events/s"
}

echo "==> building runnel and the stream_bench data generator (release)" >&2
if ! stream_bench="$(build_bench_driver stream_bench -p runnel --bin runnel)" || [[ -z "$stream_bench" ]]; then
  for name in $(all_names); do unavailable "$name" "release build failed"; done
  exit 1
fi
runnel_bin="$TARGET_DIR/release/runnel"

echo "==> filling an embedded log with $EVENTS events and archiving it" >&2
config="$work_dir/fill.toml"
if ! { "$stream_bench" --dir "$work_dir" fill --events "$EVENTS" &&
  RUST_LOG=warn "$runnel_bin" --config "$config" archive --once; } >&2; then
  for name in $(all_names); do unavailable "$name" "could not fill and archive the log"; done
  exit 1
fi
for job in "${JOBS[@]}"; do
  for mode in recompute replay live; do declare_job "${mode}_$job" "$job"; done
done

export RUST_LOG=warn
for job in "${JOBS[@]}"; do
  time_runnel "recompute_$job" "$RUNS" backfill --job "recompute_$job" --mode recompute --workers 2
  time_runnel "replay_$job" 1 backfill --job "replay_$job" --mode replay --stop-when-caught-up
  RUNNEL__ARCHIVE__PREFIX=no-history time_runnel "live_$job" 1 \
    backfill --job "live_$job" --mode replay --stop-when-caught-up
done

duckdb_error=""
if ! "$VENV/bin/python" -c "import duckdb, sys; sys.exit(duckdb.__version__ != '$DUCKDB_VERSION')" 2>/dev/null; then
  echo "==> installing duckdb $DUCKDB_VERSION into $VENV" >&2
  if ! { python3 -m venv "$VENV" && "$VENV/bin/pip" install --quiet "duckdb==$DUCKDB_VERSION"; } >&2; then
    duckdb_error="could not install duckdb $DUCKDB_VERSION into $VENV"
  fi
fi
if [[ -n "$duckdb_error" ]]; then
  for job in "${JOBS[@]}"; do unavailable "duckdb_$job" "$duckdb_error"; done
else
  echo "==> duckdb over $work_dir/data/objects/history/clicks" >&2
  if BENCH_DUCKDB_KEY=user_id BENCH_DUCKDB_VALUE=duration_ms BENCH_DUCKDB_TIME="epoch_ms(event_time)" \
    "$VENV/bin/python" scripts/lib/bench_windows_duckdb.py \
    "$work_dir/data/objects/history/clicks/*/*.parquet" "$EVENTS" "$RUNS" >"$work_dir/duckdb"; then
    :
  fi
  for job in "${JOBS[@]}"; do
    line="$(grep -m1 "^BENCH duckdb_$job " "$work_dir/duckdb" || true)"
    if [[ -n "$line" ]]; then emit "$line"; else unavailable "duckdb_$job" "no figure from DuckDB"; fi
  done
fi

for job in "${JOBS[@]}"; do
  ratio "recompute_${job}_vs_duckdb" "recompute_$job" "duckdb_$job"
  ratio "replay_${job}_vs_live" "replay_$job" "live_$job"
done
