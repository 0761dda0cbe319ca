/* ext4_error.bpf.c: probe point ext4_error. An ext4 error was raised (the
 * kernel logged "EXT4-fs error"): one FSEV_TYPE_FS_ERROR record, class err.
 *
 * Rungs (#if switches, set by fsev/points/ext4_error.py; 0 unless the plan
 * picked that rung and the user asked for class err):
 *   FSEV_EXT4_ERROR_TRACEPOINT  tracepoint ext4:ext4_error: dev, function, line
 *   FSEV_EXT4_ERROR_KPROBE      kprobes on the error entry points; adds errno,
 *                               inode and block where the function has them:
 *     ATTACH___EXT4_ERROR, ATTACH___EXT4_ERROR_INODE, ATTACH___EXT4_ERROR_FILE,
 *     ATTACH___EXT4_STD_ERROR   defined (1) for each function this kernel has
 *                               (the programs kp_<function>)
 *     ARG___EXT4_ERROR_ERRNO(ctx), ARG___EXT4_ERROR_BLOCK(ctx)
 *                               PT_REGS_PARMn(ctx) of __ext4_error's errno and
 *                               block: they moved in 5.10 and 5.11 (the
 *                               signature table is in fsev/points/ext4_error.py)
 * Offsets (kprobe rung): OFF_SUPER_BLOCK_S_DEV, OFF_INODE_I_SB,
 * OFF_INODE_I_INO, OFF_FILE_F_INODE.
 * Maps: none of its own (events, watched_devs: common.h).
 */
#include "common.h"

#if FSEV_EXT4_ERROR_TRACEPOINT
TRACEPOINT_PROBE(ext4, ext4_error)
{
	u32 dev = args->dev;
	if (!dev_watched(dev, FSEV_CLASS_BIT(FSEV_CLASS_ERR)))
		return 0;
	struct fsev_record *r = new_record(FSEV_TYPE_FS_ERROR, FSEV_CLASS_ERR, FSEV_RUNG_TRACEPOINT);
	if (!r)
		return 0;
	r->dev = dev;
	r->line = args->line;
	bpf_probe_read_kernel_str(r->func, sizeof(r->func), args->function);
	r->fields = FSEV_F_LINE | FSEV_F_FUNC;
	events.ringbuf_submit(r, 0);
	return 0;
}
#endif

#if FSEV_EXT4_ERROR_KPROBE
static __always_inline int emit_ext4_error(void *sb, const char *function, u32 line, s32 err,
					   u64 ino, u64 block, u32 fields)
{
	u32 dev = sb_dev(sb);
	if (!dev_watched(dev, FSEV_CLASS_BIT(FSEV_CLASS_ERR)))
		return 0;
	struct fsev_record *r = new_record(FSEV_TYPE_FS_ERROR, FSEV_CLASS_ERR, FSEV_RUNG_KPROBE);
	if (!r)
		return 0;
	r->dev = dev;
	r->line = line;
	r->err = err < 0 ? -err : err;
	r->ino = ino;
	r->block = block;
	bpf_probe_read_kernel_str(r->func, sizeof(r->func), function);
	/* ext4_error() passes error 0 and block 0 for "unknown": say so. */
	if (!r->err)
		fields &= ~FSEV_F_ERRNO;
	if (!block)
		fields &= ~FSEV_F_BLOCK;
	r->fields = FSEV_F_LINE | FSEV_F_FUNC | fields;
	events.ringbuf_submit(r, 0);
	return 0;
}

/* Argument positions follow the signature table in fsev/points/ext4_error.py. */
#ifdef ATTACH___EXT4_ERROR
int kp___ext4_error(struct pt_regs *ctx)
{
	return emit_ext4_error((void *)PT_REGS_PARM1(ctx), (const char *)PT_REGS_PARM2(ctx),
			       (u32)PT_REGS_PARM3(ctx), (s32)ARG___EXT4_ERROR_ERRNO(ctx), 0,
			       (u64)ARG___EXT4_ERROR_BLOCK(ctx), FSEV_F_ERRNO | FSEV_F_BLOCK);
}
#endif

#ifdef ATTACH___EXT4_ERROR_INODE
int kp___ext4_error_inode(struct pt_regs *ctx)
{
	void *inode = (void *)PT_REGS_PARM1(ctx);
	u64 ino = 0;
	READ_KERNEL(ino, inode, OFF_INODE_I_INO);
	return emit_ext4_error(inode_sb(inode), (const char *)PT_REGS_PARM2(ctx),
			       (u32)PT_REGS_PARM3(ctx), (s32)PT_REGS_PARM5(ctx), ino,
			       (u64)PT_REGS_PARM4(ctx), FSEV_F_ERRNO | FSEV_F_INODE | FSEV_F_BLOCK);
}
#endif

#ifdef ATTACH___EXT4_ERROR_FILE
int kp___ext4_error_file(struct pt_regs *ctx)
{
	void *inode = file_f_inode((void *)PT_REGS_PARM1(ctx));
	u64 ino = 0;
	READ_KERNEL(ino, inode, OFF_INODE_I_INO);
	/* __ext4_error_file always records EFSCORRUPTED (EUCLEAN). */
	return emit_ext4_error(inode_sb(inode), (const char *)PT_REGS_PARM2(ctx),
			       (u32)PT_REGS_PARM3(ctx), FSEV_EFSCORRUPTED, ino, (u64)PT_REGS_PARM4(ctx),
			       FSEV_F_ERRNO | FSEV_F_INODE | FSEV_F_BLOCK);
}
#endif

#ifdef ATTACH___EXT4_STD_ERROR
int kp___ext4_std_error(struct pt_regs *ctx)
{
	return emit_ext4_error((void *)PT_REGS_PARM1(ctx), (const char *)PT_REGS_PARM2(ctx),
			       (u32)PT_REGS_PARM3(ctx), (s32)PT_REGS_PARM4(ctx), 0, 0, FSEV_F_ERRNO);
}
#endif
#endif /* FSEV_EXT4_ERROR_KPROBE */
