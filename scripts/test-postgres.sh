#!/usr/bin/env bash
# Starts (or reuses) a private PostgreSQL server for the test suite on
# 127.0.0.1:${DFS_PG_PORT:-55432}, data under ${DFS_PG_DIR:-/tmp/dfs-test-pg}, and
# prints the admin URL the tests use (DFS_TEST_POSTGRES_URL). Drops the
# databases earlier runs' tests left (so two test runs must not share it). Needs Debian's
# postgresql package (installed by scripts/install-deps.sh).
set -euo pipefail
port=${DFS_PG_PORT:-55432}
dir=${DFS_PG_DIR:-/tmp/dfs-test-pg}
. "$(dirname "$0")/pg-env.sh"
mkdir -p "$dir"
chown "$owner" "$dir"
if [ ! -f "$dir/data/PG_VERSION" ]; then
  run "'$bin/initdb' -D '$dir/data' -U dfs --auth=trust -E UTF8 >'$dir/initdb.log' 2>&1"
fi
if ! run "'$bin/pg_ctl' -D '$dir/data' status" >/dev/null 2>&1; then
  run "'$bin/pg_ctl' -D '$dir/data' -l '$dir/server.log' -w -t 60 \
      -o \"-c listen_addresses=127.0.0.1 -p $port -k '$dir' -c fsync=off -c max_connections=300\" start" >/dev/null
fi
url="postgres://dfs@127.0.0.1:$port/postgres"
# Every PostgreSQL test makes a fresh database (dfs_t_*: the store conformance
# suite, dfs_e2e_*: end-to-end clusters) and none drops its own (a test that
# fails or is killed could not): the ones a previous run left go now, or the
# server grows by about 80 databases a run.
psql "$url" -Atc "SELECT datname FROM pg_database WHERE datname ~ '^dfs_(t|e2e)_[0-9]+$'" |
  while read -r db; do
    psql "$url" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  done
echo "$url"
