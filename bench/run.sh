#!/usr/bin/env bash
# `make bench`: dfs side by side with the local disk (the limit), a FUSE
# passthrough (bindfs: the cost of FUSE itself) and MooseFS (3 chunkservers,
# goal 3), all on this machine, in one run. Prints the table and writes it to
# docs/BENCHMARKS.md. Needs root (page cache drops, mounts, a network namespace).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
base=${BENCH_DIR:-/tmp/dfs-bench}
export BENCH_DIR=$base BENCH_LOGS=$base/logs
systems=${BENCH_SYSTEMS:-local bindfs moosefs dfs dfs-pg}
cache=512M

need=(fio bindfs moosefs-master moosefs-chunkserver moosefs-client moosefs-cli bc iproute2 fuse3 postgresql)
missing=()
for p in "${need[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
cargo build --release --workspace --bins
bin=$repo/target/release

pids=()
pg=$base/pg
cleanup() {
  set +e
  for m in "$base/mnt/dfs" "$base/mnt/dfs-pg"; do
    mountpoint -q "$m" && { umount "$m" || umount -l "$m"; }
  done
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  wait 2>/dev/null
  [ -f "$pg/data/PG_VERSION" ] && (. scripts/pg-env.sh && run "'$bin/pg_ctl' -D '$pg/data' -m fast stop" >/dev/null 2>&1)
  bench/peers.sh down
}
trap cleanup EXIT
bench/peers.sh down  # leftovers of an earlier run
rm -rf "$base/dfs" "$base/dfs-pg" "$base/local" "$base/logs" "$base/mnt/dfs" "$base/mnt/dfs-pg" "$base/bindfs-src" "$pg"
mkdir -p "$base/dfs" "$base/dfs-pg" "$base/local" "$base/logs" "$base/mnt/dfs" "$base/mnt/dfs-pg"

# dfs as deployed: mutual TLS on every connection (scripts/pki.sh).
pki=$base/dfs/pki
scripts/pki.sh "$bin" "$pki" 3
export DFS_TLS_DIR=$pki
# start_dfs NAME PORTS STORE [MOUNT_OPTION,]: meta on 127.0.0.1:${PORTS}00 with
# STORE, 3 nodes on ${PORTS}01-03, all 3 up, then mounted at $base/mnt/NAME.
start_dfs() {
  local name=$1 meta=127.0.0.1:${2}00 store=$3 extra=${4:-}
  "$bin/dfs-meta" --listen "$meta" --store "$store" 2>> "$base/logs/$name-meta.log" &
  pids+=($!)
  for i in 1 2 3; do
    "$bin/dfs-node" --listen "127.0.0.1:${2}0$i" --meta "$meta" --data "$base/$name/node$i" \
      --cert "$pki/node$i.crt" --key "$pki/node$i.key" 2>> "$base/logs/$name-node$i.log" &
    pids+=($!)
  done
  for _ in $(seq 1 100); do "$bin/dfs" --meta "$meta" status 2>/dev/null | grep -q "nodes: 3 up" && break; sleep 0.2; done
  "$bin/dfs-fuse" "$meta" "$base/mnt/$name" -o "cache_size=$cache,log=$base/logs/$name-fuse.log,${extra}ca=$pki/ca.crt,cert=$pki/client.crt,key=$pki/client.key"
}
start_dfs dfs 174 "sqlite://$base/dfs/meta.db" "metrics=127.0.0.1:17410,"
fuse_pid=$(pgrep -f "dfs-fuse -f 127.0.0.1:17400 $base/mnt/dfs" | head -n 1)

# dfs-pg: the same cluster with meta on PostgreSQL, for the small-file
# workloads. A server of its own with PostgreSQL's defaults (fsync on:
# a commit is on disk when meta acknowledges it), not the test server.
if [[ " $systems " == *" dfs-pg "* ]]; then
  (
    . scripts/pg-env.sh
    mkdir -p "$pg" && chown "$owner" "$pg"
    run "'$bin/initdb' -D '$pg/data' -U dfs --auth=trust -E UTF8 >'$pg/initdb.log' 2>&1"
    run "'$bin/pg_ctl' -D '$pg/data' -l '$pg/server.log' -w -t 60 \
        -o \"-c listen_addresses=127.0.0.1 -p 17550 -k '$pg' -c max_connections=100\" start" >/dev/null
  )
  start_dfs dfs-pg 175 "postgres://dfs@127.0.0.1:17550/postgres"
fi
bench/peers.sh up

results=$base/results.txt
: > "$results"
dir_of() {
  case $1 in
    local) echo "$base/local" ;;
    bindfs) echo "$base/mnt/bindfs" ;;
    moosefs) echo "$base/mnt/mfs" ;;
    dfs | dfs-pg) echo "$base/mnt/$1" ;;
    *) echo "unknown system $1" >&2; exit 2 ;;
  esac
}
# Workload groups go one at a time through every system, the systems' order
# reversed from one group to the next, so a machine that speeds up or slows
# down during the run (this one does, by a third within minutes) weighs on
# neighbouring systems alike instead of on whichever ran last. With
# BENCH_ROUNDS=N every group runs N times; the report takes the medians.
groups=${BENCH_GROUPS:-large small cp wide trees}
rounds=${BENCH_ROUNDS:-1}
settle=${BENCH_SETTLE:-10}
read -r -a order <<< "$systems"
for round in $(seq 1 "$rounds"); do
  for group in $groups; do
    for sys in "${order[@]}"; do
      # Meta on PostgreSQL: the small-file workloads only.
      [ "$sys" = dfs-pg ] && [ "$group" != small ] && continue
      dir=$(dir_of "$sys")
      echo "== round $round, $group: $sys ($dir)" >&2
      # Let the previous run's background work settle (MooseFS deletes chunks
      # and dfs purges and collects garbage after removals; the page cache
      # writes back).
      sync; sleep "$settle"
      if [ "$sys" = dfs ] && [ "$group" = large ]; then
        # Peak resident memory of the FUSE daemon during the 1 GiB write.
        export BENCH_DURING_WRITE="bench/peak-rss.sh $fuse_pid $base/logs/dfs-fuse-peak-rss"
      else
        unset BENCH_DURING_WRITE
      fi
      bench/workloads.sh "$dir" "$sys" "$group" | tee -a "$results"
    done
    mapfile -t order < <(printf '%s\n' "${order[@]}" | tac)
  done
done
# What the mount did: requests, meta calls, cache use (for the notes).
curl -s http://127.0.0.1:17410/metrics > "$base/logs/dfs-fuse-metrics.txt" || true
if [ -f "$base/logs/dfs-fuse-peak-rss" ]; then
  echo "dfs fuse_peak_rss_1G_write $(cat "$base/logs/dfs-fuse-peak-rss") MiB" | tee -a "$results"
fi
python3 bench/report.py "$results" "$cache" "make bench" > docs/BENCHMARKS.md.new
mv docs/BENCHMARKS.md.new docs/BENCHMARKS.md
sed -n '/^| workload/,/^$/p' docs/BENCHMARKS.md
