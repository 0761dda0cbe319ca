/* fserror.bpf.c: probe point fserror. A filesystem reported an error through
 * fserror_report() (Linux 7.0+: ext4, XFS and iomap filesystems; what feeds
 * FAN_FS_ERROR there): one FSEV_TYPE_FSERROR record, class err.
 *
 * Rungs (#if switches, set by fsev/points/fserror.py):
 *   FSEV_FSERROR_KPROBE   kprobe on fserror_report (no tracepoint exists for
 *                         it). Its signature, in include/linux/fserror.h:
 *     void fserror_report(struct super_block *sb, struct inode *inode,
 *                         enum fserror_type type, loff_t pos, u64 len,
 *                         int error, gfp_t gfp);   error is negative
 * The record (the FSERROR column of bpf/fsev.h's table): dev = sb->s_dev,
 * ino = inode->i_ino (FSEV_F_INODE, when there is an inode), err = -error,
 * level = type + 1, value = pos, mntns = len, func = sb->s_type->name.
 * Offsets: OFF_SUPER_BLOCK_S_DEV, OFF_INODE_I_INO, OFF_SUPER_BLOCK_S_TYPE,
 * OFF_FILE_SYSTEM_TYPE_NAME.
 * Maps: none of its own (events, watched_devs: common.h).
 */
#include "common.h"

#if FSEV_FSERROR_KPROBE
int kp_fserror_report(struct pt_regs *ctx)
{
	void *sb = (void *)PT_REGS_PARM1(ctx);
	u32 dev = sb_dev(sb);
	if (!dev_watched(dev, FSEV_CLASS_BIT(FSEV_CLASS_ERR)))
		return 0;
	struct fsev_record *r = new_record(FSEV_TYPE_FSERROR, FSEV_CLASS_ERR, FSEV_RUNG_KPROBE);
	if (!r)
		return 0;
	void *inode = (void *)PT_REGS_PARM2(ctx);
	u32 fields = FSEV_F_ERRNO;
	r->dev = dev;
	if (inode) {
		READ_KERNEL(r->ino, inode, OFF_INODE_I_INO);
		fields |= FSEV_F_INODE;
	}
	r->level = (u32)PT_REGS_PARM3(ctx) + 1;
	r->value = (u64)PT_REGS_PARM4(ctx);
	r->mntns = (u64)PT_REGS_PARM5(ctx);
	s32 err = (s32)PT_REGS_PARM6(ctx);
	r->err = err < 0 ? -err : err;
	void *fstype = 0;
	const char *name = 0;
	READ_KERNEL(fstype, sb, OFF_SUPER_BLOCK_S_TYPE);
	if (fstype)
		READ_KERNEL(name, fstype, OFF_FILE_SYSTEM_TYPE_NAME);
	if (name)
		bpf_probe_read_kernel_str(r->func, sizeof(r->func), name);
	r->fields = fields;
	events.ringbuf_submit(r, 0);
	return 0;
}
#endif
