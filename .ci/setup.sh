#!/usr/bin/env bash
# Sets up everything edgectl and its tests need on a fresh Debian machine (run as root).
# Idempotent: what is already installed is left alone.
set -euo pipefail
export PIP_ROOT_USER_ACTION=ignore
cd "$(dirname "$0")/.."

apt_packages=(dataset-fashion-mnist openssh-server iproute2)
missing=()
for p in "${apt_packages[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# torch first, pinned: a bare "torch" requirement would pull a multi-GB CUDA build.
python3 -m pip install -q --disable-pip-version-check torch==2.13.0
python3 -m pip install -q --disable-pip-version-check -e ".[test]"
# pyenv-managed Pythons expose new console scripts only after a rehash.
if command -v pyenv >/dev/null 2>&1; then pyenv rehash; fi
command -v edgectl >/dev/null || { echo "setup: edgectl is not on PATH after install" >&2; exit 1; }
