#!/usr/bin/env bash
# Writes the dashboard's main pages to docs/screenshots/ as PNG files: a fresh `gpucloud dev`,
# the browser test's walk through it (tests/browser/dashboard.mjs) in headless Chromium.
# Needs Debian's chromium, Node.js with npm, and a built binary (cargo build, or GPUCLOUD_BIN).
set -euo pipefail
cd "$(dirname "$0")/.."
export GPUCLOUD_BIN=${GPUCLOUD_BIN:-$PWD/target/debug/gpucloud}
[ -x "$GPUCLOUD_BIN" ] || cargo build -p gpucloud-cli
cd tests/browser
[ -d node_modules/playwright-core ] || npm ci --no-audit --no-fund --silent
node dashboard.mjs --screenshots ../../docs/screenshots
