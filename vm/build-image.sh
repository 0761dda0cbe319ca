#!/usr/bin/env bash
# Builds, or finds in its cache, the image of one Debian release that
# vm/run-tests.sh boots under qemu: a stock distribution kernel (Debian's cloud
# flavour, which has kprobes and fentry) with its matching headers, the test
# material, and, for the guest to install fsev itself with no network the way
# the README says (`make install`): the .debs scripts/install.sh installs (bcc,
# venv, pip, ...) in a local apt repository that is the image's only apt
# source, and the PyPI wheels install.sh and install-test-deps.sh want in a
# wheelhouse that /etc/pip.conf points pip at. Nothing of fsev's own install
# (packages, venv) is made here: the guest's `make install` does all of it.
#
#   vm/build-image.sh [GUEST]    prints the image directory on its last line
#
# GUEST: debian11 (bullseye, 5.10), debian12 (bookworm, 6.1; the default) or
# debian13 (trixie, 6.12); vm/guests lists them.
#
# The image directory holds rootfs.img (raw ext4, never written to: runs boot
# a qcow2 overlay of it), vmlinuz, initrd.img and kernel-release. It is keyed by
# a hash of this script, vm/provision.sh, the package list and the wheel specs,
# so a change to any of them builds a new one; older ones of the same guest are
# removed (each guest keeps its own: image-<guest>-<hash>).
#
# Exit 77 (and the reason on stderr and in $FSEV_VM_SKIP_FILE, if set) when the
# image cannot be built on this machine: not root, tools missing, or no network
# to the Debian archive or to PyPI. Any other failure is a real error.
#
# Environment: FSEV_VM_CACHE (default /var/cache/fsev-vm), FSEV_VM_SUITE
# (default bookworm), FSEV_VM_MIRROR (default: the host's apt mirror).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
CACHE=${FSEV_VM_CACHE:-/var/cache/fsev-vm}
GUEST=${1:-debian12}
SUITE=$(awk -v g="$GUEST" '$1 == g { print $2 }' "$HERE/guests")
[ -n "$SUITE" ] || { echo "fsev vm image: unknown guest $GUEST (vm/guests lists them)" >&2; exit 2; }
SUITE=${FSEV_VM_SUITE:-$SUITE}
IMAGE_SIZE=4G
WHEELS_IN_GUEST=/opt/fsev-wheels
T0=$(date +%s)
say() { printf 'fsev vm image (%s): %s\n' "$GUEST" "$*" >&2; }
skip() {
  say "cannot build the image here: $*"
  [ -n "${FSEV_VM_SKIP_FILE:-}" ] && printf '%s\n' "$*" >"$FSEV_VM_SKIP_FILE"
  exit 77
}

[ "$(id -u)" = 0 ] || skip "debootstrap needs root"
for tool in debootstrap mkfs.ext4 chroot sha256sum flock; do
  command -v "$tool" >/dev/null || skip "$tool is not installed (Debian packages: debootstrap qemu-system-x86 qemu-utils)"
done

PKGS=$(bash "$HERE/provision.sh" --packages image)
USER_PKGS=$(bash "$HERE/provision.sh" --packages user)

# The PyPI packages: what install.sh and install-test-deps.sh pip-install
# (their quoted requirement specifiers: the guest runs the tests, so it needs
# both; not the linters, which only the build machines run: lines that name
# FSEV_VM_GUEST; this list if they have none), and, in the wheelhouse only, the
# build backend, in case a pip install ever builds in isolation.
install_specs() {
  local f specs=""
  for f in "$REPO/scripts/install.sh" "$REPO/scripts/install-test-deps.sh"; do
    [ -r "$f" ] || continue
    specs="$specs $(grep -E 'pip install' "$f" | grep -v -e '--no-deps' -e FSEV_VM_GUEST \
              | grep -oE '"[A-Za-z][A-Za-z0-9._-]*[^"$]*"' | tr -d '"' | tr '\n' ' ')" || true
  done
  specs=$(echo $specs)
  echo "${specs:-rich>=13 typer>=0.9 pytest>=7 hypothesis>=6}"
}
SPECS=$(install_specs)
# pip download evaluates requirement markers (python_version < "3.11") for the
# host's Python, not --python-version's: what older guests' Pythons need on top
# (pytest's and hypothesis' backports) is named here.
WHEEL_SPECS="$SPECS setuptools>=61 wheel exceptiongroup>=1 tomli>=1 typing_extensions>=4"

KEY=$( { cat "$HERE/build-image.sh" "$HERE/provision.sh"; echo "$SUITE|$PKGS|$USER_PKGS|$SPECS"; } | sha256sum | cut -c1-16)
OUT=$CACHE/image-$GUEST-$KEY
if [ -e "$OUT/ready" ]; then
  say "cached: $OUT ($(cat "$OUT/kernel-release"))"
  echo "$OUT"
  exit 0
fi

mkdir -p "$CACHE"
# One lock per guest: the three images may build at the same time.
exec 9>"$CACHE/.lock-$GUEST"
flock -w 1800 9 || { say "another build holds $CACHE/.lock-$GUEST"; exit 1; }
if [ -e "$OUT/ready" ]; then echo "$OUT"; exit 0; fi   # built while we waited

# The host's own apt mirror (it may be a local proxy), else debootstrap's default.
mirror() {
  if [ -n "${FSEV_VM_MIRROR:-}" ]; then echo "$FSEV_VM_MIRROR"; return; fi
  local m
  m=$(awk -v s="$SUITE" '
        /^URIs:/ { uri = $2 }
        /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == s && uri != "") { print uri; exit } }
        /^deb / && $3 == s { print $2; exit }' \
      /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null | head -n 1) || true
  [ -n "$m" ] || m=$(sed -n 's/^DEF_MIRROR="\(.*\)"/\1/p' "$(command -v debootstrap)")
  echo "$m"
}
MIRROR=$(mirror)
/usr/bin/python3 - "$MIRROR/dists/$SUITE/Release" <<'EOF' || skip "no network to the Debian archive ($SUITE Release file unreachable)"
import sys, urllib.request
urllib.request.urlopen(sys.argv[1], timeout=20).read(1)
EOF

# Removes a build directory; first the chroot's mounts, and never rm -rf across
# a mount point, which would reach into the host.
remove_build() {
  local dir=$1 m
  for m in "$dir/root/proc" "$dir/root/sys"; do mountpoint -q "$m" 2>/dev/null && umount "$m"; done
  if findmnt -rn -o TARGET | grep -q "^$dir/"; then
    say "mounts left under $dir; not removing it"; return 0
  fi
  rm -rf "$dir"
}
# A build killed outright (SIGKILL, power loss) leaves its directory: we hold
# the lock, so any other build-* here is such a leftover.
for stale in "$CACHE"/build-"$GUEST"-*; do [ -d "$stale" ] && remove_build "$stale"; done

WORK=$CACHE/build-$GUEST-$KEY.$$
ROOT=$WORK/root
trap 'remove_build "$WORK"' EXIT
DEBS=$CACHE/debs-$SUITE
mkdir -p "$WORK/out" "$DEBS"

say "debootstrap $SUITE (minbase) with: $PKGS"
if ! debootstrap --variant=minbase --cache-dir="$DEBS" --include="${PKGS// /,}" \
      "$SUITE" "$ROOT" "$MIRROR" >"$WORK/debootstrap.log" 2>&1; then
  tail -n 20 "$WORK/debootstrap.log" >&2
  if grep -qE "Couldn't download|Failed getting release|Temporary failure resolving|Could not resolve" "$WORK/debootstrap.log"; then
    skip "debootstrap could not download from the Debian archive"
  fi
  say "debootstrap failed"; exit 1
fi
say "debootstrap done after $(( $(date +%s) - T0 )) s"

# Anything debootstrap's resolver left out (it skips some alternatives) comes in
# through the same script the Vagrant box uses.
mkdir -p "$ROOT/tmp/fsev/vm" "$ROOT/tmp/fsev/scripts"
cp "$HERE/provision.sh" "$ROOT/tmp/fsev/vm/"
for f in install.sh install-test-deps.sh; do
  [ -r "$REPO/scripts/$f" ] && cp "$REPO/scripts/$f" "$ROOT/tmp/fsev/scripts/"
done
mount -t proc proc "$ROOT/proc"
mount -t sysfs sysfs "$ROOT/sys"
FSEV_PROVISION_IMAGE=1 chroot "$ROOT" /bin/bash /tmp/fsev/vm/provision.sh >&2

# The local apt repository: the .debs `apt-get install` of install.sh's
# packages would fetch on this image (dependencies included, recommends not:
# the image says APT::Install-Recommends "false", as minimal and container
# images do), indexed, and made the image's only apt source, so that in the
# guest install.sh's own `apt-get update && apt-get install` runs offline.
say "local apt repository for: $USER_PKGS"
REPO_IN_GUEST=/opt/fsev-apt
# shellcheck disable=SC2086
chroot "$ROOT" /bin/sh -ec "
  printf 'APT::Install-Recommends \"false\";\n' >/etc/apt/apt.conf.d/90fsev-vm-no-recommends
  apt-get update -qq
  rm -f /var/cache/apt/archives/*.deb
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --download-only $USER_PKGS >/dev/null
  mkdir -p $REPO_IN_GUEST
  mv /var/cache/apt/archives/*.deb $REPO_IN_GUEST/
  cd $REPO_IN_GUEST
  apt-ftparchive packages . >Packages
  apt-ftparchive release . >Release
  rm -f /etc/apt/sources.list.d/*
  echo 'deb [trusted=yes] file:$REPO_IN_GUEST ./' >/etc/apt/sources.list
  rm -rf /var/lib/apt/lists/*
  apt-get update -qq
  apt-get install -s -qq $USER_PKGS >/dev/null" >&2
say "local apt repository: $(ls "$ROOT$REPO_IN_GUEST"/*.deb | wc -l) .debs"
umount "$ROOT/proc" "$ROOT/sys"
rm -rf "$ROOT/tmp/fsev"

# Wheels for the guest's Python (pure-Python packages, so the host's pip
# fetches them; --python-version pins the guest's, whatever the host runs).
# From PyPI, without the host's pip configuration (FSEV_VM_PIP_CONFIG names one
# to use): a host's local indexes hold wheels for its own Python, and for
# another Python pip backtracks through them for as long as an hour (measured:
# Python 3.9 wheels, 2 s from PyPI alone).
GUEST_PY=$(chroot "$ROOT" /usr/bin/python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
PIP=/usr/bin/python3
"$PIP" -m pip --version >/dev/null 2>&1 || PIP=python3
say "wheels for Python $GUEST_PY: $WHEEL_SPECS"
# shellcheck disable=SC2086
if ! PIP_CONFIG_FILE=${FSEV_VM_PIP_CONFIG:-/dev/null} "$PIP" -m pip download -q --disable-pip-version-check --only-binary=:all: \
      --python-version "$GUEST_PY" --implementation cp --platform manylinux2014_x86_64 --platform any \
      -d "$ROOT$WHEELS_IN_GUEST" $WHEEL_SPECS >"$WORK/pip.log" 2>&1; then
  tail -n 5 "$WORK/pip.log" >&2
  if grep -qE "NewConnectionError|Max retries|Temporary failure in name resolution|Network is unreachable|ConnectTimeout|ProxyError" "$WORK/pip.log"; then
    skip "no network to PyPI for the guest's wheels"
  fi
  say "pip download failed"; exit 1
fi

# pip in the guest (any pip, the venv's included) takes its packages from the
# wheelhouse: the guest has no network, and install.sh's pip commands run as written.
printf '[global]\nno-index = true\nfind-links = %s\ndisable-pip-version-check = true\n' \
  "$WHEELS_IN_GUEST" >"$ROOT/etc/pip.conf"

# PID 1 of the guest: mount the basics and the work disk, then hand over to the
# project's own vm/guest-init.sh from that disk, so changing what the guest
# does never needs a new image. If anything is missing it powers off.
cat >"$ROOT/usr/local/sbin/fsev-vm-init" <<'EOF'
#!/bin/sh
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mountpoint -q /proc || mount -t proc proc /proc
mountpoint -q /sys || mount -t sysfs sysfs /sys
mountpoint -q /dev || mount -t devtmpfs devtmpfs /dev
mkdir -p /mnt/work
if mount -t ext4 /dev/vdb /mnt/work && [ -r /mnt/work/src/vm/guest-init.sh ]; then
  exec /bin/bash /mnt/work/src/vm/guest-init.sh
fi
echo "fsev-vm-init: no work disk with src/vm/guest-init.sh on /dev/vdb" >&2
echo o >/proc/sysrq-trigger
sleep 60
EOF
chmod 755 "$ROOT/usr/local/sbin/fsev-vm-init"
echo fsev-vm >"$ROOT/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tfsev-vm\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$ROOT/etc/hosts"
printf '/dev/vda\t/\text4\trw\t0\t1\n' >"$ROOT/etc/fstab"
: >"$ROOT/etc/resolv.conf"            # the guest has no network
rm -f "$ROOT"/var/cache/apt/archives/*.deb
printf 'key=%s\nguest=%s\nsuite=%s\nbuilt=%s\n' "$KEY" "$GUEST" "$SUITE" "$(date -u +%FT%TZ)" >"$ROOT/etc/fsev-vm-image"

KVER=$(ls "$ROOT/boot" | sed -n 's/^vmlinuz-//p' | sort -V | tail -n 1)
[ -n "$KVER" ] && [ -e "$ROOT/boot/initrd.img-$KVER" ] || { say "no kernel or initrd in $ROOT/boot"; exit 1; }
# (build is an absolute link: resolve it inside the root, not on the host)
chroot "$ROOT" test -e "/lib/modules/$KVER/build/include/generated/autoconf.h" || { say "no headers for $KVER"; exit 1; }
cp "$ROOT/boot/vmlinuz-$KVER" "$WORK/out/vmlinuz"
cp "$ROOT/boot/initrd.img-$KVER" "$WORK/out/initrd.img"
echo "$KVER" >"$WORK/out/kernel-release"
echo "$PKGS" >"$WORK/out/packages"

say "mkfs.ext4 -d ($IMAGE_SIZE, sparse)"
truncate -s "$IMAGE_SIZE" "$WORK/out/rootfs.img"
mkfs.ext4 -q -F -L fsev-root -d "$ROOT" "$WORK/out/rootfs.img" >&2
touch "$WORK/out/ready"

rm -rf "$OUT"
mv "$WORK/out" "$OUT"
# Older images of this guest, and those of the one-guest layout (image-<hash>).
for old in "$CACHE"/image-"$GUEST"-* "$CACHE"/image-????????????????; do
  [ -d "$old" ] && [ "$old" != "$OUT" ] && rm -rf "$old"
done
say "built $OUT (kernel $KVER) in $(( $(date +%s) - T0 )) s"
echo "$OUT"
