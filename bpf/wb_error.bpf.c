/* wb_error.bpf.c: probe point wb_error. A writeback error was recorded on a
 * file's mapping (its errseq_t): one FSEV_TYPE_WB_ERROR record, class err
 * (ino = the file's inode, err = the errno).
 *
 * Rungs (#if switches, set by fsev/points/wb_error.py; 0 unless the plan
 * picked that rung and the user asked for class err):
 *   FSEV_WB_RAW_TP   raw tracepoint filemap_set_wb_err: value = the errseq
 *                    after the set (read from mapping->wb_err)
 *   FSEV_WB_KPROBE   kprobe on __filemap_set_wb_err: the errno argument
 * Offsets: OFF_ADDRESS_SPACE_HOST, OFF_INODE_I_SB, OFF_INODE_I_INO,
 * OFF_SUPER_BLOCK_S_DEV; raw rung, OFF_ADDRESS_SPACE_WB_ERR.
 * Maps: none of its own.
 */
#include "common.h"

#if FSEV_WB_RAW_TP
/* filemap_set_wb_err(struct address_space *mapping, errseq_t eseq) (4.14+).
 * The traced eseq is errseq_set()'s return, the value *before* the set (0
 * on a file's first error), so the errseq is read from mapping->wb_err. */
RAW_TRACEPOINT_PROBE(filemap_set_wb_err)
{
	void *mapping = (void *)ctx->args[0], *inode = 0;
	READ_KERNEL(inode, mapping, OFF_ADDRESS_SPACE_HOST);
	u32 dev = sb_dev(inode_sb(inode));
	if (!dev_watched(dev, FSEV_CLASS_BIT(FSEV_CLASS_ERR)))
		return 0;
	struct fsev_record *r = new_record(FSEV_TYPE_WB_ERROR, FSEV_CLASS_ERR, FSEV_RUNG_RAW_TRACEPOINT);
	if (!r)
		return 0;
	u32 eseq = 0;
	READ_KERNEL(eseq, mapping, OFF_ADDRESS_SPACE_WB_ERR);
	READ_KERNEL(r->ino, inode, OFF_INODE_I_INO);
	r->dev = dev;
	r->value = eseq;
	r->err = eseq & FSEV_MAX_ERRNO;
	r->fields = FSEV_F_INODE | FSEV_F_ERRNO;
	events.ringbuf_submit(r, 0);
	return 0;
}
#endif

#if FSEV_WB_KPROBE
/* void __filemap_set_wb_err(struct address_space *mapping, int err) (4.14+). */
int kp___filemap_set_wb_err(struct pt_regs *ctx)
{
	void *mapping = (void *)PT_REGS_PARM1(ctx), *inode = 0;
	s32 err = (s32)PT_REGS_PARM2(ctx);
	READ_KERNEL(inode, mapping, OFF_ADDRESS_SPACE_HOST);
	u32 dev = sb_dev(inode_sb(inode));
	if (!dev_watched(dev, FSEV_CLASS_BIT(FSEV_CLASS_ERR)))
		return 0;
	struct fsev_record *r = new_record(FSEV_TYPE_WB_ERROR, FSEV_CLASS_ERR, FSEV_RUNG_KPROBE);
	if (!r)
		return 0;
	r->dev = dev;
	READ_KERNEL(r->ino, inode, OFF_INODE_I_INO);
	r->err = err < 0 ? -err : err;
	r->fields = FSEV_F_INODE | FSEV_F_ERRNO;
	events.ringbuf_submit(r, 0);
	return 0;
}
#endif
