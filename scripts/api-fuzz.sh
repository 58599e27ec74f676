#!/usr/bin/env bash
# Fuzzes every route of a live `gpucloud dev` from its own OpenAPI document with schemathesis
# (PyPI), once with a tenant key and once with the operator key (then key revocation alone,
# which would otherwise revoke the key the run uses). The one check: no response is a
# server error (5xx). Bounded in time: FUZZ_SECONDS per key (default 90), FUZZ_EXAMPLES per
# operation (default 20). Needs `st` on PATH (or ST=path) and a built binary. Used by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${GPUCLOUD_BIN:-$PWD/target/debug/gpucloud}
st=${ST:-st}
tmp=$(mktemp -d)
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
api=$(free_port)
dev_pid=""
cleanup() {
  [ -n "$dev_pid" ] && kill "$dev_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

# No rate limit here: every generated input should reach its handler, not a 429.
GPUCLOUD_CONFIG_DIR="$tmp/config" "$bin" dev --runtime process --listen "127.0.0.1:$api" --data-dir "$tmp/data" --rate-limit 0 \
  >"$tmp/dev.out" 2>"$tmp/dev.err" &
dev_pid=$!
for _ in $(seq 1 120); do grep -q "Try:" "$tmp/dev.out" 2>/dev/null && break; sleep 0.5; done
grep -q "Try:" "$tmp/dev.out" || { echo "gpucloud dev did not start"; cat "$tmp/dev.out"; exit 1; }
creds="$tmp/data/credentials.json"
tenant=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["tenant_key"])' "$creds")
operator=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["operator_key"])' "$creds")

status=0
# Revoking keys goes last, on its own: the stateful phase follows links from the key list to
# revoke, and once it revokes the key it runs with, every later call is a 401 and exercises
# nothing.
for who in tenant operator revoke; do
  key=$tenant
  [ "$who" = operator ] && key=$operator
  scope=(--exclude-path '/v1/keys/{id}/revoke')
  seconds=${FUZZ_SECONDS:-90}
  [ "$who" = revoke ] && scope=(--include-path '/v1/keys/{id}/revoke') && seconds=15
  echo "-- schemathesis with the $who key"
  "$st" run "http://127.0.0.1:$api/v1/openapi.json" \
    "${scope[@]}" \
    --header "Authorization: Bearer $key" \
    --checks not_a_server_error \
    --max-examples "${FUZZ_EXAMPLES:-20}" \
    --max-time "$seconds" \
    --request-timeout 10 \
    --suppress-health-check all \
    --generation-with-security-parameters false \
    --seed "${FUZZ_SEED:-$RANDOM}" \
    --no-color || status=1
done
if grep -q "panicked" "$tmp/dev.err"; then
  echo "the server panicked:"; grep -A3 panicked "$tmp/dev.err"; status=1
fi
kill -0 "$dev_pid" 2>/dev/null || { echo "gpucloud dev died under the fuzzer"; status=1; }
exit $status
