#!/usr/bin/env bash
# `make test`: the whole suite. Installs system packages if missing, starts a
# private PostgreSQL for the PostgreSQL runs, builds the binaries the
# end-to-end tests start, and runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
DFS_TEST_POSTGRES_URL=$(scripts/test-postgres.sh)
export DFS_TEST_POSTGRES_URL DFS_REQUIRE_POSTGRES=1
cargo build --workspace --bins
cargo test --workspace
