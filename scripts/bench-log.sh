#!/usr/bin/env bash
# Log throughput benchmark: prints `BENCH <name> <value> <unit>` lines.
# 100-byte records, batches of 1000, 4 partitions; embedded (durable append, read) and
# Kafka (an Apache Kafka broker: produce and consume through runnel's `Log`), beside two
# baselines measured in the same run:
# - a raw write+fdatasync of the same bytes, for the embedded log;
# - Kafka's own kafka-producer-perf-test and kafka-consumer-perf-test (ProducerPerformance,
#   ConsumerPerformance from the broker's jars) on the same broker, with the same record size,
#   record count and partitions, acks=all, idempotence, linger.ms=5 and 1 MB batches (what
#   runnel's producer sets, and librdkafka's default batch size); the consumer's figure is
#   fetch.nMsg.sec, which leaves out its group join, since runnel's readers join no group.
#   Printed as kafka_perf_produce, kafka_perf_consume and the ratios kafka_produce_vs_perf,
#   kafka_consume_vs_perf (runnel over Kafka's own client; goal >= 0.8);
# - one appender plain against in transactions committed every 10,000 records
#   (kafka_produce_sequential, kafka_produce_transactional, kafka_transactional_vs_plain:
#   the cost of stream-processor.exactly-once).
# Sizes: BENCH_LOG_RECORDS (default 2,000,000), BENCH_KAFKA_RECORDS (default 1,000,000: with
# fewer, Kafka's tools time a second or less, at millisecond resolution).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/kafka.sh
export BENCH_KAFKA_RECORDS="${BENCH_KAFKA_RECORDS:-1000000}"

echo "==> building the benchmark (release)" >&2
cargo bench -p runnel-log --bench log --no-run >&2

ensure_kafka
start_kafka
records="${BENCH_KAFKA_RECORDS}"
records=$((records / 1000 * 1000))
kafka_tool() {
  java -Xmx512m -cp "$KAFKA_LIBS/*" -Dlog4j2.level=WARN "$@"
}
# A fresh broker runs its first million records several times slower while the JVM compiles
# its hot paths; whoever ran first would pay for that. Warm it up with Kafka's own tools.
echo "==> warming the broker up ($records records in and out, untimed)" >&2
kafka_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$KAFKA_BOOTSTRAP" --create \
  --topic "warmup-$$" --partitions 4 --replication-factor 1 >/dev/null
kafka_tool org.apache.kafka.tools.ProducerPerformance --topic "warmup-$$" \
  --num-records "$records" --record-size 100 --throughput -1 \
  --command-property bootstrap.servers="$KAFKA_BOOTSTRAP" acks=all >/dev/null 2>&1
kafka_tool org.apache.kafka.tools.ConsumerPerformance --bootstrap-server "$KAFKA_BOOTSTRAP" \
  --topic "warmup-$$" --messages "$records" --timeout 60000 >/dev/null 2>&1

echo "==> running the benchmark against the embedded log and Kafka at $KAFKA_BOOTSTRAP" >&2
runnel_lines="$(cargo bench -p runnel-log --bench log 2>/dev/null | grep '^BENCH')"
echo "$runnel_lines"

topic="perf-$$"
echo "==> Kafka's own perf tools on topic $topic ($records records of 100 bytes)" >&2
kafka_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$KAFKA_BOOTSTRAP" --create \
  --topic "$topic" --partitions 4 --replication-factor 1 >&2
produced="$(kafka_tool org.apache.kafka.tools.ProducerPerformance --topic "$topic" \
  --num-records "$records" --record-size 100 --throughput -1 \
  --command-property bootstrap.servers="$KAFKA_BOOTSTRAP" acks=all enable.idempotence=true \
  linger.ms=5 batch.size=1000000 compression.type=none 2>/dev/null | tail -n 1)"
echo "$produced" >&2
perf_produce="$(sed -E 's/.* records sent, ([0-9.]+) records\/sec.*/\1/' <<<"$produced")"
consumed="$(kafka_tool org.apache.kafka.tools.ConsumerPerformance --bootstrap-server "$KAFKA_BOOTSTRAP" \
  --topic "$topic" --messages "$records" --timeout 60000 2>/dev/null | tail -n 1)"
echo "$consumed" >&2
# start.time, end.time, MB, MB.sec, nMsg, nMsg.sec, rebalance.time.ms, fetch.time.ms, fetch.MB.sec, fetch.nMsg.sec
perf_consume="$(awk -F', *' '{ print $10 }' <<<"$consumed")"
printf 'BENCH kafka_perf_produce %.0f records/s\n' "$perf_produce"
printf 'BENCH kafka_perf_consume %.0f records/s\n' "$perf_consume"
runnel_value() {
  awk -v name="$1" '$2 == name { print $3 }' <<<"$runnel_lines"
}
awk -v ours="$(runnel_value kafka_produce)" -v theirs="$perf_produce" \
  'BEGIN { printf "BENCH kafka_produce_vs_perf %.2f ratio\n", ours / theirs }'
awk -v ours="$(runnel_value kafka_consume)" -v theirs="$perf_consume" \
  'BEGIN { printf "BENCH kafka_consume_vs_perf %.2f ratio\n", ours / theirs }'
