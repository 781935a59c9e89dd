# shellcheck shell=bash
# The tansu Kafka-protocol broker for tests and benchmarks, in one place.
# Sourced by scripts/test.sh and scripts/bench-log.sh; defines:
#   ensure_tansu  finds the cached tansu binary, or builds it with `cargo install` (once per machine)
#   start_tansu   starts tansu on a free port of 127.0.0.1 with SQLite storage in a fresh temporary
#                 folder, waits until it accepts connections, and exports KAFKA_BOOTSTRAP=127.0.0.1:PORT.
#                 A caller without an EXIT trap gets EXIT, INT and TERM traps that run stop_tansu;
#                 a caller with one (scripts/test.sh's cleanup) keeps its traps and calls stop_tansu
#   stop_tansu    stops the broker and removes its folder
# Progress goes to stderr, so that a caller's stdout carries only its own output.

TANSU_VERSION=0.6.0
RUNNEL_CACHE="${RUNNEL_CACHE:-$HOME/.cache/runnel}"
TANSU_ROOT="$RUNNEL_CACHE/tansu"
TANSU_BIN="$TANSU_ROOT/bin/tansu"
TANSU_START_TIMEOUT_SECS=60
TANSU_PID=""
TANSU_DIR=""

tansu_is_installed() {
  [[ -x "$TANSU_BIN" ]] && [[ "$("$TANSU_BIN" --version 2>/dev/null)" == "tansu $TANSU_VERSION" ]]
}

ensure_tansu() {
  if tansu_is_installed; then
    echo "==> using tansu $TANSU_VERSION at $TANSU_BIN" >&2
    return 0
  fi
  mkdir -p "$RUNNEL_CACHE"
  # One build at a time per cache: a second run waits for the first one's binary.
  local lock_fd
  exec {lock_fd}>"$RUNNEL_CACHE/tansu-install.lock"
  echo "==> waiting for the tansu install lock ($RUNNEL_CACHE/tansu-install.lock)" >&2
  flock "$lock_fd"
  if ! tansu_is_installed; then
    echo "==> building tansu $TANSU_VERSION into $TANSU_ROOT (about 15 minutes cold, once per machine)" >&2
    # libsql: the SQLite storage engine. Default features store nothing and memory:// loses
    # committed offsets, so the Kafka tests need it.
    cargo install tansu --version "$TANSU_VERSION" --locked --features libsql --root "$TANSU_ROOT" >&2
  fi
  exec {lock_fd}>&-
  if ! tansu_is_installed; then
    echo "error: $TANSU_BIN is missing or is not tansu $TANSU_VERSION after the install" >&2
    return 1
  fi
  echo "==> using tansu $TANSU_VERSION at $TANSU_BIN" >&2
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# Returns 0 once 127.0.0.1:$1 accepts a TCP connection, 1 if the broker died or the timeout passed.
wait_for_tansu() {
  local port="$1"
  local deadline=$((SECONDS + TANSU_START_TIMEOUT_SECS))
  while ((SECONDS < deadline)); do
    if ! kill -0 "$TANSU_PID" 2>/dev/null; then
      return 1
    fi
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      return 0
    fi
    sleep 0.2
  done
  return 1
}

start_tansu() {
  TANSU_DIR="$(mktemp -d "${TMPDIR:-/tmp}/runnel-tansu.XXXXXX")"
  if [[ -z "$(trap -p EXIT)" ]]; then
    trap stop_tansu EXIT
    # A non-interactive shell's background jobs ignore SIGINT, so Ctrl-C must reach the broker
    # through this trap; `exit` runs the EXIT trap.
    trap 'exit 130' INT
    trap 'exit 143' TERM
  fi
  local attempt port
  # The free port can be taken between picking it and tansu binding it; then try another.
  for attempt in 1 2 3; do
    port="$(free_port)"
    echo "==> starting tansu on 127.0.0.1:$port in $TANSU_DIR (attempt $attempt, log: $TANSU_DIR/tansu.log)" >&2
    (
      cd "$TANSU_DIR"
      exec "$TANSU_BIN" broker \
        --listener-url "tcp://127.0.0.1:$port" \
        --advertised-listener-url "tcp://127.0.0.1:$port" \
        --storage-engine sqlite://tansu.db \
        --cluster-id runnel
    ) >"$TANSU_DIR/tansu.log" 2>&1 &
    TANSU_PID=$!
    if wait_for_tansu "$port"; then
      export KAFKA_BOOTSTRAP="127.0.0.1:$port"
      echo "==> tansu is up: KAFKA_BOOTSTRAP=$KAFKA_BOOTSTRAP (pid $TANSU_PID)" >&2
      return 0
    fi
    if kill -0 "$TANSU_PID" 2>/dev/null; then
      echo "error: tansu did not accept connections on 127.0.0.1:$port within ${TANSU_START_TIMEOUT_SECS}s; its log:" >&2
      cat "$TANSU_DIR/tansu.log" >&2
      return 1
    fi
    echo "==> tansu exited during startup; its log:" >&2
    cat "$TANSU_DIR/tansu.log" >&2
    TANSU_PID=""
  done
  echo "error: tansu failed to start 3 times" >&2
  return 1
}

stop_tansu() {
  if [[ -n "$TANSU_PID" ]] && kill -0 "$TANSU_PID" 2>/dev/null; then
    echo "==> stopping tansu (pid $TANSU_PID)" >&2
    kill "$TANSU_PID" 2>/dev/null || true
    wait "$TANSU_PID" 2>/dev/null || true
  fi
  TANSU_PID=""
  if [[ -n "$TANSU_DIR" ]]; then
    rm -rf "$TANSU_DIR"
    TANSU_DIR=""
  fi
}
