#!/usr/bin/env bash
# The device check: run on a host with NVIDIA GPUs (the lent H100/H200 machine) from the repository
# root. It builds the binary, shows what NVML discovery sees, then runs a real server and a real
# agent on the card and checks that a workload sees exactly the GPU it was given, and that a slice
# gets its limits. Writes its transcript to $OUT (or ./gpu-check-out) for docs/device-runs/.
# Changes no GPU setting: no MIG changes, no clocks, no resets.
set -uo pipefail
out="${OUT:-./gpu-check-out}"
mkdir -p "$out"
log="$out/gpu-check.txt"
exec > >(tee "$log") 2>&1
say() { printf '\n== %s (%s)\n' "$1" "$(date -u +%H:%M:%S)"; }

say "host"
nvidia-smi --query-gpu=index,name,uuid,memory.total,pci.bus_id,mig.mode.current --format=csv || true

say "build"
cargo build --release -q -p gpucloud-cli || exit 1
bin=target/release/gpucloud

say "NVML discovery (gpucloud agent --probe)"
$bin agent --server http://127.0.0.1:1 --region dev-1 --probe || exit 1

say "server + agent"
work=$(mktemp -d)
$bin serve --listen 127.0.0.1:0 --database "sqlite://$work/db.sqlite" > "$work/serve.out" 2>&1 &
serve=$!
for _ in $(seq 1 100); do grep -q "gpucloud serving on" "$work/serve.out" 2>/dev/null && break; sleep 0.1; done
url=$(grep -o 'http://127.0.0.1:[0-9]*' "$work/serve.out" | head -1)
key=$(grep -o 'gpc_[A-Za-z0-9]*' "$work/serve.out" | head -1)
echo "server $url"
GPUCLOUD_AGENT_TOKEN="$key" $bin agent --server "$url" --region dev-1 --state-dir "$work/agent" --metadata-port 0 --ingress-port 0 > "$work/agent.out" 2>&1 &
agent=$!
sleep 3
export GPUCLOUD_URL="$url" GPUCLOUD_API_KEY="$key"
$bin node list
model=$($bin node list --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["nodes"][0]["gpus"][0]["model"])')
tenant_key=$(curl -s -H "Authorization: Bearer $key" -H 'Content-Type: application/json' \
  -d '{"name":"check"}' "$url/v1/tenants" | python3 -c 'import json,sys; print(json.load(sys.stdin)["api_key"])')
curl -s -H "Authorization: Bearer $key" -H 'Content-Type: application/json' -d '{"amount":"100.00"}' \
  "$url/v1/tenants/$(curl -s -H "Authorization: Bearer $tenant_key" "$url/v1/whoami" | python3 -c 'import json,sys; print(json.load(sys.stdin)["tenant"]["id"])')/credits" > /dev/null || true
export GPUCLOUD_API_KEY="$tenant_key"

say "a whole GPU: the workload sees exactly its GPU"
id=$($bin instance create --gpu "$model" --command 'echo CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES; nvidia-smi -L; nvidia-smi --query-gpu=uuid --format=csv,noheader' --wait 20 --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
sleep 5
$bin instance show "$id"
$bin instance logs "$id"

say "a slice: limits in its environment, memory watched through NVML"
sid=$($bin instance create --gpu "$model" --gpu-memory 8GiB --gpu-share 25% --command 'env | grep -E "^(CUDA|GPUCLOUD_GPU)" | sort; sleep 5' --wait 20 --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
sleep 8
$bin instance show "$sid"
$bin instance logs "$sid"

say "telemetry on /metrics"
curl -s -H "Authorization: Bearer $key" "$url/metrics" | grep -E '^DCGM_FI_DEV_(GPU_TEMP|POWER_USAGE|FB_USED|GPU_UTIL)' | head -20

say "what the agent said of NVML (XID events registered unless a warning says otherwise)"
grep -E "NVML|XID" "$work/agent.out" | head -20

kill "$agent" "$serve" 2>/dev/null
wait 2>/dev/null
cp "$work"/*.out "$out/" 2>/dev/null
say "done"
