#!/usr/bin/env bash
# Builds runnel's container images on this machine; nothing is pulled from a registry.
#
#   runnel/base:<hash>    Debian bookworm made with debootstrap (minbase, plus CA certificates,
#                         curl, a headless JRE 17 and Prometheus), brought in with `docker import`.
#                         Every image below starts from it, so they share its one layer.
#   runnel/runnel:<tag>   the runnel binary (every service is a subcommand), as user `runnel`
#                         (uid 10001), state in the /data volume, `runnel health` as health check.
#   runnel/kafka:<tag>    Apache Kafka (the version scripts/lib/kafka.sh pins, from Maven
#                         Central) in KRaft mode; infra/docker/kafka/entrypoint.sh.
#   runnel/minio:<tag>    MinIO, an S3-compatible object store, built with `go install`.
#   runnel/prometheus:<tag>  Debian's Prometheus.
#
# Usage: infra/docker/build-images.sh [--profile release|debug] [--tag TAG]
#   --profile  which cargo build of runnel goes into the image (default release, which users
#              want; CI uses debug, which it has already built). The binary is built if missing
#              and copied without its debug info.
#   --tag      the tag of the four service images (default dev).
# Downloads and builds are cached under ${RUNNEL_CACHE:-~/.cache/runnel}/docker: the Debian
# root filesystem, MinIO's binary and Go's module cache. With nothing changed, a rebuild takes
# seconds. Needs a Docker engine (scripts/lib/docker.sh's ensure_docker starts one).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
# shellcheck source=scripts/lib/docker.sh
source scripts/lib/docker.sh
# shellcheck source=scripts/lib/kafka.sh
source scripts/lib/kafka.sh

profile=release
tag=dev
while (($# > 0)); do
  case "$1" in
    --profile) profile="$2"; shift 2 ;;
    --tag) tag="$2"; shift 2 ;;
    *) echo "error: unknown argument $1 (usage: $0 [--profile release|debug] [--tag TAG])" >&2; exit 2 ;;
  esac
done
case "$profile" in
  release | debug) ;;
  *) echo "error: --profile is release or debug, not $profile" >&2; exit 2 ;;
esac

cache="${RUNNEL_CACHE:-$HOME/.cache/runnel}/docker"
mkdir -p "$cache"
ensure_docker

# The base: one Debian root filesystem, cached as a tarball named by what goes into it.
DEBIAN_SUITE=bookworm
DEBIAN_MIRROR="${RUNNEL_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
BASE_PACKAGES=ca-certificates,curl,openjdk-17-jre-headless,prometheus
base_id="$(printf '%s %s' "$DEBIAN_SUITE" "$BASE_PACKAGES" | sha256sum | cut -c1-12)"
base_image="runnel/base:$base_id"
if ! docker image inspect "$base_image" >/dev/null 2>&1; then
  rootfs_tar="$cache/base-$base_id.tar"
  if [[ ! -s "$rootfs_tar" ]]; then
    if ! command -v debootstrap >/dev/null; then
      echo "==> installing debootstrap" >&2
      DEBIAN_FRONTEND=noninteractive apt-get install -y debootstrap >&2 || {
        apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y debootstrap >&2
      }
    fi
    root="$(mktemp -d "${TMPDIR:-/tmp}/runnel-base.XXXXXX")"
    echo "==> debootstrap $DEBIAN_SUITE ($BASE_PACKAGES) into $root; a few minutes, once" >&2
    debootstrap --variant=minbase --include="$BASE_PACKAGES" "$DEBIAN_SUITE" "$root" \
      "$DEBIAN_MIRROR" >&2
    # Package lists and caches have no use in an image.
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb
    tar -C "$root" -cf "$rootfs_tar.partial" .
    mv "$rootfs_tar.partial" "$rootfs_tar"
    rm -rf "$root"
  fi
  echo "==> importing $rootfs_tar as $base_image" >&2
  docker import "$rootfs_tar" "$base_image" >&2
fi

# runnel: the binary without its debug info, in a build context of its own.
binary="target/$profile/runnel"
if [[ ! -x "$binary" ]]; then
  echo "==> building $binary" >&2
  if [[ "$profile" == release ]]; then
    cargo build --release -p runnel >&2
  else
    cargo build -p runnel >&2
  fi
fi
context="$cache/context-runnel"
mkdir -p "$context"
stripped="$context/runnel"
if [[ ! -f "$stripped" || "$binary" -nt "$stripped" ]]; then
  objcopy --strip-debug "$binary" "$stripped.partial"
  mv "$stripped.partial" "$stripped"
fi
cp infra/docker/runnel/Dockerfile "$context/Dockerfile"
docker_build runnel/runnel:"$tag" "$context" --build-arg BASE="$base_image"

# kafka: the jars scripts/lib/kafka.sh fetches, and the entrypoint.
ensure_kafka >&2
context="$cache/context-kafka"
mkdir -p "$context"
rm -rf "$context/libs"
cp -al "$KAFKA_LIBS" "$context/libs" 2>/dev/null || cp -a "$KAFKA_LIBS" "$context/libs"
cp infra/docker/kafka/Dockerfile infra/docker/kafka/entrypoint.sh infra/docker/kafka/log4j2.properties "$context/"
docker_build runnel/kafka:"$tag" "$context" --build-arg BASE="$base_image"

# minio: built once with Go, cached by version.
MINIO_VERSION=v0.0.0-20260212201848-7aac2a2c5b7c
minio_bin="$cache/minio-$MINIO_VERSION"
if [[ ! -x "$minio_bin" ]]; then
  echo "==> building MinIO $MINIO_VERSION with go install; several minutes, once" >&2
  gobin="$(mktemp -d "${TMPDIR:-/tmp}/runnel-minio.XXXXXX")"
  GOBIN="$gobin" GOMODCACHE="$cache/go-mod" GOCACHE="$cache/go-build" CGO_ENABLED=0 \
    go install "github.com/minio/minio@$MINIO_VERSION" >&2
  mv "$gobin/minio" "$minio_bin"
  rm -rf "$gobin"
fi
context="$cache/context-minio"
mkdir -p "$context"
cp -p "$minio_bin" "$context/minio"
cp infra/docker/minio/Dockerfile "$context/"
docker_build runnel/minio:"$tag" "$context" --build-arg BASE="$base_image"

# prometheus: the base has the package; the image sets its user, ports and command.
context="$cache/context-prometheus"
mkdir -p "$context"
cp infra/docker/prometheus/Dockerfile "$context/"
docker_build runnel/prometheus:"$tag" "$context" --build-arg BASE="$base_image"

echo "==> images: runnel/runnel:$tag runnel/kafka:$tag runnel/minio:$tag runnel/prometheus:$tag (on $base_image)" >&2
