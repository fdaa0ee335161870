#!/usr/bin/env bash
# Installs edgec (editable, with the dev tools) and the Debian cross toolchains and emulators.
# Idempotent: skips what is already installed.
set -euo pipefail
cd "$(dirname "$0")/.."

# qemu-user: a dynamically linked qemu-aarch64 that loads TCG plugins (the static one cannot), for
# benchmarks/cortex_a_int8.py's instruction counts.
DEBIAN_PACKAGES=(gcc-aarch64-linux-gnu libstdc++6-arm64-cross gcc-arm-none-eabi libnewlib-arm-none-eabi
    qemu-user-static qemu-user qemu-system-arm cmake make)
missing=()
for package in "${DEBIAN_PACKAGES[@]}"; do
    dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

python3 -m pip install -q --disable-pip-version-check -e ".[dev]"

# The aarch64 TVM runtime that emulated boards measure tuning candidates with (edgec tune --rpc,
# edgec rpc-server): from the aarch64 wheels of the installed TVM versions, fetched once with pip.
python3 -m edgec.targets.board_runtime >/dev/null
