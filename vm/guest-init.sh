#!/bin/bash
# Runs as PID 1 inside the test VM (exec'd by the image's fsev-vm-init, from the
# work disk that vm/run-tests.sh made): finish booting, install fsev with the
# README's own command (`make install`, here as part of `make test-deps`: apt
# from the image's local repository, pip from its wheelhouse, the venv made by
# scripts/install.sh), run the real-kernel tests (vm/guest-selection.sh), leave
# the results on the work disk, power off. Everything also goes to the serial
# console, which the host keeps as console.log.
#
# PID 1 must never exit (that panics the kernel), so there is no `set -e`:
# each step records its status, and the end is always the same power-off.
set -u
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C.UTF-8 TERM=dumb
W=/mnt/work
S=$W/src
R=$W/results
mkdir -p "$R"
say() { printf 'fsev-vm: %s\n' "$*"; }
fact() { printf '%s=%s\n' "$1" "$2" >>"$R/facts"; }
uptime_s() { cut -d' ' -f1 /proc/uptime; }

# What the host asked for (vm/run-tests.sh writes it): the pytest time limit and
# any extra pytest arguments.
FSEV_VM_PYTEST_TIMEOUT=900
FSEV_VM_PYTEST_ARGS=""
[ -r "$W/run.env" ] && . "$W/run.env"

mnt() { mountpoint -q "$3" 2>/dev/null || { mkdir -p "$3" && mount -t "$1" "$2" "$3"; }; }
mnt devpts devpts /dev/pts
mnt tmpfs tmpfs /dev/shm
mnt tmpfs tmpfs /run
mnt tracefs nodev /sys/kernel/tracing
mnt debugfs nodev /sys/kernel/debug
mnt bpf bpf /sys/fs/bpf
mnt cgroup2 cgroup2 /sys/fs/cgroup
ln -sfn /proc/self/fd /dev/fd
hostname fsev-vm
# xfs and btrfs too: loaded as on a host that mounts them, so fsev doctor's
# plan (tests/vm/test_ladder.py) shows the rungs their points take there.
for m in loop fuse xfs btrfs; do modprobe -q "$m" 2>/dev/null; done
# udev: loop partitions and /dev/disk links for tests that mount by label.
if [ -x /lib/systemd/systemd-udevd ]; then
  /lib/systemd/systemd-udevd --daemon
  udevadm trigger --action=add >/dev/null 2>&1
  udevadm settle --timeout=60
fi
# Loopback up, with no iproute2 in the image.
/usr/bin/python3 - <<'EOF' || say "could not bring lo up"
import fcntl, socket, struct
s = socket.socket()
flags = struct.unpack("16sH", fcntl.ioctl(s, 0x8913, struct.pack("16sH", b"lo", 0))[:18])[1]
fcntl.ioctl(s, 0x8914, struct.pack("16sH", b"lo", flags | 1))
EOF

K=$(uname -r)
uname -r >"$R/uname-r"
: >"$R/facts"
fact kernel_release "$K"
fact kprobe_events "$([ -e /sys/kernel/tracing/kprobe_events ] && echo yes || echo no)"
fact config_kprobes "$(grep -s '^CONFIG_KPROBES=' "/boot/config-$K" | cut -d= -f2)"
fact btf "$([ -e /sys/kernel/btf/vmlinux ] && echo yes || echo no)"
fact headers "$([ -e "/lib/modules/$K/build/include/generated/autoconf.h" ] && echo yes || echo no)"
fact image "$(sed -n 's/^key=//p' /etc/fsev-vm-image 2>/dev/null)"
GUEST=$(sed -n 's/^guest=//p' /etc/fsev-vm-image 2>/dev/null)
fact guest "${GUEST:-?}"
fact debian "$(cat /etc/debian_version 2>/dev/null)"
fact system_python "$(/usr/bin/python3 -c 'import sys; print(sys.version.split()[0])' 2>/dev/null)"
fact booted_s "$(uptime_s)"
say "guest kernel $K, kprobe_events: $(sed -n 's/^kprobe_events=//p' "$R/facts"), booted in $(uptime_s) s"

# Install as a user does: the README's `make install`, run by `make test-deps`
# (which then adds what the tests need). The guest has no network and needs
# none: apt's only source is the image's local repository (vm/build-image.sh),
# pip's /etc/pip.conf names the wheelhouse. Nothing of fsev's is preinstalled.
# FSEV_VM_GUEST=1 tells the tests (and install-test-deps.sh) they are in a
# guest, FSEV_VM_RELEASE which one (tests/support/guests.py: the skips each
# release may have).
export FSEV_VM_GUEST=1 FSEV_VM_RELEASE="$GUEST"
fact python3_bpfcc "$(dpkg-query -W -f='${Version}' python3-bpfcc 2>/dev/null || echo absent)"
say "make test-deps (make install, then the test tools)"
make -C "$S" test-deps 2>&1 | tee "$R/install.log"
install_rc=${PIPESTATUS[0]}
fact python3_bpfcc_installed "$(dpkg-query -W -f='${Version}' python3-bpfcc 2>/dev/null || echo absent)"
echo "$install_rc" >"$R/install.rc"
fact installed_s "$(uptime_s)"

if [ "$install_rc" = 0 ]; then
  VENV=${FSEV_VENV:-/opt/fsev/venv}
  fact python "$("$VENV/bin/python" -c 'import sys; print(sys.version.split()[0])' 2>&1)"
  fact bcc "$("$VENV/bin/python" -c 'import bcc, importlib; print(getattr(bcc, "__version__", None) or importlib.import_module("bcc.version").__version__)' 2>&1 | tail -n 1)"
  fact fsev "$("$VENV/bin/fsev" --version 2>&1 | tail -n 1)"
  # The probe plan this kernel gets (which rung per probe point, and why):
  # the text for the host's log, the JSON for tests/vm/test_ladder.py.
  T_DOCTOR=$(uptime_s)
  COLUMNS=120 timeout 300 "$VENV/bin/fsev" doctor >"$R/doctor.txt" 2>&1
  echo "$?" >"$R/doctor.rc"
  timeout 300 "$VENV/bin/fsev" doctor --json >"$R/doctor.json" 2>"$R/doctor-json.err"
  fact doctor_s "$(awk -v a="$T_DOCTOR" -v b="$(uptime_s)" 'BEGIN { printf "%.0f", b - a }')"
  cat "$R/doctor.txt"
  # What to run: the node ids the host expects back (vm/guest-selection.py,
  # written by vm/run-tests.sh).
  mapfile -t SELECTION <"$W/selection"
  say "pytest: ${#SELECTION[@]} tests (limit ${FSEV_VM_PYTEST_TIMEOUT} s)"
  fact pytest_started_s "$(uptime_s)"
  # tests/vm is the host side of this run: it would boot a VM inside the VM.
  # shellcheck disable=SC2086
  (cd "$S" && timeout -k 10 "$FSEV_VM_PYTEST_TIMEOUT" "$VENV/bin/pytest" -p no:cacheprovider -v -rA \
      --ignore=tests/vm --junitxml="$R/junit.xml" $FSEV_VM_PYTEST_ARGS "${SELECTION[@]}") \
      2>&1 | tee "$R/pytest.log"
  echo "${PIPESTATUS[0]}" >"$R/pytest.rc"
else
  say "make install failed ($install_rc): no tests run"
fi
fact done_s "$(uptime_s)"
echo ok >"$R/done"
say "done in $(uptime_s) s; powering off"

sync
umount "$W" 2>/dev/null || { sync; mount -o remount,ro "$W"; }
echo o >/proc/sysrq-trigger
sleep 60
