/* read_only.bpf.c: probe point read_only. A superblock turned read-only, or
 * back: one FSEV_TYPE_READ_ONLY record (value = the fsev_ro_bits after,
 * arg = before, cause_ns = ktime of the error handling that caused it): class
 * err after an ext4 error, class info for a remount (kprobe rung).
 *
 * Rungs (#if switches, set by fsev/points/read_only.py):
 *   FSEV_RO_RAW_TP    raw tracepoint ext4_error: the state before the error is
 *                     handled, compared at the erroring task's syscall exit
 *                     (ro_check_at_exit(), called by bpf/sys_exit.bpf.c)
 *   FSEV_RO_KPROBE    kprobe + kretprobe on ext4_handle_error (any context,
 *                     kernel threads too) and on reconfigure_super (remounts)
 * Which read-only flags this kernel's ext4 has, as bit numbers (each defined
 * only when the kernel's BTF has that enum value; ro_bits() reads those):
 *   OFF_ENUM_EXT4_FLAGS_EMERGENCY_RO  in ext4_sb_info.s_ext4_flags (6.12+)
 *   OFF_ENUM_EXT4_FLAGS_SHUTDOWN      in ext4_sb_info.s_ext4_flags (4.10+)
 *   OFF_ENUM_EXT4_MF_FS_ABORTED       in ext4_sb_info.s_mount_flags (up to 6.5)
 * Offsets: OFF_SUPER_BLOCK_S_DEV, OFF_SUPER_BLOCK_S_FLAGS; with an ext4 flag
 * above, OFF_SUPER_BLOCK_S_FS_INFO and OFF_EXT4_SB_INFO_S_EXT4_FLAGS /
 * OFF_EXT4_SB_INFO_S_MOUNT_FLAGS; kprobe rung, OFF_FS_CONTEXT_ROOT and
 * OFF_DENTRY_D_SB.
 * Maps: ro_watch (both rungs), ro_pending_until (raw), remount_watch (kprobe).
 */
#include "common.h"

#if FSEV_RO_RAW_TP || FSEV_RO_KPROBE
/* What ext4's errors=remount-ro sets after an error: SB_RDONLY (with
 * EXT4_MF_FS_ABORTED in s_mount_flags) up to 6.6; only EXT4_MF_FS_ABORTED in
 * stable kernels that took "ext4: don't set SB_RDONLY after filesystem errors"
 * (measured: Debian's 6.1.176); EXT4_FLAGS_SHUTDOWN in s_ext4_flags on 6.7-6.11;
 * EXT4_FLAGS_EMERGENCY_RO from 6.12 (shown as `emergency_ro` in /proc/mounts).
 * statfs sees only SB_RDONLY. Each flag the kernel's BTF has is read. */
static __always_inline u32 ro_bits(void *sb, int ext4)
{
	u64 sflags = 0;
	u32 bits = 0;
	READ_KERNEL(sflags, sb, OFF_SUPER_BLOCK_S_FLAGS);
	if (sflags & FSEV_SB_RDONLY)
		bits |= FSEV_RO_SB_RDONLY;
#if defined(OFF_ENUM_EXT4_FLAGS_EMERGENCY_RO) || defined(OFF_ENUM_EXT4_FLAGS_SHUTDOWN) || \
	defined(OFF_ENUM_EXT4_MF_FS_ABORTED)
	if (!ext4) /* s_fs_info is an ext4_sb_info only on ext4 */
		return bits;
	void *sbi = 0;
	READ_KERNEL(sbi, sb, OFF_SUPER_BLOCK_S_FS_INFO);
#endif
#ifdef OFF_ENUM_EXT4_MF_FS_ABORTED
	u64 mount_flags = 0;
	READ_KERNEL(mount_flags, sbi, OFF_EXT4_SB_INFO_S_MOUNT_FLAGS);
	if (mount_flags & (1ull << OFF_ENUM_EXT4_MF_FS_ABORTED))
		bits |= FSEV_RO_ABORTED;
#endif
#if defined(OFF_ENUM_EXT4_FLAGS_EMERGENCY_RO) || defined(OFF_ENUM_EXT4_FLAGS_SHUTDOWN)
	u64 ext4_flags = 0;
	READ_KERNEL(ext4_flags, sbi, OFF_EXT4_SB_INFO_S_EXT4_FLAGS);
#ifdef OFF_ENUM_EXT4_FLAGS_EMERGENCY_RO
	if (ext4_flags & (1ull << OFF_ENUM_EXT4_FLAGS_EMERGENCY_RO))
		bits |= FSEV_RO_EMERGENCY;
#endif
#ifdef OFF_ENUM_EXT4_FLAGS_SHUTDOWN
	if (ext4_flags & (1ull << OFF_ENUM_EXT4_FLAGS_SHUTDOWN))
		bits |= FSEV_RO_SHUTDOWN;
#endif
#endif
	return bits;
}

/* A superblock seen in an error, with its state then, until the erroring
 * task leaves the syscall (raw rung) or ext4_handle_error returns (kprobe). */
struct ro_watch {
	u64 sb;
	u64 ts; /* when the error was handled: names the error that caused it */
	u32 dev;
	u32 before;
};
BPF_TABLE("lru_hash", u32, struct ro_watch, ro_watch, 1024);

static __always_inline int ro_emit(struct ro_watch *w, u32 after, u32 call, u32 cls, u32 rung)
{
	struct fsev_record *r = new_record(FSEV_TYPE_READ_ONLY, cls, rung);
	if (!r)
		return 0;
	r->dev = w->dev;
	r->value = after;
	r->arg = w->before;
	r->call = call;
	r->cause_ns = w->ts;
	events.ringbuf_submit(r, 0);
	return 0;
}

/* Fill w with sb's state now, to compare with when the operation ends; 0
 * when the superblock is not watched. ext4: read ext4's own flags too. */
static __always_inline int ro_watch_begin(struct ro_watch *w, void *sb, int ext4)
{
	w->dev = sb_dev(sb);
	/* info (an admin remount) or err (after an error): which, only the end tells */
	if (!dev_watched(w->dev, FSEV_CLASS_BIT(FSEV_CLASS_INFO) | FSEV_CLASS_BIT(FSEV_CLASS_ERR)))
		return 0;
	w->sb = (u64)sb;
	w->ts = bpf_ktime_get_ns();
	w->before = ro_bits(sb, ext4);
	return 1;
}

/* The current task's error watch, if any: a read-only state its error
 * handling set becomes a record (raw rung at syscall exit, kprobe rung at
 * ext4_handle_error's return). */
static __always_inline void ro_error_watch_end(u32 rung)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct ro_watch *w = ro_watch.lookup(&tid);
	if (!w)
		return;
	u32 after = ro_bits((void *)w->sb, 1);
	if (after & ~w->before)
		ro_emit(w, after, FSEV_CALL_EXT4_ERROR, FSEV_CLASS_ERR, rung);
	ro_watch.delete(&tid);
}
#endif

#if FSEV_RO_RAW_TP
/* How long after an error sys_exit keeps looking for the task that raised it. */
#define RO_PENDING_NS 1000000000ull

/* Until when (ktime ns) sys_exit must look for a pending watch: a plain array
 * read on every syscall exit instead of a hash lookup. */
BPF_ARRAY(ro_pending_until, u64, 1);

/* ext4_error(struct super_block *sb, const char *function, unsigned int line):
 * fires before ext4_handle_error() applies errors=remount-ro. */
RAW_TRACEPOINT_PROBE(ext4_error)
{
	struct ro_watch w = {};
	if (!ro_watch_begin(&w, (void *)ctx->args[0], 1))
		return 0;
	if (w.before)
		return 0; /* read-only already: no transition to see */
	u32 tid = (u32)bpf_get_current_pid_tgid();
	ro_watch.update(&tid, &w);
	u32 zero = 0;
	u64 *until = ro_pending_until.lookup(&zero);
	if (until)
		*until = bpf_ktime_get_ns() + RO_PENDING_NS;
	return 0;
}

/* Called by the sys_exit program (bpf/sys_exit.bpf.c) on every syscall exit. */
static __always_inline void ro_check_at_exit(void)
{
	u32 zero = 0;
	u64 *until = ro_pending_until.lookup(&zero);
	if (!until || !*until)
		return;
	if (bpf_ktime_get_ns() > *until) {
		*until = 0; /* errors outside syscalls are left to fsev's mountinfo check */
		return;
	}
	ro_error_watch_end(FSEV_RUNG_RAW_TRACEPOINT);
}
#endif

#if FSEV_RO_KPROBE
/* static void ext4_handle_error(struct super_block *sb, ...): sb is the first
 * argument in every version (5.11+ added force_ro, error, ino, block, func,
 * line after it). Entry and return bracket the transition in any context,
 * kernel threads included. */
int kp_ext4_handle_error(struct pt_regs *ctx)
{
	struct ro_watch w = {};
	if (!ro_watch_begin(&w, (void *)PT_REGS_PARM1(ctx), 1))
		return 0;
	u32 tid = (u32)bpf_get_current_pid_tgid();
	ro_watch.update(&tid, &w);
	return 0;
}

int kretp_ext4_handle_error(struct pt_regs *ctx)
{
	ro_error_watch_end(FSEV_RUNG_KPROBE);
	return 0;
}

/* int reconfigure_super(struct fs_context *fc) (5.2+): every remount of a
 * superblock, whichever API asked for it (mount(2), fsconfig, sysrq). */
BPF_TABLE("lru_hash", u32, struct ro_watch, remount_watch, 1024);

int kp_reconfigure_super(struct pt_regs *ctx)
{
	void *fc = (void *)PT_REGS_PARM1(ctx);
	void *root = 0, *sb = 0;
	READ_KERNEL(root, fc, OFF_FS_CONTEXT_ROOT);
	READ_KERNEL(sb, root, OFF_DENTRY_D_SB);
	struct ro_watch w = {};
	if (!ro_watch_begin(&w, sb, 0)) /* any filesystem: its SB_RDONLY only */
		return 0;
	u32 tid = (u32)bpf_get_current_pid_tgid();
	remount_watch.update(&tid, &w);
	return 0;
}

int kretp_reconfigure_super(struct pt_regs *ctx)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct ro_watch *w = remount_watch.lookup(&tid);
	if (!w)
		return 0;
	u32 after = ro_bits((void *)w->sb, 0);
	if (PT_REGS_RC(ctx) == 0 && after != w->before)
		ro_emit(w, after, FSEV_CALL_RECONFIGURE_SUPER, FSEV_CLASS_INFO, FSEV_RUNG_KPROBE);
	remount_watch.delete(&tid);
	return 0;
}
#endif
