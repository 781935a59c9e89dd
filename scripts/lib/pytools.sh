# shellcheck shell=bash
# The Python tools the tests use as real second parties, in one place: DuckDB (a second Parquet
# reader, through scripts/lib/read_history_duckdb.py), moto's server (an S3-compatible object
# store) and grpcio with grpcio-reflection (a gRPC client that knows no compiled stubs, through
# scripts/lib/serving_reflection_client.py). Sourced by scripts/test.sh; defines:
#   ensure_test_venv  finds the cached venv ${RUNNEL_CACHE:-~/.cache/runnel}/test-venv with the pinned
#                     duckdb, moto[server], grpcio and grpcio-reflection, or (re)creates it with pip (once per machine, about a
#                     minute cold); exports RUNNEL_PYTHON=<venv>/bin/python
#   start_moto        starts moto's server on a free port of 127.0.0.1 (in memory; its log in a fresh
#                     temporary folder), waits until it answers, creates the bucket runnel-test, and
#                     exports RUNNEL_S3_ENDPOINT=http://127.0.0.1:PORT and RUNNEL_S3_BUCKET=runnel-test.
#                     Clients use any access key (moto accepts all); tests pass the endpoint as
#                     storage.object-store-options, not through AWS_* variables.
#                     It installs no traps: the caller stops it (scripts/test.sh's cleanup does).
#   stop_moto         stops the server and removes its folder; safe to call when it is not running
# Progress goes to stderr, so that a caller's stdout carries only its own output.

TEST_DUCKDB_VERSION=1.5.6
TEST_MOTO_VERSION=5.2.5
TEST_GRPCIO_VERSION=1.85.1
RUNNEL_CACHE="${RUNNEL_CACHE:-$HOME/.cache/runnel}"
TEST_VENV="$RUNNEL_CACHE/test-venv"
# Written after a successful install; a venv whose stamp differs is rebuilt from scratch.
TEST_VENV_STAMP="$TEST_VENV/runnel-requirements.txt"
TEST_VENV_REQUIREMENTS=("duckdb==$TEST_DUCKDB_VERSION" "moto[server]==$TEST_MOTO_VERSION"
  "grpcio==$TEST_GRPCIO_VERSION" "grpcio-reflection==$TEST_GRPCIO_VERSION")
MOTO_BUCKET=runnel-test
MOTO_START_TIMEOUT_SECS=60
MOTO_PID=""
MOTO_DIR=""

# The venv is ready when its stamp names the pinned requirements and its Python (a link to the
# base Python, which may have moved since) imports both tools.
test_venv_is_ready() {
  [[ -x "$TEST_VENV/bin/python" ]] &&
    [[ "$(cat "$TEST_VENV_STAMP" 2>/dev/null)" == "$(printf '%s\n' "${TEST_VENV_REQUIREMENTS[@]}")" ]] &&
    "$TEST_VENV/bin/python" -c 'import duckdb, moto.server, grpc, grpc_reflection' 2>/dev/null
}

ensure_test_venv() {
  if ! test_venv_is_ready; then
    mkdir -p "$RUNNEL_CACHE"
    # One install at a time per cache: a second run waits for the first one's venv.
    local lock_fd
    exec {lock_fd}>"$RUNNEL_CACHE/test-venv-install.lock"
    echo "==> waiting for the test venv install lock ($RUNNEL_CACHE/test-venv-install.lock)" >&2
    flock "$lock_fd"
    if ! test_venv_is_ready; then
      echo "==> creating $TEST_VENV with ${TEST_VENV_REQUIREMENTS[*]} (about a minute cold, once per machine)" >&2
      rm -rf "$TEST_VENV"
      if ! { python3 -m venv "$TEST_VENV" &&
        "$TEST_VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
          "${TEST_VENV_REQUIREMENTS[@]}"; } >&2; then
        exec {lock_fd}>&-
        echo "error: could not install ${TEST_VENV_REQUIREMENTS[*]} into $TEST_VENV" >&2
        return 1
      fi
      printf '%s\n' "${TEST_VENV_REQUIREMENTS[@]}" >"$TEST_VENV_STAMP"
    fi
    exec {lock_fd}>&-
    if ! test_venv_is_ready; then
      echo "error: $TEST_VENV does not import duckdb and moto.server after the install" >&2
      return 1
    fi
  fi
  # Absolute, so that tests may run it from any working directory (cargo runs each package's
  # tests in that package's folder).
  RUNNEL_PYTHON="$(cd "$TEST_VENV/bin" && pwd)/python"
  export RUNNEL_PYTHON
  echo "==> using duckdb $TEST_DUCKDB_VERSION and moto $TEST_MOTO_VERSION: RUNNEL_PYTHON=$RUNNEL_PYTHON" >&2
}

moto_free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# Returns 0 once 127.0.0.1:$1 accepts a TCP connection, 1 if the server died or the timeout passed.
wait_for_moto() {
  local port="$1"
  local deadline=$((SECONDS + MOTO_START_TIMEOUT_SECS))
  while ((SECONDS < deadline)); do
    if ! kill -0 "$MOTO_PID" 2>/dev/null; then
      return 1
    fi
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      return 0
    fi
    sleep 0.2
  done
  return 1
}

# Creates bucket $2 on endpoint $1 with an unsigned PUT (moto accepts those), then lists it.
create_moto_bucket() {
  "$RUNNEL_PYTHON" - "$1" "$2" <<'EOF'
import sys
import urllib.request

endpoint, bucket = sys.argv[1], sys.argv[2]
urllib.request.urlopen(urllib.request.Request(f"{endpoint}/{bucket}", data=b"", method="PUT"), timeout=30)
urllib.request.urlopen(f"{endpoint}/{bucket}?list-type=2", timeout=30)
EOF
}

start_moto() {
  if [[ -z "${RUNNEL_PYTHON:-}" ]]; then
    echo "error: start_moto needs ensure_test_venv first" >&2
    return 1
  fi
  MOTO_DIR="$(mktemp -d "${TMPDIR:-/tmp}/runnel-moto.XXXXXX")"
  local attempt port endpoint
  # The free port can be taken between picking it and moto binding it; then try another.
  for attempt in 1 2 3; do
    port="$(moto_free_port)"
    echo "==> starting moto on 127.0.0.1:$port (attempt $attempt, log: $MOTO_DIR/moto.log)" >&2
    (
      cd "$MOTO_DIR" || exit
      exec "$TEST_VENV/bin/moto_server" -H 127.0.0.1 -p "$port"
    ) >"$MOTO_DIR/moto.log" 2>&1 &
    MOTO_PID=$!
    endpoint="http://127.0.0.1:$port"
    if wait_for_moto "$port" && create_moto_bucket "$endpoint" "$MOTO_BUCKET" 2>"$MOTO_DIR/bucket.err"; then
      export RUNNEL_S3_ENDPOINT="$endpoint"
      export RUNNEL_S3_BUCKET="$MOTO_BUCKET"
      echo "==> moto is up: RUNNEL_S3_ENDPOINT=$RUNNEL_S3_ENDPOINT RUNNEL_S3_BUCKET=$RUNNEL_S3_BUCKET (pid $MOTO_PID)" >&2
      return 0
    fi
    # Another program that took the port may have answered instead; moto then exits shortly.
    sleep 1
    if kill -0 "$MOTO_PID" 2>/dev/null; then
      echo "error: moto on $endpoint did not accept connections within ${MOTO_START_TIMEOUT_SECS}s" \
        "or could not create the bucket $MOTO_BUCKET; its log:" >&2
      cat "$MOTO_DIR/moto.log" "$MOTO_DIR/bucket.err" >&2 2>/dev/null || true
      return 1
    fi
    echo "==> moto exited during startup; its log:" >&2
    cat "$MOTO_DIR/moto.log" >&2
    MOTO_PID=""
  done
  echo "error: moto failed to start 3 times" >&2
  return 1
}

stop_moto() {
  if [[ -n "$MOTO_PID" ]] && kill -0 "$MOTO_PID" 2>/dev/null; then
    echo "==> stopping moto (pid $MOTO_PID)" >&2
    kill "$MOTO_PID" 2>/dev/null || true
    wait "$MOTO_PID" 2>/dev/null || true
  fi
  MOTO_PID=""
  if [[ -n "$MOTO_DIR" ]]; then
    rm -rf "$MOTO_DIR"
    MOTO_DIR=""
  fi
}
