#!/usr/bin/env bash
# trees.sh DIR LABEL: what users do with many small files, on whole trees:
# cp -r in and out of a 20,000-file source tree, tar x of the same tree, git
# clone of a 5,000-file repository, rm -rf. Prints "LABEL WORKLOAD SECONDS s".
# The source tree, its tarball and the repository are made once (fixed seed)
# under $BENCH_DIR and reused. Needs root to drop the page cache.
set -euo pipefail
dir=${1:?usage: trees.sh DIR LABEL}
label=${2:?usage: trees.sh DIR LABEL}
base=${BENCH_DIR:-/tmp/dfs-bench}
src=$base/tree-src
tarball=$base/tree-src.tar
repo=$base/repo-src
out=${BENCH_OUT:-$base/out}/trees-$label
work=$dir/trees-$label

# A source-like tree: 20 top directories x 20 subdirectories x 50 files, sizes
# 200 B to 24 KiB (most small, as in source code), about 150 MB.
make_tree() { # make_tree DIR TOP SUB FILES SEED
  python3 - "$@" <<'PY'
import os, random, sys
root, top, sub, files, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
rng = random.Random(seed)
blob = rng.randbytes(1 << 16)
for t in range(top):
    for s in range(sub):
        d = os.path.join(root, f"mod{t:02d}", f"pkg{s:02d}")
        os.makedirs(d, exist_ok=True)
        for f in range(files):
            size = min(int(rng.lognormvariate(8.2, 0.9)), 24 << 10)
            start = rng.randrange(0, len(blob) - size)
            with open(os.path.join(d, f"file{f:03d}.src"), "wb") as out:
                out.write(blob[start:start + size])
PY
}
if [ ! -d "$src" ]; then
  make_tree "$src.new" 20 20 50 11 && mv "$src.new" "$src"
fi
[ -f "$tarball" ] || tar cf "$tarball" -C "$src" .
if [ ! -d "$repo" ]; then
  rm -rf "$repo.new" && mkdir -p "$repo.new"
  make_tree "$repo.new" 10 10 50 12
  git -C "$repo.new" init -q
  git -C "$repo.new" add -A
  git -C "$repo.new" -c user.name=bench -c user.email=bench@localhost commit -qm tree
  mv "$repo.new" "$repo"
fi

drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }
seconds() { date +%s.%N; }
timed() { # timed WORKLOAD COMMAND...
  local w=$1 t0 t1
  shift
  t0=$(seconds)
  "$@"
  t1=$(seconds)
  echo "$label $w $(echo "$t1 - $t0" | bc -l | xargs printf '%.2f') s"
}

rm -rf "$work" "$out" && mkdir -p "$work" "$out"
drop_caches
timed cp_r_in_20k cp -r "$src" "$work/cp"
drop_caches
timed cp_r_out_20k cp -r "$work/cp" "$out/cp"
rm -rf "$out"
drop_caches
mkdir "$work/tarx"
timed tar_x_20k tar xf "$tarball" -C "$work/tarx"
drop_caches
timed git_clone_5k git clone -q --no-hardlinks "file://$repo" "$work/clone"
drop_caches
timed rm_rf_20k rm -rf "$work/cp"
rm -rf "$work"
