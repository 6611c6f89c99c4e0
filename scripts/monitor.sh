#!/usr/bin/env bash
# `make monitor`: a real Prometheus (Debian's package) scraping the local cluster
# of `make run`, with the dfs alert rules, in the foreground on 127.0.0.1:9190.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${DFS_RUN_DIR:-$PWD/run-data}/prometheus
mkdir -p "$dir"
if ! command -v prometheus >/dev/null; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
promtool check config deploy/prometheus/prometheus.yml >/dev/null
cat <<INFO
Prometheus: http://127.0.0.1:9190  (targets: http://127.0.0.1:9190/targets, alerts: /alerts)
Grafana: add a Prometheus data source at http://127.0.0.1:9190 (uid dfs-prometheus),
  or copy deploy/grafana/provisioning/* into /etc/grafana/provisioning/ and the
  dashboards in deploy/grafana/dashboards/ to /etc/dfs/grafana/dashboards/.
Press Ctrl-C to stop.
INFO
exec prometheus --config.file=deploy/prometheus/prometheus.yml --storage.tsdb.path="$dir" \
  --web.listen-address=127.0.0.1:9190 --log.level=warn
