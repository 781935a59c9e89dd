#!/usr/bin/env bash
# Log throughput benchmark: prints `BENCH <name> <value> <unit>` lines.
# 100-byte records, batches of 1000, 4 partitions; embedded (durable append, read) and
# Kafka (tansu, produce and consume), beside a raw write+fdatasync disk baseline.
# Sizes: BENCH_LOG_RECORDS (default 2,000,000), BENCH_KAFKA_RECORDS (default 200,000).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/tansu.sh

echo "==> building the benchmark (release)" >&2
cargo bench -p runnel-log --bench log --no-run >&2

ensure_tansu
start_tansu
echo "==> running the benchmark against the embedded log and tansu at $KAFKA_BOOTSTRAP" >&2
cargo bench -p runnel-log --bench log 2>/dev/null | grep '^BENCH'
