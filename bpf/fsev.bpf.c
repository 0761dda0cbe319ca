/* fsev.bpf.c: the kernel side of fsev, one program per probe point, all
 * sending fsev_record (fsev.h) through one ring buffer (common.h).
 *
 * bcc compiles what fsev/probes/program.py source() makes of this file: a preamble of
 * load-time #defines (the rung switches, OFF_* offsets from the running
 * kernel's BTF, argument positions), then this file with every #include "..."
 * of a file in bpf/ expanded in place, once per file. `fsev trace
 * --print-bpf` prints that text. Each point's file says what it traces and
 * which of those #defines it reads; its body is inside its own #if switch, so
 * a plan that does not use a point compiles nothing of it.
 *
 * Order: common.h first (every point uses it); sys_exit.bpf.c after the two
 * points whose functions its one program calls.
 */
#include "common.h"

#include "ext4_error.bpf.c"
#include "mount_drop.bpf.c"
#include "thr_tmpfs.bpf.c"
#include "thr_ext4.bpf.c"
#include "read_only.bpf.c"
#include "enospc.bpf.c"
#include "sys_exit.bpf.c"
#include "block_io_error.bpf.c"
#include "wb_error.bpf.c"
#include "mount_topology.bpf.c"
#include "kernel_log.bpf.c"
#include "btrfs_error.bpf.c"
#include "btrfs_dev_stats.bpf.c"
#include "xfs_error.bpf.c"
#include "xfs_shutdown.bpf.c"
#include "fserror.bpf.c"
