/* thr_tmpfs.bpf.c: probe point thr_tmpfs. Free-space thresholds on tmpfs:
 * hints (FSEV_TYPE_THRESHOLD, class thr) when available blocks, max_blocks -
 * used_blocks as shmem_sb_info counts them, may have crossed a level
 * (thr_common.h explains the state, the caches and the budget).
 *
 * Rungs (#if switches, set by fsev/points/thr_tmpfs.py; 0 unless the plan
 * picked that rung and thresholds are armed on a tmpfs mount):
 *   FSEV_THR_SHMEM_RAW_TP  raw tracepoints mm_lru_insertion (a page charged)
 *                          and mm_filemap_delete_from_page_cache (one leaving):
 *                          thr_lru_typed, thr_delete_typed are loaded as
 *                          tp_btf by fsev/kernel/tp_btf.py (direct loads);
 *                          thr_lru_plain, thr_delete_plain are attached by
 *                          bcc where the kernel refuses that
 *   FSEV_THR_SHMEM_KPROBE  kprobes on shmem's block accounting
 *                          (kp_thr_shmem_acct, kp_thr_shmem_unacct):
 *     THR_KP_ACCT_INODE(ctx), THR_KP_ACCT_PAGES(ctx), THR_KP_UNACCT_INODE(ctx),
 *     THR_KP_UNACCT_PAGES(ctx)   PT_REGS_PARMn(ctx) of the inode and page count
 *                                of this kernel's signature (0: no count),
 *                                from the table in fsev/points/thr_tmpfs.py
 *     THR_KP_UNACCT_SETTLE       1: the un-charge has no count (a settle hint)
 *   FSEV_THR_SHMEM_SINGLE  1: exactly one tmpfs superblock is watched (the
 *                          mapping/inode verdict cache of thr_common.h)
 * Offsets: OFF_SUPER_BLOCK_S_DEV, OFF_SUPER_BLOCK_S_FS_INFO, OFF_INODE_I_SB,
 * OFF_SHMEM_SB_INFO_MAX_BLOCKS, OFF_SHMEM_SB_INFO_USED_BLOCKS_COUNT; raw
 * rung, OFF_FOLIO_MAPPING, OFF_ADDRESS_SPACE_HOST, OFF_FOLIO_FLAGS,
 * OFF_ENUM_PG_LOCKED.
 * Maps: those of thr_common.h.
 */
#include "common.h"
#include "thr_common.h"

#if FSEV_THR_SHMEM_RAW_TP || FSEV_THR_SHMEM_KPROBE
/* statfs: f_bavail = max_blocks - percpu_counter_sum(used_blocks); the check
 * reads the counter's global part only (off by < batch per CPU). */
static __always_inline s64 shmem_avail(void *sb)
{
	void *info = 0;
	u64 max_blocks = 0;
	s64 used = 0;
	READ_KERNEL(info, sb, OFF_SUPER_BLOCK_S_FS_INFO);
	READ_KERNEL(max_blocks, info, OFF_SHMEM_SB_INFO_MAX_BLOCKS);
	READ_KERNEL(used, info, OFF_SHMEM_SB_INFO_USED_BLOCKS_COUNT);
	return (s64)max_blocks - used;
}

/* A hot event spent the share (gate: as thr_quiet saw it): claim, verify
 * the superblock, read the counters, hint or publish a new share. */
static __always_inline void shmem_check(struct thr_ref *ref, u64 gate, void *sb, s64 later, u32 rung,
					void *own_folio)
{
	u64 claim = thr_claim(ref->st, gate);
	if (!claim || !thr_verify(ref, sb, FSEV_THR_SHMEM, FSEV_THR_SHMEM_SINGLE))
		return;
	thr_publish(ref->st, claim, thr_check(ref->st, shmem_avail(sb) + later, rung, own_folio));
}
#endif

#if FSEV_THR_SHMEM_RAW_TP
static __always_inline void *mapping_sb(u64 mapping)
{
	void *host = 0;
	READ_KERNEL(host, mapping, OFF_ADDRESS_SPACE_HOST);
	return inode_sb(host);
}

/* The watched superblock a folio's file is on, with helper reads (a plain
 * raw tracepoint hands over a bare pointer). *mapping: the folio's. */
static __always_inline int thr_find_folio(struct thr_ref *ref, void *folio, u64 *mapping)
{
	READ_KERNEL(*mapping, folio, OFF_FOLIO_MAPPING);
	/* anonymous folios: ->mapping carries PAGE_MAPPING_ANON/MOVABLE bits */
	if (!*mapping || (*mapping & 3))
		return 0;
	if (FSEV_THR_SHMEM_SINGLE && thr_hit(ref, FSEV_THR_SHMEM, *mapping))
		return 1;
	void *sb = mapping_sb(*mapping);
	return thr_miss(ref, FSEV_THR_SHMEM, FSEV_THR_SHMEM_SINGLE, *mapping, (u64)sb, sb_dev(sb));
}

/* The same with direct loads, in a BTF-typed program (tp_btf): the verifier
 * knows the folio's type, and of each pointer loaded from it, so a load is
 * an instruction, not a helper call (one that faults reads 0). Addresses are
 * integers here: bcc turns a dereference of a pointer that came from ctx into
 * a helper read. The verifier forbids bit tests on pointers: mapping - folio
 * is a number, and folios are aligned, so its low bits are the mapping's. */
static __always_inline int thr_find_folio_typed(struct thr_ref *ref, u64 folio, u64 *mapping)
{
	u64 m = *(volatile u64 *)(folio + OFF_FOLIO_MAPPING);
	*mapping = m;
	if (!m || ((m - folio) & 3))
		return 0;
	if (FSEV_THR_SHMEM_SINGLE && thr_hit(ref, FSEV_THR_SHMEM, m))
		return 1;
	u64 host = *(volatile u64 *)(m + OFF_ADDRESS_SPACE_HOST);
	if (!host)
		return 0;
	u64 sb = *(volatile u64 *)(host + OFF_INODE_I_SB);
	if (!sb)
		return 0;
	u32 dev = *(volatile u32 *)(sb + OFF_SUPER_BLOCK_S_DEV);
	return thr_miss(ref, FSEV_THR_SHMEM, FSEV_THR_SHMEM_SINGLE, m, sb, dev);
}

/* A tmpfs folio enters the LRU after shmem charged used_blocks for it. The
 * LRU batches up to 31 folios per CPU first: the band includes that lag, and
 * user space keeps re-reading statfs while a crossing hides in it.
 * Whoever fills or drains a CPU's batch runs this, often another task than
 * the writer; shmem locks a new folio before folio_add_lru, so only a folio
 * still locked here was added by the current task: only that one may hint,
 * and the hint's pid is the writer's. (Flushes by others are covered by the
 * lag polling in user space.) */
static __always_inline int shmem_lru(struct thr_ref *ref, void *folio, u64 mapping)
{
	u64 gate = 0;
	if (!thr_quiet(ref, ref->st->step, &gate))
		shmem_check(ref, gate, mapping_sb(mapping), 0, FSEV_RUNG_RAW_TRACEPOINT, folio);
	return 0;
}

/* A folio leaves the page cache; shmem un-charges it later, in
 * shmem_recalc_inode after the whole truncated range: a settle hint. */
static __always_inline int shmem_delete(struct thr_ref *ref)
{
	thr_settle(ref, FSEV_RUNG_RAW_TRACEPOINT);
	return 0;
}

/* The programs: fsev loads the _typed ones as tp_btf (fsev/kernel/loader.py), and
 * attaches the _plain ones as plain raw tracepoints where it cannot. */
int thr_lru_typed(struct bpf_raw_tracepoint_args *ctx)
{
	struct thr_ref ref;
	u64 mapping = 0, folio = ctx->args[0];
	return thr_find_folio_typed(&ref, folio, &mapping) ? shmem_lru(&ref, (void *)folio, mapping) : 0;
}

int thr_lru_plain(struct bpf_raw_tracepoint_args *ctx)
{
	struct thr_ref ref;
	u64 mapping = 0;
	void *folio = (void *)ctx->args[0];
	return thr_find_folio(&ref, folio, &mapping) ? shmem_lru(&ref, folio, mapping) : 0;
}

int thr_delete_typed(struct bpf_raw_tracepoint_args *ctx)
{
	struct thr_ref ref;
	u64 mapping = 0;
	return thr_find_folio_typed(&ref, ctx->args[0], &mapping) ? shmem_delete(&ref) : 0;
}

int thr_delete_plain(struct bpf_raw_tracepoint_args *ctx)
{
	struct thr_ref ref;
	u64 mapping = 0;
	return thr_find_folio(&ref, (void *)ctx->args[0], &mapping) ? shmem_delete(&ref) : 0;
}
#endif

#if FSEV_THR_SHMEM_KPROBE
/* Entry of shmem's charge: the change comes after, by the page count in the
 * argument when the signature has one (THR_KP_ACCT_PAGES is 0 otherwise, and
 * the band covers a huge page). */
int kp_thr_shmem_acct(struct pt_regs *ctx)
{
	struct thr_ref ref;
	u64 gate = 0;
	void *inode = (void *)THR_KP_ACCT_INODE(ctx);
	if (!thr_find_inode(&ref, FSEV_THR_SHMEM, FSEV_THR_SHMEM_SINGLE, inode))
		return 0;
	if (!thr_quiet(&ref, ref.st->step, &gate))
		shmem_check(&ref, gate, inode_sb(inode), -(s64)THR_KP_ACCT_PAGES(ctx), FSEV_RUNG_KPROBE, 0);
	return 0;
}

int kp_thr_shmem_unacct(struct pt_regs *ctx)
{
	struct thr_ref ref;
	u64 gate = 0;
	void *inode = (void *)THR_KP_UNACCT_INODE(ctx);
	if (!thr_find_inode(&ref, FSEV_THR_SHMEM, FSEV_THR_SHMEM_SINGLE, inode))
		return 0;
	if (THR_KP_UNACCT_SETTLE)
		thr_settle(&ref, FSEV_RUNG_KPROBE);
	else if (!thr_quiet(&ref, (s64)THR_KP_UNACCT_PAGES(ctx), &gate))
		shmem_check(&ref, gate, inode_sb(inode), (s64)THR_KP_UNACCT_PAGES(ctx), FSEV_RUNG_KPROBE, 0);
	return 0;
}
#endif
