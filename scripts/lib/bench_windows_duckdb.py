"""DuckDB baseline for scripts/bench-windows.sh: the three window jobs as plain GROUP BYs.

Usage: python bench_windows_duckdb.py EVENTS.parquet N_EVENTS [RUNS]
       python bench_windows_duckdb.py --copy JOB EVENTS.parquet OUT.parquet THREADS N_EVENTS [RUNS]
       python bench_windows_duckdb.py --count RESULTS.parquet [final]

EVENTS.parquet may be a glob (DuckDB's read_parquet). The columns are `key`, `value` and
`event_time` (epoch milliseconds) unless BENCH_DUCKDB_KEY, BENCH_DUCKDB_VALUE and
BENCH_DUCKDB_TIME name other columns or expressions (e.g. `epoch_ms(event_time)` for a
timestamp column): scripts/bench-backfill.sh reads the Parquet history that way.

Prints `BENCH duckdb_<job> <value> events/s` (best of RUNS, default 3) or
`BENCH duckdb_<job> unavailable (<reason>)` on stdout; progress goes to stderr.
Each query reads the Parquet file, like recompute does. The aggregated rows are folded into
one checksum row inside DuckDB, so that every aggregate is computed (an outer COUNT(*) alone
would let the optimizer drop them) and no time goes into converting rows to Python objects.

`--copy` runs one job (`tumble`, `hop` or `session`) RUNS times, each on a new connection
with `SET threads = THREADS`, writing its rows with `COPY (...) TO OUT.parquet (FORMAT
parquet)`, and prints `BENCH duckdb_write_<job> <value> events/s` (best of RUNS, timed from
connecting to the end of the COPY) and `BENCH duckdb_write_<job>_rss <MiB> MiB`, this
process's peak RSS: the baseline of the whole-process `run_*` figures. Python's start and
`import duckdb` are left out of the time (they took about a second on a busy 2-core machine,
where the DuckDB CLI would start in milliseconds); runnel run's own start-up is in its time.
`--count` prints `<rows> <sum of n>` of a results file (runnel's or DuckDB's); with `final`,
of the rows whose `_final` is true (runnel's live results).
"""

import os
import resource
import sys
import time

# Times are epoch milliseconds, all positive, so `%` floors.
TUMBLE = """
SELECT key, window_start, window_start + 60000 AS window_end,
       COUNT(*) AS n, SUM(value) AS total, MIN(value) AS lo, MAX(value) AS hi, AVG(value) AS mean
FROM (SELECT key, value, event_time - event_time % 60000 AS window_start FROM {source})
GROUP BY key, window_start
"""

# An event belongs to the 6 windows starting at its 10 s slot and the 5 slots before it.
HOP = """
SELECT key, window_start, window_start + 60000 AS window_end,
       COUNT(*) AS n, SUM(value) AS total, MIN(value) AS lo, MAX(value) AS hi, AVG(value) AS mean
FROM (
    SELECT key, value, event_time - event_time % 10000 - 10000 * nth AS window_start
    FROM {source} CROSS JOIN range(0, 6) AS slots(nth)
)
GROUP BY key, window_start
"""

# Per key, a new session starts where the next event is more than the gap (10 s) later:
# events exactly the gap apart are in one session (runnel's rule, and Flink's and Spark's).
SESSION = """
WITH marked AS (
    SELECT key, event_time, value,
           CASE WHEN event_time - LAG(event_time) OVER (PARTITION BY key ORDER BY event_time) <= 10000
                THEN 0 ELSE 1 END AS is_start
    FROM {source}
), numbered AS (
    SELECT key, event_time, value,
           SUM(is_start) OVER (PARTITION BY key ORDER BY event_time ROWS UNBOUNDED PRECEDING) AS session
    FROM marked
)
SELECT key, MIN(event_time) AS window_start, MAX(event_time) + 10000 AS window_end,
       COUNT(*) AS n, SUM(value) AS total, MIN(value) AS lo, MAX(value) AS hi, AVG(value) AS mean
FROM numbered
GROUP BY key, session
"""

CHECKSUM = """
SELECT COUNT(*), SUM(n), SUM(total), MIN(lo), MAX(hi), SUM(mean), MIN(window_start), MAX(window_end)
FROM ({query})
"""


JOBS = {"tumble": TUMBLE, "hop": HOP, "session": SESSION}


def quoted(text):
    return "'" + text.replace("'", "''") + "'"


def source_of(path):
    key = os.environ.get("BENCH_DUCKDB_KEY", "key")
    value = os.environ.get("BENCH_DUCKDB_VALUE", "value")
    event_time = os.environ.get("BENCH_DUCKDB_TIME", "event_time")
    return (
        f"(SELECT {key} AS key, {value} AS value, {event_time} AS event_time "
        f"FROM read_parquet({quoted(path)}))"
    )


def copy(job, path, out, threads, n_events, runs):
    import duckdb

    name = f"duckdb_write_{job}"
    # Window bounds as timestamps, as runnel writes them (its extra `_key`, `_window_start`,
    # `_version` and `_final` columns are not written here).
    query = (
        "SELECT key, epoch_ms(window_start) AS window_start, epoch_ms(window_end) AS window_end, "
        f"n, total, lo, hi, mean FROM ({JOBS[job].format(source=source_of(path))})"
    )
    sql = f"COPY ({query}) TO {quoted(out)} (FORMAT parquet)"
    best = None
    for run_idx in range(runs):
        started = time.perf_counter()
        con = duckdb.connect()
        con.execute(f"SET threads = {int(threads)}")
        con.execute(sql)
        con.close()
        elapsed = time.perf_counter() - started
        print(
            f"    {name} run {run_idx + 1}/{runs}: {elapsed:.3f}s, {threads} threads",
            file=sys.stderr,
        )
        best = elapsed if best is None else min(best, elapsed)
    # Linux reports ru_maxrss in KiB; the interpreter's own few MiB are in it.
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"BENCH {name} {n_events / best:.0f} events/s", flush=True)
    print(f"BENCH {name}_rss {peak_mib:.0f} MiB", flush=True)


def count(path, final_only):
    import duckdb

    where = "WHERE _final" if final_only else ""
    row = duckdb.connect().execute(
        f"SELECT COUNT(*), COALESCE(SUM(n), 0) FROM read_parquet({quoted(path)}) {where}"
    ).fetchone()
    print(f"{row[0]} {row[1]}")


def main():
    if sys.argv[1] == "--copy":
        job, path, out, threads, n_events = sys.argv[2:7]
        runs = int(sys.argv[7]) if len(sys.argv) > 7 else 3
        copy(job, path, out, int(threads), int(n_events), runs)
        return
    if sys.argv[1] == "--count":
        count(sys.argv[2], sys.argv[3:] == ["final"])
        return
    import duckdb

    path, n_events = sys.argv[1], int(sys.argv[2])
    runs = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    source = source_of(path)
    con = duckdb.connect()
    threads = con.execute("SELECT current_setting('threads')").fetchone()[0]
    print(f"==> duckdb {duckdb.__version__}, {threads} threads, {path}", file=sys.stderr)
    for job, query in JOBS.items():
        name = f"duckdb_{job}"
        print(f"==> {name}", file=sys.stderr)
        sql = CHECKSUM.format(query=query.format(source=source))
        try:
            best = None
            for run_idx in range(runs):
                started = time.perf_counter()
                row = con.execute(sql).fetchone()
                elapsed = time.perf_counter() - started
                print(
                    f"    {name} run {run_idx + 1}/{runs}: {elapsed:.3f}s, "
                    f"{row[0]} result rows, sum(n) = {row[1]}",
                    file=sys.stderr,
                )
                best = elapsed if best is None else min(best, elapsed)
            print(f"BENCH {name} {n_events / best:.0f} events/s", flush=True)
        except Exception as error:  # noqa: BLE001: report any failure as the figure's reason.
            reason = str(error).splitlines()[0][:160] if str(error) else type(error).__name__
            print(f"    {name} failed: {error}", file=sys.stderr)
            print(f"BENCH {name} unavailable ({reason})", flush=True)


if __name__ == "__main__":
    main()
