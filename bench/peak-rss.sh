#!/usr/bin/env bash
# peak-rss.sh PID FILE: until killed, keeps the largest VmRSS of PID seen (MiB) in FILE.
pid=$1
file=$2
peak=0
while true; do
  kb=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
  if [ "${kb:-0}" -gt "$peak" ]; then
    peak=$kb
    echo $((peak / 1024)) > "$file"
  fi
  sleep 0.1
done
