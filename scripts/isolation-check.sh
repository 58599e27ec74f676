#!/usr/bin/env bash
# Two tenants' workloads on one node with the container runtime, and tenant A's workload trying
# every attack a tenant sharing a node would: read B's environment, files, logs, the agent's state
# and key; reach B's port and B's metadata endpoint (with B's token, as if it had leaked); write
# B's checkpoint; reach the host's own services. Prints each attempt with its result and exits 1
# if any of them worked (or if a control that must work did not).
#
#   bash scripts/isolation-check.sh [IMAGE]
#
# Needs root, a Docker engine with iptables (scripts/docker-test-image.sh starts one and makes
# the default image), curl and python3. GPUCLOUD_BIN names the binary (default target/debug).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${GPUCLOUD_BIN:-$PWD/target/debug/gpucloud}
image=${1:-${GPUCLOUD_TEST_DOCKER_IMAGE:-gpucloud-test-busybox:2}}
work=$(mktemp -d /tmp/gpucloud-isolation.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  docker ps -aq --filter "label=gpucloud.agent-state=$work/agent" | xargs -r docker rm -f >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
say() { printf '%s\n' "$*"; }
field() { python3 -c "import json,sys; v=json.load(sys.stdin); print(eval('v'+sys.argv[1]) if v is not None else '')" "$1"; }
wait_until() { # wait_until SECONDS WHAT COMMAND...
  local until=$((SECONDS + $1)) what=$2; shift 2
  until "$@"; do
    [ $SECONDS -lt $until ] || { say "timed out waiting for $what"; tail -20 "$work"/*.log >&2 || true; exit 1; }
    sleep 0.2
  done
}

# The control plane, refusing agents that would run workloads as plain processes. It listens on
# every address, so that workloads would reach it through the host if they could.
"$bin" serve --listen 0.0.0.0:0 --database "sqlite://$work/db.sqlite" --heartbeat-grace-ms 3000 \
  --require-containers >"$work/serve.out" 2>"$work/serve.log" &
pids+=($!)
wait_until 30 "the server" grep -q '^gpucloud serving on ' "$work/serve.out"
op=$(sed -n 's/^operator key: \([^ ]*\).*/\1/p' "$work/serve.out")
port=$(sed -n 's/^gpucloud serving on http:\/\/0.0.0.0:\([0-9]*\).*/\1/p' "$work/serve.out")
url="http://127.0.0.1:$port"
api() { # api METHOD KEY PATH [BODY]
  curl -sS -X "$1" -H "Authorization: Bearer $2" -H 'Content-Type: application/json' "$url$3" ${4:+-d "$4"}
}

# The node, with a key of its own.
akey=$(api POST "$op" /v1/keys '{"name": "iso-node", "scope": "agent", "node": "iso-node"}' | field '["api_key"]')
if GPUCLOUD_AGENT_TOKEN=$akey timeout 20 "$bin" agent --server "$url" --name iso-node --region eu-1 \
  --fake-gpus A100-40GB:2 --state-dir "$work/refused" --metadata-port 0 --ingress-port 0 >"$work/refused.log" 2>&1; then
  say "the server accepted an agent with the process runtime"; exit 1
fi
GPUCLOUD_AGENT_TOKEN=$akey "$bin" agent --server "$url" --name iso-node --region eu-1 --address 127.0.0.1 \
  --fake-gpus A100-40GB:2 --runtime docker --image "$image" --state-dir "$work/agent" --metadata-port 0 --ingress-port 0 \
  --interval-ms 200 --stop-grace-s 2 >"$work/agent.log" 2>&1 &
agent_pid=$!
pids+=($agent_pid)
healthy() { api GET "$op" /v1/nodes | grep -q '"health":"healthy"'; }
wait_until 60 "the agent" healthy

tenant() { api POST "$op" /v1/tenants "{\"name\": \"$1\"}" | field '["api_key"]'; }
key_a=$(tenant tenant-a)
key_b=$(tenant tenant-b)
create() { # create KEY COMMAND -> id
  local body
  body=$(python3 -c 'import json,sys; print(json.dumps({"gpu": "A100-40GB", "count": 1, "region": "eu-1", "command": sys.argv[1]}))' "$2")
  api POST "$1" /v1/instances "$body" | field '["id"]'
}
state() { api GET "$1" "/v1/instances/$2" | field '["state"]'; }
is_running() { [ "$(state "$1" "$2")" = running ]; }

# B: a web page on its port, a secret in its files and in its output.
b=$(create "$key_b" 'mkdir -p /tmp/www && echo B-PAGE > /tmp/www/index.html && echo B-SECRET > /tmp/secret && echo B-LOG-SECRET && exec httpd -f -p $GPUCLOUD_PORT -h /tmp/www')
wait_until 60 "B's instance" is_running "$key_b" "$b"
container_b=$(docker ps -q --filter "label=gpucloud.instance=$b")
ip_b=$(docker inspect -f '{{(index .NetworkSettings.Networks "gpucloud").IPAddress}}' "$container_b")
env_b=$(docker inspect -f '{{range .Config.Env}}{{println .}}{{end}}' "$container_b")
port_b=$(sed -n 's/^GPUCLOUD_PORT=//p' <<<"$env_b")
meta_b=$(sed -n 's/^GPUCLOUD_METADATA_URL=//p' <<<"$env_b")
gateway=$(docker network inspect -f '{{(index .IPAM.Config 0).Gateway}}' gpucloud)
state_dir=$(cd "$work/agent" && pwd -P)
serves() { curl -sf "http://127.0.0.1:$port_b/" | grep -q B-PAGE; }
wait_until 20 "B's port on the node" serves
say "B serves on $ip_b:$port_b (published on the node at $port_b); its metadata: ${meta_b%/*}/<token>"

# A: one attempt per line. An attempt whose command succeeds is a breach.
read -r -d '' attacks <<EOF || true
try() { name=\$1; shift; if "\$@" >/tmp/out 2>&1; then echo "RESULT \$name: SUCCEEDED: \$(head -c 160 /tmp/out | tr '\n' ' ')"; else echo "RESULT \$name: blocked"; fi; }
try "read B's environment (/proc/*/environ)" sh -c 'grep -l "GPUCLOUD_INSTANCE_ID=$b" /proc/[0-9]*/environ'
try "read B's files" sh -c 'cat /tmp/secret 2>/dev/null || find / -xdev -name secret 2>/dev/null | xargs -r grep -l B-SECRET | grep .'
try "read B's log file on the node" cat "$state_dir/logs/$b.log"
try "read the agent's state (tokens)" cat "$state_dir/state.json"
try "read the agent's key (any process's environment)" sh -c 'grep -l GPUCLOUD_AGENT_TOKEN /proc/[0-9]*/environ'
try "see the agent's process" test -e /proc/$agent_pid/cmdline -a "\$(cat /proc/$agent_pid/comm 2>/dev/null)" = gpucloud
try "reach B's port directly ($ip_b:$port_b)" timeout 3 wget -q -O - http://$ip_b:$port_b/
try "reach B's port through the host ($gateway:$port_b)" timeout 3 wget -q -O - http://$gateway:$port_b/
try "use B's metadata token" timeout 3 wget -q -O - $meta_b
try "write B's checkpoint" timeout 3 wget -q -O - --header 'Content-Type: application/json' --post-data '{"path": "/attacker/ckpt"}' $meta_b/checkpoint
try "push metrics as B" timeout 3 wget -q -O - --header 'Content-Type: application/json' --post-data '{"values": {"loss": 9}}' $meta_b/metrics
try "reach the control plane through the host ($gateway:$port)" timeout 3 wget -q -O - http://$gateway:$port/v1/openapi.json
try "reach the Docker socket" test -e /var/run/docker.sock
try "run as root" test "\$(id -u)" = 0
try "gain capabilities" sh -c 'grep CapEff /proc/self/status | grep -v 0000000000000000'
if timeout 3 wget -q -O - "\$GPUCLOUD_METADATA_URL" | grep -q "\$GPUCLOUD_INSTANCE_ID"; then echo "CONTROL own metadata: ok"; else echo "CONTROL own metadata: FAILED"; fi
echo ATTACKS-DONE
EOF
a=$(create "$key_a" "$attacks")
logs_a() { api GET "$key_a" "/v1/instances/$a/logs" | python3 -c 'import json,sys; print("".join(c["data"] for c in json.load(sys.stdin)["chunks"]))'; }
done_a() { logs_a | grep -q ATTACKS-DONE; }
wait_until 120 "A's attempts" done_a
out=$(logs_a)

say
say "tenant A's workload, on the same node as tenant B's ($b):"
grep -E '^(RESULT|CONTROL)' <<<"$out" | sed 's/^RESULT /  /; s/^CONTROL /  control: /'
failed=0
grep -q 'SUCCEEDED' <<<"$out" && failed=1
grep -q 'CONTROL own metadata: ok' <<<"$out" || { say "  control failed: A's own metadata endpoint did not answer"; failed=1; }
checkpoint=$(api GET "$key_b" "/v1/instances/$b" | field '.get("checkpoint")')
if [ -n "$checkpoint" ] && [ "$checkpoint" != None ]; then say "  B's checkpoint was changed: $checkpoint"; failed=1; fi
blogs=$(api GET "$key_b" "/v1/instances/$b/logs")
grep -q B-LOG-SECRET <<<"$blogs" || { say "  control failed: B's own output did not reach B"; failed=1; }
attempts=$(grep -c '^RESULT' <<<"$out")
if [ $failed = 0 ]; then
  say "isolation holds: $attempts attempts, all blocked"
else
  say "ISOLATION BROKEN (see above)"
fi
exit $failed
