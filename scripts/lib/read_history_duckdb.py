"""Reads a stream's archived history with DuckDB: a second Parquet reader for the tests.

Usage: python read_history_duckdb.py FOLDER STREAM

Reads every FOLDER/STREAM/<partition folder>/*.parquet (the archiver's Hive layout,
`date=YYYY-MM-DD`) and prints one JSON object per row on stdout, ordered by `_partition`,
`_offset`, with every column in file order and the Hive `date` column last:
timestamps as epoch milliseconds (integers), the Hive columns as strings, NULL as null.
Exits 1 with a message on stderr if there is no file or DuckDB cannot read them, 2 on bad usage.
scripts/test.sh installs DuckDB and exports RUNNEL_PYTHON, the Python to run this with.
"""

import datetime
import decimal
import json
import sys
from pathlib import Path


def fail(message, status=1):
    print(f"read_history_duckdb: {message}", file=sys.stderr)
    sys.exit(status)


def quote(name):
    return '"' + name.replace('"', '""') + '"'


def to_json(value):
    """json.dumps's fallback for the values DuckDB returns that JSON has no type for."""
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(f"cannot print {type(value).__name__} as JSON")


def main(argv):
    if len(argv) != 3:
        fail(f"usage: {argv[0]} FOLDER STREAM", 2)
    folder, stream = argv[1], argv[2]
    try:
        import duckdb
    except ImportError as error:
        fail(f"cannot import duckdb ({error}); run with the Python scripts/test.sh exports as RUNNEL_PYTHON")
    stream_folder = Path(folder) / stream
    if not any(stream_folder.glob("*/*.parquet")):
        fail(f"no Parquet files in {stream_folder}/*/")
    # The Hive columns stay strings (`date` would otherwise be cast to DATE).
    source = "read_parquet($files, hive_partitioning = true, hive_types_autocast = false)"
    files = {"files": f"{stream_folder}/*/*.parquet"}
    try:
        connection = duckdb.connect()
        columns = connection.execute(f"DESCRIBE SELECT * FROM {source}", files).fetchall()
        # Every TIMESTAMP flavour (ms, ns, with time zone) as epoch milliseconds.
        select = ", ".join(
            f"epoch_ms({quote(name)}) AS {quote(name)}" if kind.startswith("TIMESTAMP") else quote(name)
            for name, kind, *_ in columns
        )
        result = connection.execute(f"SELECT {select} FROM {source} ORDER BY _partition, _offset", files)
        names = [column[0] for column in result.description]
        while rows := result.fetchmany(10_000):
            for row in rows:
                print(json.dumps(dict(zip(names, row)), default=to_json))
    except duckdb.Error as error:
        fail(f"DuckDB could not read {stream_folder}: {error}")


if __name__ == "__main__":
    main(sys.argv)
