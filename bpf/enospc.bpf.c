/* enospc.bpf.c: probe point enospc. A write, fallocate, create or mkdir
 * failed with ENOSPC: every failure is counted per superblock in
 * enospc_states, and the first after a quiet FSEV_ENOSPC_QUIET_NS (fsev.h)
 * becomes one FSEV_TYPE_ENOSPC record, class warn (value = its ordinal).
 *
 * Rungs (#if switches, set by fsev/points/enospc.py; 0 unless the plan picked
 * that rung and the user asked for class warn):
 *   FSEV_ENOSPC_RAW_TP   raw tracepoint sys_exit (bpf/sys_exit.bpf.c calls
 *                        enospc_at_exit()): x86-64 syscall numbers and
 *                        pt_regs; a create's superblock is where its path
 *                        lookup starts (user space resolves the path)
 *   FSEV_ENOSPC_KPROBE   the same, plus kprobes on security_inode_create and
 *                        security_inode_mkdir: the created entry's parent
 *                        directory gives the exact superblock
 * Offsets: OFF_PT_REGS_ORIG_AX, OFF_PT_REGS_DI, OFF_PT_REGS_SI,
 * OFF_TASK_STRUCT_FILES, OFF_FILES_STRUCT_FDT, OFF_FDTABLE_FD,
 * OFF_FDTABLE_MAX_FDS, OFF_FILE_F_INODE, OFF_INODE_I_SB, OFF_INODE_I_INO,
 * OFF_TASK_STRUCT_FS, OFF_FS_STRUCT_ROOT_MNT, OFF_FS_STRUCT_PWD_MNT,
 * OFF_VFSMOUNT_MNT_SB, OFF_SUPER_BLOCK_S_DEV.
 * Maps: enospc_states (user space reads the counts once a second:
 * fsev/points/enospc.py), create_dir_dev (kprobe rung).
 */
#include "common.h"

#if FSEV_ENOSPC_RAW_TP || FSEV_ENOSPC_KPROBE
/* Per superblock: every failure is counted (exactly: an atomic add); only the
 * first failure after a quiet second becomes a record. User space reads
 * `failures` to report the count of a storm once per second. */
struct enospc_state {
	u64 failures;
	u64 last_ns;
	u32 last_pid;
	u32 last_call;
	char last_comm[FSEV_COMM_LEN];
};
BPF_HASH(enospc_states, u32, struct enospc_state, 4096);

/* x86-64 syscall numbers (arch/x86/entry/syscalls/syscall_64.tbl). */
static __always_inline u32 enospc_call(u64 nr)
{
	switch (nr) {
	case 1: return FSEV_CALL_WRITE;
	case 18: return FSEV_CALL_PWRITE64;
	case 20: return FSEV_CALL_WRITEV;
	case 296: return FSEV_CALL_PWRITEV;
	case 328: return FSEV_CALL_PWRITEV2;
	case 285: return FSEV_CALL_FALLOCATE;
	case 2: return FSEV_CALL_OPEN;
	case 257: return FSEV_CALL_OPENAT;
	case 437: return FSEV_CALL_OPENAT2;
	case 85: return FSEV_CALL_CREAT;
	case 83: return FSEV_CALL_MKDIR;
	case 258: return FSEV_CALL_MKDIRAT;
	}
	return 0;
}

/* The struct file behind a descriptor of the current task: its fd table, at
 * BTF offsets (task_struct.files -> files_struct.fdt -> fdtable.fd[fd]). */
static __always_inline void *current_fd_file(u64 fd)
{
	void *task = (void *)bpf_get_current_task();
	void *files = 0, *fdt = 0, *array = 0, *file = 0;
	u32 max_fds = 0;
	READ_KERNEL(files, task, OFF_TASK_STRUCT_FILES);
	READ_KERNEL(fdt, files, OFF_FILES_STRUCT_FDT);
	READ_KERNEL(max_fds, fdt, OFF_FDTABLE_MAX_FDS);
	if (fd >= max_fds)
		return 0;
	READ_KERNEL(array, fdt, OFF_FDTABLE_FD);
	READ_KERNEL(file, array, fd * sizeof(void *));
	return file;
}

/* Where a path lookup starts: the root for an absolute path, the cwd for
 * AT_FDCWD, else the directory descriptor's file. */
static __always_inline u32 lookup_base_dev(s32 dfd, int absolute)
{
	void *sb = 0;
	if (absolute || dfd == FSEV_AT_FDCWD) {
		void *task = (void *)bpf_get_current_task();
		void *fs = 0, *mnt = 0;
		READ_KERNEL(fs, task, OFF_TASK_STRUCT_FS);
		if (absolute)
			READ_KERNEL(mnt, fs, OFF_FS_STRUCT_ROOT_MNT);
		else
			READ_KERNEL(mnt, fs, OFF_FS_STRUCT_PWD_MNT);
		READ_KERNEL(sb, mnt, OFF_VFSMOUNT_MNT_SB);
	} else {
		sb = inode_sb(file_f_inode(current_fd_file((u64)dfd)));
	}
	return sb_dev(sb);
}

#if FSEV_ENOSPC_KPROBE
/* security_inode_create/mkdir(struct inode *dir, struct dentry *, umode_t)
 * run on every create and mkdir, before the filesystem allocates: the parent
 * directory's superblock, stashed for sys_exit. Overwritten by the thread's
 * next create; read only when that syscall fails with ENOSPC. */
BPF_TABLE("lru_hash", u32, u32, create_dir_dev, 4096);

static __always_inline int stash_dir_dev(struct pt_regs *ctx)
{
	u32 dev = sb_dev(inode_sb((void *)PT_REGS_PARM1(ctx)));
	u32 tid = (u32)bpf_get_current_pid_tgid();
	create_dir_dev.update(&tid, &dev);
	return 0;
}

int kp_security_inode_create(struct pt_regs *ctx) { return stash_dir_dev(ctx); }
int kp_security_inode_mkdir(struct pt_regs *ctx) { return stash_dir_dev(ctx); }
#endif

/* Called by the sys_exit program (bpf/sys_exit.bpf.c) for a syscall that
 * returned -ENOSPC; regs: its struct pt_regs. */
static __always_inline int enospc_at_exit(void *regs)
{
	u64 nr = 0, a0 = 0, a1 = 0;
	READ_KERNEL(nr, regs, OFF_PT_REGS_ORIG_AX);
	u32 call = enospc_call(nr);
	if (!call)
		return 0;
	READ_KERNEL(a0, regs, OFF_PT_REGS_DI);
	READ_KERNEL(a1, regs, OFF_PT_REGS_SI);
	u32 dev = 0, fields = 0;
	u64 ino = 0;
	const char *upath = 0;
	int absolute = 0;
	if (call <= FSEV_CALL_FALLOCATE) {
		void *file = current_fd_file(a0);
		if (!file)
			return 0;
		void *inode = file_f_inode(file), *sb = inode_sb(inode);
		READ_KERNEL(ino, inode, OFF_INODE_I_INO);
		dev = sb_dev(sb);
		fields = FSEV_F_INODE;
	} else {
		s32 dfd = FSEV_AT_FDCWD;
		if (call == FSEV_CALL_OPEN || call == FSEV_CALL_CREAT || call == FSEV_CALL_MKDIR) {
			upath = (const char *)a0;
		} else {
			dfd = (s32)a0;
			upath = (const char *)a1;
		}
		char first = 0;
		user_read(&first, 1, upath);
		absolute = first == '/';
		dev = lookup_base_dev(dfd, absolute);
		fields = FSEV_F_PATH;
#if FSEV_ENOSPC_KPROBE
		u32 tid = (u32)bpf_get_current_pid_tgid();
		u32 *dir_dev = create_dir_dev.lookup(&tid);
		if (dir_dev) {
			dev = *dir_dev;
			absolute = 0;
			fields |= FSEV_F_PATH_EXACT;
			create_dir_dev.delete(&tid);
		}
#endif
	}
	/* An absolute path may lead to any mount: user space resolves it. */
	if (!absolute && !dev_watched(dev, FSEV_CLASS_BIT(FSEV_CLASS_WARN)))
		return 0;

	struct enospc_state zero = {};
	struct enospc_state *s = enospc_states.lookup_or_try_init(&dev, &zero);
	if (!s)
		return 0;
	/* No fetch: before 5.12 BPF has no atomic that returns a value (bcc's
	 * LLVM on Debian 11 refuses "Invalid usage of the XADD return value").
	 * The count stays exact; a record may show a neighbour's increment too. */
	__sync_fetch_and_add(&s->failures, 1);
	u64 n = s->failures;
	u64 now = bpf_ktime_get_ns();
	u64 last = s->last_ns;
	u64 id = bpf_get_current_pid_tgid();
	s->last_ns = now;
	s->last_pid = (u32)id;
	s->last_call = call;
	bpf_get_current_comm(s->last_comm, sizeof(s->last_comm));
	if (last && now - last < FSEV_ENOSPC_QUIET_NS)
		return 0; /* inside a storm: counted, not sent */

	struct fsev_record *r = new_record(FSEV_TYPE_ENOSPC, FSEV_CLASS_WARN,
					   FSEV_ENOSPC_KPROBE ? FSEV_RUNG_KPROBE : FSEV_RUNG_RAW_TRACEPOINT);
	if (!r)
		return 0;
	r->dev = dev;
	r->ino = ino;
	r->value = n;
	r->call = call;
	r->err = FSEV_ENOSPC;
	if (upath)
		user_str(r->path, sizeof(r->path), upath);
	r->fields = FSEV_F_ERRNO | fields;
	events.ringbuf_submit(r, 0);
	return 0;
}
#endif
