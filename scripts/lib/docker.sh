# shellcheck shell=bash
# A Docker engine for the images and the compose cluster (infra/), on Debian.
#   ensure_docker        installs Debian's docker.io and docker-compose when dockerd is missing
#                        (as root), and starts dockerd in the background when no daemon answers
#                        (its log in ${RUNNEL_CACHE}/docker/dockerd.log); waits until it does.
#   docker_build IMAGE CONTEXT [ARGS...]  builds IMAGE from CONTEXT/Dockerfile, quietly.

ensure_docker() {
  if ! command -v dockerd >/dev/null || ! command -v docker-compose >/dev/null; then
    if [[ "$(id -u)" != 0 ]]; then
      echo "error: Docker's engine is not installed; as root: apt-get install docker.io docker-compose" >&2
      return 1
    fi
    echo "==> installing docker.io and docker-compose from Debian's packages" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y docker.io docker-compose >&2 || {
      apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y docker.io docker-compose >&2
    }
  fi
  if docker info >/dev/null 2>&1; then
    return 0
  fi
  local log="${RUNNEL_CACHE:-$HOME/.cache/runnel}/docker/dockerd.log"
  mkdir -p "$(dirname "$log")"
  echo "==> starting dockerd (its log: $log)" >&2
  nohup dockerd >"$log" 2>&1 &
  local deadline=$((SECONDS + 60))
  until docker info >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      echo "error: dockerd did not answer within 60 s; the end of its log:" >&2
      tail -n 20 "$log" >&2
      return 1
    fi
    sleep 0.5
  done
}

docker_build() {
  local image="$1" context="$2"
  shift 2
  docker build -q -t "$image" "$@" "$context" >/dev/null
  echo "==> built $image" >&2
}
