#!/usr/bin/env bash
# `make run`: a local cluster in the foreground: dfs-meta (SQLite) and three
# dfs-node processes on 127.0.0.1, all data under one folder. Ctrl-C stops
# everything cleanly (SIGTERM to each daemon, then wait). The daemons run in
# sessions of their own, so the terminal's Ctrl-C reaches only this script.
set -euo pipefail
bin=${DFS_BIN_DIR:-target/release}
dir=${DFS_RUN_DIR:-$PWD/run-data}
meta=127.0.0.1:7000
mnt=${DFS_MOUNT:-$dir/mnt}
mkdir -p "$dir" "$mnt"
# Mutual TLS everywhere: a CA and certificates under $dir/pki, made once.
pki=$dir/pki
scripts/pki.sh "$bin" "$pki" 3
export DFS_TLS_DIR=$pki
pids=()
stop() {
  trap - INT TERM EXIT
  echo
  echo "stopping the cluster..."
  # Unmount first: the FUSE daemon flushes open files, then exits.
  if grep -q " $mnt fuse.dfs " /proc/mounts 2>/dev/null; then
    umount "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null || true
  fi
  # Its daemon closes its session with meta before exiting: meta stays up for that.
  for _ in $(seq 1 50); do pgrep -f "dfs-fuse -f $meta $mnt" >/dev/null || break; sleep 0.1; done
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  echo "stopped. Data is kept in $dir (delete it for a fresh cluster)."
  exit 0
}
trap stop INT TERM EXIT

setsid "$bin/dfs-meta" --listen "$meta" --store "sqlite://$dir/meta.db" --metrics 127.0.0.1:9100 \
  2>>"$dir/meta.log" &
pids+=($!)
for i in 1 2 3; do
  setsid "$bin/dfs-node" --listen "127.0.0.1:700$i" --meta "$meta" --data "$dir/node$i" \
    --metrics "127.0.0.1:910$i" --cert "$pki/node$i.crt" --key "$pki/node$i.key" \
    2>>"$dir/node$i.log" &
  pids+=($!)
done

for _ in $(seq 1 100); do
  if "$bin/dfs" --meta "$meta" status 2>/dev/null | grep -q "nodes: 3 up"; then
    break
  fi
  sleep 0.2
done
if ! "$bin/dfs" --meta "$meta" status 2>/dev/null | grep -q "nodes: 3 up"; then
  echo "the cluster did not come up; see the logs in $dir" >&2
  exit 1
fi

mount_note="mounted at       $mnt"
if ! "$bin/dfs-fuse" "$meta" "$mnt" -o "cache_size=256M,log=$dir/fuse.log,metrics=127.0.0.1:9104,ca=$pki/ca.crt,cert=$pki/client.crt,key=$pki/client.key"; then
  mount_note="NOT mounted (see $dir/fuse.log; /dev/fuse and root or fusermount3 are needed)"
fi

cat <<INFO

dfs local cluster is up (data and logs in $dir)
  metadata server  $meta           metrics http://127.0.0.1:9100/metrics
  storage nodes    127.0.0.1:7001-7003  metrics http://127.0.0.1:9101-9103/metrics
  $mount_note   metrics http://127.0.0.1:9104/metrics
  monitoring       make monitor (Prometheus on http://127.0.0.1:9190)
  certificates     $pki (mutual TLS; the CA's key is ca.key)

Use the mounted directory like any other, in another terminal:
  cp -r /etc/ssl $mnt/ && ls -l $mnt/ssl && cat $mnt/ssl/openssl.cnf | head

Or the admin tool (with the admin certificate from $pki):
  export DFS_META=$meta DFS_TLS_DIR=$pki PATH=$PWD/$bin:\$PATH
  dfs status
  dfs stat /ssl/openssl.cnf
  dfs put /etc/services /services && dfs get /services /tmp/services.copy

Press Ctrl-C to stop the cluster.
INFO
"$bin/dfs" --meta "$meta" status
wait -n "${pids[@]}" || true
echo "a daemon exited on its own; see the logs in $dir" >&2
