#!/usr/bin/env bash
# peers.sh up|down: the systems dfs is measured against, on this machine only.
#   - MooseFS: 1 master + 3 chunkservers + mfsmount, replication goal 3, no trash.
#     MooseFS refuses 127.0.0.0/8 between its daemons, so they run in a private
#     network namespace whose only device is its own loopback (link-local
#     addresses on it); the FUSE mount is visible outside as usual.
#   - bindfs: a FUSE passthrough over a local folder (the cost of FUSE itself).
set -euo pipefail
base=${BENCH_DIR:-/tmp/dfs-bench}
ns=dfsbench
nsx="nsenter --net=/var/run/netns/$ns"
mip=169.254.88.1
mfs=$base/mfs
mfs_mnt=$base/mnt/mfs
bind_src=$base/bindfs-src
bind_mnt=$base/mnt/bindfs

up() {
  ip netns list | grep -qw "$ns" || ip netns add "$ns"
  ip -n "$ns" link set lo up
  for a in $mip 169.254.88.11 169.254.88.12 169.254.88.13; do
    ip -n "$ns" addr show dev lo | grep -q "inet $a/" || ip -n "$ns" addr add "$a/32" dev lo
  done
  mkdir -p "$mfs/master" "$mfs/logs" "$mfs_mnt" "$bind_src" "$bind_mnt"
  cat > "$mfs/master/mfsmaster.cfg" <<CFG
WORKING_USER = mfs
WORKING_GROUP = mfs
DATA_PATH = $mfs/master
EXPORTS_FILENAME = $mfs/master/mfsexports.cfg
TOPOLOGY_FILENAME = $mfs/master/mfstopology.cfg
MATOML_LISTEN_HOST = $mip
MATOCS_LISTEN_HOST = $mip
MATOCL_LISTEN_HOST = $mip
REPLICATIONS_DELAY_INIT = 0
CFG
  printf '*\t/\trw,alldirs,admin,maproot=0:0\n' > "$mfs/master/mfsexports.cfg"
  : > "$mfs/master/mfstopology.cfg"
  [ -f "$mfs/master/metadata.mfs" ] || cp /var/lib/mfs/metadata.mfs.empty "$mfs/master/metadata.mfs"
  for i in 1 2 3; do
    mkdir -p "$mfs/cs$i/data" "$mfs/cs$i/hdd"
    cat > "$mfs/cs$i/mfschunkserver.cfg" <<CFG
WORKING_USER = mfs
WORKING_GROUP = mfs
DATA_PATH = $mfs/cs$i/data
HDD_CONF_FILENAME = $mfs/cs$i/mfshdd.cfg
HDD_LEAVE_SPACE_DEFAULT = 256MiB
MASTER_HOST = $mip
BIND_HOST = 169.254.88.1$i
CSSERV_LISTEN_HOST = 169.254.88.1$i
CSSERV_LISTEN_PORT = $((9421 + i))
CFG
    echo "$mfs/cs$i/hdd" > "$mfs/cs$i/mfshdd.cfg"
  done
  chown -R mfs:mfs "$mfs"
  mfsmaster -c "$mfs/master/mfsmaster.cfg" test >/dev/null 2>&1 ||
    { setsid $nsx mfsmaster -f -c "$mfs/master/mfsmaster.cfg" start >> "$mfs/logs/master.log" 2>&1 < /dev/null & sleep 2; }
  for i in 1 2 3; do
    mfschunkserver -c "$mfs/cs$i/mfschunkserver.cfg" test >/dev/null 2>&1 ||
      { setsid $nsx mfschunkserver -f -c "$mfs/cs$i/mfschunkserver.cfg" start >> "$mfs/logs/cs$i.log" 2>&1 < /dev/null & }
  done
  for _ in $(seq 1 60); do
    n=$($nsx mfscli -H $mip -P 9421 -SCS -s'|' 2>/dev/null | grep -c "^chunk servers:|169.254.88.1" || true)
    [ "$n" -ge 3 ] && break
    sleep 1
  done
  [ "$n" -ge 3 ] || { echo "MooseFS chunkservers did not register" >&2; exit 1; }
  if ! mountpoint -q "$mfs_mnt"; then
    setsid $nsx mfsmount -f "$mfs_mnt" -H $mip -P 9421 -S / >> "$mfs/logs/mount.log" 2>&1 < /dev/null &
    for _ in $(seq 1 40); do mountpoint -q "$mfs_mnt" && break; sleep 0.5; done
  fi
  $nsx mfssetgoal -r 3 "$mfs_mnt" > /dev/null
  $nsx mfssettrashtime -r 0 "$mfs_mnt" > /dev/null
  mountpoint -q "$bind_mnt" || bindfs "$bind_src" "$bind_mnt"
}

down() {
  for m in "$mfs_mnt" "$bind_mnt"; do mountpoint -q "$m" && { umount "$m" || umount -l "$m"; }; done
  for i in 1 2 3; do [ -f "$mfs/cs$i/mfschunkserver.cfg" ] && mfschunkserver -c "$mfs/cs$i/mfschunkserver.cfg" stop >/dev/null 2>&1 || true; done
  [ -f "$mfs/master/mfsmaster.cfg" ] && mfsmaster -c "$mfs/master/mfsmaster.cfg" stop >/dev/null 2>&1 || true
  ip netns list | grep -qw "$ns" && ip netns del "$ns" || true
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  *) echo "usage: peers.sh up|down" >&2; exit 2 ;;
esac
