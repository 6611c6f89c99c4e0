#!/usr/bin/env bash
# rpc-counts.sh MOUNT METRICS_ADDR: metadata calls per small-file operation
# (create, stat and read with the kernel's caches dropped, delete), from the
# mount's own counters (dfs_fuse_meta_calls_total; mount with -o metrics=).
# N files (default 200) of 4 KiB in MOUNT/rpc. Needs root (drop_caches).
set -euo pipefail
B=${1:?usage: rpc-counts.sh MOUNT METRICS_ADDR}; M=${2:?usage: rpc-counts.sh MOUNT METRICS_ADDR}; N=${N:-200}
# The mount publishes its counters every 2 s.
snap() { sleep 2.3; curl -s $M/metrics | grep -E '^dfs_fuse_meta_calls_total|^dfs_fuse_requests_total' > $1; }
diffp() { python3 - "$1" "$2" "$3" <<'PY'
import sys
def load(p):
    d={}
    for l in open(p):
        k,v=l.rsplit(' ',1); d[k]=float(v)
    return d
a,b=load(sys.argv[1]),load(sys.argv[2]); n=int(sys.argv[3])
rpc=0
for k in sorted(b):
    x=(b[k]-a.get(k,0))/n
    if x>0.005:
        print("  %-50s %.2f"%(k,x))
        if k.startswith('dfs_fuse_meta_calls') and 'RenewSession' not in k: rpc+=x
print("  meta RPCs per op: %.2f"%rpc)
PY
}
mkdir -p $B/rpc; sync
snap /tmp/m0
python3 -c "
for i in range($N):
    with open('$B/rpc/f%d'%i,'wb') as f: f.write(b'x'*4096)
"; snap /tmp/m1; echo "== create"; diffp /tmp/m0 /tmp/m1 $N
echo 3 > /proc/sys/vm/drop_caches; snap /tmp/m0
python3 -c "
import os
for i in range($N): os.stat('$B/rpc/f%d'%i)
"; snap /tmp/m1; echo "== stat cold"; diffp /tmp/m0 /tmp/m1 $N
echo 3 > /proc/sys/vm/drop_caches; snap /tmp/m0
python3 -c "
for i in range($N): open('$B/rpc/f%d'%i,'rb').read()
"; snap /tmp/m1; echo "== read cold"; diffp /tmp/m0 /tmp/m1 $N
echo 3 > /proc/sys/vm/drop_caches; snap /tmp/m0
python3 -c "
import os
for i in range($N): os.unlink('$B/rpc/f%d'%i)
"; snap /tmp/m1; echo "== delete"; diffp /tmp/m0 /tmp/m1 $N
rmdir $B/rpc
