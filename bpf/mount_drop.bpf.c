/* mount_drop.bpf.c: probe point mount_drop. A mount was dropped: one
 * FSEV_TYPE_UMOUNT record, class info.
 *
 * Rungs (#if switches, set by fsev/points/mount_drop.py; 0 unless the plan
 * picked that rung and the user asked for class info):
 *   FSEV_MOUNT_DROP_KPROBE      kprobe on cleanup_mnt (kp_cleanup_mnt): the
 *                               last reference to a mount is gone, whatever
 *                               dropped it (lazy unmounts, namespace teardown)
 *   FSEV_MOUNT_DROP_TRACEPOINT  tracepoints syscalls:sys_{enter,exit}_umount:
 *                               successful umount(2) calls, with the target
 *                               path as the caller passed it
 * Offsets (kprobe rung): OFF_MOUNT_MNT_MNT_SB, OFF_MOUNT_MNT_ID,
 * OFF_SUPER_BLOCK_S_DEV.
 * Maps (tracepoint rung): umount_in_flight; watched_paths, which user space
 * fills with the watched mount points when FSEV_WATCH_ALL is 0.
 */
#include "common.h"

#if FSEV_MOUNT_DROP_KPROBE
/* cleanup_mnt(struct mount *mnt): the last reference to a mount is gone. */
int kp_cleanup_mnt(struct pt_regs *ctx)
{
	void *mnt = (void *)PT_REGS_PARM1(ctx);
	void *sb = 0;
	int mnt_id = 0;
	READ_KERNEL(sb, mnt, OFF_MOUNT_MNT_MNT_SB);
	u32 dev = sb_dev(sb);
	if (!dev_watched(dev, FSEV_CLASS_BIT(FSEV_CLASS_INFO)))
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
struct path_key {
	char path[FSEV_PATH_LEN];
};

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
	user_str(a.target.path, sizeof(a.target.path), args->name);
	if (!every_mount_watched(FSEV_CLASS_BIT(FSEV_CLASS_INFO)) && !watched_paths.lookup(&a.target))
		return 0;
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
			r->fields = FSEV_F_PATH | ((a->flags & FSEV_MNT_DETACH) ? FSEV_F_LAZY : 0);
			events.ringbuf_submit(r, 0);
		}
	}
	umount_in_flight.delete(&tid);
	return 0;
}
#endif
