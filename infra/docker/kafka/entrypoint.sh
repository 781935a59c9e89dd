#!/usr/bin/env bash
# Starts one Apache Kafka node in KRaft mode (broker and controller in one process), formatting
# its storage on first start. Configured by the environment:
#   KAFKA_NODE_ID           this node's id (1, 2, 3, ...)
#   KAFKA_CONTROLLER_QUORUM_VOTERS  every controller, `id@host:port,...` (static quorum)
#   KAFKA_CLUSTER_ID        the cluster's id, the same on every node (22 base64url characters)
#   KAFKA_ADVERTISED_HOST   the name other containers reach this node by (default: hostname)
#   KAFKA_REPLICATION       replication factor of internal topics and the default (default 3)
#   KAFKA_MIN_INSYNC        min.insync.replicas (default 2)
#   KAFKA_HEAP              JVM heap (default 512m)
# Ports: 9092 for clients (PLAINTEXT), 9093 for the controllers. Data: /var/lib/kafka.
set -euo pipefail
: "${KAFKA_NODE_ID:?set KAFKA_NODE_ID}"
: "${KAFKA_CONTROLLER_QUORUM_VOTERS:?set KAFKA_CONTROLLER_QUORUM_VOTERS}"
: "${KAFKA_CLUSTER_ID:?set KAFKA_CLUSTER_ID}"
host="${KAFKA_ADVERTISED_HOST:-$(hostname)}"
replication="${KAFKA_REPLICATION:-3}"
min_insync="${KAFKA_MIN_INSYNC:-2}"
data=/var/lib/kafka
config="$data/server.properties"
cat >"$config" <<PROPERTIES
process.roles=broker,controller
node.id=$KAFKA_NODE_ID
controller.quorum.voters=$KAFKA_CONTROLLER_QUORUM_VOTERS
listeners=PLAINTEXT://0.0.0.0:9092,CONTROLLER://0.0.0.0:9093
advertised.listeners=PLAINTEXT://$host:9092
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
log.dirs=$data/logs
# runnel creates its topics itself, with its own replication settings.
auto.create.topics.enable=false
default.replication.factor=$replication
min.insync.replicas=$min_insync
offsets.topic.replication.factor=$replication
transaction.state.log.replication.factor=$replication
transaction.state.log.min.isr=$min_insync
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=4
PROPERTIES
java_opts=(-Xms128m "-Xmx${KAFKA_HEAP:-512m}" -XX:+UseSerialGC -XX:+ExitOnOutOfMemoryError
  -Djava.awt.headless=true -Dlog4j2.configurationFile=/opt/kafka/log4j2.properties)
if [[ ! -f "$data/logs/meta.properties" ]]; then
  java "${java_opts[@]}" -cp '/opt/kafka/libs/*' kafka.tools.StorageTool format \
    --ignore-formatted -t "$KAFKA_CLUSTER_ID" -c "$config"
fi
exec java "${java_opts[@]}" -cp '/opt/kafka/libs/*' kafka.Kafka "$config"
