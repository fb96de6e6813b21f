#!/usr/bin/env bash
# The whole test suite: installs what is missing, then runs every test of the workspace
# against real etcd, PostgreSQL, MariaDB and SQLite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh --test
cargo test --workspace --locked "$@"
# The Helm chart: helm lint + kubernetes-validate of every ci values file (tools from npm/PyPI).
bash scripts/check-helm.sh
# The container image: static release binaries, podman build FROM scratch, `flotilla demo` in it.
bash scripts/build-image.sh
