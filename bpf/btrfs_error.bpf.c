/* btrfs_error.bpf.c: probe point btrfs_error. btrfs handled a filesystem
 * error or aborted a transaction: one FSEV_TYPE_BTRFS_ERROR record, class
 * err, decoded as an fs_error (value 1: the first transaction abort since mount).
 *
 * Rungs (#if switches, set by fsev/points/btrfs_error.py):
 *   FSEV_BTRFS_ERROR_KPROBE  kprobes on (argument positions the same in 6.1
 *                            and 6.18; the table is in fsev/points/btrfs_error.py)
 *     __btrfs_handle_fs_error(fs_info, function, line, error, fmt, ...)
 *     __btrfs_abort_transaction(trans, function, line, error, first_hit)
 *   An abort calls __btrfs_handle_fs_error itself with its own function and
 *   line: kp___btrfs_abort_transaction sends the record and leaves the line in
 *   btrfs_abort_line for the thread, and the nested call sends none.
 * The other rung (kernel log lines, fsev/points/btrfs_error.py) has no C of
 * its own: bpf/kernel_log.bpf.c sends the lines.
 * Like btrfs, an EROFS on a filesystem already read-only is no error (it
 * prints nothing for it): __btrfs_handle_fs_error sends no record then.
 * Offsets: OFF_SUPER_BLOCK_S_DEV, OFF_SUPER_BLOCK_S_FLAGS, OFF_BTRFS_FS_INFO_SB,
 * OFF_BTRFS_TRANS_HANDLE_FS_INFO (btrfs is a module on Debian: from its BTF).
 * Maps: btrfs_abort_line (thread id -> line of the abort being handled).
 */
#include "common.h"

#if FSEV_BTRFS_ERROR_KPROBE
BPF_HASH(btrfs_abort_line, u32, u32, 1024);

static __always_inline void *btrfs_sb(void *fs_info)
{
	void *sb = 0;
	if (fs_info)
		READ_KERNEL(sb, fs_info, OFF_BTRFS_FS_INFO_SB);
	return sb;
}

static __always_inline int emit_btrfs_error(void *fs_info, const char *function, u32 line, s32 err,
					    u64 abort)
{
	u32 dev = sb_dev(btrfs_sb(fs_info));
	if (!dev_watched(dev, FSEV_CLASS_BIT(FSEV_CLASS_ERR)))
		return 0;
	struct fsev_record *r = new_record(FSEV_TYPE_BTRFS_ERROR, FSEV_CLASS_ERR, FSEV_RUNG_KPROBE);
	if (!r)
		return 0;
	r->dev = dev;
	r->line = line;
	r->err = err < 0 ? -err : err;
	r->value = abort;
	bpf_probe_read_kernel_str(r->func, sizeof(r->func), function);
	r->fields = FSEV_F_LINE | FSEV_F_FUNC | (r->err ? FSEV_F_ERRNO : 0);
	events.ringbuf_submit(r, 0);
	return 0;
}

int kp___btrfs_abort_transaction(struct pt_regs *ctx)
{
	void *trans = (void *)PT_REGS_PARM1(ctx);
	void *fs_info = 0;
	u32 line = (u32)PT_REGS_PARM3(ctx);
	u32 tid = (u32)bpf_get_current_pid_tgid();
	if (trans)
		READ_KERNEL(fs_info, trans, OFF_BTRFS_TRANS_HANDLE_FS_INFO);
	btrfs_abort_line.update(&tid, &line);
	/* first_hit: this abort put the filesystem in btrfs's aborted state (the
	 * first since mount, the one btrfs prints "Transaction aborted" for);
	 * later ones, e.g. cleanup_transaction's after a failed commit, are
	 * errors of their own place, as on the kernel log rung. */
	u64 first_hit = (u8)PT_REGS_PARM5(ctx) ? 1 : 0;
	return emit_btrfs_error(fs_info, (const char *)PT_REGS_PARM2(ctx), line, (s32)PT_REGS_PARM4(ctx), first_hit);
}

int kp___btrfs_handle_fs_error(struct pt_regs *ctx)
{
	u32 line = (u32)PT_REGS_PARM3(ctx);
	u32 tid = (u32)bpf_get_current_pid_tgid();
	u32 *aborting = btrfs_abort_line.lookup(&tid);
	if (aborting) {
		u32 was = *aborting;
		btrfs_abort_line.delete(&tid);
		if (was == line) /* the abort's own call: its record is sent */
			return 0;
	}
	void *fs_info = (void *)PT_REGS_PARM1(ctx);
	s32 err = (s32)PT_REGS_PARM4(ctx);
	if (err == -FSEV_EROFS) {
		void *sb = btrfs_sb(fs_info);
		u64 sflags = 0;
		if (sb)
			READ_KERNEL(sflags, sb, OFF_SUPER_BLOCK_S_FLAGS);
		if (sflags & FSEV_SB_RDONLY)
			return 0;
	}
	return emit_btrfs_error(fs_info, (const char *)PT_REGS_PARM2(ctx), line, err, 0);
}
#endif /* FSEV_BTRFS_ERROR_KPROBE */
