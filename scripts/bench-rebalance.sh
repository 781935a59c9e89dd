#!/usr/bin/env bash
# Consumer-group rebalance times on Apache Kafka, with real stream-processor processes killed
# with SIGKILL: prints `BENCH <name> <value> s` lines (services/runnel/tests/cli/stream.rs,
# `rebalance_times_on_kafka`, which says what each one measures). Debug build, as the test
# suite's: the times are the group protocol's and the session timeout's (6 s), not the code's.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/kafka.sh
trap stop_kafka EXIT

echo "==> building the test binary" >&2
cargo test -p runnel --test cli --no-run >&2
ensure_kafka
start_kafka
echo "==> measuring against Kafka at $KAFKA_BOOTSTRAP" >&2
RUNNEL_REQUIRE_KAFKA=1 cargo test -p runnel --test cli -- --ignored --exact \
  stream::rebalance_times_on_kafka --nocapture 2>/dev/null | grep '^BENCH'
