#!/usr/bin/env bash
# Idempotent install of fsev and everything it needs, as root, on Debian 12.
# Safe to run again: each step checks before it acts.
set -euo pipefail
VENV=${FSEV_VENV:-/opt/fsev/venv}
HERE=$(cd "$(dirname "$0")/.." && pwd)
say() { printf 'fsev install: %s\n' "$*"; }

[ "$(id -u)" = 0 ] || { echo "fsev install: must run as root (try: sudo make install)" >&2; exit 2; }

# 1. Debian packages. bcc is the system package python3-bpfcc, never a pip dependency.
ARCH=$(dpkg --print-architecture)
PKGS="python3-bpfcc python3-venv python3-pip bpftool clang llvm e2fsprogs util-linux mount kmod tmux procps inotify-tools python3-fusepy"
# Host side of the stock-kernel VM test (tests/vm); the VM itself needs none of them.
[ "${FSEV_VM_GUEST:-0}" = 1 ] || PKGS="$PKGS debootstrap qemu-system-x86 qemu-utils"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  say "installing Debian packages:$missing"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
fi

# 2. Kernel headers for bcc. Matching ones if the distribution has them,
# otherwise Debian's newest as a stand-in. A stand-in is safe only because no
# fsev BPF program takes a struct layout from headers: offsets come from BTF.
K=$(uname -r)
if [ ! -e "/lib/modules/$K/build/include/linux/kconfig.h" ] && [ ! -e "/lib/modules/$K/build/include/generated/autoconf.h" ]; then
  if apt-cache show "linux-headers-$K" >/dev/null 2>&1; then
    say "installing matching headers linux-headers-$K"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "linux-headers-$K" >/dev/null
  else
    if ! ls -d /usr/src/linux-headers-*-"$ARCH" >/dev/null 2>&1; then
      say "no headers for $K in the distribution: installing linux-headers-$ARCH as a stand-in"
      apt-cache show "linux-headers-$ARCH" >/dev/null 2>&1 || apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "linux-headers-$ARCH" >/dev/null
    fi
    H=$(ls -d /usr/src/linux-headers-*-"$ARCH" | sort -V | tail -n 1)
    C=${H%-"$ARCH"}-common
    mkdir -p "/lib/modules/$K"
    ln -sfn "$H" "/lib/modules/$K/build"
    [ -d "$C" ] && ln -sfn "$C" "/lib/modules/$K/source"
    say "headers stand-in: /lib/modules/$K/build -> $H"
  fi
fi

# 3. tracefs: not mounted on a fresh boot of the CI kernel.
if [ ! -e /sys/kernel/tracing/events ]; then
  mount -t tracefs nodev /sys/kernel/tracing
  say "mounted tracefs on /sys/kernel/tracing"
fi

# 4. A venv that sees the system bcc.
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import bcc' 2>/dev/null; then
  say "creating venv $VENV"
  rm -rf "$VENV"
  mkdir -p "$(dirname "$VENV")"
  /usr/bin/python3 -m venv --system-site-packages "$VENV"
fi
# ruff and mypy are pinned: a newer linter may find new things in an old tree.
# (One line: vm/build-image.sh reads the guest's wheel list from it.)
"$VENV/bin/python" -m pip install -q --disable-pip-version-check "rich>=13" "typer>=0.9" "pytest>=7" "hypothesis>=6" "ruff==0.17.6" "mypy==2.4.1"
# The project itself: always reinstalled, so the installed copy is this tree
# (without setuptools' build/ of an earlier install, which would ship modules
# that have since moved or gone).
rm -rf "$HERE/build"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation --force-reinstall "$HERE" >/dev/null

# 5. fsev on root's PATH.
ln -sfn "$VENV/bin/fsev" /usr/local/bin/fsev
say "ok: $("$VENV/bin/fsev" --version 2>/dev/null || echo fsev)"
