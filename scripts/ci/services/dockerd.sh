#!/usr/bin/env bash
# CI service: a running Docker engine and a tiny local image for the reclaim tests (tests/e2e/test_reclaim_docker.py).
#
# Idempotent, safe to re-run. On our machines there is no systemd and no registry access (shared spec
# environment.md §1), so this script:
#   1. installs Debian's docker.io and busybox-static when dockerd or a static busybox is missing;
#   2. starts dockerd in the background (vfs storage, no iptables: the tests need no container networking)
#      unless an engine already answers on $DOCKER_HOST, and waits for `docker info` with a deadline;
#   3. builds the image thunderbench/busybox:test with `docker import` of a rootfs made from the static
#      busybox binary and its applet symlinks (no Docker Hub), unless it exists already;
#   4. appends DOCKER_HOST and THUNDERBENCH_DOCKER_IMAGE to scripts/ci/env.local.
# Options (environment): DOCKER_HOST (default unix:///var/run/docker.sock), DOCKERD_READY_TIMEOUT (s, default 60),
#   DOCKERD_FLAGS (default "--iptables=false --storage-driver=vfs"; use "" for a plain dockerd with overlay2 and
#   NAT when containers must reach the network, e.g. agent sandboxes; images must be re-imported after switching).
set -euo pipefail
cd "$(dirname "$0")/../../.."

IMAGE="thunderbench/busybox:test"
export DOCKER_HOST="${DOCKER_HOST:-unix:///var/run/docker.sock}"
READY_TIMEOUT="${DOCKERD_READY_TIMEOUT:-60}"
DOCKERD_FLAGS="${DOCKERD_FLAGS---iptables=false --storage-driver=vfs}"
STATE_DIR="${TMPDIR:-/tmp}/thunderbench-dockerd"

log() { printf '[dockerd] %s\n' "$*" >&2; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 && SUDO="sudo -n" || { log "needs root (or passwordless sudo) to run dockerd"; exit 1; }
fi

# 1. packages ------------------------------------------------------------------------------------------
t=$(now)
pkgs=()
command -v dockerd >/dev/null 2>&1 || pkgs+=(docker.io)
dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'install ok installed' || pkgs+=(busybox-static)
if [ "${#pkgs[@]}" -gt 0 ]; then
  log "installing ${pkgs[*]} (Debian packages)"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
  log "packages installed in $(since "$t") s"
else
  log "packages present (checked in $(since "$t") s)"
fi

# 2. daemon --------------------------------------------------------------------------------------------
t=$(now)
if docker info >/dev/null 2>&1; then
  log "engine already running at $DOCKER_HOST"
else
  case "$DOCKER_HOST" in
    unix://*) sock="${DOCKER_HOST#unix://}" ;;
    *) log "DOCKER_HOST=$DOCKER_HOST does not answer and is not a local unix socket; cannot start it"; exit 1 ;;
  esac
  mkdir -p "$STATE_DIR"
  log "starting dockerd $DOCKERD_FLAGS (socket $sock, log $STATE_DIR/dockerd.log)"
  # setsid + nohup: the daemon outlives this script (and the CI step that ran it).
  # shellcheck disable=SC2086  # DOCKERD_FLAGS is a list of flags
  $SUDO setsid nohup dockerd --host "unix://$sock" $DOCKERD_FLAGS \
    --pidfile "$STATE_DIR/dockerd.pid" >"$STATE_DIR/dockerd.log" 2>&1 < /dev/null &
  deadline=$(( $(date +%s) + READY_TIMEOUT ))
  until docker info >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      log "dockerd did not answer within ${READY_TIMEOUT} s; last log lines:"
      tail -n 20 "$STATE_DIR/dockerd.log" >&2 || true
      exit 1
    fi
    sleep 0.2
  done
  log "dockerd ready in $(since "$t") s (pid $(cat "$STATE_DIR/dockerd.pid" 2>/dev/null || echo '?'))"
fi

# 3. image ---------------------------------------------------------------------------------------------
t=$(now)
if docker image inspect "$IMAGE" >/dev/null 2>&1; then
  log "image $IMAGE present"
else
  rootfs="$(mktemp -d)"
  trap 'rm -rf "$rootfs"' EXIT
  mkdir -p "$rootfs/bin" "$rootfs/tmp" "$rootfs/etc" "$rootfs/proc" "$rootfs/sys" "$rootfs/dev"
  cp /bin/busybox "$rootfs/bin/busybox"
  for applet in $("$rootfs/bin/busybox" --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$rootfs/bin/$applet"
  done
  tar -C "$rootfs" -c . | docker import --change 'CMD ["sh"]' --change 'ENV PATH=/bin' - "$IMAGE" >/dev/null
  docker run --rm "$IMAGE" true || { log "image $IMAGE was imported but cannot run a container"; exit 1; }
  log "image $IMAGE built and checked in $(since "$t") s"
fi

# 4. environment for the tests -------------------------------------------------------------------------
# Replace earlier lines for the same keys so that re-running this script by hand stays idempotent.
env_file=scripts/ci/env.local
touch "$env_file"
grep -v -e '^DOCKER_HOST=' -e '^THUNDERBENCH_DOCKER_IMAGE=' "$env_file" > "$env_file.tmp" || true
{
  echo "DOCKER_HOST=$DOCKER_HOST"
  echo "THUNDERBENCH_DOCKER_IMAGE=$IMAGE"
} >> "$env_file.tmp"
mv "$env_file.tmp" "$env_file"
log "ready: DOCKER_HOST=$DOCKER_HOST image=$IMAGE"
