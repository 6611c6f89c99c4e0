#!/usr/bin/env bash
# workloads.sh DIR LABEL [GROUP...]: runs the benchmark workloads of each GROUP
# (default: all of them, in this order) in DIR and prints one line per figure:
# "LABEL WORKLOAD VALUE UNIT". Details (fio JSON) go to $BENCH_LOGS. Groups:
#   large  1 GiB sequential write, cold and warm read; 4 KiB random reads
#   small  10,000 files of 4 KiB: create, stat, read, delete
#   cp     cp of 256 MiB in and out
#   wide   10,000 empty files in one directory; ls -l of it, cold
#   trees  cp -r in and out, tar x, git clone, rm -rf of whole trees
# Needs root to drop the page cache for the cold workloads.
set -euo pipefail
usage="usage: workloads.sh DIR LABEL [large|small|cp|wide|trees]..."
dir=${1:?$usage}
label=${2:?$usage}
shift 2
groups=("$@")
[ ${#groups[@]} -gt 0 ] || groups=(large small cp wide trees)
here=$(cd "$(dirname "$0")" && pwd)
logs=${BENCH_LOGS:-/tmp/dfs-bench/logs}/$label
src=${BENCH_SRC:-/tmp/dfs-bench/src256}
out=${BENCH_OUT:-/tmp/dfs-bench/out}
work="$dir/bench-$label"
mkdir -p "$logs" "$out"

drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }
seconds() { date +%s.%N; }
say() { echo "$label $1 $2 $3"; }
fio_figure() { # fio_figure JSON read|write bw|iops
  python3 - "$@" <<'PY'
import json, sys
job = json.load(open(sys.argv[1]))["jobs"][0][sys.argv[2]]
print("%.1f" % (job["bw_bytes"] / 1e6) if sys.argv[3] == "bw" else "%.0f" % job["iops"])
PY
}
# invalidate=0: caches are dropped explicitly, so "warm" stays warm.
fio_run() { fio --ioengine=psync --direct=0 --fallocate=none --invalidate=0 --output-format=json "$@"; }

# Sequential write, 1 GiB in 1 MiB blocks, fsync at the end. A hook may sample
# the FUSE daemon's memory meanwhile (BENCH_DURING_WRITE).
large() {
  drop_caches
  if [ -n "${BENCH_DURING_WRITE:-}" ]; then $BENCH_DURING_WRITE & sampler=$!; fi
  fio_run --name=seqwrite --filename="$work/seq" --rw=write --bs=1M --size=1G --end_fsync=1 > "$logs/seqwrite.json"
  if [ -n "${BENCH_DURING_WRITE:-}" ]; then kill "$sampler" 2>/dev/null || true; wait "$sampler" 2>/dev/null || true; fi
  say seq_write_1G "$(fio_figure "$logs/seqwrite.json" write bw)" MB/s

  drop_caches
  fio_run --name=seqread --filename="$work/seq" --rw=read --bs=1M --size=1G > "$logs/seqread_cold.json"
  say seq_read_cold "$(fio_figure "$logs/seqread_cold.json" read bw)" MB/s
  fio_run --name=seqread --filename="$work/seq" --rw=read --bs=1M --size=1G > "$logs/seqread_warm.json"
  say seq_read_warm "$(fio_figure "$logs/seqread_warm.json" read bw)" MB/s

  drop_caches
  fio_run --name=randread --filename="$work/seq" --rw=randread --bs=4k --size=1G --io_size=64M \
    --numjobs=4 --runtime=30 --group_reporting > "$logs/randread.json"
  say rand_read_4k_4jobs "$(fio_figure "$logs/randread.json" read iops)" IOPS
  rm -f "$work/seq"
}

small() {
  python3 "$here/smallfiles.py" "$work/small" "$label" 10000
}

cp256() {
  [ -f "$src" ] || head -c $((256 << 20)) /dev/urandom > "$src"
  drop_caches
  t0=$(seconds); cp "$src" "$work/cp256"; sync "$work/cp256"; t1=$(seconds)
  say cp_in_256M "$(echo "$t1 - $t0" | bc -l | xargs printf '%.2f')" s
  drop_caches
  t0=$(seconds); cp "$work/cp256" "$out/cp256.$label"; t1=$(seconds)
  say cp_out_256M "$(echo "$t1 - $t0" | bc -l | xargs printf '%.2f')" s
  cmp -s "$src" "$out/cp256.$label" || { echo "$label: cp round trip differs" >&2; exit 1; }
  rm -f "$out/cp256.$label" "$work/cp256"
}

wide() {
  mkdir "$work/wide"
  t0=$(seconds)
  python3 -c 'import os, sys
for i in range(10000):
    os.close(os.open(f"{sys.argv[1]}/entry{i:05d}", os.O_WRONLY | os.O_CREAT, 0o644))' "$work/wide"
  t1=$(seconds)
  say create_10k_entries "$(echo "$t1 - $t0" | bc -l | xargs printf '%.2f')" s
  drop_caches
  t0=$(seconds); ls -l "$work/wide" > /dev/null; t1=$(seconds)
  say ls_l_10k_cold "$(echo "$t1 - $t0" | bc -l | xargs printf '%.2f')" s
}

# Whole trees: cp -r in and out, tar x, git clone, rm -rf.
trees() {
  "$here/trees.sh" "$dir" "$label"
}

for group in "${groups[@]}"; do
  rm -rf "$work" && mkdir -p "$work"
  case $group in
    large | small | wide | trees) "$group" ;;
    cp) cp256 ;;
    *) echo "$usage" >&2; exit 2 ;;
  esac
  rm -rf "$work"
done
