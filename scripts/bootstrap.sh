#!/usr/bin/env bash
# Idempotent setup for a fresh Debian machine: system packages, a venv, and the
# project installed editable with its test extras. Safe to re-run: every step
# checks before it acts, so a second run takes a couple of seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

# ZooKeeper, Redis, libvirt (headers for libvirt-python; the QEMU driver for real guests), IPMI simulator,
# libfaketime (a worker with a skewed clock, in the fencing tests), Chromium and its driver (the status page and
# Swagger UI tested in a real browser), jq (the README's examples pick job ids out of JSON with it), qemu-utils
# (qemu-img: a node reads the backing chains of VM images before it defines them).
APT_PACKAGES=(zookeeper redis-server libvirt-dev pkg-config openipmi ipmitool libvirt-clients
              qemu-system-x86 libvirt-daemon libvirt-daemon-driver-qemu faketime rabbitmq-server
              chromium chromium-driver jq qemu-utils)
VENV=${PVC_VENV:-.venv}

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    echo "bootstrap: installing apt packages: ${missing[*]}"
    SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Debian's libvirt QEMU driver refuses to initialise unless these exist (machine-recipes.md).
SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
getent group kvm >/dev/null || $SUDO groupadd -r kvm
getent group libvirt-qemu >/dev/null || $SUDO groupadd -r libvirt-qemu
getent passwd libvirt-qemu >/dev/null || $SUDO useradd -r -g libvirt-qemu -G kvm -d /var/lib/libvirt \
    -s /usr/sbin/nologin libvirt-qemu

PYTHON=${PYTHON:-python3}
if [[ ! -x "$VENV/bin/python" ]] || ! "$VENV/bin/python" -c 'import sys' 2>/dev/null; then
    echo "bootstrap: creating venv $VENV"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
fi

# Reinstall only when setup.py changed since the last successful install.
stamp="$VENV/.pvc-installed"
if [[ ! -f "$stamp" ]] || [[ setup.py -nt "$stamp" ]]; then
    echo "bootstrap: installing pvc-orchestrator (editable, with test extras)"
    "$VENV/bin/pip" install -q --upgrade pip
    "$VENV/bin/pip" install -q -e '.[test]'
    touch "$stamp"
fi
