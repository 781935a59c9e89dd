"""Data and the DuckDB baseline of scripts/bench-joins.sh.

Usage: python bench_joins_duckdb.py generate DIR N_CLICKS N_USERS
       python bench_joins_duckdb.py --copy QUERY DIR OUT.parquet THREADS N_ROWS RUNS
       python bench_joins_duckdb.py --count RESULTS.parquet [final]

`generate` writes, once (a file present is kept), with no randomness (every column is
integer arithmetic on the row number, so the files are the same on every machine):
- DIR/clicks.parquet: N_CLICKS clicks, 5,000 per event-time second in file order, 5% of them
  shifted back by up to 5 s (so none is late with 5 s of out-of-orderness);
  `event_time` (epoch ms), `user_id` (int64, spread over N_USERS users), `duration_ms`.
- DIR/users.parquet: the changelog of the `users` table: a first version of each of the
  N_USERS users an hour before the first click, then N_USERS / 5 updates spread evenly over
  the clicks' time, in time order, every 50th a delete; `updated_at` (epoch ms), `user_id`,
  `country` (50 values), `plan` (3 values), `deleted`.

- DIR/persons.parquet: N_USERS persons registering evenly over the clicks' time (Nexmark's
  new persons): `event_time`, `id`, `name`, `state` (50 values, among them OR, ID and CA).
- DIR/auctions.parquet: N_CLICKS auctions, 5,000 per second: `event_time`, `id`, `seller`
  (a person who registered up to 40 s before), `category` (0 to 19).

`--copy QUERY` runs a query (`enrich`, `q3`, `q8` or `q8i`, as scripts/bench-joins.sh describes)
RUNS times; `--copy enrich`, for one, runs the enrichment query, each on a new connection with
`SET threads = THREADS`: each click with the version of its user valid at its time
(DuckDB's ASOF JOIN), deleted users' clicks dropped, counted per country and minute, written
with `COPY (...) TO OUT.parquet`. Prints `BENCH join_enrich_duckdb <N_ROWS / best seconds>
rows/s` and `BENCH join_enrich_duckdb_rss <MiB> MiB` (this process's peak). Python's start
and `import duckdb` are not in the time.
`--count` prints `<rows> <sum of its count column>` of a results file (the column `clicks`,
or `auctions`); with `final`, of the rows whose `_final` is true (runnel's live results).
"""

import os
import resource
import sys
import time

import duckdb

CLICKS = """
COPY (
    SELECT 1700000000000 + i // 5
               - CASE WHEN (i * 7919) % 20 = 0 THEN (i * 104729) % 5000 ELSE 0 END AS event_time,
           (i * 2654435761) % {users} AS user_id,
           (i * 31) % 10000 AS duration_ms
    FROM range(0, {clicks}) AS rows(i)
    ORDER BY i
) TO '{path}' (FORMAT parquet, ROW_GROUP_SIZE 122880)
"""

USERS = """
COPY (
    SELECT * FROM (
        SELECT 1700000000000 - 3600000 AS updated_at, k AS user_id,
               'c' || ((k * 7) % 50) AS country, 'p' || (k % 3) AS plan, false AS deleted
        FROM range(0, {users}) AS keys(k)
        UNION ALL
        SELECT 1700000000000 + j * ({clicks} // 5) // ({users} // 5) AS updated_at,
               (j * 40503) % {users} AS user_id,
               'c' || ((j * 13) % 50) AS country, 'p' || ((j * 5) % 3) AS plan,
               j % 50 = 49 AS deleted
        FROM range(0, {users} // 5) AS updates(j)
    ) ORDER BY updated_at, user_id
) TO '{path}' (FORMAT parquet, ROW_GROUP_SIZE 122880)
"""

ENRICH = """
SELECT u.country, c.event_time - c.event_time % 60000 AS window_start,
       COUNT(*) AS clicks, SUM(c.duration_ms) AS total_ms
FROM read_parquet('{dir}/clicks.parquet') AS c
ASOF JOIN read_parquet('{dir}/users.parquet') AS u
    ON c.user_id = u.user_id AND c.event_time >= u.updated_at
WHERE NOT u.deleted
GROUP BY u.country, window_start
"""

PERSONS = """
COPY (
    SELECT 1700000000000 + j * ({clicks} // 5) // {users} AS event_time, j AS id,
           'p' || j AS name,
           CASE j % 50 WHEN 0 THEN 'OR' WHEN 1 THEN 'ID' WHEN 2 THEN 'CA' ELSE 's' || (j % 50) END
               AS state
    FROM range(0, {users}) AS persons(j)
    ORDER BY j
) TO '{path}' (FORMAT parquet, ROW_GROUP_SIZE 122880)
"""

# Auction i's seller registered up to 40 s (20,000 persons at the default sizes) before it.
AUCTIONS = """
COPY (
    SELECT event_time, id,
           greatest(0, least({users} - 1,
               (event_time - 1700000000000) * {users} // ({clicks} // 5) - (id * 7919) % ({users} // 50)))
               AS seller,
           (id * 31) % 20 AS category
    FROM (SELECT 1700000000000 + i // 5 AS event_time, i AS id FROM range(0, {clicks}) AS rows(i))
    ORDER BY id
) TO '{path}' (FORMAT parquet, ROW_GROUP_SIZE 122880)
"""

# Nexmark q3 as of each auction's time: auctions of category 10 by sellers in OR, ID or CA.
Q3 = """
SELECT p.state, a.event_time - a.event_time % 60000 AS window_start, COUNT(*) AS auctions
FROM read_parquet('{dir}/auctions.parquet') AS a
ASOF JOIN read_parquet('{dir}/persons.parquet') AS p
    ON a.seller = p.id AND a.event_time >= p.event_time
WHERE a.category = 10 AND p.state IN ('OR', 'ID', 'CA')
GROUP BY p.state, window_start
"""

# Nexmark q8 as written: the persons who registered in each 10 s window joined with their
# auctions of the same window (a join of two windowed aggregates).
Q8 = """
SELECT p.id, p.name, p.window_start, a.auctions
FROM (SELECT id, name, event_time - event_time % 10000 AS window_start, COUNT(*) AS registrations
      FROM read_parquet('{dir}/persons.parquet') GROUP BY id, name, window_start) AS p
JOIN (SELECT seller, event_time - event_time % 10000 AS window_start, COUNT(*) AS auctions
      FROM read_parquet('{dir}/auctions.parquet') GROUP BY seller, window_start) AS a
    ON p.id = a.seller AND p.window_start = a.window_start
"""

# Nexmark q8-style: auctions by sellers who registered in the 10 s before, per state and
# 10 s window (an interval join).
Q8I = """
SELECT p.state, a.event_time - a.event_time % 10000 AS window_start, COUNT(*) AS auctions
FROM read_parquet('{dir}/auctions.parquet') AS a
JOIN read_parquet('{dir}/persons.parquet') AS p
    ON a.seller = p.id AND p.event_time BETWEEN a.event_time - 10000 AND a.event_time
GROUP BY p.state, window_start
"""

QUERIES = {"enrich": ENRICH, "q3": Q3, "q8": Q8, "q8i": Q8I}


def generate(directory, n_clicks, n_users):
    os.makedirs(directory, exist_ok=True)
    for name, template in (
        ("clicks", CLICKS),
        ("users", USERS),
        ("persons", PERSONS),
        ("auctions", AUCTIONS),
    ):
        path = os.path.join(directory, f"{name}.parquet")
        if os.path.exists(path):
            continue
        started = time.perf_counter()
        partial = path + ".partial"
        duckdb.connect().execute(
            template.format(clicks=n_clicks, users=n_users, path=partial)
        )
        os.replace(partial, path)
        print(f"    wrote {path} in {time.perf_counter() - started:.1f}s", file=sys.stderr)


def copy(query, directory, out, threads, n_rows, runs):
    sql = QUERIES[query].format(dir=directory)
    best = None
    for run in range(runs):
        started = time.perf_counter()
        connection = duckdb.connect()
        connection.execute(f"SET threads = {threads}")
        connection.execute(f"COPY ({sql}) TO '{out}' (FORMAT parquet)")
        connection.close()
        elapsed = time.perf_counter() - started
        print(f"    join_{query}_duckdb run {run + 1}/{runs}: {elapsed:.3f}s", file=sys.stderr)
        best = elapsed if best is None else min(best, elapsed)
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"BENCH join_{query}_duckdb {n_rows / best:.0f} rows/s", flush=True)
    print(f"BENCH join_{query}_duckdb_rss {rss_mib:.0f} MiB", flush=True)


def count(path, final):
    where = "WHERE _final" if final else ""
    connection = duckdb.connect()
    columns = [row[0] for row in connection.execute(
        f"DESCRIBE SELECT * FROM read_parquet('{path}')"
    ).fetchall()]
    counted = "clicks" if "clicks" in columns else "auctions"
    rows, total = connection.execute(
        f"SELECT COUNT(*), SUM({counted}) FROM read_parquet('{path}') {where}"
    ).fetchone()
    print(rows, total)


def main():
    args = sys.argv[1:]
    if args[:1] == ["generate"] and len(args) == 4:
        generate(args[1], int(args[2]), int(args[3]))
    elif args[:1] == ["--copy"] and len(args) == 7:
        copy(args[1], args[2], args[3], int(args[4]), int(args[5]), int(args[6]))
    elif args[:1] == ["--count"] and len(args) in (2, 3):
        count(args[1], args[2:] == ["final"])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
