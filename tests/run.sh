#!/usr/bin/env bash
# The one test command: formatting, lints, every Rust test (unit, property, storage suite,
# end-to-end against the real binary), the official Python SDK suite (with the console's
# headless-Chromium test) and a short chaos run.
# Usage: bash tests/run.sh   (from anywhere; creates .venv on first use)
#
# Every check runs even when an earlier one failed (except when the build itself fails), so
# one run shows everything that is wrong; the exit status is non-zero if anything failed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

failed=()

# step NAME CMD...: runs CMD, records NAME as failed if it exits non-zero.
step() {
    local name="$1"
    shift
    printf '\n==> %s: %s\n' "$name" "$*"
    if "$@"; then
        return 0
    fi
    failed+=("$name")
    return 1
}

step "fmt" cargo fmt --all --check || true
step "clippy" cargo clippy --workspace --all-targets -- -D warnings || true
if ! step "build" cargo build --workspace --all-targets; then
    printf '\nrun.sh: the build failed; no tests were run\n' >&2
    exit 1
fi

# Rust tests: nextest when installed (a process per test, a clear summary), cargo test
# otherwise. The e2e tests start real servers; two at a time suits a 2-core machine.
if cargo nextest --version >/dev/null 2>&1; then
    # nextest does not run doctests; run them first so the runners' summaries stay last.
    step "doctests" cargo test --workspace --doc || true
    step "rust tests" cargo nextest run --workspace --no-fail-fast --test-threads 2 || true
else
    step "rust tests" cargo test --workspace --no-fail-fast -- --test-threads 2 || true
fi

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    step "venv" "$PYTHON" -m venv .venv
fi
step "pip install" .venv/bin/python -m pip install --quiet --disable-pip-version-check \
    -r tests/python/requirements.txt

# The console's browser test drives Debian's headless Chromium through its WebDriver.
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ]; then
        step "chromium" bash -c 'apt-get update -qq &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver' || true
    else
        printf '\n==> chromium: not installed and not root; apt-get install chromium chromium-driver\n' >&2
        failed+=("chromium")
    fi
fi

export INTENTD_BIN="${INTENTD_BIN:-$ROOT/target/debug/intentd}"
# Where tests leave what a person may want to look at (the console's screenshots).
export INTENTD_TEST_OUTPUT="${INTENTD_TEST_OUTPUT:-$ROOT/target/test-output}"
# Includes test_openapi.py: schemathesis drives every operation of the served /openapi.json
# against a one-node server for INTENTD_FUZZ_SECONDS (90 s by default).
step "sdk tests" .venv/bin/python -m pytest tests/python -c tests/python/pytest.ini \
    --rootdir tests/python -q || true

# The short mixed-nemesis chaos run (network namespaces, iptables, FUSE: needs root).
if [ "${INTENTD_SKIP_CHAOS:-0}" = "1" ]; then
    printf '\n==> chaos: skipped (INTENTD_SKIP_CHAOS=1)\n'
elif [ "$(id -u)" -ne 0 ]; then
    printf '\n==> chaos: needs root; run as root or set INTENTD_SKIP_CHAOS=1\n' >&2
    failed+=("chaos")
else
    step "chaos" bash jepsen/ci.sh --results "$ROOT/target/jepsen-ci" || true
fi

if [ "${#failed[@]}" -gt 0 ]; then
    printf '\nrun.sh: FAILED: %s\n' "${failed[*]}" >&2
    exit 1
fi
printf '\nrun.sh: fmt, clippy, build, Rust tests, SDK tests and the chaos run all green\n'
