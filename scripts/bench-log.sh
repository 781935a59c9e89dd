#!/usr/bin/env bash
# Log throughput benchmark: prints `BENCH <name> <value> <unit>` lines.
# 100-byte records, batches of 1000, 4 partitions; embedded (durable append, read) and
# Kafka (an Apache Kafka broker: produce and consume), beside a raw write+fdatasync disk baseline.
# Sizes: BENCH_LOG_RECORDS (default 2,000,000), BENCH_KAFKA_RECORDS (default 200,000).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/kafka.sh

echo "==> building the benchmark (release)" >&2
cargo bench -p runnel-log --bench log --no-run >&2

ensure_kafka
start_kafka
echo "==> running the benchmark against the embedded log and Kafka at $KAFKA_BOOTSTRAP" >&2
cargo bench -p runnel-log --bench log 2>/dev/null | grep '^BENCH'
