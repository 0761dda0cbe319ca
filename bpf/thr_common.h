/* thr_common.h: the threshold state and the gate that the two threshold
 * points (bpf/thr_tmpfs.bpf.c, bpf/thr_ext4.bpf.c) share. Compiled when
 * either is: FSEV_THR_SHMEM_RAW_TP, FSEV_THR_SHMEM_KPROBE or
 * FSEV_THR_EXT4_RAW_TP (set by fsev/points/thr_tmpfs.py and
 * fsev/points/thr_ext4.py).
 *
 * The state lives here, per superblock, in thr_state: the levels, the
 * confirmed depth and a band that bounds how far the per-CPU counter estimate
 * can be from what statfs would say. A record (FSEV_TYPE_THRESHOLD, class thr)
 * crosses to user space only when a crossing is possible within the band (at
 * most one per superblock per THR_HINT_GAP_NS), and it is a hint: user space
 * confirms it with statfs before it reports a crossing (fsev/thresholds/monitor.py).
 *
 * The hot path (every page written: mm_lru_insertion, ext4_da_reserve_space)
 * is attached only while a watched superblock is near a level (fsev/
 * fsev/thresholds/gate.py: any program there costs the kernel's dispatch). Attached, it
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
 *
 * Offsets: OFF_SUPER_BLOCK_S_DEV, OFF_INODE_I_SB (sb_dev(), inode_sb():
 * common.h); OFF_FOLIO_FLAGS and OFF_ENUM_PG_LOCKED when defined (tmpfs raw
 * rung: thr_hint() sends only for a folio the current task holds locked).
 * Maps: thr_state, thr_slot, thr_epoch (written by user space:
 * fsev/kernel/loader.py write_thr_state), thr_cache, thr_share.
 */
#ifndef FSEV_THR_COMMON_H
#define FSEV_THR_COMMON_H
#include "common.h"

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
 * keeps re-reading statfs for a while (fsev/thresholds/monitor.py). */
#define THR_HINT_GAP_NS 1000000ULL

/* A watched superblock's slot and state, as the verdict caches give them. */
struct thr_ref {
	struct fsev_thr_state *st;
	u32 slot;
};

/* With FSEV_THR_*_SINGLE, the one watched superblock of a kind has slot
 * kind - 1 (user space gives the first of each kind that slot: fsev/
 * fsev/kernel/thr_slots.py thr_slot_for), so its state's address is a constant
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

/* The watched superblock an inode belongs to (0: none, the common case). */
static __always_inline int thr_find_inode(struct thr_ref *ref, u32 kind, int single, void *inode)
{
	if (!inode)
		return 0;
	if (single && thr_hit(ref, kind, (u64)inode))
		return 1;
	void *sb = inode_sb(inode);
	return thr_miss(ref, kind, single, (u64)inode, (u64)sb, sb_dev(sb));
}

/* Before a check reads sb's counters: is sb the slot's superblock? Only a
 * cached key can point elsewhere (see above); then the key is dropped. */
static __always_inline int thr_verify(struct thr_ref *ref, void *sb, u32 kind, int single)
{
	if (!single)
		return 1; /* thr_miss just matched sb's s_dev */
	if (sb && sb_dev(sb) == ref->st->dev)
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

#endif /* FSEV_THR_COMMON_H */
