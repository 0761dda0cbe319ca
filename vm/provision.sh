#!/usr/bin/env bash
# The Debian packages a machine needs to run fsev's whole test suite on a stock
# distribution kernel, one list for both places that make such a machine:
#   - the Vagrantfile runs this script on a Debian 12 box (kernel already there);
#   - vm/build-image.sh hands `--packages image` to debootstrap, then runs this
#     script in the chroot to catch anything debootstrap's resolver left out.
#
#   provision.sh                   install what is missing (root; needs the archive)
#   provision.sh --packages [image]  print the list, one line, space-separated
#   provision.sh --packages user   only what scripts/install.sh installs
#
# The image (FSEV_PROVISION_IMAGE=1, `--packages image`) leaves out what
# scripts/install.sh installs (its PKGS= line): the guest installs those itself,
# from a local apt repository in the image, as a user's `make install` would.
#
# The list is this file's own plus the PKGS="..." lines of scripts/install.sh
# (what fsev needs to run) and scripts/install-test-deps.sh (what the tests
# need: the machine runs them), so that those scripts, run later inside the
# machine, find every package they check for already installed and never need
# the network for apt.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
# Vagrant uploads this script alone to /tmp; the Vagrantfile says where the tree is.
SRC=${FSEV_SRC:-$(cd "$HERE/.." && pwd)}

# What the guest needs beyond install.sh: make (the suite is run as
# `make install` / `make test`), udev (loop partitions, by-label links) and the
# test material named in shared/ENVIRONMENT.md.
BASE="make udev kmod procps e2fsprogs mount util-linux python3 ca-certificates"
# Only the image boots a kernel chosen here: Debian's cloud flavour, with the
# headers that match it, so bcc finds /lib/modules/$(uname -r)/build for real
# (no stand-in). A Vagrant box keeps its own kernel; install.sh fetches its
# matching headers.
# apt-utils: apt-ftparchive, to index the image's local apt repository.
IMAGE_ONLY="linux-image-cloud-amd64 linux-headers-cloud-amd64 initramfs-tools apt-utils"

pkgs_line() { sed -n 's/^PKGS="\([^"$]*\)".*/\1/p' "$1" | head -n 1; }
user_packages() { [ -r "$SRC/scripts/install.sh" ] && pkgs_line "$SRC/scripts/install.sh"; }

install_sh_packages() {
  local f
  for f in "$SRC/scripts/install.sh" "$SRC/scripts/install-test-deps.sh"; do
    [ -n "${1:-}" ] && [ "$f" = "$SRC/scripts/install.sh" ] && continue
    [ -r "$f" ] || continue
    pkgs_line "$f"
  done
}

packages() {
  local p list=""
  for p in $BASE $(install_sh_packages ${1:-}) ${1:+$IMAGE_ONLY}; do
    case " $list " in *" $p "*) ;; *) list="$list $p" ;; esac
  done
  echo "${list# }"
}

case "${1:-}" in
  --packages)
    case "${2:-}" in
      image) packages image ;;
      user) echo $(user_packages) ;;
      *) packages ;;
    esac
    exit 0 ;;
  "") ;;
  *) echo "usage: $0 [--packages [image]]" >&2; exit 2 ;;
esac

[ "$(id -u)" = 0 ] || { echo "provision: must run as root" >&2; exit 2; }
want=$(packages ${FSEV_PROVISION_IMAGE:+image})
missing=""
for p in $want; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
# A Vagrant box ships the kernel of the day it was built, whose headers the
# archive may no longer carry: move it to the archive's current kernel and its
# headers (the Vagrantfile reboots into it after this script).
if [ "${FSEV_PROVISION_KERNEL:-0}" = 1 ]; then
  ARCH=$(dpkg --print-architecture)
  missing="$missing linux-image-$ARCH linux-headers-$ARCH"
fi
if [ -n "$missing" ]; then
  echo "provision: installing:$missing"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
echo "provision: ok ($(echo "$want" | wc -w) packages present)"
