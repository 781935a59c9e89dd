#!/usr/bin/env bash
# The README's test command, and what CI runs (.ci/run).
# Installs what the tests need when missing (make, curl, procps, pkg-config and libssl-dev from
# Debian, Apache Kafka's jars from Maven Central, a Python venv with DuckDB and moto from PyPI),
# starts a Kafka broker (with a TLS listener too) and moto's S3 server on 127.0.0.1, and runs the
# workspace's tests against them with:
#   KAFKA_BOOTSTRAP                         the broker's address (scripts/lib/kafka.sh)
#   KAFKA_TLS_BOOTSTRAP, KAFKA_TLS_CA       the same broker's TLS listener and the CA file that
#                                           verifies it (e2e-tests/fixtures/tls/ca.pem)
#   RUNNEL_KAFKA_LIBS                       Apache Kafka's jars, for its console tools
#   RUNNEL_PYTHON                           a Python with duckdb and grpcio, for scripts/lib/*.py
#   RUNNEL_S3_ENDPOINT, RUNNEL_S3_BUCKET    moto's URL and an empty bucket (scripts/lib/pytools.sh)
#   RUNNEL_REQUIRE_KAFKA=1, RUNNEL_REQUIRE_DUCKDB=1, RUNNEL_REQUIRE_S3=1, RUNNEL_REQUIRE_GRPCIO=1
#                                           a test that finds its broker, DuckDB, S3 server or grpcio
#                                           missing fails instead of skipping
# and then, for a whole-workspace run, the replication test on a three-broker cluster in place of
# the single broker (KAFKA_CLUSTER_BOOTSTRAP, KAFKA_CLUSTER_PIDS, RUNNEL_REQUIRE_KAFKA_CLUSTER=1),
# and the compose cluster's fault tests on container images it builds (Docker's engine and
# debootstrap from Debian's packages, MinIO from the Go module proxy; RUNNEL_COMPOSE=0 skips them,
# and so does a machine where Docker does not answer and this is not root), and the Terraform
# module's checks (scripts/check-terraform.sh; RUNNEL_TERRAFORM=0 skips them).
# Arguments replace `--workspace`, e.g. `bash scripts/test.sh -p runnel-log`.
# The last line is `total: N passed, M failed` over every test binary.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/lib/kafka.sh
source scripts/lib/pytools.sh
source scripts/lib/docker.sh

# One cleanup for everything started below, on any exit. A non-interactive shell's background
# jobs ignore SIGINT, so Ctrl-C must reach the servers through these traps; `exit` runs EXIT's.
test_log=""
cleanup() {
  stop_moto
  stop_kafka
  rm -f "$test_log"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

echo "==> checking build tools"
for tool in cargo gcc python3; do
  if ! command -v "$tool" >/dev/null; then
    echo "error: $tool is required and not on PATH" >&2
    exit 1
  fi
done
# Tools from Debian's packages, installed when missing (as root with apt-get): make, with which
# rdkafka builds its bundled librdkafka; curl, which the README's first session (run by the
# newcomer test) calls; kill (procps), with which tests signal the processes they start;
# pkg-config and OpenSSL's headers (libssl-dev), with which rdkafka's `ssl` feature links the
# system OpenSSL.
missing=()
for tool_package in make:make curl:curl kill:procps; do
  if ! type -P "${tool_package%%:*}" >/dev/null; then
    missing+=("${tool_package#*:}")
  fi
done
if ! pkg-config --exists openssl 2>/dev/null; then
  missing+=(pkg-config libssl-dev)
fi
if ((${#missing[@]} > 0)); then
  if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
    echo "==> installing ${missing[*]}"
    apt-get update
    apt-get install -y "${missing[@]}"
  else
    echo "error: the tests need ${missing[*]}; install them (e.g. apt-get install ${missing[*]})" >&2
    exit 1
  fi
fi

ensure_kafka
ensure_test_venv
start_kafka
start_moto
# Kafka's own command-line tools (the console producer) for the interop tests.
export RUNNEL_KAFKA_LIBS="$KAFKA_LIBS"
export RUNNEL_REQUIRE_KAFKA=1 RUNNEL_REQUIRE_DUCKDB=1 RUNNEL_REQUIRE_S3=1 RUNNEL_REQUIRE_GRPCIO=1

if (($# > 0)); then
  test_args=("$@")
else
  test_args=(--workspace)
fi
echo "==> cargo test --locked ${test_args[*]} (KAFKA_BOOTSTRAP=$KAFKA_BOOTSTRAP, RUNNEL_S3_ENDPOINT=$RUNNEL_S3_ENDPOINT," \
  "RUNNEL_PYTHON=$RUNNEL_PYTHON, RUNNEL_REQUIRE_KAFKA=1, RUNNEL_REQUIRE_DUCKDB=1, RUNNEL_REQUIRE_S3=1)"
status=0
test_log="$(mktemp "${TMPDIR:-/tmp}/runnel-test.XXXXXX")"
RUNNEL_COMPOSE=0 cargo test --locked "${test_args[@]}" 2>&1 | tee "$test_log" || status=$?
if (($# == 0)); then
  # Replication: a three-broker cluster (replication factor 3, min.insync.replicas 2) in place
  # of the single broker, for the test that SIGKILLs brokers (libs/log/tests/log/cluster.rs).
  stop_kafka
  start_kafka_cluster 3
  echo "==> cargo test --locked -p runnel-log --test log cluster:: (KAFKA_CLUSTER_BOOTSTRAP=$KAFKA_BOOTSTRAP)"
  KAFKA_CLUSTER_BOOTSTRAP="$KAFKA_BOOTSTRAP" KAFKA_CLUSTER_PIDS="${KAFKA_PIDS[*]}" RUNNEL_REQUIRE_KAFKA_CLUSTER=1 \
    cargo test --locked -p runnel-log --test log cluster:: 2>&1 | tee -a "$test_log" || status=$?
  stop_kafka
fi
# The compose cluster (infra/compose) driven through faults, on images built from this debug
# build (infra/docker/build-images.sh; Docker's engine installed and started when missing).
# On by default where Docker answers or can be installed (as root, as in CI); RUNNEL_COMPOSE=0
# leaves it out, RUNNEL_COMPOSE=1 requires it.
compose="${RUNNEL_COMPOSE:-}"
if [[ -z "$compose" ]]; then
  if [[ "$(id -u)" == 0 ]] || docker info >/dev/null 2>&1; then
    compose=1
  else
    echo "notice: no Docker engine answers and this is not root, so the compose fault tests are" \
      "left out (RUNNEL_COMPOSE=1 requires them)"
    compose=0
  fi
fi
if (($# == 0)) && [[ "$compose" == 1 ]]; then
  echo "==> building the container images (debug binary) for the compose tests"
  if ensure_docker && bash infra/docker/build-images.sh --profile debug; then
    echo "==> cargo test --locked -p runnel-e2e-tests --test e2e compose:: (RUNNEL_COMPOSE=1)"
    RUNNEL_COMPOSE=1 cargo test --locked -p runnel-e2e-tests --test e2e compose:: -- --nocapture 2>&1 |
      tee -a "$test_log" || status=$?
  else
    echo "error: could not build the images or start Docker; the compose tests did not run" >&2
    status=1
  fi
fi
# The Terraform module's checks (scripts/check-terraform.sh: fmt, validate, tofu test, checkov,
# parity with compose); RUNNEL_TERRAFORM=0 leaves them out.
if (($# == 0)) && [[ "${RUNNEL_TERRAFORM:-1}" != 0 ]]; then
  echo "==> bash scripts/check-terraform.sh"
  # The settings test runs the runnel binary the tests above built.
  RUNNEL_REQUIRE_BIN=1 bash scripts/check-terraform.sh 2>&1 | tee -a "$test_log" || status=$?
fi
# One closing line over every test binary (and the Terraform checks), since cargo's last line
# speaks for one binary only.
totals="$(awk '/^test result:/ { passed += $4; failed += $6 }
  /^terraform checks:/ { passed += $3; failed += $5 }
  END { printf "%d passed, %d failed", passed, failed }' "$test_log")"
cleanup
if ((status == 0)); then
  echo "==> tests passed"
else
  echo "==> tests failed (exit status $status)"
fi
echo "total: $totals"
exit "$status"
