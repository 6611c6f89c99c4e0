#!/bin/bash
# bench/tls-cost.sh: what mutual TLS and chunk tokens cost. dfs alone (release build),
# small files (bench/smallfiles.py, 5,000) and a 1 GiB dd write and cold read, run
# --insecure, with TLS, with TLS, --insecure, in one invocation. Needs root.
set -u
cd "$(dirname "$0")/.."
base=${BENCH_DIR:-/tmp/dfs-tlsbench}
bin=${DFS_BIN_DIR:-target/release}
for mode in insecure tls tls2 insecure2; do
  pkill -f "dfs-meta --listen 127.0.0.1:17600"; pkill -f "127.0.0.1:1760"; sleep 0.5
  mountpoint -q $base/mnt && umount -l $base/mnt
  rm -rf $base; mkdir -p $base/dfs $base/mnt $base/logs
  if [ "${mode%2}" = insecure ]; then
    d=(--insecure); n1=(); n2=(); n3=(); mo=insecure
  else
    scripts/pki.sh $bin $base/pki 3
    d=(--tls-dir $base/pki); mo="ca=$base/pki/ca.crt,cert=$base/pki/client.crt,key=$base/pki/client.key"
  fi
  $bin/dfs-meta "${d[@]}" --listen 127.0.0.1:17600 --store "sqlite://$base/dfs/meta.db" 2>> $base/logs/meta.log &
  for i in 1 2 3; do
    if [ "${mode%2}" = insecure ]; then extra=(--insecure); else extra=(--tls-dir $base/pki --cert $base/pki/node$i.crt --key $base/pki/node$i.key); fi
    $bin/dfs-node "${extra[@]}" --listen 127.0.0.1:1760$i --meta 127.0.0.1:17600 --data $base/dfs/node$i 2>> $base/logs/node$i.log &
  done
  for _ in $(seq 1 100); do $bin/dfs "${d[@]}" --meta 127.0.0.1:17600 status 2>/dev/null | grep -q "nodes: 3 up" && break; sleep 0.2; done
  $bin/dfs-fuse 127.0.0.1:17600 $base/mnt -o cache_size=512M,log=$base/logs/fuse.log,$mo
  mkdir -p $base/mnt/q
  python3 bench/smallfiles.py $base/mnt/q/small "dfs-$mode" 5000
  sync; echo 3 > /proc/sys/vm/drop_caches
  t0=$(date +%s.%N); dd if=/dev/zero of=$base/mnt/big bs=4M count=256 conv=fsync status=none; t1=$(date +%s.%N)
  echo "dfs-$mode seq_write_1G $(echo "1024 / ($t1 - $t0)" | bc -l | cut -c1-6) MiB/s"
  sync; echo 3 > /proc/sys/vm/drop_caches
  t0=$(date +%s.%N); cat $base/mnt/big > /dev/null; t1=$(date +%s.%N)
  echo "dfs-$mode seq_read_cold $(echo "1024 / ($t1 - $t0)" | bc -l | cut -c1-6) MiB/s"
  umount $base/mnt
  pkill -f "dfs-meta --listen 127.0.0.1:17600"; pkill -f "127.0.0.1:1760"; sleep 1
done
