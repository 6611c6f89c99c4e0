#!/usr/bin/env bash
# scripts/pki.sh BIN_DIR PKI_DIR NODES: the certificates a local cluster needs,
# made once: a CA, then meta, admin, client and node1..NODES (each node has
# its own: meta binds a node to the certificate it first registers with).
set -euo pipefail
bin=$1 pki=$2 nodes=$3
[ -f "$pki/ca.crt" ] || "$bin/dfs" ca init "$pki" >/dev/null
issue() { [ -f "$pki/$2.crt" ] || "$bin/dfs" ca issue "$pki" --role "$1" "$2" >/dev/null; }
issue meta meta
issue admin admin
issue client client
for i in $(seq 1 "$nodes"); do issue node "node$i"; done
