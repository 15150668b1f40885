#!/usr/bin/env bash
# Jepsen-style fault runs against intentd.
#
#   jepsen/run.sh --time-limit SECONDS [--nemesis NAME,...] [--mixed] [--nodes N]
#                 [--results DIR] [--unsafe-no-fsync] [--seed N] [--clients N]
#
# Without --nemesis every nemesis runs in its own run (the matrix); --mixed runs the named
# (or all) nemeses interleaved in one run. Builds the release binaries it needs, needs root
# (network namespaces, iptables, tc, FUSE), installs libfaketime and fuse3 when missing.
# Exits 0 when every run is valid, 1 on any anomaly, 2 when the harness itself failed.
# `jepsen/run.sh --cleanup` removes what a killed run left behind.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

if [ "$(id -u)" -ne 0 ]; then
    echo "jepsen/run.sh: needs root (network namespaces, iptables, tc, FUSE)" >&2
    exit 2
fi
missing=()
[ -e /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 ] || missing+=(libfaketime faketime)
command -v fusermount3 >/dev/null || missing+=(fuse3)
command -v tc >/dev/null || missing+=(iproute2)
command -v iptables >/dev/null || missing+=(iptables)
if [ "${#missing[@]}" -gt 0 ]; then
    apt-get update -qq && apt-get install -y -qq "${missing[@]}"
fi

cargo build --release -q -p intentd-server -p intentd-jepsen
export INTENTD_BIN="$ROOT/target/release/intentd"
set +e
"$ROOT/target/release/intentd-jepsen" "$@"
status=$?
set -e
exit "$status"
