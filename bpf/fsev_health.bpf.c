/* fsev health events: read-only transitions, ENOSPC, block I/O errors,
 * writeback errors, mount-table calls -> the same ring buffer as fsev.bpf.c.
 *
 * fsev/program.py appends this file to fsev.bpf.c, whose `events` ring
 * buffer, new_record(), dev_watched(), READ_KERNEL() and drops counter it
 * uses. Switches and offsets come from the preamble (fsev/program_health.py):
 *   FSEV_RO_RAW_TP / FSEV_RO_KPROBE             read-only after an ext4 error
 *   OFF_ENUM_EXT4_FLAGS_EMERGENCY_RO, OFF_ENUM_EXT4_FLAGS_SHUTDOWN,
 *   OFF_ENUM_EXT4_MF_FS_ABORTED                 the bits' numbers, defined
 *                                               when the kernel's BTF has them
 *   FSEV_ENOSPC_RAW_TP / FSEV_ENOSPC_KPROBE     ENOSPC from write-ish calls
 *   FSEV_BLOCK_IO_TRACEPOINT / _KPROBE          block request errors
 *   FSEV_WB_RAW_TP / FSEV_WB_KPROBE             writeback errors
 *   FSEV_TOPOLOGY_TRACEPOINT / FSEV_TOPOLOGY_NS mount calls / new mount namespaces
 * The raw sys_exit program decodes x86-64 syscall numbers and pt_regs.
 */

/* Every call site of bpf_probe_read_user{,_str} costs bcc about 50 ms of
 * compile time (measured: it rewrites each one); all go through these two. */
static __always_inline long user_str(void *dst, u32 size, const void *src)
{
	return bpf_probe_read_user_str(dst, size, src);
}

static __always_inline long user_read(void *dst, u32 size, const void *src)
{
	return bpf_probe_read_user(dst, size, src);
}

#define FSEV_ENOSPC 28
#define FSEV_AT_FDCWD -100
#define FSEV_SB_RDONLY 1
#define FSEV_CLONE_NEWNS 0x00020000

#ifdef OFF_TASK_STRUCT_NSPROXY
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

#ifdef OFF_SUPER_BLOCK_S_DEV
static __always_inline u32 health_sb_dev(void *sb)
{
	u32 dev = 0;
	READ_KERNEL(dev, sb, OFF_SUPER_BLOCK_S_DEV);
	return dev;
}
#endif

/* ---- read-only state of a superblock ----------------------------------- */

#if FSEV_RO_RAW_TP || FSEV_RO_KPROBE
/* What ext4's errors=remount-ro sets after an error: SB_RDONLY (with
 * EXT4_MF_FS_ABORTED in s_mount_flags) up to 6.6; only EXT4_MF_FS_ABORTED in
 * stable kernels that took "ext4: don't set SB_RDONLY after filesystem errors"
 * (measured: Debian's 6.1.176); EXT4_FLAGS_SHUTDOWN in s_ext4_flags on 6.7-6.11;
 * EXT4_FLAGS_EMERGENCY_RO from 6.12 (shown as `emergency_ro` in /proc/mounts).
 * statfs sees only SB_RDONLY. Each flag the kernel's BTF has is read. */
static __always_inline u32 ro_bits(void *sb, int ext4)
{
	u64 sflags = 0;
	u32 bits = 0;
	READ_KERNEL(sflags, sb, OFF_SUPER_BLOCK_S_FLAGS);
	if (sflags & FSEV_SB_RDONLY)
		bits |= FSEV_RO_SB_RDONLY;
#if defined(OFF_ENUM_EXT4_FLAGS_EMERGENCY_RO) || defined(OFF_ENUM_EXT4_FLAGS_SHUTDOWN) || \
	defined(OFF_ENUM_EXT4_MF_FS_ABORTED)
	if (!ext4) /* s_fs_info is an ext4_sb_info only on ext4 */
		return bits;
	void *sbi = 0;
	READ_KERNEL(sbi, sb, OFF_SUPER_BLOCK_S_FS_INFO);
#endif
#ifdef OFF_ENUM_EXT4_MF_FS_ABORTED
	u64 mount_flags = 0;
	READ_KERNEL(mount_flags, sbi, OFF_EXT4_SB_INFO_S_MOUNT_FLAGS);
	if (mount_flags & (1ull << OFF_ENUM_EXT4_MF_FS_ABORTED))
		bits |= FSEV_RO_ABORTED;
#endif
#if defined(OFF_ENUM_EXT4_FLAGS_EMERGENCY_RO) || defined(OFF_ENUM_EXT4_FLAGS_SHUTDOWN)
	u64 ext4_flags = 0;
	READ_KERNEL(ext4_flags, sbi, OFF_EXT4_SB_INFO_S_EXT4_FLAGS);
#ifdef OFF_ENUM_EXT4_FLAGS_EMERGENCY_RO
	if (ext4_flags & (1ull << OFF_ENUM_EXT4_FLAGS_EMERGENCY_RO))
		bits |= FSEV_RO_EMERGENCY;
#endif
#ifdef OFF_ENUM_EXT4_FLAGS_SHUTDOWN
	if (ext4_flags & (1ull << OFF_ENUM_EXT4_FLAGS_SHUTDOWN))
		bits |= FSEV_RO_SHUTDOWN;
#endif
#endif
	return bits;
}

/* A superblock seen in an error, with its state then, until the erroring
 * task leaves the syscall (raw rung) or ext4_handle_error returns (kprobe). */
struct ro_watch {
	u64 sb;
	u64 ts; /* when the error was handled: names the error that caused it */
	u32 dev;
	u32 before;
};
BPF_TABLE("lru_hash", u32, struct ro_watch, ro_watch, 1024);

static __always_inline int ro_emit(struct ro_watch *w, u32 after, u32 call, u32 cls, u32 rung)
{
	struct fsev_record *r = new_record(FSEV_TYPE_READ_ONLY, cls, rung);
	if (!r)
		return 0;
	r->dev = w->dev;
	r->value = after;
	r->arg = w->before;
	r->call = call;
	r->block = w->ts; /* READ_ONLY records: block is the causing error's ktime */
	r->fields = FSEV_F_BLOCK;
	events.ringbuf_submit(r, 0);
	return 0;
}
#endif

#if FSEV_RO_RAW_TP
/* Until when (ktime ns) sys_exit must look for a pending watch: a plain array
 * read on every syscall exit instead of a hash lookup. */
BPF_ARRAY(ro_pending_until, u64, 1);

/* ext4_error(struct super_block *sb, const char *function, unsigned int line):
 * fires before ext4_handle_error() applies errors=remount-ro. */
RAW_TRACEPOINT_PROBE(ext4_error)
{
	void *sb = (void *)ctx->args[0];
	struct ro_watch w = {};
	w.dev = health_sb_dev(sb);
	if (!dev_watched(w.dev))
		return 0;
	w.before = ro_bits(sb, 1);
	if (w.before)
		return 0; /* read-only already: no transition to see */
	w.sb = (u64)sb;
	w.ts = bpf_ktime_get_ns();
	u32 tid = (u32)bpf_get_current_pid_tgid();
	ro_watch.update(&tid, &w);
	u32 zero = 0;
	u64 *until = ro_pending_until.lookup(&zero);
	if (until)
		*until = bpf_ktime_get_ns() + 1000000000ull;
	return 0;
}

static __always_inline void ro_check_at_exit(void)
{
	u32 zero = 0;
	u64 *until = ro_pending_until.lookup(&zero);
	if (!until || !*until)
		return;
	if (bpf_ktime_get_ns() > *until) {
		*until = 0; /* errors outside syscalls are left to fsev's mountinfo check */
		return;
	}
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct ro_watch *w = ro_watch.lookup(&tid);
	if (!w)
		return;
	u32 after = ro_bits((void *)w->sb, 1);
	if (after & ~w->before)
		ro_emit(w, after, FSEV_CALL_EXT4_ERROR, FSEV_CLASS_ERR, FSEV_RUNG_RAW_TRACEPOINT);
	ro_watch.delete(&tid);
}
#endif

#if FSEV_RO_KPROBE
/* static void ext4_handle_error(struct super_block *sb, ...): sb is the first
 * argument in every version (5.11+ added force_ro, error, ino, block, func,
 * line after it). Entry and return bracket the transition in any context,
 * kernel threads included. */
int kp_ext4_handle_error(struct pt_regs *ctx)
{
	void *sb = (void *)PT_REGS_PARM1(ctx);
	struct ro_watch w = {};
	w.dev = health_sb_dev(sb);
	if (!dev_watched(w.dev))
		return 0;
	w.sb = (u64)sb;
	w.ts = bpf_ktime_get_ns();
	w.before = ro_bits(sb, 1);
	u32 tid = (u32)bpf_get_current_pid_tgid();
	ro_watch.update(&tid, &w);
	return 0;
}

int kretp_ext4_handle_error(struct pt_regs *ctx)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct ro_watch *w = ro_watch.lookup(&tid);
	if (!w)
		return 0;
	u32 after = ro_bits((void *)w->sb, 1);
	if (after & ~w->before)
		ro_emit(w, after, FSEV_CALL_EXT4_ERROR, FSEV_CLASS_ERR, FSEV_RUNG_KPROBE);
	ro_watch.delete(&tid);
	return 0;
}

/* int reconfigure_super(struct fs_context *fc) (5.2+): every remount of a
 * superblock, whichever API asked for it (mount(2), fsconfig, sysrq). */
BPF_TABLE("lru_hash", u32, struct ro_watch, remount_watch, 1024);

int kp_reconfigure_super(struct pt_regs *ctx)
{
	void *fc = (void *)PT_REGS_PARM1(ctx);
	void *root = 0, *sb = 0;
	READ_KERNEL(root, fc, OFF_FS_CONTEXT_ROOT);
	READ_KERNEL(sb, root, OFF_DENTRY_D_SB);
	struct ro_watch w = {};
	w.dev = health_sb_dev(sb);
	if (!dev_watched(w.dev))
		return 0;
	w.sb = (u64)sb;
	w.ts = bpf_ktime_get_ns();
	w.before = ro_bits(sb, 0); /* any filesystem: its SB_RDONLY only */
	u32 tid = (u32)bpf_get_current_pid_tgid();
	remount_watch.update(&tid, &w);
	return 0;
}

int kretp_reconfigure_super(struct pt_regs *ctx)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct ro_watch *w = remount_watch.lookup(&tid);
	if (!w)
		return 0;
	u32 after = ro_bits((void *)w->sb, 0);
	if (PT_REGS_RC(ctx) == 0 && after != w->before)
		ro_emit(w, after, FSEV_CALL_RECONFIGURE_SUPER, FSEV_CLASS_INFO, FSEV_RUNG_KPROBE);
	remount_watch.delete(&tid);
	return 0;
}
#endif

/* ---- ENOSPC ------------------------------------------------------------ */

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
		void *file = current_fd_file((u64)dfd), *inode = 0;
		READ_KERNEL(inode, file, OFF_FILE_F_INODE);
		READ_KERNEL(sb, inode, OFF_INODE_I_SB);
	}
	return health_sb_dev(sb);
}

#if FSEV_ENOSPC_KPROBE
/* security_inode_create/mkdir(struct inode *dir, struct dentry *, umode_t)
 * run on every create and mkdir, before the filesystem allocates: the parent
 * directory's superblock, stashed for sys_exit. Overwritten by the thread's
 * next create; read only when that syscall fails with ENOSPC. */
BPF_TABLE("lru_hash", u32, u32, create_dir_dev, 4096);

static __always_inline int stash_dir_dev(struct pt_regs *ctx)
{
	void *dir = (void *)PT_REGS_PARM1(ctx), *sb = 0;
	READ_KERNEL(sb, dir, OFF_INODE_I_SB);
	u32 dev = health_sb_dev(sb);
	u32 tid = (u32)bpf_get_current_pid_tgid();
	create_dir_dev.update(&tid, &dev);
	return 0;
}

int kp_security_inode_create(struct pt_regs *ctx) { return stash_dir_dev(ctx); }
int kp_security_inode_mkdir(struct pt_regs *ctx) { return stash_dir_dev(ctx); }
#endif

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
		void *file = current_fd_file(a0), *inode = 0, *sb = 0;
		if (!file)
			return 0;
		READ_KERNEL(inode, file, OFF_FILE_F_INODE);
		READ_KERNEL(sb, inode, OFF_INODE_I_SB);
		READ_KERNEL(ino, inode, OFF_INODE_I_INO);
		dev = health_sb_dev(sb);
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
	if (!absolute && !dev_watched(dev))
		return 0;

	struct enospc_state zero = {};
	struct enospc_state *s = enospc_states.lookup_or_try_init(&dev, &zero);
	if (!s)
		return 0;
	u64 n = __sync_fetch_and_add(&s->failures, 1) + 1;
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

#if FSEV_ENOSPC_RAW_TP || FSEV_ENOSPC_KPROBE || FSEV_RO_RAW_TP
/* sys_exit(struct pt_regs *regs, long ret), for every syscall: the first test
 * is one compare, so the common case costs next to nothing. */
RAW_TRACEPOINT_PROBE(sys_exit)
{
#if FSEV_ENOSPC_RAW_TP || FSEV_ENOSPC_KPROBE
	if ((long)ctx->args[1] == -FSEV_ENOSPC)
		return enospc_at_exit((void *)ctx->args[0]);
#endif
#if FSEV_RO_RAW_TP
	ro_check_at_exit();
#endif
	return 0;
}
#endif

/* ---- block I/O errors -------------------------------------------------- */

#if FSEV_BLOCK_IO_TRACEPOINT || FSEV_BLOCK_IO_KPROBE
/* Whole-disk devices of the watched mounts: requests name the disk, not the
 * partition (user space maps the sector to the partition). */
BPF_HASH(watched_disks, u32, u8, 4096);

static __always_inline int disk_watched(u32 dev)
{
#if FSEV_WATCH_ALL
	return 1;
#else
	return watched_disks.lookup(&dev) != 0;
#endif
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
 * user space maps it (fsev/health_records.py). */
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

/* ---- writeback errors -------------------------------------------------- */

#define FSEV_MAX_ERRNO 4095

#if FSEV_WB_RAW_TP
/* filemap_set_wb_err(struct address_space *mapping, errseq_t eseq) (4.14+).
 * The traced eseq is errseq_set()'s return, the value *before* the set (0
 * on a file's first error), so the errseq is read from mapping->wb_err. */
RAW_TRACEPOINT_PROBE(filemap_set_wb_err)
{
	void *mapping = (void *)ctx->args[0], *inode = 0, *sb = 0;
	READ_KERNEL(inode, mapping, OFF_ADDRESS_SPACE_HOST);
	READ_KERNEL(sb, inode, OFF_INODE_I_SB);
	u32 dev = health_sb_dev(sb);
	if (!dev_watched(dev))
		return 0;
	struct fsev_record *r = new_record(FSEV_TYPE_WB_ERROR, FSEV_CLASS_ERR, FSEV_RUNG_RAW_TRACEPOINT);
	if (!r)
		return 0;
	u32 eseq = 0;
	READ_KERNEL(eseq, mapping, OFF_ADDRESS_SPACE_WB_ERR);
	READ_KERNEL(r->ino, inode, OFF_INODE_I_INO);
	r->dev = dev;
	r->value = eseq;
	r->err = eseq & FSEV_MAX_ERRNO;
	r->fields = FSEV_F_INODE | FSEV_F_ERRNO;
	events.ringbuf_submit(r, 0);
	return 0;
}
#endif

#if FSEV_WB_KPROBE
/* void __filemap_set_wb_err(struct address_space *mapping, int err) (4.14+). */
int kp___filemap_set_wb_err(struct pt_regs *ctx)
{
	void *mapping = (void *)PT_REGS_PARM1(ctx), *inode = 0, *sb = 0;
	s32 err = (s32)PT_REGS_PARM2(ctx);
	READ_KERNEL(inode, mapping, OFF_ADDRESS_SPACE_HOST);
	READ_KERNEL(sb, inode, OFF_INODE_I_SB);
	u32 dev = health_sb_dev(sb);
	if (!dev_watched(dev))
		return 0;
	struct fsev_record *r = new_record(FSEV_TYPE_WB_ERROR, FSEV_CLASS_ERR, FSEV_RUNG_KPROBE);
	if (!r)
		return 0;
	r->dev = dev;
	READ_KERNEL(r->ino, inode, OFF_INODE_I_INO);
	r->err = err < 0 ? -err : err;
	r->fields = FSEV_F_INODE | FSEV_F_ERRNO;
	events.ringbuf_submit(r, 0);
	return 0;
}
#endif

/* ---- mount-table calls and new mount namespaces ------------------------- */

#if FSEV_TOPOLOGY_TRACEPOINT || FSEV_TOPOLOGY_NS
/* A call's arguments, stashed at entry and sent with the result at exit
 * (only successful calls become records). */
struct mount_call {
	char target[FSEV_PATH_LEN];
	char other[FSEV_FUNC_LEN]; /* mount(2): fs type, or the source of a bind/move */
	u64 value;
	u32 call;
	u32 flags;
};
BPF_HASH(mount_calls, u32, struct mount_call, 1024);

static __always_inline int mount_call_exit(long ret)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct mount_call *c = mount_calls.lookup(&tid);
	if (!c)
		return 0;
	if (ret >= 0) {
		struct fsev_record *r = new_record(FSEV_TYPE_MOUNT, FSEV_CLASS_INFO, FSEV_RUNG_TRACEPOINT);
		if (r) {
			__builtin_memcpy(r->path, c->target, sizeof(r->path));
			__builtin_memcpy(r->func, c->other, sizeof(r->func));
			r->call = c->call;
			r->arg = c->flags;
			r->value = c->value;
			r->mntns = task_mntns();
			r->fields = FSEV_F_MNTNS | (c->target[0] ? FSEV_F_PATH : 0);
			/* clone: the task in the new namespace is the child */
			if (c->call == FSEV_CALL_CLONE || c->call == FSEV_CALL_CLONE3) {
				r->pid = (u32)ret;
				r->tgid = (u32)ret;
			}
			events.ringbuf_submit(r, 0);
		}
	}
	mount_calls.delete(&tid);
	return 0;
}

static __always_inline void mount_call_enter(struct mount_call *c)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	mount_calls.update(&tid, c);
}
#endif

#if FSEV_TOPOLOGY_TRACEPOINT && FSEV_HAVE_SYS_MOUNT
TRACEPOINT_PROBE(syscalls, sys_enter_mount)
{
	struct mount_call c = {};
	c.call = FSEV_CALL_MOUNT;
	c.flags = (u32)args->flags;
	user_str(c.target, sizeof(c.target), args->dir_name);
	if (c.flags & (4096 | 8192)) /* MS_BIND | MS_MOVE: the source path */
		user_str(c.other, sizeof(c.other), args->dev_name);
	else if (args->type)
		user_str(c.other, sizeof(c.other), args->type);
	mount_call_enter(&c);
	return 0;
}
TRACEPOINT_PROBE(syscalls, sys_exit_mount) { return mount_call_exit(args->ret); }
#endif

#if FSEV_TOPOLOGY_TRACEPOINT && FSEV_HAVE_SYS_MOVE_MOUNT
TRACEPOINT_PROBE(syscalls, sys_enter_move_mount)
{
	struct mount_call c = {};
	c.call = FSEV_CALL_MOVE_MOUNT;
	c.flags = (u32)args->flags;
	user_str(c.target, sizeof(c.target), args->to_pathname);
	user_str(c.other, sizeof(c.other), args->from_pathname);
	mount_call_enter(&c);
	return 0;
}
TRACEPOINT_PROBE(syscalls, sys_exit_move_mount) { return mount_call_exit(args->ret); }
#endif

#if FSEV_TOPOLOGY_TRACEPOINT && FSEV_HAVE_SYS_FSCONFIG
TRACEPOINT_PROBE(syscalls, sys_enter_fsconfig)
{
	if (args->cmd != 7) /* FSCONFIG_CMD_RECONFIGURE */
		return 0;
	struct mount_call c = {};
	c.call = FSEV_CALL_FSCONFIG;
	c.flags = args->cmd;
	mount_call_enter(&c);
	return 0;
}
TRACEPOINT_PROBE(syscalls, sys_exit_fsconfig) { return mount_call_exit(args->ret); }
#endif

#if FSEV_TOPOLOGY_TRACEPOINT && FSEV_HAVE_SYS_MOUNT_SETATTR
TRACEPOINT_PROBE(syscalls, sys_enter_mount_setattr)
{
	struct mount_call c = {};
	u64 attr[2] = {}; /* struct mount_attr: attr_set, attr_clr */
	c.call = FSEV_CALL_MOUNT_SETATTR;
	c.flags = args->flags;
	user_str(c.target, sizeof(c.target), args->path);
	user_read(attr, sizeof(attr), args->uattr);
	c.value = (attr[0] & 0xffffffff) | (attr[1] << 32);
	mount_call_enter(&c);
	return 0;
}
TRACEPOINT_PROBE(syscalls, sys_exit_mount_setattr) { return mount_call_exit(args->ret); }
#endif

/* New mount namespaces, so that user space can mark them (fanotify) before
 * anything is mounted in them. */
#if FSEV_TOPOLOGY_NS && FSEV_HAVE_SYS_UNSHARE
TRACEPOINT_PROBE(syscalls, sys_enter_unshare)
{
	if (!(args->unshare_flags & FSEV_CLONE_NEWNS))
		return 0;
	struct mount_call c = {};
	c.call = FSEV_CALL_UNSHARE;
	mount_call_enter(&c);
	return 0;
}
TRACEPOINT_PROBE(syscalls, sys_exit_unshare) { return mount_call_exit(args->ret); }
#endif

#if FSEV_TOPOLOGY_NS && FSEV_HAVE_SYS_CLONE
TRACEPOINT_PROBE(syscalls, sys_enter_clone)
{
	if (!(args->clone_flags & FSEV_CLONE_NEWNS))
		return 0;
	struct mount_call c = {};
	c.call = FSEV_CALL_CLONE;
	mount_call_enter(&c);
	return 0;
}
TRACEPOINT_PROBE(syscalls, sys_exit_clone)
{
	if (args->ret == 0)
		return 0; /* the child's return: the parent's carries its pid */
	return mount_call_exit(args->ret);
}
#endif

#if FSEV_TOPOLOGY_NS && FSEV_HAVE_SYS_CLONE3
TRACEPOINT_PROBE(syscalls, sys_enter_clone3)
{
	u64 flags = 0; /* struct clone_args starts with u64 flags */
	user_read(&flags, sizeof(flags), args->uargs);
	if (!(flags & FSEV_CLONE_NEWNS))
		return 0;
	struct mount_call c = {};
	c.call = FSEV_CALL_CLONE3;
	mount_call_enter(&c);
	return 0;
}
TRACEPOINT_PROBE(syscalls, sys_exit_clone3)
{
	if (args->ret == 0)
		return 0;
	return mount_call_exit(args->ret);
}
#endif
