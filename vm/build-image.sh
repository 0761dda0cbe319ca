#!/usr/bin/env bash
# Builds, or finds in its cache, the Debian 12 image that vm/run-tests.sh boots
# under qemu: a stock distribution kernel (Debian's cloud flavour, which has
# kprobes and fentry) with its matching headers, bcc, and a wheelhouse of the
# PyPI packages install.sh wants, so the guest installs fsev with no network.
#
#   vm/build-image.sh            prints the image directory on its last line
#
# The image directory holds rootfs.img (raw ext4, never written to: runs boot
# a qcow2 overlay of it), vmlinuz, initrd.img and kernel-release. It is keyed by
# a hash of this script, vm/provision.sh, the package list and the wheel specs,
# so a change to any of them builds a new one; older ones are removed.
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
SUITE=${FSEV_VM_SUITE:-bookworm}
IMAGE_SIZE=4G
WHEELS_IN_GUEST=/opt/fsev-wheels
T0=$(date +%s)
say() { printf 'fsev vm image: %s\n' "$*" >&2; }
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

# The PyPI packages: what install.sh and install-test-deps.sh pip-install
# (their quoted requirement specifiers: the guest runs the tests, so it needs
# both; this list if they have none), and, in the wheelhouse only, the build
# backend, in case a pip install ever builds in isolation.
install_specs() {
  local f specs=""
  for f in "$REPO/scripts/install.sh" "$REPO/scripts/install-test-deps.sh"; do
    [ -r "$f" ] || continue
    specs="$specs $(grep -E 'pip install' "$f" | grep -v -e '--no-deps' \
              | grep -oE '"[A-Za-z][A-Za-z0-9._-]*[^"$]*"' | tr -d '"' | tr '\n' ' ')" || true
  done
  specs=$(echo $specs)
  echo "${specs:-rich>=13 typer>=0.9 pytest>=7 hypothesis>=6}"
}
SPECS=$(install_specs)
WHEEL_SPECS="$SPECS setuptools>=61 wheel"
VENV=/opt/fsev/venv      # the Makefile's $(PREFIX)/venv

KEY=$( { cat "$HERE/build-image.sh" "$HERE/provision.sh"; echo "$SUITE|$PKGS|$SPECS"; } | sha256sum | cut -c1-16)
OUT=$CACHE/image-$KEY
if [ -e "$OUT/ready" ]; then
  say "cached: $OUT ($(cat "$OUT/kernel-release"))"
  echo "$OUT"
  exit 0
fi

mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock -w 1800 9 || { say "another build holds $CACHE/.lock"; exit 1; }
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
for stale in "$CACHE"/build-*; do [ -d "$stale" ] && remove_build "$stale"; done

WORK=$CACHE/build-$KEY.$$
ROOT=$WORK/root
trap 'remove_build "$WORK"' EXIT
mkdir -p "$WORK/out" "$CACHE/debs"

say "debootstrap $SUITE (minbase) with: $PKGS"
if ! debootstrap --variant=minbase --cache-dir="$CACHE/debs" --include="${PKGS// /,}" \
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
umount "$ROOT/proc" "$ROOT/sys"
rm -rf "$ROOT/tmp/fsev"

# Wheels for the guest's Python (pure-Python packages, so the host's pip
# fetches them; --python-version pins the guest's, whatever the host runs).
GUEST_PY=$(chroot "$ROOT" /usr/bin/python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
PIP=/usr/bin/python3
"$PIP" -m pip --version >/dev/null 2>&1 || PIP=python3
say "wheels for Python $GUEST_PY: $WHEEL_SPECS"
# shellcheck disable=SC2086
if ! "$PIP" -m pip download -q --disable-pip-version-check --only-binary=:all: \
      --python-version "$GUEST_PY" --implementation cp --platform manylinux2014_x86_64 --platform any \
      -d "$ROOT$WHEELS_IN_GUEST" $WHEEL_SPECS >"$WORK/pip.log" 2>&1; then
  tail -n 5 "$WORK/pip.log" >&2
  if grep -qE "NewConnectionError|Max retries|Temporary failure in name resolution|Network is unreachable|ConnectTimeout|ProxyError" "$WORK/pip.log"; then
    skip "no network to PyPI for the guest's wheels"
  fi
  say "pip download failed"; exit 1
fi

# The venv install.sh makes, made here once with install.sh's own commands:
# under TCG, creating it and pip-installing into it take the guest minutes.
# install.sh in the guest keeps a venv that imports bcc, finds its
# requirements satisfied, and only (re)installs fsev itself.
mount -t proc proc "$ROOT/proc"
# shellcheck disable=SC2086
chroot "$ROOT" env PIP_NO_INDEX=1 PIP_FIND_LINKS="$WHEELS_IN_GUEST" /bin/sh -ec "
  /usr/bin/python3 -m venv --system-site-packages $VENV
  $VENV/bin/python -c 'import bcc'
  $VENV/bin/python -m pip install -q --disable-pip-version-check $(printf "'%s' " $SPECS)" >&2
umount "$ROOT/proc"

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
rm -rf "$ROOT"/var/lib/apt/lists/*_Packages "$ROOT"/var/lib/apt/lists/*_Release
printf 'key=%s\nsuite=%s\nbuilt=%s\n' "$KEY" "$SUITE" "$(date -u +%FT%TZ)" >"$ROOT/etc/fsev-vm-image"

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
for old in "$CACHE"/image-*; do
  [ "$old" = "$OUT" ] || rm -rf "$old"
done
say "built $OUT (kernel $KVER) in $(( $(date +%s) - T0 )) s"
echo "$OUT"
