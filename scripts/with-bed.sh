#!/usr/bin/env bash
# Runs a command with a fresh test bed (PostgreSQL + kube-apiserver + etcd + a node; BED_FLAGS=
# --no-node leaves the node out, for benchmarks) whose settings are
# exported (KUBECONFIG, DATABASE_URL, PGSSLROOTCERT, DBCONN_BED). The bed is stopped when the
# command ends, fails, or this script is killed (a watchdog follows this shell's pid).
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${TMPDIR:-/tmp}/dbconn-bed-$$"
cargo build -q -p testbed
trap 'target/debug/testbed --dir "$dir" down' EXIT
eval "$(target/debug/testbed --dir "$dir" --watch-pid $$ ${BED_FLAGS:-} up | sed "s/^\([A-Z_]*\)=\(.*\)$/export \1='\2'/")"
"$@"
