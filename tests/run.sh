#!/usr/bin/env bash
# The one test command: formatting, lints, every Rust test (unit, property, storage suite,
# end-to-end against the real binary) and the official Python SDK suite.
# Usage: bash tests/run.sh   (from anywhere; creates .venv on first use)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --all --check"
cargo fmt --all --check

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo build --workspace --all-targets"
cargo build --workspace --all-targets

# Rust tests: nextest when installed (parallel per test, clear summary), cargo test otherwise.
# The e2e tests start real servers; two at a time suits a 2-core machine.
if cargo nextest --version >/dev/null 2>&1; then
    step "cargo nextest run --workspace"
    cargo nextest run --workspace --no-fail-fast --test-threads 2
    # nextest does not run doctests.
    step "cargo test --workspace --doc"
    cargo test --workspace --doc
else
    step "cargo test --workspace"
    cargo test --workspace --no-fail-fast -- --test-threads 2
fi

step "Python SDK suite (.venv)"
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt

export INTENTD_BIN="${INTENTD_BIN:-$ROOT/target/debug/intentd}"
step "pytest tests/python (INTENTD_BIN=$INTENTD_BIN)"
.venv/bin/python -m pytest tests/python -c tests/python/pytest.ini --rootdir tests/python -q
