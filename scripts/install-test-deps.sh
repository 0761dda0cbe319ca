#!/usr/bin/env bash
# Idempotent install, as root on Debian 12, of what only fsev's tests need, on
# top of what scripts/install.sh installs to run fsev (run that first: this
# adds to its venv). `make test` runs both.
set -euo pipefail
VENV=${FSEV_VENV:-/opt/fsev/venv}
say() { printf 'fsev test deps: %s\n' "$*"; }
. "$(dirname "$0")/apt-install.sh"

[ "$(id -u)" = 0 ] || { echo "fsev test deps: must run as root (try: sudo make test)" >&2; exit 2; }
[ -x "$VENV/bin/python" ] || { echo "fsev test deps: no venv $VENV (run scripts/install.sh first)" >&2; exit 2; }

# 1. Debian packages: test material (ext4 images, loop devices, FUSE disks,
# tmux for `fsev top`), bpftool + clang as the BTF oracle
# (tests/kernel/test_btf_kernel.py) and the rigs' program listing, systemd for
# systemd-analyze and systemd-journald (tests/service). One line: vm/provision.sh
# reads the list from it, so the VM image has them too.
PKGS="bpftool clang llvm e2fsprogs xfsprogs btrfs-progs util-linux mount kmod tmux procps inotify-tools python3-fusepy systemd"
# Host side of the stock-kernel VM test (tests/vm); the VM itself needs none of them.
# Prometheus and Alertmanager (promtool, the alert rules' end-to-end test) run on the host only too.
[ "${FSEV_VM_GUEST:-0}" = 1 ] || PKGS="$PKGS debootstrap qemu-system-x86 qemu-utils prometheus prometheus-alertmanager"
# shellcheck disable=SC2086  # one word per package
apt_install $PKGS

# 2. The test tools, into fsev's venv. ruff and mypy are pinned: a newer linter
# may find new things in an old tree (vermin: scripts/check-py39.sh). The VM guests run tests, not the linters
# (pinned mypy has no wheel for Debian 11's Python 3.9). (vm/build-image.sh reads
# the guest's wheel list from these lines, leaving out those naming FSEV_VM_GUEST.)
"$VENV/bin/python" -m pip install -q --disable-pip-version-check "pytest>=7" "hypothesis>=6"
[ "${FSEV_VM_GUEST:-0}" = 1 ] || "$VENV/bin/python" -m pip install -q --disable-pip-version-check "ruff==0.17.6" "mypy==2.4.1" "vermin==1.9.2"
say "ok: $("$VENV/bin/pytest" --version 2>&1 | head -n 1)"
