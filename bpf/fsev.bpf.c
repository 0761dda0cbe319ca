/* fsev kernel side: ext4 errors and mount drops -> one ring buffer.
 *
 * Compiled by bcc at run time with a preamble of #defines written by
 * fsev/program.py (print it with `fsev trace --print-bpf`):
 *   FSEV_RINGBUF_PAGES       ring buffer size in pages (power of two)
 *   FSEV_CLASS_MASK          bit (1 << class) for each class the user asked for
 *   FSEV_WATCH_ALL           1: every mount; 0: only devs in watched_devs
 *   FSEV_EXT4_ERROR_KPROBE / FSEV_EXT4_ERROR_TRACEPOINT   the rung chosen
 *   FSEV_MOUNT_DROP_KPROBE / FSEV_MOUNT_DROP_TRACEPOINT
 *   OFF_*                    kernel struct offsets read from the running
 *                            kernel's BTF, never from installed headers
 *   ARG_*                    argument positions of the kprobed functions
 */
#include <uapi/linux/ptrace.h>
#include "fsev.h"

BPF_RINGBUF_OUTPUT(events, FSEV_RINGBUF_PAGES);
/* Failed ring-buffer reserves: the kernel never waits on fsev. */
BPF_PERCPU_ARRAY(drops, u64, 1);
/* kernel dev_t of each watched superblock -> 1 */
BPF_HASH(watched_devs, u32, u8, 4096);

struct path_key {
	char path[FSEV_PATH_LEN];
};

static __always_inline int dev_watched(u32 dev)
{
#if FSEV_WATCH_ALL
	return 1;
#else
	return watched_devs.lookup(&dev) != 0;
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

#define READ_KERNEL(dst, base, off) bpf_probe_read_kernel(&(dst), sizeof(dst), (void *)(base) + (off))

/* ---- ext4 errors ------------------------------------------------------ */

#if FSEV_EXT4_ERROR_TRACEPOINT
TRACEPOINT_PROBE(ext4, ext4_error)
{
	u32 dev = args->dev;
	if (!dev_watched(dev))
		return 0;
	struct fsev_record *r = new_record(FSEV_TYPE_FS_ERROR, FSEV_CLASS_ERR, FSEV_RUNG_TRACEPOINT);
	if (!r)
		return 0;
	r->dev = dev;
	r->line = args->line;
	bpf_probe_read_kernel_str(r->func, sizeof(r->func), args->function);
	r->fields = FSEV_F_LINE | FSEV_F_FUNC;
	events.ringbuf_submit(r, 0);
	return 0;
}
#endif

#if FSEV_EXT4_ERROR_KPROBE
static __always_inline u32 sb_dev(void *sb)
{
	u32 dev = 0;
	READ_KERNEL(dev, sb, OFF_SUPER_BLOCK_S_DEV);
	return dev;
}

static __always_inline void *inode_sb(void *inode)
{
	void *sb = 0;
	READ_KERNEL(sb, inode, OFF_INODE_I_SB);
	return sb;
}

static __always_inline int emit_ext4_error(void *sb, const char *function, u32 line, s32 err,
					   u64 ino, u64 block, u32 fields)
{
	u32 dev = sb_dev(sb);
	if (!dev_watched(dev))
		return 0;
	struct fsev_record *r = new_record(FSEV_TYPE_FS_ERROR, FSEV_CLASS_ERR, FSEV_RUNG_KPROBE);
	if (!r)
		return 0;
	r->dev = dev;
	r->line = line;
	r->err = err < 0 ? -err : err;
	r->ino = ino;
	r->block = block;
	bpf_probe_read_kernel_str(r->func, sizeof(r->func), function);
	/* ext4_error() passes error 0 and block 0 for "unknown": say so. */
	if (!r->err)
		fields &= ~FSEV_F_ERRNO;
	if (!block)
		fields &= ~FSEV_F_BLOCK;
	r->fields = FSEV_F_LINE | FSEV_F_FUNC | fields;
	events.ringbuf_submit(r, 0);
	return 0;
}

/* Argument positions follow the signature table in fsev/plan.py. */
#ifdef ATTACH___EXT4_ERROR
int kp___ext4_error(struct pt_regs *ctx)
{
	return emit_ext4_error((void *)PT_REGS_PARM1(ctx), (const char *)PT_REGS_PARM2(ctx),
			       (u32)PT_REGS_PARM3(ctx), (s32)ARG___EXT4_ERROR_ERRNO(ctx), 0,
			       (u64)ARG___EXT4_ERROR_BLOCK(ctx), FSEV_F_ERRNO | FSEV_F_BLOCK);
}
#endif

#ifdef ATTACH___EXT4_ERROR_INODE
int kp___ext4_error_inode(struct pt_regs *ctx)
{
	void *inode = (void *)PT_REGS_PARM1(ctx);
	u64 ino = 0;
	READ_KERNEL(ino, inode, OFF_INODE_I_INO);
	return emit_ext4_error(inode_sb(inode), (const char *)PT_REGS_PARM2(ctx),
			       (u32)PT_REGS_PARM3(ctx), (s32)PT_REGS_PARM5(ctx), ino,
			       (u64)PT_REGS_PARM4(ctx), FSEV_F_ERRNO | FSEV_F_INODE | FSEV_F_BLOCK);
}
#endif

#ifdef ATTACH___EXT4_ERROR_FILE
int kp___ext4_error_file(struct pt_regs *ctx)
{
	void *inode = 0;
	u64 ino = 0;
	READ_KERNEL(inode, (void *)PT_REGS_PARM1(ctx), OFF_FILE_F_INODE);
	READ_KERNEL(ino, inode, OFF_INODE_I_INO);
	/* __ext4_error_file always records EFSCORRUPTED (EUCLEAN, 117). */
	return emit_ext4_error(inode_sb(inode), (const char *)PT_REGS_PARM2(ctx),
			       (u32)PT_REGS_PARM3(ctx), 117, ino, (u64)PT_REGS_PARM4(ctx),
			       FSEV_F_ERRNO | FSEV_F_INODE | FSEV_F_BLOCK);
}
#endif

#ifdef ATTACH___EXT4_STD_ERROR
int kp___ext4_std_error(struct pt_regs *ctx)
{
	return emit_ext4_error((void *)PT_REGS_PARM1(ctx), (const char *)PT_REGS_PARM2(ctx),
			       (u32)PT_REGS_PARM3(ctx), (s32)PT_REGS_PARM4(ctx), 0, 0, FSEV_F_ERRNO);
}
#endif
#endif /* FSEV_EXT4_ERROR_KPROBE */

/* ---- mount drops ------------------------------------------------------ */

#if FSEV_MOUNT_DROP_KPROBE
/* cleanup_mnt(struct mount *mnt): the last reference to a mount is gone. */
int kp_cleanup_mnt(struct pt_regs *ctx)
{
	void *mnt = (void *)PT_REGS_PARM1(ctx);
	void *sb = 0;
	u32 dev = 0;
	int mnt_id = 0;
	READ_KERNEL(sb, mnt, OFF_MOUNT_MNT_MNT_SB);
	READ_KERNEL(dev, sb, OFF_SUPER_BLOCK_S_DEV);
	if (!dev_watched(dev))
		return 0;
	struct fsev_record *r = new_record(FSEV_TYPE_UMOUNT, FSEV_CLASS_INFO, FSEV_RUNG_KPROBE);
	if (!r)
		return 0;
	READ_KERNEL(mnt_id, mnt, OFF_MOUNT_MNT_ID);
	r->dev = dev;
	r->mnt_id = mnt_id;
	r->fields = FSEV_F_MNT_ID;
	events.ringbuf_submit(r, 0);
	return 0;
}
#endif

#if FSEV_MOUNT_DROP_TRACEPOINT
/* umount(2) arguments, stashed at entry and sent with the result at exit. */
struct umount_args {
	struct path_key target;
	u32 flags;
};
BPF_HASH(umount_in_flight, u32, struct umount_args, 1024);
/* With FSEV_WATCH_ALL 0: the watched mount points, as canonical paths. */
BPF_HASH(watched_paths, struct path_key, u8, 4096);

TRACEPOINT_PROBE(syscalls, sys_enter_umount)
{
	struct umount_args a = {};
	bpf_probe_read_user_str(a.target.path, sizeof(a.target.path), args->name);
#if !FSEV_WATCH_ALL
	if (!watched_paths.lookup(&a.target))
		return 0;
#endif
	a.flags = args->flags;
	u32 tid = (u32)bpf_get_current_pid_tgid();
	umount_in_flight.update(&tid, &a);
	return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_umount)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct umount_args *a = umount_in_flight.lookup(&tid);
	if (!a)
		return 0;
	if (args->ret == 0) {
		struct fsev_record *r = new_record(FSEV_TYPE_UMOUNT, FSEV_CLASS_INFO, FSEV_RUNG_TRACEPOINT);
		if (r) {
			__builtin_memcpy(r->path, a->target.path, sizeof(r->path));
			r->fields = FSEV_F_PATH | ((a->flags & 2 /* MNT_DETACH */) ? FSEV_F_LAZY : 0);
			events.ringbuf_submit(r, 0);
		}
	}
	umount_in_flight.delete(&tid);
	return 0;
}
#endif
