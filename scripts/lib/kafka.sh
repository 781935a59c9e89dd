# shellcheck shell=bash
# Apache Kafka (KRaft) for tests and benchmarks, in one place: the broker's jars come from Maven
# Central, so Java 17 and Maven are all it needs. Sourced by scripts/test.sh and
# scripts/bench-log.sh; defines:
#   ensure_kafka          finds the cached jars ${RUNNEL_CACHE:-~/.cache/runnel}/kafka/<version>/libs,
#                         or fetches them with `mvn dependency:copy-dependencies` (once per machine,
#                         about 40 s cold; Maven's own repository is ${RUNNEL_CACHE}/m2)
#   start_kafka           formats a fresh temporary folder and starts one combined broker and KRaft
#                         controller on free ports of 127.0.0.1 (replication factor 1), waits until
#                         it answers a Metadata request listing itself, and exports
#                         KAFKA_BOOTSTRAP=127.0.0.1:PORT; it also listens with TLS on another port
#                         (the `localhost`/`127.0.0.1` certificate of e2e-tests/fixtures/tls, no
#                         client certificates), waits until a TLS handshake there verifies, and
#                         exports KAFKA_TLS_BOOTSTRAP=127.0.0.1:PORT and KAFKA_TLS_CA (the CA's
#                         PEM file, which clients trust with librdkafka's ssl.ca.location)
#   start_kafka_cluster N the same with N combined brokers and controllers in one quorum (default 3;
#                         replication factor 3 or N if fewer, min.insync.replicas 2), waiting until
#                         every node lists all N brokers; exports KAFKA_BOOTSTRAP with every address
#                         (plaintext only: it unsets KAFKA_TLS_BOOTSTRAP and KAFKA_TLS_CA)
#   stop_kafka            stops what start_kafka* started (SIGTERM, SIGKILL after
#                         KAFKA_STOP_TIMEOUT_SECS) and removes its folder; safe when nothing runs
# A caller without an EXIT trap gets EXIT, INT and TERM traps that run stop_kafka; a caller with
# one (scripts/test.sh's cleanup) keeps its traps and calls stop_kafka.
# Each node's folder holds server.properties, its data, kafka.out (the JVM's stdout and stderr)
# and server.log (Kafka's log at WARN; RUNNEL_KAFKA_LOG_LEVEL=INFO for more).
# RUNNEL_KAFKA_JAVA_OPTS replaces the JVM options (default: 512 MiB heap, serial GC).
# Progress goes to stderr, so that a caller's stdout carries only its own output.

KAFKA_VERSION=4.3.2
# The log4j 2 that kafka_2.13 $KAFKA_VERSION itself depends on, plus its SLF4J 1 binding (the
# broker logs through SLF4J 1.7; Kafka's own distribution ships the same binding).
KAFKA_LOG4J_VERSION=2.25.5
KAFKA_DEPENDENCY_PLUGIN_VERSION=3.8.1
RUNNEL_CACHE="${RUNNEL_CACHE:-$HOME/.cache/runnel}"
KAFKA_HOME="$RUNNEL_CACHE/kafka/$KAFKA_VERSION"
KAFKA_LIBS="$KAFKA_HOME/libs"
# Written once every jar is in place; without it the folder is fetched again from scratch.
KAFKA_COMPLETE="$KAFKA_HOME/complete"
KAFKA_START_TIMEOUT_SECS=120
# The test CA, and the broker's TLS certificate and PKCS#8 key, unencrypted, as Kafka's PEM key
# store takes it (e2e-tests/fixtures/tls; never use them elsewhere).
KAFKA_TLS_FIXTURES="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/e2e-tests/fixtures/tls"
KAFKA_STOP_TIMEOUT_SECS=15
KAFKA_PIDS=()
KAFKA_DIR=""

kafka_is_installed() {
  [[ -f "$KAFKA_COMPLETE" ]] && [[ -f "$KAFKA_LIBS/kafka_2.13-$KAFKA_VERSION.jar" ]]
}

kafka_require_java_and_maven() {
  if command -v java >/dev/null && command -v mvn >/dev/null; then
    return 0
  fi
  if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
    echo "==> installing Java 17 and Maven (needed to fetch and run Kafka)" >&2
    apt-get update >&2
    apt-get install -y openjdk-17-jdk-headless maven >&2
  else
    echo "error: java (17 or newer) and mvn are required to run Kafka; install them (e.g. apt-get install openjdk-17-jdk-headless maven)" >&2
    return 1
  fi
}

# The jars of the broker (kafka_2.13), of StorageTool's format (kafka-storage) and of the command
# line tools (kafka-tools, without Connect's runtime, which only the Connect tools need).
kafka_write_pom() {
  cat >"$1" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>runnel</groupId>
  <artifactId>runnel-test-kafka</artifactId>
  <version>$KAFKA_VERSION</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>$KAFKA_VERSION</version>
    </dependency>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka-storage</artifactId>
      <version>$KAFKA_VERSION</version>
    </dependency>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka-tools</artifactId>
      <version>$KAFKA_VERSION</version>
      <exclusions>
        <exclusion>
          <groupId>org.apache.kafka</groupId>
          <artifactId>connect-runtime</artifactId>
        </exclusion>
      </exclusions>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>$KAFKA_LOG4J_VERSION</version>
    </dependency>
  </dependencies>
  <build>
    <plugins>
      <plugin>
        <groupId>org.apache.maven.plugins</groupId>
        <artifactId>maven-dependency-plugin</artifactId>
        <version>$KAFKA_DEPENDENCY_PLUGIN_VERSION</version>
      </plugin>
    </plugins>
  </build>
</project>
EOF
}

ensure_kafka() {
  kafka_require_java_and_maven || return 1
  if kafka_is_installed; then
    echo "==> using Kafka $KAFKA_VERSION at $KAFKA_HOME" >&2
    return 0
  fi
  mkdir -p "$RUNNEL_CACHE/kafka"
  # One fetch at a time per cache: a second run waits for the first one's jars.
  local lock_fd
  exec {lock_fd}>"$RUNNEL_CACHE/kafka-install.lock"
  echo "==> waiting for the Kafka install lock ($RUNNEL_CACHE/kafka-install.lock)" >&2
  flock "$lock_fd"
  if ! kafka_is_installed; then
    echo "==> fetching Kafka $KAFKA_VERSION from Maven Central into $KAFKA_HOME (about 40 s cold, once per machine)" >&2
    local staging="$KAFKA_HOME.partial"
    rm -rf "$staging" "$KAFKA_HOME"
    mkdir -p "$staging"
    kafka_write_pom "$staging/pom.xml"
    # -q prints errors only (and, with Maven 3.8, colour resets): they go to mvn.log.
    if ! mvn -B -q --no-transfer-progress -f "$staging/pom.xml" \
      -Dmaven.repo.local="$RUNNEL_CACHE/m2" \
      dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$staging/libs" \
      >"$staging/mvn.log" 2>&1; then
      echo "error: mvn could not fetch Kafka $KAFKA_VERSION; its output:" >&2
      cat "$staging/mvn.log" >&2
      rm -rf "$staging"
      exec {lock_fd}>&-
      return 1
    fi
    mv "$staging" "$KAFKA_HOME"
    date -u +%Y-%m-%dT%H:%M:%SZ >"$KAFKA_COMPLETE"
  fi
  exec {lock_fd}>&-
  if ! kafka_is_installed; then
    echo "error: $KAFKA_LIBS is incomplete after the fetch" >&2
    return 1
  fi
  echo "==> using Kafka $KAFKA_VERSION at $KAFKA_HOME" >&2
}

# Prints $1 distinct free ports of 127.0.0.1, one a line (all held open until each is picked).
kafka_free_ports() {
  python3 - "$1" <<'PY'
import socket, sys
sockets = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    sockets.append(s)
for s in sockets:
    print(s.getsockname()[1])
    s.close()
PY
}

# A random cluster id: 16 bytes in URL-safe base64 without padding, as kafka-storage random-uuid.
# Like Kafka's Uuid.randomUuid, never one that starts with `-`: kafka-storage's argument parser
# would read `-t -xyz...` as a missing value (one start in 64 failed so).
kafka_cluster_id() {
  python3 -c '
import base64, uuid
while True:
    text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    if not text.startswith("-"):
        print(text)
        break
'
}

# Waits until every address in $3 (comma-separated host:port) answers a Metadata request (v4, no
# topics) that lists $2 brokers, while every pid in $4 (comma-separated) lives, for at most $1
# seconds. Exits 0 when ready, 1 when a process died, 2 on timeout.
kafka_wait_ready() {
  python3 - "$@" <<'PY'
import socket, struct, sys, time

timeout, brokers_wanted = float(sys.argv[1]), int(sys.argv[2])
addresses = [a.rsplit(":", 1) for a in sys.argv[3].split(",")]
pids = [int(p) for p in sys.argv[4].split(",")]
client_id = b"runnel-kafka-probe"
# api_key 3 (Metadata), version 4, correlation id 1, client id; topics: empty array; no auto-create.
request = struct.pack(">hhih", 3, 4, 1, len(client_id)) + client_id + struct.pack(">i?", 0, False)
request = struct.pack(">i", len(request)) + request


def broker_count(host, port):
    with socket.create_connection((host, int(port)), timeout=2) as sock:
        sock.settimeout(5)
        sock.sendall(request)
        data = b""
        while len(data) < 4 or len(data) < 4 + struct.unpack(">i", data[:4])[0]:
            chunk = sock.recv(65536)
            if not chunk:
                raise EOFError("connection closed")
            data += chunk
    # size, correlation id, throttle_time_ms, then the brokers array.
    return struct.unpack_from(">i", data, 12)[0]


deadline = time.monotonic() + timeout
pending = list(addresses)
while True:
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                exited = stat.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
        except FileNotFoundError:
            exited = True
        if exited:
            print(f"process {pid} exited", file=sys.stderr)
            sys.exit(1)
    still = []
    for host, port in pending:
        try:
            if broker_count(host, port) >= brokers_wanted:
                continue
        except (OSError, EOFError, struct.error):
            pass
        still.append((host, port))
    pending = still
    if not pending:
        sys.exit(0)
    if time.monotonic() > deadline:
        sys.exit(2)
    time.sleep(0.2)
PY
}

kafka_java_opts() {
  # shellcheck disable=SC2206 # word splitting is meant: a list of JVM options
  local opts=(${RUNNEL_KAFKA_JAVA_OPTS:--Xms128m -Xmx512m -XX:+UseSerialGC -XX:+ExitOnOutOfMemoryError})
  printf '%s\n' "${opts[@]}" -Djava.awt.headless=true
}

# Writes node $1's folder $2: server.properties and log4j2.properties.
# $3: the quorum voters, $4: its client port, $5: its controller port, $6: the node count,
# $7 (optional): the port of a TLS listener (SSL), whose PEM key store goes in the folder too.
kafka_write_node_config() {
  local node="$1" dir="$2" voters="$3" port="$4" controller_port="$5" nodes="$6" tls_port="${7:-}"
  local replication=$((nodes < 3 ? nodes : 3))
  local min_isr=$((replication < 2 ? 1 : 2))
  local listeners="PLAINTEXT://127.0.0.1:$port" protocols="PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
  mkdir -p "$dir/data"
  if [[ -n "$tls_port" ]]; then
    listeners+=",SSL://127.0.0.1:$tls_port"
    protocols+=",SSL:SSL"
    # Kafka's PEM key store file: the private key, then the certificate chain.
    (umask 077 && cat "$KAFKA_TLS_FIXTURES/server.key" "$KAFKA_TLS_FIXTURES/server.pem" >"$dir/tls-keystore.pem")
  fi
  cat >"$dir/server.properties" <<EOF
process.roles=broker,controller
node.id=$node
controller.quorum.voters=$voters
listeners=$listeners,CONTROLLER://127.0.0.1:$controller_port
advertised.listeners=$listeners
listener.security.protocol.map=$protocols
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
log.dirs=$dir/data
# runnel creates every topic itself (Log::ensure_topic, through the admin API), and its clients
# set allow.auto.create.topics=false.
auto.create.topics.enable=false
num.partitions=1
default.replication.factor=$replication
min.insync.replicas=$min_isr
offsets.topic.replication.factor=$replication
offsets.topic.num.partitions=$((nodes == 1 ? 1 : 3))
transaction.state.log.replication.factor=$replication
transaction.state.log.min.isr=$min_isr
transaction.state.log.num.partitions=1
group.initial.rebalance.delay.ms=0
# Keep every record: tests write records stamped with fixed dates (e.g. BASE_MS in
# services/runnel/tests/cli/stream.rs), which Kafka's default 7 days of time retention would
# delete at its first check, 30 s after the start.
log.retention.ms=-1
num.network.threads=2
num.io.threads=4
EOF
  if [[ -n "$tls_port" ]]; then
    cat >>"$dir/server.properties" <<EOF
# TLS for clients only: brokers and controllers speak plaintext among themselves. The key is
# unencrypted, so there is no ssl.key.password.
listener.name.ssl.ssl.keystore.type=PEM
listener.name.ssl.ssl.keystore.location=$dir/tls-keystore.pem
listener.name.ssl.ssl.client.auth=none
EOF
  fi
  cat >"$dir/log4j2.properties" <<EOF
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = $dir/server.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = ${RUNNEL_KAFKA_LOG_LEVEL:-WARN}
rootLogger.appenderRef.file.ref = file
EOF
}

# Prints the tail of each node's logs to stderr.
kafka_print_logs() {
  local node_dir file
  for node_dir in "$KAFKA_DIR"/node-*; do
    for file in "$node_dir/kafka.out" "$node_dir/server.log"; do
      if [[ -s "$file" ]]; then
        echo "---- $file (last 40 lines)" >&2
        tail -n 40 "$file" >&2
      fi
    done
  done
}

# Kills every started node at once (SIGKILL) and forgets it; the folder stays.
kafka_kill_nodes() {
  local pid
  for pid in "${KAFKA_PIDS[@]}"; do
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  KAFKA_PIDS=()
}

# Waits until $2 (host:port) completes a TLS handshake that verifies against the CA file $3 and
# the address's host, for at most $1 seconds. Exits 0 when it does, 2 on timeout (with the last
# error on stderr).
kafka_wait_tls_ready() {
  python3 - "$@" <<'PY'
import socket, ssl, sys, time

timeout, (host, port), ca = float(sys.argv[1]), sys.argv[2].rsplit(":", 1), sys.argv[3]
context = ssl.create_default_context(cafile=ca)
deadline = time.monotonic() + timeout
while True:
    try:
        with socket.create_connection((host, int(port)), timeout=2) as sock:
            with context.wrap_socket(sock, server_hostname=host):
                sys.exit(0)
    except (OSError, ssl.SSLError) as error:
        last_error = error
    if time.monotonic() > deadline:
        print(f"no verified TLS handshake with {host}:{port}: {last_error}", file=sys.stderr)
        sys.exit(2)
    time.sleep(0.2)
PY
}

# Formats and starts $1 nodes in $KAFKA_DIR, with a TLS listener on the one node when $2 is
# `tls`; 0 once all are ready, 1 if one exited, 2 on timeout.
kafka_start_nodes() {
  local nodes="$1" tls="${2:-}"
  local ports=() node voters="" addresses="" java_opts=() format_pids=() pid status tls_port=""
  # A client and a controller port per node, and one for a TLS listener.
  mapfile -t ports < <(kafka_free_ports $((2 * nodes + 1)))
  if [[ "$tls" == tls ]]; then
    tls_port="${ports[2 * nodes]}"
  fi
  mapfile -t java_opts < <(kafka_java_opts)
  for ((node = 1; node <= nodes; node++)); do
    voters+="${voters:+,}$node@127.0.0.1:${ports[2 * node - 1]}"
    addresses+="${addresses:+,}127.0.0.1:${ports[2 * node - 2]}"
  done
  local cluster_id
  cluster_id="$(kafka_cluster_id)"
  rm -rf "$KAFKA_DIR"/node-*
  # Static voters (controller.quorum.voters): a plain format of each folder, no --standalone.
  for ((node = 1; node <= nodes; node++)); do
    local dir="$KAFKA_DIR/node-$node"
    kafka_write_node_config "$node" "$dir" "$voters" "${ports[2 * node - 2]}" "${ports[2 * node - 1]}" "$nodes" "$tls_port"
    java "${java_opts[@]}" -Dlog4j2.configurationFile="$dir/log4j2.properties" -cp "$KAFKA_LIBS/*" \
      kafka.tools.StorageTool format --ignore-formatted -t "$cluster_id" -c "$dir/server.properties" \
      >"$dir/format.out" 2>&1 &
    format_pids+=($!)
  done
  status=0
  for pid in "${format_pids[@]}"; do
    wait "$pid" || status=1
  done
  if ((status != 0)); then
    echo "error: formatting the Kafka storage failed:" >&2
    cat "$KAFKA_DIR"/node-*/format.out >&2
    return 1
  fi
  for ((node = 1; node <= nodes; node++)); do
    local dir="$KAFKA_DIR/node-$node"
    java "${java_opts[@]}" -Dlog4j2.configurationFile="$dir/log4j2.properties" -cp "$KAFKA_LIBS/*" \
      kafka.Kafka "$dir/server.properties" >"$dir/kafka.out" 2>&1 &
    KAFKA_PIDS+=($!)
  done
  echo "==> starting $nodes Kafka $KAFKA_VERSION node(s) on $addresses in $KAFKA_DIR" >&2
  local pid_list
  pid_list="$(IFS=,; echo "${KAFKA_PIDS[*]}")"
  status=0
  kafka_wait_ready "$KAFKA_START_TIMEOUT_SECS" "$nodes" "$addresses" "$pid_list" || status=$?
  if ((status == 0)) && [[ -n "$tls_port" ]]; then
    # The broker opens its listeners together, so this takes a moment at most.
    kafka_wait_tls_ready 30 "127.0.0.1:$tls_port" "$KAFKA_TLS_FIXTURES/ca.pem" || status=$?
  fi
  if ((status == 0)); then
    export KAFKA_BOOTSTRAP="$addresses"
    if [[ -n "$tls_port" ]]; then
      export KAFKA_TLS_BOOTSTRAP="127.0.0.1:$tls_port" KAFKA_TLS_CA="$KAFKA_TLS_FIXTURES/ca.pem"
    else
      unset KAFKA_TLS_BOOTSTRAP KAFKA_TLS_CA
    fi
  fi
  return "$status"
}

# Starts $1 nodes; $2 as kafka_start_nodes.
kafka_start() {
  local nodes="$1" tls="${2:-}"
  if ((${#KAFKA_PIDS[@]} > 0)); then
    echo "error: Kafka is already running (KAFKA_BOOTSTRAP=${KAFKA_BOOTSTRAP:-}); stop_kafka first" >&2
    return 1
  fi
  if ! kafka_is_installed; then
    echo "error: Kafka $KAFKA_VERSION is not in $KAFKA_HOME; call ensure_kafka first" >&2
    return 1
  fi
  KAFKA_DIR="$(mktemp -d "${TMPDIR:-/tmp}/runnel-kafka.XXXXXX")"
  if [[ -z "$(trap -p EXIT)" ]]; then
    trap stop_kafka EXIT
    # A non-interactive shell's background jobs ignore SIGINT, so Ctrl-C must reach the brokers
    # through this trap; `exit` runs the EXIT trap.
    trap 'exit 130' INT
    trap 'exit 143' TERM
  fi
  local attempt status started=$SECONDS
  # A free port can be taken between picking it and Kafka binding it; then try others.
  for attempt in 1 2 3; do
    status=0
    kafka_start_nodes "$nodes" "$tls" || status=$?
    if ((status == 0)); then
      echo "==> Kafka is up after $((SECONDS - started)) s: KAFKA_BOOTSTRAP=$KAFKA_BOOTSTRAP${KAFKA_TLS_BOOTSTRAP:+, KAFKA_TLS_BOOTSTRAP=$KAFKA_TLS_BOOTSTRAP} (pids ${KAFKA_PIDS[*]}; logs in $KAFKA_DIR/node-*)" >&2
      return 0
    fi
    if ((status == 2)); then
      echo "error: Kafka did not answer within ${KAFKA_START_TIMEOUT_SECS}s (attempt $attempt); its logs:" >&2
    else
      echo "==> Kafka failed during startup (attempt $attempt); its logs:" >&2
    fi
    kafka_print_logs
    kafka_kill_nodes
    if ((status == 2)); then
      return 1
    fi
  done
  echo "error: Kafka failed to start 3 times" >&2
  return 1
}

start_kafka() {
  kafka_start 1 tls
}

start_kafka_cluster() {
  kafka_start "${1:-3}"
}

stop_kafka() {
  local pid alive deadline
  if ((${#KAFKA_PIDS[@]} > 0)); then
    echo "==> stopping Kafka (pids ${KAFKA_PIDS[*]})" >&2
    for pid in "${KAFKA_PIDS[@]}"; do
      kill -TERM "$pid" 2>/dev/null || true
    done
    deadline=$((SECONDS + KAFKA_STOP_TIMEOUT_SECS))
    while :; do
      alive=0
      for pid in "${KAFKA_PIDS[@]}"; do
        if kill -0 "$pid" 2>/dev/null; then
          alive=1
        fi
      done
      if ((alive == 0 || SECONDS >= deadline)); then
        break
      fi
      sleep 0.2
    done
    if ((alive != 0)); then
      echo "==> Kafka did not stop within ${KAFKA_STOP_TIMEOUT_SECS}s; killing it" >&2
    fi
    kafka_kill_nodes
  fi
  if [[ -n "$KAFKA_DIR" ]]; then
    rm -rf "$KAFKA_DIR"
    KAFKA_DIR=""
  fi
}
