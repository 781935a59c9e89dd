#!/usr/bin/env bash
# Join benchmark (issue 21): prints `BENCH <name> <value> <unit>` lines on stdout, progress on
# stderr. A Nexmark-style workload made by scripts/lib/bench_joins_duckdb.py with no
# randomness (integer arithmetic on row numbers): clicks of users, and the changelog of the
# `users` table (a version per user, then updates and deletes over the clicks' time).
#
#   enrich   BENCH_JOIN_CLICKS clicks (default 10,000,000) joined with the users table of
#            BENCH_JOIN_USERS keys (default 1,000,000; 1.2M changelog rows) as of each click's
#            time, counted per country and minute:
#              SELECT u.country, window_start, window_end, COUNT(*), SUM(c.duration_ms)
#              FROM TUMBLE(clicks, event_time, INTERVAL '1' MINUTE) AS c
#              JOIN users FOR SYSTEM_TIME AS OF c.event_time AS u ON c.user_id = u.user_id
#              GROUP BY u.country, window_start, window_end
#   q3       Nexmark q3 (auctions with their sellers), as of each auction's time: BENCH_JOIN_CLICKS
#            auctions joined with the persons table (BENCH_JOIN_USERS persons registering over
#            the auctions' time), category 10 and state OR, ID or CA, counted per state and
#            minute (AS OF, where Nexmark's q3 is a regular join of two streams)
#   q8       Nexmark q8 as written, a join of two windowed aggregates: the persons who
#            registered in each 10 s window joined with their auctions of the same window
#            (persons per id, name and window; auctions per seller and window):
#              SELECT p.id, p.name, p.window_start, a.auctions
#              FROM (SELECT id, name, window_start, window_end, COUNT(*) AS registrations
#                    FROM TUMBLE(persons, ...) GROUP BY ...) AS p
#              JOIN (SELECT seller, window_start, window_end, COUNT(*) AS auctions
#                    FROM TUMBLE(auctions, ...) GROUP BY ...) AS a
#              ON p.id = a.seller AND p.window_start = a.window_start
#   q8i      Nexmark q8-style, an interval join (q8 before window joins were built): auctions
#            whose seller registered in the 10 s before, counted per state and 10 s window
#
# Figures, best of BENCH_RUNS (default 3), in input rows (both inputs) per second of wall clock:
#   join_<q>_live       `runnel run --mode live` (the release CLI), the whole process: reading
#                       both Parquet files, the join, the windows, writing Parquet
#   join_<q>_recompute  `runnel run --mode recompute`: the AS OF join and GROUP BY as one
#                       DataFusion plan
#   join_<q>_duckdb     DuckDB from PyPI, the same query (its ASOF JOIN) over the same files,
#                       COPY to Parquet, with `nproc` threads
#   <each>_rss          peak RSS in MiB
#   join_<q>_live_vs_duckdb, join_<q>_recompute_vs_duckdb   ours / DuckDB's (above 1: faster)
#   join_state_bytes_per_row   the live join's table state over its versions, as `runnel run`
#                       reports it
# Not timed: the result rows and their sum of clicks are compared with DuckDB's (live: the
# `_final` rows); a difference is a warning on stderr.
# The data and the Python venv stay in ${RUNNEL_CACHE:-$HOME/.cache/runnel}.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

RUNNEL_CACHE="${RUNNEL_CACHE:-$HOME/.cache/runnel}"
CLICKS="${BENCH_JOIN_CLICKS:-10000000}"
USERS="${BENCH_JOIN_USERS:-1000000}"
RUNS="${BENCH_RUNS:-3}"
DATA="$RUNNEL_CACHE/bench-joins/v1-$CLICKS-$USERS"
VENV="$RUNNEL_CACHE/bench-venv"
DUCKDB_VERSION="${BENCH_DUCKDB_VERSION:-1.5.6}"
THREADS="$(nproc)"

work_dir="$(mktemp -d "${TMPDIR:-/tmp}/runnel-bench-joins.XXXXXX")"
trap 'rm -rf "$work_dir"' EXIT
declare -A values=()
# shellcheck source=scripts/lib/bench.sh
source scripts/lib/bench.sh

duckdb_error=""
if ! "$VENV/bin/python" -c "import duckdb, sys; sys.exit(duckdb.__version__ != '$DUCKDB_VERSION')" 2>/dev/null; then
  echo "==> installing duckdb $DUCKDB_VERSION into $VENV" >&2
  if ! { python3 -m venv "$VENV" && "$VENV/bin/pip" install --quiet "duckdb==$DUCKDB_VERSION"; } >&2; then
    duckdb_error="could not install duckdb $DUCKDB_VERSION into $VENV"
  fi
fi
data_error="$duckdb_error"
if [[ -z "$data_error" ]]; then
  echo "==> data: $DATA" >&2
  "$VENV/bin/python" scripts/lib/bench_joins_duckdb.py generate "$DATA" "$CLICKS" "$USERS" >&2 ||
    data_error="could not generate the data in $DATA"
fi

echo "==> building runnel (release)" >&2
runnel_error="$data_error"
runnel_bin=""
if [[ -z "$runnel_error" ]] && ! runnel_bin="$(build_release_bin runnel runnel)"; then
  runnel_error="runnel build failed"
elif [[ -z "$runnel_error" && -z "$runnel_bin" ]]; then
  runnel_error="no runnel executable in cargo's output"
fi

# The streams and tables as `runnel run` reads them: the schemas come from the Parquet files,
# keys and event times from here.
cat >"$work_dir/runnel.toml" <<'EOF'
version = "1"
jobs = []

[[streams]]
name = "clicks"
partitions = 1
key = "user_id"
event-time = "event_time"
schema = [
  { name = "event_time", type = "int64" },
  { name = "user_id", type = "int64" },
  { name = "duration_ms", type = "int64" },
]

[[streams]]
name = "user_updates"
partitions = 1
key = "user_id"
event-time = "updated_at"
schema = [
  { name = "updated_at", type = "int64" },
  { name = "user_id", type = "int64" },
  { name = "country", type = "string" },
  { name = "plan", type = "string" },
  { name = "deleted", type = "bool" },
]

[[streams]]
name = "persons"
partitions = 1
key = "id"
event-time = "event_time"
schema = [
  { name = "event_time", type = "int64" },
  { name = "id", type = "int64" },
  { name = "name", type = "string" },
  { name = "state", type = "string" },
]

[[streams]]
name = "auctions"
partitions = 1
key = "seller"
event-time = "event_time"
schema = [
  { name = "event_time", type = "int64" },
  { name = "id", type = "int64" },
  { name = "seller", type = "int64" },
  { name = "category", type = "int64" },
]

[[tables]]
name = "users"
stream = "user_updates"
tombstone = "deleted"

[[tables]]
name = "sellers"
stream = "persons"
EOF
cat >"$work_dir/enrich.sql" <<'EOF'
SELECT u.country, window_start, window_end, COUNT(*) AS clicks, SUM(c.duration_ms) AS total_ms
FROM TUMBLE(clicks, event_time, INTERVAL '1' MINUTE) AS c
JOIN users FOR SYSTEM_TIME AS OF c.event_time AS u ON c.user_id = u.user_id
GROUP BY u.country, window_start, window_end
EOF
cat >"$work_dir/q3.sql" <<'EOF'
SELECT p.state, window_start, window_end, COUNT(*) AS auctions
FROM TUMBLE(auctions, event_time, INTERVAL '1' MINUTE) AS a
JOIN sellers FOR SYSTEM_TIME AS OF a.event_time AS p ON a.seller = p.id
WHERE a.category = 10 AND p.state IN ('OR', 'ID', 'CA')
GROUP BY p.state, window_start, window_end
EOF
cat >"$work_dir/q8.sql" <<'EOF'
SELECT p.id, p.name, p.window_start, a.auctions
FROM (SELECT id, name, window_start, window_end, COUNT(*) AS registrations
      FROM TUMBLE(persons, event_time, INTERVAL '10' SECOND)
      GROUP BY id, name, window_start, window_end) AS p
JOIN (SELECT seller, window_start, window_end, COUNT(*) AS auctions
      FROM TUMBLE(auctions, event_time, INTERVAL '10' SECOND)
      GROUP BY seller, window_start, window_end) AS a
ON p.id = a.seller AND p.window_start = a.window_start
EOF
cat >"$work_dir/q8i.sql" <<'EOF'
SELECT p.state, window_start, window_end, COUNT(*) AS auctions
FROM TUMBLE(auctions, event_time, INTERVAL '10' SECOND) AS a
JOIN persons AS p ON a.seller = p.id
  AND p.event_time BETWEEN a.event_time - INTERVAL '10' SECOND AND a.event_time
GROUP BY p.state, window_start, window_end
EOF
# Per query: its inputs (`--input` arguments) and its input rows.
declare -A inputs=(
  [enrich]="clicks=$DATA/clicks.parquet users=$DATA/users.parquet"
  [q3]="auctions=$DATA/auctions.parquet sellers=$DATA/persons.parquet"
  [q8]="persons=$DATA/persons.parquet auctions=$DATA/auctions.parquet"
  [q8i]="auctions=$DATA/auctions.parquet persons=$DATA/persons.parquet"
)
declare -A rows=(
  [enrich]=$((CLICKS + USERS + USERS / 5))
  [q3]=$((CLICKS + USERS))
  [q8]=$((CLICKS + USERS))
  [q8i]=$((CLICKS + USERS))
)

# Prints `<rows> <sum of the count>` of a results file ([final]: of its `_final` rows), or nothing.
count_results() {
  [[ -z "$duckdb_error" && -f "$1" ]] || return 0
  "$VENV/bin/python" scripts/lib/bench_joins_duckdb.py --count "$@" || true
}

check_counts() {
  local what="$1" ours="$2" theirs="$3"
  if [[ -z "$ours" || -z "$theirs" ]]; then
    echo "==> check $what: skipped (no counts)" >&2
  elif [[ "$ours" != "$theirs" ]]; then
    echo "WARNING: $what: runnel has $ours (rows, sum of the count), DuckDB $theirs" >&2
  else
    echo "==> check $what: $ours (rows, sum of the count) as DuckDB" >&2
  fi
}

# run_join QUERY MODE [FLAGS...]
run_join() {
  local query="$1" mode="$2" name="join_$1_$2" input
  shift 2
  if [[ -n "$runnel_error" ]]; then
    unavailable "$name" "$runnel_error"
    unavailable "${name}_rss" "$runnel_error"
    return
  fi
  local args=()
  for input in ${inputs[$query]}; do
    args+=(--input "$input")
  done
  echo "==> $name" >&2
  run_figures "$name ${name}_rss" \
    env BENCH_PROCESS_UNIT=rows/s python3 scripts/lib/bench_process.py "$name" "${rows[$query]}" "$RUNS" -- \
    "$runnel_bin" --config "$work_dir/runnel.toml" run --sql "$work_dir/$query.sql" \
    "${args[@]}" --out "$work_dir/$name.parquet" --mode "$mode" "$@"
}

for query in enrich q3 q8 q8i; do
  run_join "$query" live --max-out-of-orderness 5s
  run_join "$query" recompute
  name="join_${query}_duckdb"
  if [[ -n "$data_error" ]]; then
    unavailable "$name" "$data_error"
    unavailable "${name}_rss" "$data_error"
  else
    echo "==> $name" >&2
    run_figures "$name ${name}_rss" \
      "$VENV/bin/python" scripts/lib/bench_joins_duckdb.py --copy "$query" \
      "$DATA" "$work_dir/$name.parquet" "$THREADS" "${rows[$query]}" "$RUNS"
  fi
  duckdb_counts="$(count_results "$work_dir/join_${query}_duckdb.parquet")"
  check_counts "$query recompute" "$(count_results "$work_dir/join_${query}_recompute.parquet")" \
    "$duckdb_counts"
  check_counts "$query live _final" \
    "$(count_results "$work_dir/join_${query}_live.parquet" final)" "$duckdb_counts"
done

# The live AS OF join's table state (enrich), from the summary `runnel run` prints.
if [[ -z "$runnel_error" ]]; then
  summary="$("$runnel_bin" --config "$work_dir/runnel.toml" run --sql "$work_dir/enrich.sql" \
    --input "clicks=$DATA/clicks.parquet" --input "users=$DATA/users.parquet" \
    --out "$work_dir/state.parquet" --max-out-of-orderness 5s 2>/dev/null || true)"
  if [[ "$summary" =~ held\ ([0-9]+)\ versions\ in\ ([0-9]+)\ bytes ]]; then
    emit "BENCH join_state_bytes_per_row $(awk -v b="${BASH_REMATCH[2]}" -v v="${BASH_REMATCH[1]}" 'BEGIN { printf "%.1f", b / v }') B"
  else
    unavailable join_state_bytes_per_row "no table state in runnel run's summary: $summary"
  fi
else
  unavailable join_state_bytes_per_row "$runnel_error"
fi

for query in enrich q3 q8 q8i; do
  ratio "join_${query}_live_vs_duckdb" "join_${query}_live" "join_${query}_duckdb"
  ratio "join_${query}_recompute_vs_duckdb" "join_${query}_recompute" "join_${query}_duckdb"
done
