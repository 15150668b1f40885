#!/usr/bin/env bash
# The performance comparison: intentd's three-node cluster beside a three-node etcd, same
# machine, same sitting, same wrk load (see bench/compare.py for the figures it prints).
# Installs wrk and etcd from Debian when missing and builds the release binary.
#   bench/run.sh [--duration S] [--levels 1,16,64] [--streams N] [--intents N] [--skip-etcd]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
need=()
command -v wrk >/dev/null || need+=(wrk)
command -v etcd >/dev/null || need+=(etcd-server)
if [ "${#need[@]}" -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
cargo build --release -q -p intentd-server
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
exec python3 bench/compare.py "$@"
