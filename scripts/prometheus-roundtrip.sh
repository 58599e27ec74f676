#!/usr/bin/env bash
# A real Prometheus scrapes a running `gpucloud dev` with deploy/prometheus.yml (target and
# interval adjusted), then a GPU metric and the spot price are queried back from Prometheus.
# Needs the `prometheus` binary (Debian package `prometheus`) and python3. Used by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${GPUCLOUD_BIN:-$PWD/target/debug/gpucloud}
tmp=$(mktemp -d)
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
api=$(free_port)
prom_port=$(free_port)
dev_pid=""
prom_pid=""
cleanup() {
  [ -n "$prom_pid" ] && kill "$prom_pid" 2>/dev/null || true
  [ -n "$dev_pid" ] && kill "$dev_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

GPUCLOUD_CONFIG_DIR="$tmp/config" "$bin" dev --runtime process --listen "127.0.0.1:$api" --data-dir "$tmp/data" >"$tmp/dev.out" 2>&1 &
dev_pid=$!
for _ in $(seq 1 120); do grep -q "Try:" "$tmp/dev.out" 2>/dev/null && break; sleep 0.5; done
grep -q "Try:" "$tmp/dev.out" || { echo "gpucloud dev did not start"; cat "$tmp/dev.out"; exit 1; }

key=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["operator_key"])' "$tmp/data/credentials.json")
sed -e "s/127.0.0.1:7080/127.0.0.1:$api/" -e "s/scrape_interval: 15s/scrape_interval: 1s/" \
  -e "s/OPERATOR_KEY/$key/" deploy/prometheus.yml >"$tmp/prometheus.yml"
prometheus --config.file="$tmp/prometheus.yml" --storage.tsdb.path="$tmp/tsdb" \
  --web.listen-address="127.0.0.1:$prom_port" >"$tmp/prometheus.log" 2>&1 &
prom_pid=$!

query() {
  python3 - "$prom_port" "$1" <<'PY'
import json, sys, urllib.parse, urllib.request
port, q = sys.argv[1], sys.argv[2]
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/query?query={urllib.parse.quote(q)}", timeout=5) as r:
        res = json.load(r)["data"]["result"]
except Exception:
    res = []
if res:
    m = res[0]
    print(f"{len(res)} series, e.g. {m['metric'].get('__name__')}{{gpu={m['metric'].get('gpu')!r}, Hostname={m['metric'].get('Hostname')!r}, region={m['metric'].get('region')!r}}} = {m['value'][1]}")
PY
}
for metric in DCGM_FI_DEV_GPU_TEMP gpucloud_spot_price_per_gpu_hour; do
  got=""
  for _ in $(seq 1 60); do
    got=$(query "$metric")
    [ -n "$got" ] && break
    sleep 1
  done
  if [ -z "$got" ]; then
    echo "Prometheus never returned $metric"
    tail -20 "$tmp/prometheus.log"
    exit 1
  fi
  echo "prometheus: $metric: $got"
done
