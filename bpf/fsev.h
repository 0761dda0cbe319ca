/* fsev.h: the one definition of every kernel -> user record, its enums, and
 * every number both sides use.
 *
 * Included by every BPF program (through bpf/common.h) and read by
 * fsev/kernel/records.py: it parses the integer #defines and the enums below at
 * import (records.FSEV_H, and the enum classes RecordClass, RecordType, ...),
 * so Python never writes one of these numbers again. The struct layouts are
 * mirrored field for field in fsev/kernel/records.py; tests/kernel/test_records_contract.py
 * checks that mirror against the structs bcc compiles from this file. Change
 * both or neither.
 *
 * Every enum reserves 0, so a zeroed record never decodes as a real event.
 * Field types are bcc's u64/u32/s32 (not __u64): bcc's event decoder maps
 * only those names, and the contract test decodes through it.
 * Keep the #defines and enum values integer expressions of literals, earlier
 * names, ( ) and | & ^ << >> + - * ~ : that is all fsev/kernel/records.py evaluates.
 */
#ifndef FSEV_H
#define FSEV_H

#define FSEV_COMM_LEN 16
#define FSEV_FUNC_LEN 48
#define FSEV_PATH_LEN 64
#define FSEV_TEXT_LEN (FSEV_FUNC_LEN + FSEV_PATH_LEN)

/* Kernel ABI numbers the programs test or record and user space decodes or
 * compares with. Prefixed FSEV_: the programs do not take them from kernel
 * headers (a stand-in headers tree may not match the running kernel), and
 * the prefix keeps them clear of the headers bcc includes anyway. */
#define FSEV_ENOSPC 28             /* errno: ENOSPC records' err */
#define FSEV_EFSCORRUPTED 117      /* errno EUCLEAN: what __ext4_error_file records */
#define FSEV_EROFS 30              /* errno: btrfs's "already read-only", no error (btrfs_error.bpf.c) */
#define FSEV_MAX_ERRNO 4095        /* errseq_t: its low 12 bits are the errno */
#define FSEV_AT_FDCWD (-100)       /* a dirfd: the path is relative to the cwd */
#define FSEV_SB_RDONLY 1           /* super_block.s_flags: read-only superblock */
#define FSEV_MNT_DETACH 2          /* umount2(2) flags: lazy unmount */
#define FSEV_MS_BIND 4096          /* mount(2) flags: a bind mount... */
#define FSEV_MS_MOVE 8192          /* ...or a move: the source is a path */
#define FSEV_FSCONFIG_CMD_RECONFIGURE 7 /* fsconfig(2) cmd: a remount */
#define FSEV_CLONE_NEWNS 0x00020000 /* unshare/clone flags: a new mount namespace */

/* ENOSPC storms: a storm is over after this long without a failure on its
 * superblock; the next failure is sent as a record (bpf/enospc.bpf.c). */
#define FSEV_ENOSPC_QUIET_NS 1000000000ull

enum fsev_class {
	FSEV_CLASS_NONE = 0,
	FSEV_CLASS_INFO = 1, /* unmount, mount changes */
	FSEV_CLASS_WARN = 2, /* ENOSPC */
	FSEV_CLASS_ERR = 3,  /* fs errors, read-only, I/O errors */
	FSEV_CLASS_THR = 4,  /* free-space thresholds */
};

/* Bit (1 << class) of the load-time class mask FSEV_CLASS_MASK. */
#define FSEV_CLASS_BIT(c) (1u << (c))

enum fsev_type {
	FSEV_TYPE_NONE = 0,
	FSEV_TYPE_FS_ERROR = 1,  /* an ext4 error was raised */
	FSEV_TYPE_UMOUNT = 2,    /* a mount was dropped */
	FSEV_TYPE_THRESHOLD = 3, /* available blocks crossed a level */
	/* read-only, ENOSPC, block I/O, writeback, mount-table records */
	FSEV_TYPE_READ_ONLY = 4,      /* a filesystem turned read-only (or back) */
	FSEV_TYPE_ENOSPC = 5,         /* a write/fallocate/create/mkdir failed with ENOSPC */
	FSEV_TYPE_BLOCK_IO_ERROR = 6, /* a block request completed with an error */
	FSEV_TYPE_WB_ERROR = 7,       /* writeback error recorded on a file (errseq) */
	FSEV_TYPE_MOUNT = 8,          /* a mount-table call succeeded, or a mount namespace was made */
	FSEV_TYPE_KERNEL_LOG = 9,     /* a kernel log line of a filesystem fsev knows (text: FSEV_F_TEXT) */
	FSEV_TYPE_BTRFS_ERROR = 10,   /* btrfs: a filesystem error or (value 1) the first transaction abort */
	FSEV_TYPE_BTRFS_DEV_STAT = 11, /* btrfs counts a device error (value devid, arg counter): a sign */
	FSEV_TYPE_XFS_ERROR = 12,     /* XFS metadata marked sick/corrupt, a btree or verifier failure */
	FSEV_TYPE_SHUTDOWN = 13,      /* a filesystem was forced to shut down */
	FSEV_TYPE_FSERROR = 14,       /* fserror_report() (7.0+): a filesystem reported an error */
};

/* How the record was obtained: the rung of the probe ladder. */
enum fsev_rung {
	FSEV_RUNG_NONE = 0,
	FSEV_RUNG_KPROBE = 1,
	FSEV_RUNG_TRACEPOINT = 2,
	FSEV_RUNG_RAW_TRACEPOINT = 3,
};

/* Which optional fields the rung filled in (fsev_record.fields). */
enum fsev_field {
	FSEV_F_ERRNO = 1 << 0,
	FSEV_F_INODE = 1 << 1,
	FSEV_F_BLOCK = 1 << 2,
	FSEV_F_LINE = 1 << 3,
	FSEV_F_FUNC = 1 << 4,
	FSEV_F_PATH = 1 << 5,
	FSEV_F_MNT_ID = 1 << 6,
	FSEV_F_LAZY = 1 << 7, /* umount with MNT_DETACH */
	/* threshold hint: the accounting change this event announces happens
	 * after it, by an amount it cannot see; user space re-checks a while */
	FSEV_F_SETTLE = 1 << 8,
	/* high bits, so other additions below stay clear of them */
	FSEV_F_MNTNS = 1 << 16,      /* fsev_record.mntns is the task's mount namespace */
	FSEV_F_PATH_EXACT = 1 << 17, /* ENOSPC: dev is the created entry's parent directory's */
	/* func and path hold one NUL-terminated text of FSEV_TEXT_LEN bytes
	 * (they are adjacent char arrays): a kernel log line */
	FSEV_F_TEXT = 1 << 18,
};

/* The call behind a record (fsev_record.call). Syscall names are
 * the x86-64 ones; fsev/points/enospc.py and fsev/points/mount_topology.py name them. */
enum fsev_call {
	FSEV_CALL_NONE = 0,
	FSEV_CALL_WRITE = 1,
	FSEV_CALL_PWRITE64 = 2,
	FSEV_CALL_WRITEV = 3,
	FSEV_CALL_PWRITEV = 4,
	FSEV_CALL_PWRITEV2 = 5,
	FSEV_CALL_FALLOCATE = 6,
	FSEV_CALL_OPEN = 7,
	FSEV_CALL_OPENAT = 8,
	FSEV_CALL_OPENAT2 = 9,
	FSEV_CALL_CREAT = 10,
	FSEV_CALL_MKDIR = 11,
	FSEV_CALL_MKDIRAT = 12,
	FSEV_CALL_MOUNT = 13,
	FSEV_CALL_MOVE_MOUNT = 14,
	FSEV_CALL_FSCONFIG = 15,
	FSEV_CALL_MOUNT_SETATTR = 16,
	FSEV_CALL_UNSHARE = 17,
	FSEV_CALL_CLONE = 18,
	FSEV_CALL_CLONE3 = 19,
	FSEV_CALL_EXT4_ERROR = 20,       /* read-only: ext4's error handling */
	FSEV_CALL_RECONFIGURE_SUPER = 21, /* read-only: a remount (kprobe rung) */
};

/* Read-only state of a superblock (READ_ONLY records: value = after, arg = before). */
enum fsev_ro_bits {
	FSEV_RO_SB_RDONLY = 1 << 0, /* super_block.s_flags & SB_RDONLY (ext4 errors=remount-ro < 6.12) */
	FSEV_RO_EMERGENCY = 1 << 1, /* ext4_sb_info.s_ext4_flags EXT4_FLAGS_EMERGENCY_RO (6.12+) */
	FSEV_RO_SHUTDOWN = 1 << 2,  /* EXT4_FLAGS_SHUTDOWN: what errors=remount-ro sets on 6.7-6.11,
				     * and the shutdown ioctl */
	FSEV_RO_ABORTED = 1 << 3,   /* ext4_sb_info.s_mount_flags EXT4_MF_FS_ABORTED (up to 6.5): all
				     * that stable kernels without SB_RDONLY after errors set (Debian 6.1) */
};

/* XFS_ERROR records: what the kernel reported (fsev_record.arg, low byte)
 * and the scope of a health mark (arg >> FSEV_XFS_SCOPE_SHIFT). */
enum fsev_xfs_report {
	FSEV_XFS_NONE = 0,
	FSEV_XFS_MARK_SICK = 1,        /* xfs_*_mark_sick: runtime code met corruption */
	FSEV_XFS_MARK_CORRUPT = 2,     /* xfs_*_mark_corrupt: scrub found it */
	FSEV_XFS_BTREE_CORRUPT = 3,    /* xfs_btree_corrupt: a btree block failed its checks */
	FSEV_XFS_CORRUPTION_ERROR = 4, /* xfs_corruption_error (kprobe): file, line, tag */
	FSEV_XFS_VERIFIER_ERROR = 5,   /* xfs_buf_verifier_error (kprobe): verifier name, errno */
	FSEV_XFS_INODE_VERIFIER = 6,   /* xfs_inode_verifier_error (kprobe): inode, errno */
};
enum fsev_xfs_scope {
	FSEV_XFS_SCOPE_NONE = 0,
	FSEV_XFS_SCOPE_FS = 1,
	FSEV_XFS_SCOPE_AG = 2,
	FSEV_XFS_SCOPE_RTGROUP = 3,
	FSEV_XFS_SCOPE_INODE = 4,
};
#define FSEV_XFS_SCOPE_SHIFT 8

/* Threshold crossing direction (fsev_record.direction). */
enum fsev_direction {
	FSEV_DIR_NONE = 0,
	FSEV_DIR_DOWN = 1, /* available blocks fell to the level */
	FSEV_DIR_UP = 2,   /* available blocks rose back above it */
};

/* One record, every type. The common fields (ts_ns .. comm) mean the same for
 * every type; `fields` says which optional ones a rung filled in. The others
 * mean one thing each per type, as the type's probe point writes them
 * (bpf/<point>.bpf.c) and decodes them (fsev/points/<point>.py finish()):
 *
 *   field     FS_ERROR   UMOUNT   THRESHOLD      READ_ONLY     ENOSPC          BLOCK_IO_ERROR  WB_ERROR  MOUNT
 *   ino       inode      -        -              -             inode (write)   -               inode     -
 *   block     fs block   -        -              -             -               sector          -         -
 *   value     -          -        avail blocks   ro bits after failure number  bytes           errseq    mount_setattr set | clr << 32
 *   err       errno      -        -              -             ENOSPC          errno           errno     -
 *   line      line       -        -              -             -               -               -         -
 *   func      function   -        -              -             -               rwbs            -         fs type / source
 *   path      -          target   -              -             path (create)   -               -         target
 *   level     -          -        1 = L1, 2 = L2 -             -               -               -         -
 *   direction -          -        fsev_direction -             -               -               -         -
 *   mntns     -          -        -              -             -               -               -         task's mount ns
 * FSERROR (bpf/fserror.bpf.c): ino inode, err errno, level fserror_type + 1,
 *   value pos, mntns len (bytes), func the filesystem type's name.
 *   call      -          -        -              fsev_call     fsev_call       -               -         fsev_call
 *   arg       -          -        -              ro bits before -              blk_status_t    -         MS_* / cmd flags
 *   cause_ns  -          -        -              the error's ktime -           -               -         -
 *
 * BTRFS_ERROR: as FS_ERROR, and value 1 for the first transaction abort since mount.
 * BTRFS_DEV_STAT: dev (the filesystem's), value = devid, arg = the counter (enum btrfs_dev_stat_values).
 *
 *   field     XFS_ERROR                                  SHUTDOWN
 *   ino       inode (FSEV_F_INODE)                       -
 *   block     -                                          -
 *   value     health mask; btree: the block's daddr      reason flags (the filesystem's own)
 *   err       errno (verifier errors)                    -
 *   line      source line (FSEV_F_LINE)                  source line (FSEV_F_LINE)
 *   func      btree / verifier name; kprobe: file name   source file
 *   path      kprobe: the corruption's tag (expression)  -
 *             (func and path reach finish() together: FSEV_F_TEXT is set)
 *   level     btree level + 1 (0: unknown)               -
 *   direction group number (scope ag / rtgroup)           -
 *   mntns     failaddr or caller, a kernel text address  -
 *   arg       fsev_xfs_report | fsev_xfs_scope << 8      tag (XFS_PTAG_*)
 */
struct fsev_record {
	u64 ts_ns;  /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
	u64 ino;    /* inode number (FSEV_F_INODE) */
	u64 block;  /* fs block number, or a device sector (FSEV_F_BLOCK) */
	u64 value;  /* per type: see the table above */
	u32 type;   /* enum fsev_type */
	u32 cls;    /* enum fsev_class */
	u32 rung;   /* enum fsev_rung */
	u32 fields; /* enum fsev_field bits */
	u32 dev;    /* kernel dev_t: major << 20 | minor */
	u32 pid;    /* thread id */
	u32 tgid;   /* process id */
	s32 err;    /* positive errno (FSEV_F_ERRNO) */
	u32 line;   /* source line of the error (FSEV_F_LINE) */
	u32 mnt_id; /* mount id as in /proc/self/mountinfo (FSEV_F_MNT_ID) */
	u32 level;  /* threshold level index: 1 = L1, 2 = L2 */
	u32 direction; /* enum fsev_direction */
	char comm[FSEV_COMM_LEN];
	char func[FSEV_FUNC_LEN]; /* kernel function that raised the error */
	char path[FSEV_PATH_LEN]; /* a path as the caller passed it */
	u64 mntns;  /* mount namespace inode number of the task (FSEV_F_MNTNS) */
	u32 call;   /* enum fsev_call */
	u32 arg;    /* call flags (mount(2) MS_*, fsconfig cmd), read-only bits before, blk_status_t */
	u64 cause_ns; /* ktime of the kernel event this record follows from (READ_ONLY: the error) */
};

/* Threshold records (FSEV_TYPE_THRESHOLD) from the kernel are hints, never
 * crossings: `value` is the approximate available blocks the per-CPU counters
 * gave, `level`/`direction` the crossing that may have happened. User space
 * confirms with statfs before it reports anything (fsev/thresholds/monitor.py). */

/* Which counters a watched superblock's available blocks come from. */
enum fsev_thr_kind {
	FSEV_THR_NONE = 0,
	FSEV_THR_SHMEM = 1, /* tmpfs: shmem_sb_info max_blocks - used_blocks */
	FSEV_THR_EXT4 = 2,  /* ext4: as ext4_statfs computes f_bavail */
};

/* Watched superblocks with a kernel rung, at most (thr_state slots). */
#define FSEV_THR_SLOTS 1024

/* Value of the thr_state map (an array: one slot per watched superblock).
 * Written by user space at start and after each confirmed crossing (depth);
 * last_hint_ns and gate alone are written by the BPF side, and user space
 * resets gate to a fresh generation with no share when it writes (so every
 * CPU re-checks under the new depth). Mirrored by fsev/kernel/records.py ThrState. */
struct fsev_thr_state {
	u64 l1;           /* L1 in available blocks */
	u64 l2;           /* L2 (used only when nlevels == 2) */
	u64 hysteresis;   /* blocks above a level before it re-arms */
	u64 band;         /* bound on |counter estimate - statfs| in blocks */
	u64 slack;        /* blocks a check keeps back from the margin it shares
			   * out: events in flight on the other CPUs as it claims */
	u64 last_hint_ns; /* BPF side: rate limit of hints */
	u64 gate;         /* BPF side: generation << 32 | share. A check claims the
			   * next generation (share 0) before it reads the counters,
			   * then publishes the blocks each CPU may see change before
			   * a crossing is possible; while its share lasts, a CPU does
			   * not read the counters */
	u32 step;         /* blocks one event may move: tmpfs, a huge folio's
			   * pages; ext4, blocks per cluster (times the count) */
	u32 kind;         /* enum fsev_thr_kind */
	u32 nlevels;      /* 1 or 2 */
	u32 depth;        /* confirmed: 0 above L1, 1 at/below L1, 2 at/below L2 */
	u32 dev;          /* kernel dev_t of the superblock: names hints, and
			   * verifies a cached verdict before its counters are read */
	u32 cpus;         /* possible CPUs: how many shares a budget is cut into */
};

#endif /* FSEV_H */
