/* btrfs_dev_stats.bpf.c: probe point btrfs_dev_stats. btrfs is about to
 * count an error on a member device (btrfs_dev_stat_inc_and_print): one
 * FSEV_TYPE_BTRFS_DEV_STAT record, class err, a sign only: value = the
 * device's devid, arg = the counter (enum btrfs_dev_stat_values), with the
 * task. User space (fsev/points/btrfs_dev_stats.py) reads the counters
 * themselves a moment later and reports what grew; the record is never
 * emitted.
 *
 * Rungs (#if switches, set by fsev/points/btrfs_dev_stats.py):
 *   FSEV_BTRFS_DEV_STATS_KPROBE  kprobe on
 *     void btrfs_dev_stat_inc_and_print(struct btrfs_device *dev, int index)  (6.1 and 6.18)
 * The polled rung has no C.
 * Offsets: OFF_SUPER_BLOCK_S_DEV, OFF_BTRFS_DEVICE_FS_INFO,
 * OFF_BTRFS_DEVICE_DEVID, OFF_BTRFS_FS_INFO_SB (btrfs is a module on Debian:
 * from its BTF).
 * Maps: none of its own.
 */
#include "common.h"

#if FSEV_BTRFS_DEV_STATS_KPROBE
int kp_btrfs_dev_stat_inc_and_print(struct pt_regs *ctx)
{
	void *device = (void *)PT_REGS_PARM1(ctx);
	void *fs_info = 0;
	void *sb = 0;
	u64 devid = 0;
	if (!device)
		return 0;
	READ_KERNEL(fs_info, device, OFF_BTRFS_DEVICE_FS_INFO);
	if (fs_info)
		READ_KERNEL(sb, fs_info, OFF_BTRFS_FS_INFO_SB);
	u32 dev = sb_dev(sb);
	if (!dev_watched(dev, FSEV_CLASS_BIT(FSEV_CLASS_ERR)))
		return 0;
	struct fsev_record *r = new_record(FSEV_TYPE_BTRFS_DEV_STAT, FSEV_CLASS_ERR, FSEV_RUNG_KPROBE);
	if (!r)
		return 0;
	READ_KERNEL(devid, device, OFF_BTRFS_DEVICE_DEVID);
	r->dev = dev;
	r->value = devid;
	r->arg = (u32)PT_REGS_PARM2(ctx);
	events.ringbuf_submit(r, 0);
	return 0;
}
#endif
