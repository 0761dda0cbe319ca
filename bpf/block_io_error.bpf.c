/* block_io_error.bpf.c: probe point block_io_error. A block request completed
 * with an error: one FSEV_TYPE_BLOCK_IO_ERROR record, class err (dev = the
 * whole disk, block = the sector, value = bytes; user space maps the sector
 * to a partition).
 *
 * Rungs (#if switches, set by fsev/points/block_io_error.py; 0 unless the
 * plan picked that rung and the user asked for class err):
 *   FSEV_BLOCK_IO_TRACEPOINT  tracepoint block:block_rq_error: err is an errno,
 *                             func carries the rwbs string
 *   FSEV_BLOCK_IO_KPROBE      kprobe on blk_update_request, for kernels
 *                             without that tracepoint: arg is the raw
 *                             blk_status_t (fsev/points/block_io_error.py maps it)
 * Offsets (kprobe rung): OFF_REQUEST_PART, OFF_BLOCK_DEVICE_BD_DEV,
 * OFF_REQUEST___SECTOR.
 * Maps: watched_disks, which user space fills with the whole-disk devices of
 * the watched mounts when FSEV_WATCH_ALL is 0.
 */
#include "common.h"

#if FSEV_BLOCK_IO_TRACEPOINT || FSEV_BLOCK_IO_KPROBE
/* Whole-disk devices of the watched mounts: requests name the disk, not the
 * partition (user space maps the sector to the partition). */
BPF_HASH(watched_disks, u32, u8, 4096);

static __always_inline int disk_watched(u32 dev)
{
	return every_mount_watched(FSEV_CLASS_BIT(FSEV_CLASS_ERR)) || watched_disks.lookup(&dev) != 0;
}
#endif

#if FSEV_BLOCK_IO_TRACEPOINT
TRACEPOINT_PROBE(block, block_rq_error)
{
	u32 dev = args->dev;
	if (!disk_watched(dev))
		return 0;
	struct fsev_record *r = new_record(FSEV_TYPE_BLOCK_IO_ERROR, FSEV_CLASS_ERR, FSEV_RUNG_TRACEPOINT);
	if (!r)
		return 0;
	r->dev = dev;
	r->block = args->sector;
	r->value = (u64)args->nr_sector * 512;
	r->err = args->error < 0 ? -args->error : args->error;
	__builtin_memcpy(r->func, args->rwbs, sizeof(args->rwbs));
	r->fields = FSEV_F_ERRNO | FSEV_F_BLOCK;
	events.ringbuf_submit(r, 0);
	return 0;
}
#endif

#if FSEV_BLOCK_IO_KPROBE
/* bool blk_update_request(struct request *req, blk_status_t error,
 * unsigned int nr_bytes) (4.13+; void before 5.x): every request completion.
 * For kernels without block:block_rq_error. blk_status_t is not an errno:
 * user space maps it (fsev/points/block_io_error.py). */
int kp_blk_update_request(struct pt_regs *ctx)
{
	u8 status = (u8)PT_REGS_PARM2(ctx);
	if (!status)
		return 0;
	void *req = (void *)PT_REGS_PARM1(ctx), *part = 0;
	u32 dev = 0;
	u64 sector = 0;
	READ_KERNEL(part, req, OFF_REQUEST_PART);
	READ_KERNEL(dev, part, OFF_BLOCK_DEVICE_BD_DEV);
	if (!disk_watched(dev))
		return 0;
	READ_KERNEL(sector, req, OFF_REQUEST___SECTOR);
	struct fsev_record *r = new_record(FSEV_TYPE_BLOCK_IO_ERROR, FSEV_CLASS_ERR, FSEV_RUNG_KPROBE);
	if (!r)
		return 0;
	r->dev = dev;
	r->block = sector;
	r->value = (u32)PT_REGS_PARM3(ctx);
	r->arg = status; /* raw blk_status_t */
	r->fields = FSEV_F_BLOCK;
	events.ringbuf_submit(r, 0);
	return 0;
}
#endif
