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
"$bin/dfs-meta" --listen 127.0.0.1:17400 --store "sqlite://$base/dfs/meta.db" 2>> "$base/logs/dfs-meta.log" &
pids+=($!)
for i in 1 2 3; do
  "$bin/dfs-node" --listen "127.0.0.1:1740$i" --meta 127.0.0.1:17400 --data "$base/dfs/node$i" \
    --cert "$pki/node$i.crt" --key "$pki/node$i.key" 2>> "$base/logs/dfs-node$i.log" &
  pids+=($!)
done
for _ in $(seq 1 100); do "$bin/dfs" --meta 127.0.0.1:17400 status 2>/dev/null | grep -q "nodes: 3 up" && break; sleep 0.2; done
"$bin/dfs-fuse" 127.0.0.1:17400 "$base/mnt/dfs" -o "cache_size=$cache,log=$base/logs/dfs-fuse.log,metrics=127.0.0.1:17410,ca=$pki/ca.crt,cert=$pki/client.crt,key=$pki/client.key"
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
  "$bin/dfs-meta" --listen 127.0.0.1:17500 --store "postgres://dfs@127.0.0.1:17550/postgres" \
    2>> "$base/logs/dfs-pg-meta.log" &
  pids+=($!)
  for i in 1 2 3; do
    "$bin/dfs-node" --listen "127.0.0.1:1750$i" --meta 127.0.0.1:17500 --data "$base/dfs-pg/node$i" \
      --cert "$pki/node$i.crt" --key "$pki/node$i.key" 2>> "$base/logs/dfs-pg-node$i.log" &
    pids+=($!)
  done
  for _ in $(seq 1 100); do "$bin/dfs" --meta 127.0.0.1:17500 status 2>/dev/null | grep -q "nodes: 3 up" && break; sleep 0.2; done
  "$bin/dfs-fuse" 127.0.0.1:17500 "$base/mnt/dfs-pg" -o "cache_size=$cache,log=$base/logs/dfs-pg-fuse.log,ca=$pki/ca.crt,cert=$pki/client.crt,key=$pki/client.key"
fi
bench/peers.sh up

results=$base/results.txt
: > "$results"
for sys in $systems; do
  case $sys in
    local) dir=$base/local ;;
    bindfs) dir=$base/mnt/bindfs ;;
    moosefs) dir=$base/mnt/mfs ;;
    dfs) dir=$base/mnt/dfs ;;
    dfs-pg) dir=$base/mnt/dfs-pg ;;
    *) echo "unknown system $sys" >&2; exit 2 ;;
  esac
  echo "== $sys ($dir)" >&2
  # Let the previous system's background work settle (MooseFS deletes chunks
  # and dfs collects garbage after their runs; the page cache writes back).
  sync; sleep 20
  if [ "$sys" = dfs ]; then
    # Peak resident memory of the FUSE daemon during the 1 GiB write.
    export BENCH_DURING_WRITE="bench/peak-rss.sh $fuse_pid $base/logs/dfs-fuse-peak-rss"
  else
    unset BENCH_DURING_WRITE
  fi
  if [ "$sys" = dfs-pg ]; then
    # Meta on PostgreSQL: the small-file workloads only.
    mkdir -p "$dir/bench-$sys"
    python3 bench/smallfiles.py "$dir/bench-$sys/small" "$sys" 10000 | tee -a "$results"
    rm -rf "$dir/bench-$sys"
    continue
  fi
  bench/workloads.sh "$dir" "$sys" | tee -a "$results"
  if [ "$sys" = dfs ]; then
    # What the mount did: requests, meta calls, cache use (for the notes).
    curl -s http://127.0.0.1:17410/metrics > "$base/logs/dfs-fuse-metrics.txt" || true
  fi
done
if [ -f "$base/logs/dfs-fuse-peak-rss" ]; then
  echo "dfs fuse_peak_rss_1G_write $(cat "$base/logs/dfs-fuse-peak-rss") MiB" | tee -a "$results"
fi
python3 bench/report.py "$results" "$cache" "make bench" > docs/BENCHMARKS.md.new
mv docs/BENCHMARKS.md.new docs/BENCHMARKS.md
sed -n '/^| workload/,/^$/p' docs/BENCHMARKS.md
