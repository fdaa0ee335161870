#!/usr/bin/env bash
# Compiles the shipped digits CNN for the default target (x86, this host) and prints the report.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "${EDGEC_SKIP_SETUP:-0}" = 1 ] || ./scripts/setup.sh
exec edgec compile examples/digits/digits_cnn.onnx --eval examples/digits/digits_test.npz -o build/digits "$@"
