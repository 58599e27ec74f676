#!/usr/bin/env bash
# Makes sure a Docker engine answers and holds an image for the agent's container runtime tests,
# then prints the image's name. No registry is reachable here, so the image is built from the
# host's static busybox (a shell and the usual tools). Runs as root; changes nothing if both
# are already there.
set -euo pipefail
IMAGE="${1:-gpucloud-test-busybox:2}"
quiet_install() { apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null; }

command -v dockerd >/dev/null || quiet_install docker.io
if ! docker info >/dev/null 2>&1; then
  # With bridges and iptables: each workload container gets a network namespace of its own on
  # the agent's `gpucloud` bridge, where containers cannot reach one another.
  command -v iptables >/dev/null || quiet_install iptables
  (dockerd >/tmp/gpucloud-dockerd.log 2>&1 &)
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  docker info >/dev/null 2>&1 || { tail -20 /tmp/gpucloud-dockerd.log >&2; echo "dockerd did not start" >&2; exit 1; }
fi

if ! docker image inspect "$IMAGE" >/dev/null 2>&1; then
  bb=$(command -v busybox || true)
  if [ -z "$bb" ] || ! ldd "$bb" 2>&1 | grep -q "not a dynamic executable"; then
    quiet_install busybox-static
    bb=$(command -v busybox)
  fi
  root=$(mktemp -d)
  mkdir -p "$root/bin" "$root/tmp" "$root/var/log"
  # As in any distribution image: /tmp is everyone's (sticky), so a non-root workload can use it.
  chmod 1777 "$root/tmp"
  cp "$bb" "$root/bin/busybox"
  for applet in $("$bb" --list); do
    [ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"
  done
  tar -C "$root" -c . | docker import - "$IMAGE" >/dev/null
  rm -rf "$root"
fi
echo "$IMAGE"
