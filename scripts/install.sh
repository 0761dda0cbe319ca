#!/usr/bin/env bash
# Idempotent install of fsev and what it needs to run, as root, on Debian 12.
# Safe to run again: each step checks before it acts. What only the tests need
# (qemu, debootstrap, clang, pytest, ...) is scripts/install-test-deps.sh's, run
# by `make test`.
set -euo pipefail
VENV=${FSEV_VENV:-/opt/fsev/venv}
HERE=$(cd "$(dirname "$0")/.." && pwd)
say() { printf 'fsev install: %s\n' "$*"; }
. "$(dirname "$0")/apt-install.sh"

[ "$(id -u)" = 0 ] || { echo "fsev install: must run as root (try: sudo make install)" >&2; exit 2; }

# 1. Debian packages. bcc is the system package python3-bpfcc, never a pip dependency.
ARCH=$(dpkg --print-architecture)
# (One line: vm/provision.sh reads the list from it.)
PKGS="python3-bpfcc python3-venv python3-pip python3-prometheus-client"
# shellcheck disable=SC2086  # one word per package
apt_install $PKGS

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
# What fsev imports (pyproject's dependencies), and the build backend the
# install of fsev below uses (--no-build-isolation): Debian 11's setuptools (52)
# cannot read pyproject's [project] table, and from Python 3.12 on a venv has
# no setuptools at all unless python3-setuptools is installed. One line:
# vm/build-image.sh reads the guest's wheel list from it (and from install-test-deps.sh's).
"$VENV/bin/python" -m pip install -q --disable-pip-version-check "rich>=13" "typer>=0.9" "setuptools>=61"
# The project itself: always reinstalled, so the installed copy is this tree
# (without setuptools' build/ of an earlier install, which would ship modules
# that have since moved or gone).
rm -rf "$HERE/build"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation --force-reinstall "$HERE" >/dev/null

# 5. fsev on root's PATH.
ln -sfn "$VENV/bin/fsev" /usr/local/bin/fsev

# 6. The service (docs/service.md): the unit where locally installed units go
# (an admin's /etc/systemd/system copy or drop-in still wins), the default
# configuration only if there is none (an edited one is kept). Enabling it is
# the admin's choice: systemctl enable --now fsev.
UNIT_DIR=/usr/local/lib/systemd/system
install -D -m 0644 "$HERE/packaging/fsev.service" "$UNIT_DIR/fsev.service"
if [ ! -e /etc/fsev/fsev.conf ]; then
  install -D -m 0644 "$HERE/packaging/fsev.conf" /etc/fsev/fsev.conf
  say "default configuration /etc/fsev/fsev.conf"
fi
# Only when systemd is PID 1 (sd_booted(3)'s test): in a container or a
# chroot there is no manager to tell.
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload || say "systemctl daemon-reload failed; run it before starting fsev"
fi
say "ok: $("$VENV/bin/fsev" --version 2>/dev/null || echo fsev)"
