/* xfs_shutdown.bpf.c: probe point xfs_shutdown. An XFS filesystem was forced
 * to shut down (every later read and write fails with EIO; the superblock
 * stays SB_RDONLY-free, so mountinfo does not show it): one
 * FSEV_TYPE_SHUTDOWN record, class err, value = the reason flags
 * (SHUTDOWN_*), arg = the tag, func = the source file, line.
 *
 * Rungs (#if switches, set by fsev/points/xfs_shutdown.py):
 *   FSEV_XFS_SHUTDOWN_RAW_TP  raw tracepoint xfs_force_shutdown(mp, ptag, flags,
 *                             fname, line_num): once, when the filesystem
 *                             goes down (later calls return before it)
 *   FSEV_XFS_SHUTDOWN_KPROBE  kprobe on xfs_do_force_shutdown(mp, flags, fname,
 *                             lnnum): every call, also on a filesystem already
 *                             down (user space reports the first)
 * Offsets: OFF_XFS_MOUNT_M_SUPER, OFF_SUPER_BLOCK_S_DEV.
 * Maps: none of its own (events, watched_devs: common.h).
 */
#include "common.h"

#if FSEV_XFS_SHUTDOWN_RAW_TP || FSEV_XFS_SHUTDOWN_KPROBE
static __always_inline int emit_xfs_shutdown(void *mp, u32 tag, u32 flags, const char *fname, u32 line,
					     u32 rung)
{
	void *sb = 0;
	if (mp)
		READ_KERNEL(sb, mp, OFF_XFS_MOUNT_M_SUPER);
	u32 dev = sb_dev(sb);
	if (!dev_watched(dev, FSEV_CLASS_BIT(FSEV_CLASS_ERR)))
		return 0;
	struct fsev_record *r = new_record(FSEV_TYPE_SHUTDOWN, FSEV_CLASS_ERR, rung);
	if (!r)
		return 0;
	r->dev = dev;
	r->value = flags;
	r->arg = tag;
	r->line = line;
	bpf_probe_read_kernel_str(r->func, sizeof(r->func), fname);
	r->fields = FSEV_F_LINE;
	events.ringbuf_submit(r, 0);
	return 0;
}
#endif

#if FSEV_XFS_SHUTDOWN_RAW_TP
RAW_TRACEPOINT_PROBE(xfs_force_shutdown)
{
	return emit_xfs_shutdown((void *)ctx->args[0], (u32)ctx->args[1], (u32)ctx->args[2],
				 (const char *)ctx->args[3], (u32)ctx->args[4], FSEV_RUNG_RAW_TRACEPOINT);
}
#endif

#if FSEV_XFS_SHUTDOWN_KPROBE
int kp_xfs_do_force_shutdown(struct pt_regs *ctx)
{
	return emit_xfs_shutdown((void *)PT_REGS_PARM1(ctx), 0, (u32)PT_REGS_PARM2(ctx),
				 (const char *)PT_REGS_PARM3(ctx), (u32)PT_REGS_PARM4(ctx), FSEV_RUNG_KPROBE);
}
#endif
