/* fsev kernel side, part 2: free-space thresholds.
 *
 * fsev/program.py appends this file to fsev.bpf.c: it shares that file's ring
 * buffer `events`, the `drops` counter, new_record() and READ_KERNEL().
 * Load-time constants (see `fsev trace --print-bpf`):
 *   FSEV_THR_SHMEM_RAW_TP   tmpfs on raw tracepoints mm_lru_insertion and
 *                           mm_filemap_delete_from_page_cache
 *   FSEV_THR_SHMEM_KPROBE   tmpfs on kprobes at shmem's block accounting
 *     THR_KP_{ACCT,UNACCT}_{INODE,PAGES}(ctx), THR_KP_UNACCT_SETTLE:
 *                           argument positions from plan.py's signature table
 *   FSEV_THR_EXT4_RAW_TP    ext4 on raw tracepoints at its block accounting
 *   OFF_*                   offsets from the running kernel's BTF
 *
 * The state lives here, per superblock, in thr_state: the levels, the
 * confirmed depth and a band that bounds how far the per-CPU counter estimate
 * can be from what statfs would say. The hot path is: a few pointer reads,
 * one hash lookup that misses for every unwatched superblock, and for a
 * watched one a few counter reads and compares. A record crosses to user
 * space only when a crossing is possible within the band (at most one per
 * superblock per THR_HINT_GAP_NS), and it is a hint: user space confirms it
 * with statfs before it reports a crossing.
 */

#if FSEV_THR_SHMEM_RAW_TP || FSEV_THR_SHMEM_KPROBE || FSEV_THR_EXT4_RAW_TP

/* kernel dev_t of a watched superblock -> its threshold state */
BPF_HASH(thr_state, u32, struct fsev_thr_state, 1024);

/* One hint per superblock per millisecond is enough: user space, once hinted,
 * keeps re-reading statfs for a while (fsev/thr_monitor.py). */
#define THR_HINT_GAP_NS 1000000ULL

/* Send one hint, at most one per superblock per THR_HINT_GAP_NS.
 * own_folio: when set, only if the current task holds this folio's lock,
 * i.e. is the task that charged it (see mm_lru_insertion). */
static __always_inline void thr_hint(u32 dev, struct fsev_thr_state *st, s64 avail, u32 rung,
				     u32 level, u32 dir, u32 fields, void *own_folio)
{
	u64 now = bpf_ktime_get_ns();
	if (now - st->last_hint_ns < THR_HINT_GAP_NS)
		return;
#ifdef OFF_FOLIO_FLAGS
	if (own_folio) {
		u64 flags = 0;
		READ_KERNEL(flags, own_folio, OFF_FOLIO_FLAGS);
		if (!((flags >> OFF_ENUM_PG_LOCKED) & 1))
			return;
	}
#endif
	st->last_hint_ns = now;
	struct fsev_record *r = new_record(FSEV_TYPE_THRESHOLD, FSEV_CLASS_THR, rung);
	if (!r)
		return;
	r->dev = dev;
	r->value = avail < 0 ? 0 : avail;
	r->level = level;
	r->direction = dir;
	r->fields = fields;
	events.ringbuf_submit(r, 0);
}

/* The cheap part of every event: spend `step` blocks of the budget. While it
 * lasts no crossing is possible within the band, so the counters are not
 * read. (Atomic: two CPUs may spend it at once.) */
static __always_inline int thr_quiet(struct fsev_thr_state *st, s64 step)
{
	lock_xadd(&st->budget, -step);
	return st->budget > 0;
}

/* avail: available blocks as the counters give them, corrected by the change
 * this event announces when that change comes after it and its size is known.
 * Hints when the exact value, within the band of avail, may have crossed the
 * next level down or the re-arm point up; otherwise sets the budget to the
 * blocks that must change before that can be so. */
static __always_inline void thr_check(u32 dev, struct fsev_thr_state *st, s64 avail, u32 rung,
				      void *own_folio)
{
	s64 band = st->band;
	u32 depth = st->depth;
	u32 level = 0, dir = FSEV_DIR_NONE;
	s64 down = 0x7fffffffffffffffLL, up = 0x7fffffffffffffffLL;

	if (depth == 0) {
		down = avail - band - (s64)st->l1;
	} else if (depth == 1) {
		if (st->nlevels > 1)
			down = avail - band - (s64)st->l2;
		up = (s64)(st->l1 + st->hysteresis) - (avail + band) + 1;
	} else {
		up = (s64)(st->l2 + st->hysteresis) - (avail + band) + 1;
	}
	if (down <= 0) {
		level = depth + 1;
		dir = FSEV_DIR_DOWN;
	} else if (up <= 0) {
		level = depth;
		dir = FSEV_DIR_UP;
	}
	if (dir == FSEV_DIR_NONE) {
		st->budget = down < up ? down : up;
		return;
	}
	st->budget = 0; /* near a level: check every event */
	thr_hint(dev, st, avail, rung, level, dir, 0, own_folio);
}

/* A free whose size this event cannot see comes after it: below a level,
 * ask user space to re-read statfs for a while (no counter read needed). */
static __always_inline void thr_settle(u32 dev, struct fsev_thr_state *st, u32 rung)
{
	if (st->depth > 0)
		thr_hint(dev, st, 0, rung, 0, FSEV_DIR_NONE, FSEV_F_SETTLE, 0);
}

/* The watched superblock an inode belongs to, or 0 (the common, cheap case). */
static __always_inline struct fsev_thr_state *thr_lookup_sb(void *sb, u32 kind, u32 *dev)
{
	if (!sb)
		return 0;
	READ_KERNEL(*dev, sb, OFF_SUPER_BLOCK_S_DEV);
	struct fsev_thr_state *st = thr_state.lookup(dev);
	/* an ext4 superblock's page cache also passes mm_lru_insertion */
	if (!st || st->kind != kind)
		return 0;
	return st;
}

static __always_inline void *inode_sb_of(void *inode)
{
	void *sb = 0;
	if (inode)
		READ_KERNEL(sb, inode, OFF_INODE_I_SB);
	return sb;
}
#endif

/* ---- tmpfs (shmem) ---------------------------------------------------- */

#if FSEV_THR_SHMEM_RAW_TP || FSEV_THR_SHMEM_KPROBE
/* statfs: f_bavail = max_blocks - percpu_counter_sum(used_blocks); the hot
 * path reads the counter's global part only (off by < batch per CPU). */
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
#endif

#if FSEV_THR_SHMEM_RAW_TP
/* folio -> its file's superblock; 0 for anonymous folios, whose ->mapping
 * carries PAGE_MAPPING_ANON/MOVABLE in its low bits. */
static __always_inline void *folio_sb(void *folio)
{
	void *mapping = 0, *host = 0;
	READ_KERNEL(mapping, folio, OFF_FOLIO_MAPPING);
	if (!mapping || ((unsigned long)mapping & 3))
		return 0;
	READ_KERNEL(host, mapping, OFF_ADDRESS_SPACE_HOST);
	return inode_sb_of(host);
}

/* A tmpfs folio enters the LRU after shmem charged used_blocks for it. The
 * LRU batches up to 31 folios per CPU first: the band includes that lag, and
 * user space keeps re-reading statfs while a crossing hides in it.
 * Whoever fills or drains a CPU's batch runs this, often another task than
 * the writer; shmem locks a new folio before folio_add_lru, so only a folio
 * still locked here was added by the current task: only that one may hint,
 * and the hint's pid is the writer's. (Flushes by others are covered by the
 * lag polling in user space.) */
RAW_TRACEPOINT_PROBE(mm_lru_insertion)
{
	u32 dev = 0;
	void *folio = (void *)ctx->args[0];
	void *sb = folio_sb(folio);
	struct fsev_thr_state *st = thr_lookup_sb(sb, FSEV_THR_SHMEM, &dev);
	if (st && !thr_quiet(st, st->step))
		thr_check(dev, st, shmem_avail(sb), FSEV_RUNG_RAW_TRACEPOINT, folio);
	return 0;
}

/* A folio leaves the page cache; shmem un-charges it later, in
 * shmem_recalc_inode after the whole truncated range: a settle hint. Above
 * every level a free cannot cross, and it only widens the budget's margin. */
RAW_TRACEPOINT_PROBE(mm_filemap_delete_from_page_cache)
{
	u32 dev = 0;
	void *sb = folio_sb((void *)ctx->args[0]);
	struct fsev_thr_state *st = thr_lookup_sb(sb, FSEV_THR_SHMEM, &dev);
	if (st) {
		lock_xadd(&st->budget, -(s64)st->step); /* the up margin shrinks */
		thr_settle(dev, st, FSEV_RUNG_RAW_TRACEPOINT);
	}
	return 0;
}
#endif

#if FSEV_THR_SHMEM_KPROBE
/* Entry of shmem's charge: the change comes after, by the page count in the
 * argument when the signature has one (THR_KP_ACCT_PAGES is 0 otherwise, and
 * the band covers a huge page). */
int kp_thr_shmem_acct(struct pt_regs *ctx)
{
	u32 dev = 0;
	void *sb = inode_sb_of((void *)THR_KP_ACCT_INODE(ctx));
	struct fsev_thr_state *st = thr_lookup_sb(sb, FSEV_THR_SHMEM, &dev);
	if (st && !thr_quiet(st, st->step))
		thr_check(dev, st, shmem_avail(sb) - (s64)THR_KP_ACCT_PAGES(ctx), FSEV_RUNG_KPROBE, 0);
	return 0;
}

int kp_thr_shmem_unacct(struct pt_regs *ctx)
{
	u32 dev = 0;
	void *sb = inode_sb_of((void *)THR_KP_UNACCT_INODE(ctx));
	struct fsev_thr_state *st = thr_lookup_sb(sb, FSEV_THR_SHMEM, &dev);
	if (!st)
		return 0;
	if (THR_KP_UNACCT_SETTLE) {
		lock_xadd(&st->budget, -(s64)st->step);
		thr_settle(dev, st, FSEV_RUNG_KPROBE);
	} else if (!thr_quiet(st, (s64)THR_KP_UNACCT_PAGES(ctx))) {
		thr_check(dev, st, shmem_avail(sb) + (s64)THR_KP_UNACCT_PAGES(ctx), FSEV_RUNG_KPROBE, 0);
	}
	return 0;
}
#endif

/* ---- ext4 -------------------------------------------------------------- */

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

/* Rare events (one per extent or per truncate): always a full check. */
static __always_inline int ext4_thr(void *inode, s64 later_clusters, s64 later_blocks)
{
	u32 dev = 0;
	void *sb = inode_sb_of(inode);
	struct fsev_thr_state *st = thr_lookup_sb(sb, FSEV_THR_EXT4, &dev);
	if (st)
		thr_check(dev, st, ext4_avail(sb, later_clusters, later_blocks), FSEV_RUNG_RAW_TRACEPOINT, 0);
	return 0;
}

static __always_inline int ext4_settle(void *inode)
{
	u32 dev = 0;
	struct fsev_thr_state *st = thr_lookup_sb(inode_sb_of(inode), FSEV_THR_EXT4, &dev);
	if (st)
		thr_settle(dev, st, FSEV_RUNG_RAW_TRACEPOINT);
	return 0;
}

/* After its change: the delayed-allocation reservation, once per page
 * written: the hot one, so it spends the budget (nr_resv clusters) first. */
RAW_TRACEPOINT_PROBE(ext4_da_reserve_space)
{
	u32 dev = 0;
	void *sb = inode_sb_of((void *)ctx->args[0]);
	struct fsev_thr_state *st = thr_lookup_sb(sb, FSEV_THR_EXT4, &dev);
	if (st && !thr_quiet(st, (s64)(int)ctx->args[1] * st->step))
		thr_check(dev, st, ext4_avail(sb, 0, 0), FSEV_RUNG_RAW_TRACEPOINT, 0);
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
 * a free cannot cross and only widens the budget's margin. */
RAW_TRACEPOINT_PROBE(ext4_da_release_space)
{
	return ext4_settle((void *)ctx->args[0]);
}

RAW_TRACEPOINT_PROBE(ext4_free_blocks)
{
	return ext4_settle((void *)ctx->args[0]);
}
#endif
