/* fsev kernel side, part 2: free-space thresholds.
 *
 * fsev/program.py appends this file to fsev.bpf.c: it shares that file's ring
 * buffer `events`, the `drops` counter, new_record() and READ_KERNEL().
 * Load-time constants (see `fsev trace --print-bpf`):
 *   FSEV_THR_SHMEM_RAW_TP   tmpfs on raw tracepoints mm_lru_insertion and
 *                           mm_filemap_delete_from_page_cache: thr_*_typed
 *                           loaded as tp_btf by fsev/tp_btf.py, thr_*_plain
 *                           attached by bcc where the kernel refuses that
 *   FSEV_THR_SHMEM_KPROBE   tmpfs on kprobes at shmem's block accounting
 *     THR_KP_{ACCT,UNACCT}_{INODE,PAGES}(ctx), THR_KP_UNACCT_SETTLE:
 *                           argument positions from plan.py's signature table
 *   FSEV_THR_EXT4_RAW_TP    ext4 on raw tracepoints at its block accounting
 *   FSEV_THR_{SHMEM,EXT4}_SINGLE  1: exactly one superblock of that kind is
 *                           watched (see "The verdict caches" below)
 *   OFF_*                   offsets from the running kernel's BTF
 *
 * The state lives here, per superblock, in thr_state: the levels, the
 * confirmed depth and a band that bounds how far the per-CPU counter estimate
 * can be from what statfs would say. A record crosses to user space only when
 * a crossing is possible within the band (at most one per superblock per
 * THR_HINT_GAP_NS), and it is a hint: user space confirms it with statfs
 * before it reports a crossing.
 *
 * The hot path (every page written: mm_lru_insertion, ext4_da_reserve_space)
 * is attached only while a watched superblock is near a level (fsev/
 * thr_gate.py: any program there costs the kernel's dispatch). Attached, it
 * costs, on a watched superblock, one load (tmpfs: the folio's mapping, a
 * direct load in the tp_btf program, a helper read in the plain one; ext4:
 * none) and inlined array lookups: a per-CPU verdict cache says which slot
 * the event belongs to, and a per-CPU share of the slot's budget says the
 * counters need not be read yet. No atomic, no hash lookup, no clock read, no
 * shared cache line written; one read (the slot's gate word).
 *
 * The verdict caches (thr_cache, per CPU and kind):
 * - sb -> slot or "not watched", tagged with the superblock's s_dev and with
 *   thr_epoch (user space bumps it after adding slots, so verdicts made
 *   before a slot existed are dropped). Keyed by (pointer, s_dev), a verdict
 *   means what the dev -> slot hash would say: a superblock freed and another
 *   allocated at its address has its own dev, or the same dev and then the
 *   same slot, as before this cache existed.
 * - FSEV_THR_*_SINGLE: key (the folio's mapping, or the inode) -> the one
 *   watched slot of that kind, positive verdicts only, so the hit costs no
 *   read past the key. An inode can be freed and its memory reused by an
 *   inode of another filesystem; a stale key then makes this CPU spend the
 *   watched slot's share on another filesystem's pages (earlier checks, never
 *   later), and the check, which must read the superblock's counters anyway,
 *   first verifies the superblock's s_dev and drops the key. With two or more
 *   watched superblocks of a kind a stale key could spend one's share on the
 *   other's pages (later checks for the other): that is why it is single-only.
 *
 * The budget (fsev_thr_state.gate, thr_share): a check reads the counters and
 * computes the margin m, the blocks that must change before a crossing is
 * possible within the band. Each CPU may then see (m - slack) / cpus blocks
 * change before it checks again: a change of m - slack in all implies some CPU
 * saw its share go. The gate word packs (generation, share) so a CPU takes a
 * consistent pair with one load. A check first claims the next generation
 * with share 0 (cmpxchg: one check at a time, and any CPU that sees the claim
 * checks too rather than spend an old share), then reads the counters, then
 * publishes the share (cmpxchg, so a check overtaken by a later claim or by
 * user space publishes nothing). An event that took the old generation just
 * before the claim may still spend an old share: one such event per other
 * CPU, which the slack, (cpus - 1) x step, covers.
 */

#if FSEV_THR_SHMEM_RAW_TP || FSEV_THR_SHMEM_KPROBE || FSEV_THR_EXT4_RAW_TP

/* slot -> threshold state of a watched superblock */
BPF_ARRAY(thr_state, struct fsev_thr_state, FSEV_THR_SLOTS);
/* kernel dev_t of a watched superblock -> its slot: read on a cache miss only */
BPF_HASH(thr_slot, u32, u32, FSEV_THR_SLOTS);
/* [0]: bumped by user space after it adds a slot */
BPF_ARRAY(thr_epoch, u32, 1);

struct thr_verdicts {
	u64 key;      /* FSEV_THR_*_SINGLE: a mapping or inode of the watched sb */
	u64 sb;       /* the superblock last looked up... */
	u32 sb_dev;   /* ...its s_dev then... */
	u32 sb_slot;  /* ...and its slot + 1, or 0: not watched (by this kind) */
	u32 epoch;    /* thr_epoch when sb_slot was looked up */
	u32 pad;
};
/* Index kind - 1 (FSEV_THR_SHMEM, FSEV_THR_EXT4). */
BPF_PERCPU_ARRAY(thr_cache, struct thr_verdicts, 2);

/* This CPU's share of a slot's budget: blocks left in generation gen. */
struct thr_share {
	s64 left;
	u32 gen;
	u32 settle_jiffy; /* low bits of jiffies at this CPU's last settle hint */
};
BPF_PERCPU_ARRAY(thr_share, struct thr_share, FSEV_THR_SLOTS);

/* One hint per superblock per millisecond is enough: user space, once hinted,
 * keeps re-reading statfs for a while (fsev/thr_monitor.py). */
#define THR_HINT_GAP_NS 1000000ULL

/* A watched superblock's slot and state, as the verdict caches give them. */
struct thr_ref {
	struct fsev_thr_state *st;
	u32 slot;
};

/* With FSEV_THR_*_SINGLE, the one watched superblock of a kind has slot
 * kind - 1 (user space gives the first of each kind that slot: fsev/
 * thresholds_kernel.py thr_slot_for), so its state's address is a constant
 * and loads in parallel with the cache's. */
#define THR_FIRST_SLOT(kind) ((kind) - 1)

static __always_inline int thr_ref_of(struct thr_ref *ref, u32 slot)
{
	ref->slot = slot;
	ref->st = thr_state.lookup(&ref->slot);
	return ref->st != 0;
}

/* FSEV_THR_*_SINGLE: is key the cached mapping/inode of the watched sb? */
static __always_inline int thr_hit(struct thr_ref *ref, u32 kind, u64 key)
{
	u32 idx = kind - 1;
	struct thr_verdicts *c = thr_cache.lookup(&idx);
	if (!c || !key || c->key != key)
		return 0;
	return thr_ref_of(ref, THR_FIRST_SLOT(kind));
}

/* A cache miss: the verdict for (sb, dev), from the per-CPU sb verdict when
 * it matches, else from thr_slot. A watched superblock's key is cached. */
static __always_inline int thr_miss(struct thr_ref *ref, u32 kind, int single, u64 key, u64 sb, u32 dev)
{
	u32 idx = kind - 1, zero = 0, found = 0;
	struct thr_verdicts *c = thr_cache.lookup(&idx);
	if (!c || !sb)
		return 0;
	u32 *ep = thr_epoch.lookup(&zero);
	u32 epoch = ep ? *ep : 0;
	if (c->sb == sb && c->sb_dev == dev && c->epoch == epoch) {
		found = c->sb_slot;
	} else {
		u32 *slot = thr_slot.lookup(&dev);
		if (slot) {
			u32 n = *slot;
			struct fsev_thr_state *st = thr_state.lookup(&n);
			/* an ext4 superblock's page cache also passes mm_lru_insertion */
			if (st && st->kind == kind)
				found = n + 1;
		}
		c->sb = sb;
		c->sb_dev = dev;
		c->sb_slot = found;
		c->epoch = epoch;
	}
	if (!found)
		return 0;
	if (single && found - 1 == THR_FIRST_SLOT(kind))
		c->key = key;
	return thr_ref_of(ref, found - 1);
}

static __always_inline void *inode_sb_of(void *inode)
{
	void *sb = 0;
	if (inode)
		READ_KERNEL(sb, inode, OFF_INODE_I_SB);
	return sb;
}

static __always_inline u32 sb_dev_of(void *sb)
{
	u32 dev = 0;
	if (sb)
		READ_KERNEL(dev, sb, OFF_SUPER_BLOCK_S_DEV);
	return dev;
}

/* The watched superblock an inode belongs to (0: none, the common case). */
static __always_inline int thr_find_inode(struct thr_ref *ref, u32 kind, int single, void *inode)
{
	if (!inode)
		return 0;
	if (single && thr_hit(ref, kind, (u64)inode))
		return 1;
	void *sb = inode_sb_of(inode);
	return thr_miss(ref, kind, single, (u64)inode, (u64)sb, sb_dev_of(sb));
}

/* Before a check reads sb's counters: is sb the slot's superblock? Only a
 * cached key can point elsewhere (see above); then the key is dropped. */
static __always_inline int thr_verify(struct thr_ref *ref, void *sb, u32 kind, int single)
{
	if (!single)
		return 1; /* thr_miss just matched sb's s_dev */
	if (sb && sb_dev_of(sb) == ref->st->dev)
		return 1;
	u32 idx = kind - 1;
	struct thr_verdicts *c = thr_cache.lookup(&idx);
	if (c)
		c->key = 0;
	return 0;
}

/* The cheap part of every hot event: spend `blocks` of this CPU's share of
 * the slot's budget. 1 while some is left: no crossing is possible within the
 * band, so the counters are not read. *gate gets the gate word it saw. */
static __always_inline int thr_quiet(struct thr_ref *ref, s64 blocks, u64 *gate)
{
	struct thr_share *sh = thr_share.lookup(&ref->slot);
	if (!sh)
		return 0;
	u64 g = *(volatile u64 *)&ref->st->gate;
	*gate = g;
	if (sh->gen != (u32)(g >> 32)) {
		sh->gen = g >> 32;
		sh->left = (u32)g;
	}
	sh->left -= blocks;
	return sh->left > 0;
}

/* Claim the next generation, share 0, before reading the counters (a full
 * barrier). 0 when another check or user space moved the gate first. */
static __always_inline u64 thr_claim(struct fsev_thr_state *st, u64 seen)
{
	u64 claim = (seen & 0xffffffff00000000ULL) + (1ULL << 32);
	return __sync_val_compare_and_swap(&st->gate, seen, claim) == seen ? claim : 0;
}

/* Publish the share of margin each CPU may spend, unless another claim (or
 * user space) moved the gate since ours. */
static __always_inline void thr_publish(struct fsev_thr_state *st, u64 claim, s64 margin)
{
	u32 cpus = st->cpus ? st->cpus : 1;
	s64 slack = st->slack;
	u64 share = 0;
	if (!claim)
		return;
	if (margin > slack)
		share = (u64)(margin - slack) / cpus;
	if (share > 0xffffffffULL)
		share = 0xffffffffULL;
	__sync_val_compare_and_swap(&st->gate, claim, claim | share);
}

/* Send one hint, at most one per superblock per THR_HINT_GAP_NS.
 * own_folio: when set, only if the current task holds this folio's lock,
 * i.e. is the task that charged it (see mm_lru_insertion). */
static __always_inline void thr_hint(struct fsev_thr_state *st, s64 avail, u32 rung, u32 level, u32 dir,
				     u32 fields, void *own_folio)
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
	r->dev = st->dev;
	r->value = avail < 0 ? 0 : avail;
	r->level = level;
	r->direction = dir;
	r->fields = fields;
	events.ringbuf_submit(r, 0);
}

/* avail: available blocks as the counters give them, corrected by the change
 * this event announces when that change comes after it and its size is known.
 * Hints when the exact value, within the band of avail, may have crossed the
 * next level down or the re-arm point up. Returns the margin: the blocks that
 * must change before that can be so (<= 0 when it hinted). */
static __always_inline s64 thr_check(struct fsev_thr_state *st, s64 avail, u32 rung, void *own_folio)
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
	if (dir == FSEV_DIR_NONE)
		return down < up ? down : up;
	thr_hint(st, avail, rung, level, dir, 0, own_folio); /* near a level: check every event */
	return 0;
}

/* A free whose size this event cannot see comes after it: below a level,
 * ask user space to re-read statfs for a while (no counter read needed).
 * Above every level a free cannot cross. A CPU tries once per jiffy: the
 * hint's own rate limit reads the clock, a helper call dearer than the rest of
 * a delete event, and user space keeps reading statfs for SETTLE_S (200 ms)
 * after a settle hint, far longer than a jiffy. */
static __always_inline void thr_settle(struct thr_ref *ref, u32 rung)
{
	if (ref->st->depth == 0)
		return;
	struct thr_share *sh = thr_share.lookup(&ref->slot);
	u32 jiffy = (u32)bpf_jiffies64();
	if (sh) {
		if (sh->settle_jiffy == jiffy)
			return;
		sh->settle_jiffy = jiffy;
	}
	thr_hint(ref->st, 0, rung, 0, FSEV_DIR_NONE, FSEV_F_SETTLE, 0);
}

#endif

/* ---- tmpfs (shmem) ---------------------------------------------------- */

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
	return inode_sb_of(host);
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
	return thr_miss(ref, FSEV_THR_SHMEM, FSEV_THR_SHMEM_SINGLE, *mapping, (u64)sb, sb_dev_of(sb));
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

/* The programs: fsev loads the _typed ones as tp_btf (bpf_loader.py), and
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
		shmem_check(&ref, gate, inode_sb_of(inode), -(s64)THR_KP_ACCT_PAGES(ctx), FSEV_RUNG_KPROBE, 0);
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
		shmem_check(&ref, gate, inode_sb_of(inode), (s64)THR_KP_UNACCT_PAGES(ctx), FSEV_RUNG_KPROBE, 0);
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

/* Rare events (one per extent or per truncate): always a full check, and a
 * new share when this check wins the gate. */
static __always_inline int ext4_thr(void *inode, s64 later_clusters, s64 later_blocks)
{
	struct thr_ref ref;
	if (!thr_find_inode(&ref, FSEV_THR_EXT4, FSEV_THR_EXT4_SINGLE, inode))
		return 0;
	void *sb = inode_sb_of(inode);
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
 * near a level (fsev/thr_gate.py), like the tmpfs per-page programs. */
int thr_ext4_reserve(struct bpf_raw_tracepoint_args *ctx)
{
	struct thr_ref ref;
	u64 gate = 0;
	void *inode = (void *)ctx->args[0];
	if (!thr_find_inode(&ref, FSEV_THR_EXT4, FSEV_THR_EXT4_SINGLE, inode))
		return 0;
	if (thr_quiet(&ref, (s64)(int)ctx->args[1] * ref.st->step, &gate))
		return 0;
	u64 claim = thr_claim(ref.st, gate);
	void *sb = inode_sb_of(inode);
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
