/* common.h: what the programs of every probe point share, one copy of each:
 * the ring buffer `events`, the per-CPU `drops` counter, new_record(), the
 * mount filter dev_watched() with its map `watched_devs`, and the helpers
 * that read kernel and user memory.
 *
 * bcc compiles the text fsev/probes/program.py source() makes: a preamble of
 * #defines, then bpf/fsev.bpf.c with every #include "..." of a file in bpf/
 * expanded in place, once (`fsev trace --print-bpf` prints exactly that).
 * Load-time macros of that preamble this file reads (set by fsev/probes/program.py
 * preamble()):
 *   FSEV_RINGBUF_PAGES   ring buffer size in pages (a power of two)
 *   FSEV_KPROBES         1: some point is compiled on its kprobe rung
 *   FSEV_CLASS_MASK      bit (1 << class) of each class the user asked for
 *                        (FSEV_CLASS_BIT): new_record() of another class is 0
 *   FSEV_WATCH_ALL       1: every mount; 0: only the devs in watched_devs, for
 *                        the classes their value names
 *   OFF_SUPER_BLOCK_S_DEV                       sb_dev()
 *   OFF_INODE_I_SB                              inode_sb()
 *   OFF_FILE_F_INODE                            file_f_inode()
 *   OFF_TASK_STRUCT_NSPROXY, OFF_NSPROXY_MNT_NS, OFF_MNT_NAMESPACE_NS_INUM
 *                                               task_mntns()
 * OFF_* are struct offsets from the running kernel's BTF, never from the
 * installed headers (fsev/kernel/btf.py). The preamble defines those that the
 * points in the plan read (each point file lists its own); a helper whose
 * offsets are not defined is left out.
 */
#ifndef FSEV_COMMON_H
#define FSEV_COMMON_H

/* struct pt_regs, for kprobe programs' PT_REGS_PARMn(); the other programs
 * read registers at BTF offsets (OFF_PT_REGS_*). 130 headers that bcc parses
 * three times: included only where a kprobe needs them. */
#if FSEV_KPROBES
#include <uapi/linux/ptrace.h>
#endif
#include "fsev.h"

BPF_RINGBUF_OUTPUT(events, FSEV_RINGBUF_PAGES);
/* Failed ring-buffer reserves: the kernel never waits on fsev. */
BPF_PERCPU_ARRAY(drops, u64, 1);
/* kernel dev_t of each watched superblock -> the classes watched there, as
 * FSEV_CLASS_BIT bits: a mount configured for err only (fsev serve) sends no
 * ENOSPC records. User space rewrites a value in place to change a mount's
 * classes, without touching the programs. */
BPF_HASH(watched_devs, u32, u8, 4096);

/* Key 0 (no superblock has dev_t 0): the classes watched on every mount,
 * fsev serve's `*`, including mounts made after user space last looked: a
 * mount that comes and goes between two reads of the mount table is seen. */
#define FSEV_EVERY_MOUNT 0

/* Are `classes` (FSEV_CLASS_BIT bits) watched on every mount? */
static __always_inline int every_mount_watched(u32 classes)
{
#if FSEV_WATCH_ALL
	return 1;
#else
	u32 every = FSEV_EVERY_MOUNT;
	u8 *mask = watched_devs.lookup(&every);
	return mask && (*mask & classes);
#endif
}

/* Is dev watched for any class of `classes`? */
static __always_inline int dev_watched(u32 dev, u32 classes)
{
#if FSEV_WATCH_ALL
	return 1;
#else
	if (every_mount_watched(classes))
		return 1;
	u8 *mask = watched_devs.lookup(&dev);
	return mask && (*mask & classes);
#endif
}

static __always_inline void count_drop(void)
{
	u32 zero = 0;
	u64 *n = drops.lookup(&zero);
	if (n)
		(*n)++;
}

/* A zeroed record with the common fields filled, or 0 (counted) when the
 * ring buffer is full. The class test folds away at compile time. */
static __always_inline struct fsev_record *new_record(u32 type, u32 cls, u32 rung)
{
	if (!(FSEV_CLASS_MASK & FSEV_CLASS_BIT(cls)))
		return 0;
	struct fsev_record *r = events.ringbuf_reserve(sizeof(struct fsev_record));
	if (!r) {
		count_drop();
		return 0;
	}
	__builtin_memset(r, 0, sizeof(*r));
	u64 id = bpf_get_current_pid_tgid();
	r->ts_ns = bpf_ktime_get_ns();
	r->type = type;
	r->cls = cls;
	r->rung = rung;
	r->pid = (u32)id;
	r->tgid = id >> 32;
	bpf_get_current_comm(r->comm, sizeof(r->comm));
	return r;
}

/* dst = *(typeof(dst) *)(base + off), or 0 where that cannot be read. */
#define READ_KERNEL(dst, base, off) bpf_probe_read_kernel(&(dst), sizeof(dst), (void *)(base) + (off))

/* The user-memory helpers, called through pointers of fsev's own names. At
 * the first call bcc sees by the name bpf_probe_read_user{,_str}, it reads
 * the whole of /proc/kallsyms into a table again to learn whether the kernel
 * has that helper: 45 ms of every compile here (measured). Every kernel fsev
 * runs on has it (5.5+; the ring buffer needs 5.8), so bcc is not asked. */
static long (*fsev_read_user_str)(void *dst, u32 size, const void *src) = (void *)BPF_FUNC_probe_read_user_str;
static long (*fsev_read_user)(void *dst, u32 size, const void *src) = (void *)BPF_FUNC_probe_read_user;

static __always_inline long user_str(void *dst, u32 size, const void *src)
{
	return fsev_read_user_str(dst, size, src);
}

static __always_inline long user_read(void *dst, u32 size, const void *src)
{
	return fsev_read_user(dst, size, src);
}

/* Pointer chasing through kernel structs. Each returns 0 for a null pointer
 * without a helper call (a read there would give 0 as well), so callers chain
 * them without testing each link. */
#ifdef OFF_SUPER_BLOCK_S_DEV
/* The kernel dev_t of a superblock: what records carry and filters key on. */
static __always_inline u32 sb_dev(void *sb)
{
	u32 dev = 0;
	if (sb)
		READ_KERNEL(dev, sb, OFF_SUPER_BLOCK_S_DEV);
	return dev;
}
#endif

#ifdef OFF_INODE_I_SB
static __always_inline void *inode_sb(void *inode)
{
	void *sb = 0;
	if (inode)
		READ_KERNEL(sb, inode, OFF_INODE_I_SB);
	return sb;
}
#endif

#ifdef OFF_FILE_F_INODE
static __always_inline void *file_f_inode(void *file)
{
	void *inode = 0;
	if (file)
		READ_KERNEL(inode, file, OFF_FILE_F_INODE);
	return inode;
}
#endif

#ifdef OFF_TASK_STRUCT_NSPROXY
/* The current task's mount namespace, as its inode number (0: none, exiting). */
static __always_inline u64 task_mntns(void)
{
	void *task = (void *)bpf_get_current_task();
	void *nsproxy = 0, *mnt_ns = 0;
	u32 inum = 0;
	READ_KERNEL(nsproxy, task, OFF_TASK_STRUCT_NSPROXY);
	if (!nsproxy)
		return 0;
	READ_KERNEL(mnt_ns, nsproxy, OFF_NSPROXY_MNT_NS);
	if (!mnt_ns)
		return 0;
	READ_KERNEL(inum, mnt_ns, OFF_MNT_NAMESPACE_NS_INUM);
	return inum;
}
#endif

#endif /* FSEV_COMMON_H */
