#!/usr/bin/env bash
# The main job: `flotilla demo` on the embedded default (no etcd, SQLite tenants, in-process
# agents). Installs what the build needs, builds, and runs it; extra args go to `flotilla demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo run --locked -q -p flotilla-cli --bin flotilla -- demo "$@"
