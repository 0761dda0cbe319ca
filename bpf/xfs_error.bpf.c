/* xfs_error.bpf.c: probe point xfs_error. XFS met corrupt metadata: a health
 * mark (filesystem, allocation group, realtime group or inode: which
 * structures, as the kernel's mask), a btree block that failed its checks, or
 * (kprobe rung) the corruption / verifier report with file, line and the
 * address it failed at. One FSEV_TYPE_XFS_ERROR record each, class err (the
 * field table is in fsev.h).
 *
 * Rungs (#if switches, set by fsev/points/xfs_error.py):
 *   FSEV_XFS_ERROR_RAW_TP  raw tracepoints xfs_fs_mark_{sick,corrupt},
 *                          xfs_group_mark_{sick,corrupt}, xfs_inode_mark_{sick,corrupt}
 *                          (their arguments are the kernel structs: read at
 *                          BTF offsets; bcc cannot compile TRACEPOINT_PROBE
 *                          for xfs_group_mark_* with its enum field)
 *   FSEV_XFS_ERROR_KPROBE  kprobes on xfs_corruption_error, xfs_buf_verifier_error,
 *                          xfs_inode_verifier_error and the xfs_*_mark_{sick,corrupt}
 *                          functions (xfs_ag_mark_sick before 6.13)
 *     ATTACH_<NAME>        defined (1) for each tracepoint / function this
 *                          kernel has (programs raw_<name> / kp_<name>)
 *   Both rungs: RAW_TRACEPOINT_PROBE(xfs_btree_corrupt) under ATTACH_XFS_BTREE_CORRUPT.
 * Offsets: OFF_XFS_MOUNT_M_SUPER, OFF_SUPER_BLOCK_S_DEV, OFF_XFS_INODE_I_MOUNT,
 *   OFF_XFS_INODE_I_INO, OFF_XFS_GROUP_XG_{MOUNT,GNO,TYPE} (6.13+), or
 *   OFF_XFS_PERAG_PAG_{MOUNT,AGNO} (before); with the btree tracepoint or the
 *   verifier kprobe, OFF_XFS_BUF_B_{MOUNT,OPS,ADDR,PAG} and OFF_XFS_BUF_OPS_NAME,
 *   and for the group, OFF_XFS_PERAG_PAG_GROUP_XG_GNO or OFF_XFS_PERAG_PAG_AGNO.
 * Maps: none of its own (events, watched_devs: common.h).
 */
#include "common.h"

#if FSEV_XFS_ERROR_RAW_TP || FSEV_XFS_ERROR_KPROBE
static __always_inline u32 xfs_mp_dev(void *mp)
{
	void *sb = 0;
	if (mp)
		READ_KERNEL(sb, mp, OFF_XFS_MOUNT_M_SUPER);
	return sb_dev(sb);
}

static __always_inline struct fsev_record *xfs_record(u32 dev, u32 report, u32 scope, u32 rung)
{
	if (!dev_watched(dev, FSEV_CLASS_BIT(FSEV_CLASS_ERR)))
		return 0;
	struct fsev_record *r = new_record(FSEV_TYPE_XFS_ERROR, FSEV_CLASS_ERR, rung);
	if (!r)
		return 0;
	r->dev = dev;
	r->arg = report | scope << FSEV_XFS_SCOPE_SHIFT;
	r->fields = FSEV_F_TEXT;
	return r;
}

static __always_inline int xfs_mark_fs(void *mp, u32 mask, u32 report, u32 rung)
{
	struct fsev_record *r = xfs_record(xfs_mp_dev(mp), report, FSEV_XFS_SCOPE_FS, rung);
	if (!r)
		return 0;
	r->value = mask;
	events.ringbuf_submit(r, 0);
	return 0;
}

static __always_inline int xfs_mark_inode(void *ip, u32 mask, u32 report, u32 rung)
{
	void *mp = 0;
	u64 ino = 0;
	READ_KERNEL(mp, ip, OFF_XFS_INODE_I_MOUNT);
	READ_KERNEL(ino, ip, OFF_XFS_INODE_I_INO);
	struct fsev_record *r = xfs_record(xfs_mp_dev(mp), report, FSEV_XFS_SCOPE_INODE, rung);
	if (!r)
		return 0;
	r->value = mask;
	r->ino = ino;
	r->fields |= FSEV_F_INODE;
	events.ringbuf_submit(r, 0);
	return 0;
}

static __always_inline int xfs_mark_group_at(void *mp, u32 gno, u32 rtg, u32 mask, u32 report, u32 rung)
{
	struct fsev_record *r = xfs_record(xfs_mp_dev(mp), report,
					   rtg ? FSEV_XFS_SCOPE_RTGROUP : FSEV_XFS_SCOPE_AG, rung);
	if (!r)
		return 0;
	r->value = mask;
	r->direction = gno;
	events.ringbuf_submit(r, 0);
	return 0;
}

#ifdef OFF_XFS_GROUP_XG_GNO
/* 6.13+: struct xfs_group, an allocation group's or a realtime group's
 * (xg_type: XG_TYPE_AG 0, XG_TYPE_RTG 1). */
static __always_inline int xfs_mark_group(void *xg, u32 mask, u32 report, u32 rung)
{
	void *mp = 0;
	u32 gno = 0, type = 0;
	READ_KERNEL(mp, xg, OFF_XFS_GROUP_XG_MOUNT);
	READ_KERNEL(gno, xg, OFF_XFS_GROUP_XG_GNO);
	READ_KERNEL(type, xg, OFF_XFS_GROUP_XG_TYPE);
	return xfs_mark_group_at(mp, gno, type == 1, mask, report, rung);
}
#endif

#ifdef OFF_XFS_BUF_B_OPS
/* A metadata buffer: its filesystem, its verifier's name (the structure:
 * "xfs_bnobt", "xfs_dir3_block", ...) and its allocation group. */
static __always_inline struct fsev_record *xfs_buf_record(void *bp, u32 report, u32 rung)
{
	void *mp = 0, *ops = 0, *name = 0, *pag = 0;
	READ_KERNEL(mp, bp, OFF_XFS_BUF_B_MOUNT);
	struct fsev_record *r = xfs_record(xfs_mp_dev(mp), report, FSEV_XFS_SCOPE_NONE, rung);
	if (!r)
		return 0;
	READ_KERNEL(ops, bp, OFF_XFS_BUF_B_OPS);
	if (ops)
		READ_KERNEL(name, ops, OFF_XFS_BUF_OPS_NAME);
	if (name)
		bpf_probe_read_kernel_str(r->func, sizeof(r->func), name);
	READ_KERNEL(pag, bp, OFF_XFS_BUF_B_PAG);
	if (pag) {
		u32 gno = 0;
#if defined(OFF_XFS_PERAG_PAG_GROUP_XG_GNO)
		READ_KERNEL(gno, pag, OFF_XFS_PERAG_PAG_GROUP_XG_GNO);
#elif defined(OFF_XFS_PERAG_PAG_AGNO)
		READ_KERNEL(gno, pag, OFF_XFS_PERAG_PAG_AGNO);
#endif
		r->direction = gno;
		r->arg |= FSEV_XFS_SCOPE_AG << FSEV_XFS_SCOPE_SHIFT;
	}
	return r;
}
#endif

#ifdef ATTACH_XFS_BTREE_CORRUPT
/* xfs_btree_corrupt(bp, caller_ip): the block passed its verifier but not the
 * btree's own checks (level, sibling pointers, record count). */
RAW_TRACEPOINT_PROBE(xfs_btree_corrupt)
{
	void *bp = (void *)ctx->args[0];
	struct fsev_record *r = xfs_buf_record(bp, FSEV_XFS_BTREE_CORRUPT, FSEV_RUNG_RAW_TRACEPOINT);
	if (!r)
		return 0;
	void *addr = 0;
	u16 be_level = 0;
	READ_KERNEL(addr, bp, OFF_XFS_BUF_B_ADDR);
	/* struct xfs_btree_block: __be32 bb_magic, __be16 bb_level, ... */
	if (addr && !bpf_probe_read_kernel(&be_level, sizeof(be_level), addr + 4))
		r->level = (u32)((be_level >> 8) | ((be_level & 0xff) << 8)) + 1;
	r->mntns = ctx->args[1];
	events.ringbuf_submit(r, 0);
	return 0;
}
#endif
#endif /* either rung */

#if FSEV_XFS_ERROR_RAW_TP
/* Raw arguments (TP_PROTO): (mp, flags), (xg, flags), (ip, flags). */
#ifdef ATTACH_XFS_FS_MARK_SICK
RAW_TRACEPOINT_PROBE(xfs_fs_mark_sick)
{
	return xfs_mark_fs((void *)ctx->args[0], (u32)ctx->args[1], FSEV_XFS_MARK_SICK, FSEV_RUNG_RAW_TRACEPOINT);
}
#endif
#ifdef ATTACH_XFS_FS_MARK_CORRUPT
RAW_TRACEPOINT_PROBE(xfs_fs_mark_corrupt)
{
	return xfs_mark_fs((void *)ctx->args[0], (u32)ctx->args[1], FSEV_XFS_MARK_CORRUPT, FSEV_RUNG_RAW_TRACEPOINT);
}
#endif
#ifdef ATTACH_XFS_GROUP_MARK_SICK
RAW_TRACEPOINT_PROBE(xfs_group_mark_sick)
{
	return xfs_mark_group((void *)ctx->args[0], (u32)ctx->args[1], FSEV_XFS_MARK_SICK, FSEV_RUNG_RAW_TRACEPOINT);
}
#endif
#ifdef ATTACH_XFS_GROUP_MARK_CORRUPT
RAW_TRACEPOINT_PROBE(xfs_group_mark_corrupt)
{
	return xfs_mark_group((void *)ctx->args[0], (u32)ctx->args[1], FSEV_XFS_MARK_CORRUPT,
			      FSEV_RUNG_RAW_TRACEPOINT);
}
#endif
#ifdef ATTACH_XFS_INODE_MARK_SICK
RAW_TRACEPOINT_PROBE(xfs_inode_mark_sick)
{
	return xfs_mark_inode((void *)ctx->args[0], (u32)ctx->args[1], FSEV_XFS_MARK_SICK, FSEV_RUNG_RAW_TRACEPOINT);
}
#endif
#ifdef ATTACH_XFS_INODE_MARK_CORRUPT
RAW_TRACEPOINT_PROBE(xfs_inode_mark_corrupt)
{
	return xfs_mark_inode((void *)ctx->args[0], (u32)ctx->args[1], FSEV_XFS_MARK_CORRUPT,
			      FSEV_RUNG_RAW_TRACEPOINT);
}
#endif
#endif /* FSEV_XFS_ERROR_RAW_TP */

#if FSEV_XFS_ERROR_KPROBE
/* The caller's address at a kprobe on a function's first instruction (x86-64:
 * the return address is at the stack pointer). */
static __always_inline u64 kp_caller(struct pt_regs *ctx)
{
	u64 ra = 0;
	bpf_probe_read_kernel(&ra, sizeof(ra), (void *)PT_REGS_SP(ctx));
	return ra;
}

/* Signatures (the same in 6.1 and 6.18; the table is in fsev/points/xfs_error.py). */
#ifdef ATTACH_XFS_CORRUPTION_ERROR
/* xfs_corruption_error(tag, level, mp, buf, bufsize, filename, linenum, failaddr):
 * linenum and failaddr are the 7th and 8th arguments, on the stack. */
int kp_xfs_corruption_error(struct pt_regs *ctx)
{
	struct fsev_record *r = xfs_record(xfs_mp_dev((void *)PT_REGS_PARM3(ctx)), FSEV_XFS_CORRUPTION_ERROR,
					   FSEV_XFS_SCOPE_NONE, FSEV_RUNG_KPROBE);
	if (!r)
		return 0;
	u64 stack[3] = {};
	bpf_probe_read_kernel(stack, sizeof(stack), (void *)PT_REGS_SP(ctx));
	bpf_probe_read_kernel_str(r->func, sizeof(r->func), (void *)PT_REGS_PARM6(ctx));
	bpf_probe_read_kernel_str(r->path, sizeof(r->path), (void *)PT_REGS_PARM1(ctx));
	r->line = (u32)stack[1];
	r->mntns = stack[2] ? stack[2] : stack[0]; /* failaddr, else the caller */
	r->fields |= FSEV_F_LINE;
	events.ringbuf_submit(r, 0);
	return 0;
}
#endif

#ifdef ATTACH_XFS_BUF_VERIFIER_ERROR
/* xfs_buf_verifier_error(bp, error, name, buf, bufsz, failaddr) */
int kp_xfs_buf_verifier_error(struct pt_regs *ctx)
{
	struct fsev_record *r = xfs_buf_record((void *)PT_REGS_PARM1(ctx), FSEV_XFS_VERIFIER_ERROR, FSEV_RUNG_KPROBE);
	if (!r)
		return 0;
	s32 err = (s32)PT_REGS_PARM2(ctx);
	r->err = err < 0 ? -err : err;
	u64 fa = PT_REGS_PARM6(ctx);
	r->mntns = fa ? fa : kp_caller(ctx);
	r->fields |= FSEV_F_ERRNO;
	events.ringbuf_submit(r, 0);
	return 0;
}
#endif

#ifdef ATTACH_XFS_INODE_VERIFIER_ERROR
/* xfs_inode_verifier_error(ip, error, name, buf, bufsz, failaddr) */
int kp_xfs_inode_verifier_error(struct pt_regs *ctx)
{
	void *ip = (void *)PT_REGS_PARM1(ctx), *mp = 0;
	u64 ino = 0;
	READ_KERNEL(mp, ip, OFF_XFS_INODE_I_MOUNT);
	READ_KERNEL(ino, ip, OFF_XFS_INODE_I_INO);
	struct fsev_record *r = xfs_record(xfs_mp_dev(mp), FSEV_XFS_INODE_VERIFIER, FSEV_XFS_SCOPE_INODE,
					   FSEV_RUNG_KPROBE);
	if (!r)
		return 0;
	s32 err = (s32)PT_REGS_PARM2(ctx);
	r->err = err < 0 ? -err : err;
	r->ino = ino;
	u64 fa = PT_REGS_PARM6(ctx);
	r->mntns = fa ? fa : kp_caller(ctx);
	r->fields |= FSEV_F_ERRNO | FSEV_F_INODE;
	events.ringbuf_submit(r, 0);
	return 0;
}
#endif

/* xfs_{fs,group,inode}_mark_{sick,corrupt}(object, mask); xfs_ag_mark_sick(pag, mask) before 6.13. */
#ifdef ATTACH_XFS_FS_MARK_SICK
int kp_xfs_fs_mark_sick(struct pt_regs *ctx)
{
	return xfs_mark_fs((void *)PT_REGS_PARM1(ctx), (u32)PT_REGS_PARM2(ctx), FSEV_XFS_MARK_SICK, FSEV_RUNG_KPROBE);
}
#endif
#ifdef ATTACH_XFS_FS_MARK_CORRUPT
int kp_xfs_fs_mark_corrupt(struct pt_regs *ctx)
{
	return xfs_mark_fs((void *)PT_REGS_PARM1(ctx), (u32)PT_REGS_PARM2(ctx), FSEV_XFS_MARK_CORRUPT, FSEV_RUNG_KPROBE);
}
#endif
#ifdef ATTACH_XFS_GROUP_MARK_SICK
int kp_xfs_group_mark_sick(struct pt_regs *ctx)
{
	return xfs_mark_group((void *)PT_REGS_PARM1(ctx), (u32)PT_REGS_PARM2(ctx), FSEV_XFS_MARK_SICK, FSEV_RUNG_KPROBE);
}
#endif
#ifdef ATTACH_XFS_GROUP_MARK_CORRUPT
int kp_xfs_group_mark_corrupt(struct pt_regs *ctx)
{
	return xfs_mark_group((void *)PT_REGS_PARM1(ctx), (u32)PT_REGS_PARM2(ctx), FSEV_XFS_MARK_CORRUPT,
			      FSEV_RUNG_KPROBE);
}
#endif
#ifdef ATTACH_XFS_AG_MARK_SICK
int kp_xfs_ag_mark_sick(struct pt_regs *ctx)
{
	void *pag = (void *)PT_REGS_PARM1(ctx), *mp = 0;
	u32 agno = 0;
	READ_KERNEL(mp, pag, OFF_XFS_PERAG_PAG_MOUNT);
	READ_KERNEL(agno, pag, OFF_XFS_PERAG_PAG_AGNO);
	return xfs_mark_group_at(mp, agno, 0, (u32)PT_REGS_PARM2(ctx), FSEV_XFS_MARK_SICK, FSEV_RUNG_KPROBE);
}
#endif
#ifdef ATTACH_XFS_INODE_MARK_SICK
int kp_xfs_inode_mark_sick(struct pt_regs *ctx)
{
	return xfs_mark_inode((void *)PT_REGS_PARM1(ctx), (u32)PT_REGS_PARM2(ctx), FSEV_XFS_MARK_SICK, FSEV_RUNG_KPROBE);
}
#endif
#ifdef ATTACH_XFS_INODE_MARK_CORRUPT
int kp_xfs_inode_mark_corrupt(struct pt_regs *ctx)
{
	return xfs_mark_inode((void *)PT_REGS_PARM1(ctx), (u32)PT_REGS_PARM2(ctx), FSEV_XFS_MARK_CORRUPT,
			      FSEV_RUNG_KPROBE);
}
#endif
#endif /* FSEV_XFS_ERROR_KPROBE */
