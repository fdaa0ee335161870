#!/usr/bin/env bash
# Runs the whole test suite (slow end-to-end tests included) on all cores.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "${EDGEC_SKIP_SETUP:-0}" = 1 ] || ./scripts/setup.sh
exec python3 -m pytest -n auto -q "$@"
