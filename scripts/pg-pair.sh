#!/usr/bin/env bash
# A PostgreSQL primary with a synchronous streaming standby, both on this
# machine, for the failover test (tests/tests/sessions.rs). Debian's
# postgresql package; run as root (the servers run as 'postgres') or as a
# plain user.
#
#   pg-pair.sh start DIR PRIMARY_PORT STANDBY_PORT   both up, streaming
#   pg-pair.sh fail-over DIR PRIMARY_PORT            kill -9 the primary, promote
#       the standby and move it onto the primary's port (what a virtual IP or
#       DNS name does in production), so clients reconnect to the same address
#   pg-pair.sh stop DIR                              both down
set -euo pipefail
. "$(dirname "$0")/pg-env.sh"
cmd=$1 dir=$2
opts() { # PORT
  echo "-c listen_addresses=127.0.0.1 -p $1 -k '$dir' -c max_connections=200 -c wal_level=replica -c synchronous_standby_names='*' -c synchronous_commit=on"
}
case "$cmd" in
start)
  primary_port=$3 standby_port=$4
  mkdir -p "$dir"
  chown "$owner" "$dir"
  run "'$bin/initdb' -D '$dir/primary' -U dfs --auth=trust -E UTF8 >'$dir/initdb.log' 2>&1"
  echo "host replication dfs 127.0.0.1/32 trust" >>"$dir/primary/pg_hba.conf"
  run "'$bin/pg_ctl' -D '$dir/primary' -l '$dir/primary.log' -w -t 60 -o \"$(opts "$primary_port")\" start" >/dev/null
  # The standby: a base backup that streams from the primary (-R), and is
  # synchronous (every commit the primary acknowledges is on it too).
  run "'$bin/pg_basebackup' -h 127.0.0.1 -p $primary_port -U dfs -D '$dir/standby' -R -X stream" >/dev/null
  run "'$bin/pg_ctl' -D '$dir/standby' -l '$dir/standby.log' -w -t 60 -o \"$(opts "$standby_port")\" start" >/dev/null
  for _ in $(seq 100); do
    state=$(run "'$bin/psql' -h 127.0.0.1 -p $primary_port -U dfs -d postgres -Atc \"SELECT sync_state FROM pg_stat_replication\"" 2>/dev/null || true)
    [ "$state" = sync ] && exit 0
    sleep 0.1
  done
  echo "the standby did not become synchronous" >&2
  exit 1
  ;;
fail-over)
  primary_port=$3
  pid=$(head -1 "$dir/primary/postmaster.pid")
  kill -9 "$pid"
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
  run "'$bin/pg_ctl' -D '$dir/standby' -w -t 60 promote" >/dev/null
  run "'$bin/pg_ctl' -D '$dir/standby' -w -t 60 -m fast stop" >/dev/null
  # No standby any more: commits must not wait for one. The old primary's
  # backends may hold its port for a moment after the kill.
  for _ in $(seq 50); do
    if run "'$bin/pg_ctl' -D '$dir/standby' -l '$dir/standby.log' -w -t 60 -o \"$(opts "$primary_port") -c synchronous_standby_names=''\" start" >/dev/null 2>&1; then
      exit 0
    fi
    sleep 0.2
  done
  echo "the promoted standby did not start on port $primary_port" >&2
  exit 1
  ;;
stop)
  for d in primary standby; do
    run "'$bin/pg_ctl' -D '$dir/$d' -m immediate stop" >/dev/null 2>&1 || true
  done
  ;;
*)
  echo "usage: $0 start|fail-over|stop DIR [PORTS]" >&2
  exit 2
  ;;
esac
