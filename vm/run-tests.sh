#!/usr/bin/env bash
# Runs fsev's real-kernel tests (vm/guest-selection.py: every `kprobe` test and
# the files vm/guest-tests lists) on the stock kernel of one Debian release:
# builds or reuses its image (vm/build-image.sh), copies this tree onto a fresh
# work disk, boots a throwaway qcow2 overlay of the image under qemu TCG, and
# brings the results back from the work disk.
#
#   vm/run-tests.sh [OUTDIR [GUEST]]    (root; GUEST as in vm/guests, default debian12)
#
# OUTDIR (default $FSEV_VM_CACHE/last-run, emptied first) receives console.log
# (the guest's serial console), timings, and results/: facts, uname-r,
# install.log, install.rc, pytest.log, pytest.rc, junit.xml, done.
#
# Exit status: 0 the guest ran to its end (the tests' own outcomes are in
# junit.xml); 77 the VM cannot run on this machine (OUTDIR/skip-reason says
# why); anything else is an error (OUTDIR/error says what).
#
# Environment: FSEV_VM_SELECTION (a file of node ids to run instead of
# vm/guest-selection.py's; tests/vm/conftest.py passes the list it expects),
# FSEV_VM_CACHE (default /var/cache/fsev-vm), FSEV_VM_TIMEOUT
# (seconds for the whole guest run, default 2400), FSEV_VM_PYTEST_ARGS (extra
# arguments for the guest's pytest), FSEV_VM_VERBOSE=1 (stream the console to
# stderr; the default when stderr is a terminal), FSEV_VM_KEEP=1 (keep the
# overlay and work disk), FSEV_VM_LOCKUP_S (stop a guest whose kernel reports
# a CPU stuck this long, default 240).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
export FSEV_VM_CACHE=${FSEV_VM_CACHE:-/var/cache/fsev-vm}
GUEST=${2:-debian12}
OUT=${1:-$FSEV_VM_CACHE/last-run-$GUEST}
LIMIT=${FSEV_VM_TIMEOUT:-2400}
T0=$(date +%s)
say() { printf 'fsev vm (%s): %s\n' "$GUEST" "$*" >&2; }

mkdir -p "$OUT"
# Only what an earlier run left: OUTDIR may hold other files (the host test's run.log).
rm -rf "$OUT/console.log" "$OUT/timings" "$OUT/results" "$OUT/skip-reason" "$OUT/error"
skip() { say "skipped: $*"; printf '%s\n' "$*" >"$OUT/skip-reason"; exit 77; }
fail() { say "error: $*"; printf '%s\n' "$*" >"$OUT/error"; exit 1; }

for tool in qemu-system-x86_64:qemu-system-x86 qemu-img:qemu-utils debugfs:e2fsprogs mkfs.ext4:e2fsprogs; do
  command -v "${tool%%:*}" >/dev/null || skip "${tool%%:*} is not installed (Debian package ${tool#*:})"
done

# 1. The image (cached). Exit 77 from the build passes through as a skip.
set +e
IMAGE=$(FSEV_VM_SKIP_FILE="$OUT/skip-reason" bash "$HERE/build-image.sh" "$GUEST" | tail -n 1)
rc=${PIPESTATUS[0]}
set -e
[ "$rc" = 77 ] && { say "skipped: $(cat "$OUT/skip-reason" 2>/dev/null)"; exit 77; }
[ "$rc" = 0 ] && [ -e "$IMAGE/ready" ] || fail "vm/build-image.sh failed (exit $rc)"
T_IMAGE=$(date +%s)

RUN=$(mktemp -d "$FSEV_VM_CACHE/run-$GUEST.XXXXXX")
QPID="" TPID=""
cleanup() {
  if [ -n "$QPID" ] && kill -0 "$QPID" 2>/dev/null; then
    kill -TERM "$QPID" 2>/dev/null; sleep 2
    kill -0 "$QPID" 2>/dev/null && kill -KILL "$QPID" 2>/dev/null
  fi
  [ -n "$TPID" ] && kill "$TPID" 2>/dev/null
  if [ "${FSEV_VM_KEEP:-0}" = 1 ]; then say "kept $RUN"; else rm -rf "$RUN"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# 2. The work disk: this tree as it is now (tracked and untracked files, not
# ignored ones), an empty results/, and what the guest should run.
mkdir -p "$RUN/work/src" "$RUN/work/results"
if git -C "$REPO" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  (cd "$REPO" && git ls-files -z -co --exclude-standard \
     | while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done \
     | tar --null -T - -cf -) | tar -xf - -C "$RUN/work/src"
else
  tar -C "$REPO" --exclude=.git --exclude=__pycache__ --exclude='*.egg-info' --exclude=build -cf - . \
    | tar -xf - -C "$RUN/work/src"
fi
# The tests to run: the host's list, else the same list made here.
if [ -n "${FSEV_VM_SELECTION:-}" ]; then
  cp "$FSEV_VM_SELECTION" "$RUN/work/selection"
else
  "${FSEV_VENV:-/opt/fsev/venv}/bin/python" "$HERE/guest-selection.py" >"$RUN/work/selection" \
    || fail "vm/guest-selection.py failed"
fi
[ -s "$RUN/work/selection" ] || fail "no test selected for the guest"
{
  printf 'FSEV_VM_PYTEST_TIMEOUT=%q\n' "$(( LIMIT > 300 ? LIMIT - 180 : LIMIT * 2 / 3 ))"
  printf 'FSEV_VM_PYTEST_ARGS=%q\n' "${FSEV_VM_PYTEST_ARGS:-}"
} >"$RUN/work/run.env"
truncate -s 2G "$RUN/work.img"
mkfs.ext4 -q -F -L fsev-work -d "$RUN/work" "$RUN/work.img"
qemu-img create -q -f qcow2 -F raw -b "$IMAGE/rootfs.img" "$RUN/root.qcow2"

# 3. Boot. TCG, not KVM: KVM hangs on the machines this runs on. No network:
# the guest needs none, and must not reach for one. One host thread runs both
# vCPUs (thread=single): with multi-threaded TCG a vCPU ran a stale int3 of
# the kernel's own text patching as fsev attached (an int3 Oops in
# syscall_exit_to_user_mode_prepare in the Debian 13 guest; a Debian 11 guest
# hung with both vCPUs in fsev tasks), once each in three runs.
say "booting $(cat "$IMAGE/kernel-release") under qemu TCG (limit $LIMIT s)"
T_BOOT=$(date +%s)
qemu-system-x86_64 -accel tcg,thread=single -m 2048 -smp "${FSEV_VM_SMP:-2}" -nographic -no-reboot -nic none \
  -kernel "$IMAGE/vmlinuz" -initrd "$IMAGE/initrd.img" \
  -append "console=ttyS0 root=/dev/vda rw init=/usr/local/sbin/fsev-vm-init panic=-1 quiet" \
  -drive "file=$RUN/root.qcow2,format=qcow2,if=virtio" \
  -drive "file=$RUN/work.img,format=raw,if=virtio" \
  </dev/null >"$OUT/console.log" 2>&1 &
QPID=$!
if [ "${FSEV_VM_VERBOSE:-}" = 1 ] || { [ -z "${FSEV_VM_VERBOSE:-}" ] && [ -t 2 ]; }; then
  tail -n +1 -F --pid="$QPID" "$OUT/console.log" >&2 2>/dev/null &
  TPID=$!
fi
# A guest whose kernel reports a CPU stuck for LOCKUP_S (the soft lockup
# watchdog repeats "stuck for Ns!" with a growing N while it lasts) will not
# recover: it is stopped then, not at LIMIT (once, a Debian 11 guest hung so
# and held `make test` for the whole 2400 s). Shorter lockups under emulation
# can pass, and are left to run.
LOCKUP_S=${FSEV_VM_LOCKUP_S:-240}
stuck_s() { grep -ao 'stuck for [0-9]*s' "$OUT/console.log" 2>/dev/null | tr -dc '0-9\n' | sort -n | tail -n 1; }
timed_out=0 locked_up=0 n=0
while kill -0 "$QPID" 2>/dev/null; do
  if [ $(( $(date +%s) - T_BOOT )) -ge "$LIMIT" ]; then
    timed_out=1
    say "guest still running after $LIMIT s: killing qemu (pid $QPID)"
  elif [ $(( ++n % 10 )) = 0 ] && [ "$(stuck_s)" -ge "$LOCKUP_S" ] 2>/dev/null; then
    locked_up=1
    say "guest kernel: a CPU stuck for $(stuck_s) s (soft lockup): killing qemu (pid $QPID)"
  fi
  if [ "$timed_out$locked_up" != 00 ]; then
    kill -TERM "$QPID" 2>/dev/null; sleep 3; kill -KILL "$QPID" 2>/dev/null || true
    break
  fi
  sleep 1
done
set +e; wait "$QPID"; qrc=$?; set -e
QPID=""
T_END=$(date +%s)

# 4. Results, read from the work disk image without mounting it.
debugfs -R "rdump /results $OUT" "$RUN/work.img" >/dev/null 2>&1 || true
printf 'image_s=%s\nboot_to_results_s=%s\ntotal_s=%s\n' \
  "$(( T_IMAGE - T0 ))" "$(( T_END - T_BOOT ))" "$(( T_END - T0 ))" >"$OUT/timings"
say "image $(( T_IMAGE - T0 )) s, guest $(( T_END - T_BOOT )) s, total $(( T_END - T0 )) s"
[ "$locked_up" = 0 ] || fail "guest kernel soft lockup: a CPU stuck for over $LOCKUP_S s (console: $OUT/console.log)"
[ "$timed_out" = 0 ] || fail "guest timed out after $LIMIT s (console: $OUT/console.log)"
[ -e "$OUT/results/done" ] || fail "guest stopped without results (qemu exit $qrc; console: $OUT/console.log)"
exit 0
