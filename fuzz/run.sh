#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 60); see fuzz/README.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export INTENTD_FUZZ_SECONDS="${1:-60}"
exec cargo test --release --workspace --lib fuzz_ -- --test-threads 1
