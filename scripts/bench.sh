#!/usr/bin/env bash
# Issue 8's benchmark in one run: release `flotilla` + `flotilla-agent` processes against the
# raw SQL lower bound (psql) and a per-database sqlx-cli loop on PostgreSQL (fsync on), against
# a plain sqlite3 loop on SQLite, the no-op reruns (10,000 SQLite targets at head),
# coordinator CPU per target-step and agent idle RSS; the coordinator at 10,000 and 100,000
# targets on both backends (--only scale) and a remote fleet behind a 20 ms round trip
# (--only remote); 10,000 tenant schemas of one PostgreSQL database against a psql lower bound
# (--only schemas). Prints Markdown tables and saves every figure to <target>/bench/compare.json.
#
# Installs what is missing (servers and clients via scripts/install-deps.sh --test, sqlx-cli
# into <target>/tools), builds the release binaries, then runs the bench. Extra args go to the
# bench (each also has a FLOTILLA_BENCH_* variable), e.g.
#   bash scripts/bench.sh --only pg --pg-tenants 200
#   bash scripts/bench.sh --only sqlite --sqlite-tenants 1000 --noop-targets 10000
#   bash scripts/bench.sh --only scale --scale-targets 10000 --scale-backends embedded
#   bash scripts/bench.sh --only remote --remote-tenants 200 --remote-delay-ms 10
#   bash scripts/bench.sh --only schemas --schema-tenants 10000
#   bash scripts/bench.sh --help
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh --test
target="${CARGO_TARGET_DIR:-target}"
cargo build --release --locked -p flotilla-cli -p flotilla-agent --bins
if [ ! -x "$target/tools/bin/sqlx" ]; then
  echo "bench: installing sqlx-cli into $target/tools" >&2
  cargo install --locked --root "$target/tools" sqlx-cli --no-default-features --features postgres,rustls
fi
# The bench finds the binaries under the same target dir (<target>/release, <target>/tools).
cargo bench --locked -p flotilla-cli --bench compare -- "$@"
