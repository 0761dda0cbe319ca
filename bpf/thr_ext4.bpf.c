/* thr_ext4.bpf.c: probe point thr_ext4. Free-space thresholds on ext4:
 * hints (FSEV_TYPE_THRESHOLD, class thr) when available blocks, as
 * ext4_statfs computes f_bavail, may have crossed a level (thr_common.h
 * explains the state, the caches and the budget).
 *
 * Rungs (#if switches, set by fsev/points/thr_ext4.py; 0 unless the plan
 * picked that rung and thresholds are armed on an ext4 mount):
 *   FSEV_THR_EXT4_RAW_TP   raw tracepoints at ext4's block accounting:
 *                          ext4_allocate_blocks, ext4_da_update_reserve_space,
 *                          ext4_da_release_space, ext4_free_blocks (bcc
 *                          attaches these), and thr_ext4_reserve, attached by
 *                          fsev/kernel/loader.py on ext4_da_reserve_space (once
 *                          per page written) only near a level
 *   FSEV_THR_EXT4_SINGLE   1: exactly one ext4 superblock is watched (the
 *                          inode verdict cache of thr_common.h)
 * Offsets: OFF_SUPER_BLOCK_S_DEV, OFF_SUPER_BLOCK_S_FS_INFO, OFF_INODE_I_SB,
 * OFF_EXT4_SB_INFO_S_FREECLUSTERS_COUNTER_COUNT,
 * OFF_EXT4_SB_INFO_S_DIRTYCLUSTERS_COUNTER_COUNT,
 * OFF_EXT4_SB_INFO_S_RESV_CLUSTERS, OFF_EXT4_SB_INFO_S_CLUSTER_BITS,
 * OFF_EXT4_SB_INFO_S_ES, OFF_EXT4_SUPER_BLOCK_S_R_BLOCKS_COUNT_LO,
 * OFF_EXT4_SUPER_BLOCK_S_R_BLOCKS_COUNT_HI,
 * OFF_EXT4_SUPER_BLOCK_S_FEATURE_INCOMPAT, OFF_EXT4_ALLOCATION_REQUEST_INODE,
 * OFF_EXT4_ALLOCATION_REQUEST_FLAGS, OFF_EXT4_ALLOCATION_REQUEST_LEN;
 * OFF_TP_ARGS_EXT4_DA_RESERVE_SPACE, the arguments that tracepoint passes.
 * Maps: those of thr_common.h.
 */
#include "common.h"
#include "thr_common.h"

#if FSEV_THR_EXT4_RAW_TP
/* On-disk and mballoc constants (stable ABI; the second is printed in
 * tracefs events/ext4/ext4_allocate_blocks/format as DELALLOC_RESV). */
#define EXT4_FEATURE_INCOMPAT_64BIT 0x80
#define EXT4_MB_DELALLOC_RESERVED 0x0400

/* f_bavail as ext4_statfs computes it: (free - dirty clusters) in blocks,
 * less the root-reserved blocks and the reserved clusters. The per-CPU
 * counters are read without summing (the band covers the difference).
 * later_clusters/later_blocks: space the event announces comes back right
 * after it. */
static __always_inline s64 ext4_avail(void *sb, s64 later_clusters, s64 later_blocks)
{
	void *sbi = 0, *es = 0;
	s64 free_c = 0, dirty_c = 0, resv_c = 0;
	u32 cbits = 0, r_lo = 0, r_hi = 0, incompat = 0;
	READ_KERNEL(sbi, sb, OFF_SUPER_BLOCK_S_FS_INFO);
	READ_KERNEL(free_c, sbi, OFF_EXT4_SB_INFO_S_FREECLUSTERS_COUNTER_COUNT);
	READ_KERNEL(dirty_c, sbi, OFF_EXT4_SB_INFO_S_DIRTYCLUSTERS_COUNTER_COUNT);
	READ_KERNEL(resv_c, sbi, OFF_EXT4_SB_INFO_S_RESV_CLUSTERS);
	READ_KERNEL(cbits, sbi, OFF_EXT4_SB_INFO_S_CLUSTER_BITS);
	READ_KERNEL(es, sbi, OFF_EXT4_SB_INFO_S_ES);
	READ_KERNEL(r_lo, es, OFF_EXT4_SUPER_BLOCK_S_R_BLOCKS_COUNT_LO);
	READ_KERNEL(incompat, es, OFF_EXT4_SUPER_BLOCK_S_FEATURE_INCOMPAT);
	if (incompat & EXT4_FEATURE_INCOMPAT_64BIT)
		READ_KERNEL(r_hi, es, OFF_EXT4_SUPER_BLOCK_S_R_BLOCKS_COUNT_HI);
	cbits &= 31;
	s64 bfree = free_c - dirty_c + later_clusters + (later_blocks >> cbits);
	if (bfree < 0)
		bfree = 0;
	return (bfree << cbits) - (s64)(((u64)r_hi << 32) | r_lo) - (resv_c << cbits);
}

/* Rare events (one per extent or per truncate): always a full check, and a
 * new share when this check wins the gate. */
static __always_inline int ext4_thr(void *inode, s64 later_clusters, s64 later_blocks)
{
	struct thr_ref ref;
	if (!thr_find_inode(&ref, FSEV_THR_EXT4, FSEV_THR_EXT4_SINGLE, inode))
		return 0;
	void *sb = inode_sb(inode);
	u64 claim = thr_claim(ref.st, *(volatile u64 *)&ref.st->gate);
	if (!thr_verify(&ref, sb, FSEV_THR_EXT4, FSEV_THR_EXT4_SINGLE))
		return 0;
	s64 margin = thr_check(ref.st, ext4_avail(sb, later_clusters, later_blocks), FSEV_RUNG_RAW_TRACEPOINT, 0);
	thr_publish(ref.st, claim, margin);
	return 0;
}

static __always_inline int ext4_settle(void *inode)
{
	struct thr_ref ref;
	if (thr_find_inode(&ref, FSEV_THR_EXT4, FSEV_THR_EXT4_SINGLE, inode))
		thr_settle(&ref, FSEV_RUNG_RAW_TRACEPOINT);
	return 0;
}

/* After its change: the delayed-allocation reservation, once per page
 * written: the hot one, so it spends the share (nr_resv clusters) first.
 * Attached by the loader on raw tracepoint ext4_da_reserve_space, and only
 * near a level (fsev/thresholds/gate.py), like the tmpfs per-page programs. */
#if OFF_TP_ARGS_EXT4_DA_RESERVE_SPACE >= 2
/* ext4_da_reserve_space(inode, nr_resv) (after 6.1; 6.18 has it): nr_resv clusters at once. */
#define EXT4_NR_RESV(ctx) ((s64)(int)(ctx)->args[1])
#else
/* ext4_da_reserve_space(inode): one cluster a call. */
#define EXT4_NR_RESV(ctx) 1
#endif
int thr_ext4_reserve(struct bpf_raw_tracepoint_args *ctx)
{
	struct thr_ref ref;
	u64 gate = 0;
	void *inode = (void *)ctx->args[0];
	if (!thr_find_inode(&ref, FSEV_THR_EXT4, FSEV_THR_EXT4_SINGLE, inode))
		return 0;
	if (thr_quiet(&ref, EXT4_NR_RESV(ctx) * ref.st->step, &gate))
		return 0;
	u64 claim = thr_claim(ref.st, gate);
	void *sb = inode_sb(inode);
	if (claim && thr_verify(&ref, sb, FSEV_THR_EXT4, FSEV_THR_EXT4_SINGLE))
		thr_publish(ref.st, claim, thr_check(ref.st, ext4_avail(sb, 0, 0), FSEV_RUNG_RAW_TRACEPOINT, 0));
	return 0;
}

/* After the allocation took free clusters. A delayed allocation still counts
 * them as dirty until ext4_da_update_reserve_space releases them: the
 * transient double count is not a real loss of space, so add them back. */
RAW_TRACEPOINT_PROBE(ext4_allocate_blocks)
{
	void *ar = (void *)ctx->args[0], *inode = 0;
	u32 flags = 0, len = 0;
	READ_KERNEL(inode, ar, OFF_EXT4_ALLOCATION_REQUEST_INODE);
	READ_KERNEL(flags, ar, OFF_EXT4_ALLOCATION_REQUEST_FLAGS);
	if (flags & EXT4_MB_DELALLOC_RESERVED)
		READ_KERNEL(len, ar, OFF_EXT4_ALLOCATION_REQUEST_LEN);
	return ext4_thr(inode, 0, len); /* len counts blocks */
}

/* Before its change: used_blocks (clusters) leave the dirty count after it. */
RAW_TRACEPOINT_PROBE(ext4_da_update_reserve_space)
{
	return ext4_thr((void *)ctx->args[0], (s64)(int)ctx->args[1], 0);
}

/* Before their change: space comes back after them (for a journalled free,
 * as the transaction allows): settle hints below a level. Above every level
 * a free cannot cross. */
RAW_TRACEPOINT_PROBE(ext4_da_release_space)
{
	return ext4_settle((void *)ctx->args[0]);
}

RAW_TRACEPOINT_PROBE(ext4_free_blocks)
{
	return ext4_settle((void *)ctx->args[0]);
}
#endif
