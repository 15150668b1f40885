#!/usr/bin/env bash
# The CI chaos check: one short mixed-nemesis run (about two minutes in all) over every
# nemesis; fails on any anomaly. Meant to be called from .ci/run.
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/run.sh" --time-limit 75 --mixed "$@"
