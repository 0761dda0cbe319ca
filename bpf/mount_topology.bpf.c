/* mount_topology.bpf.c: probe point mount_topology. A mount-table call
 * succeeded (mount, move_mount, fsconfig reconfigure, mount_setattr), or a
 * task made a new mount namespace: one FSEV_TYPE_MOUNT record, class info
 * (call = enum fsev_call, arg = its flags, path = the target, func = the
 * fs type or the source, mntns = the task's mount namespace).
 *
 * Rungs (#if switches, set by fsev/points/mount_topology.py; 0 unless the
 * plan picked the rung and the user asked for class info):
 *   FSEV_TOPOLOGY_TRACEPOINT   the syscalls:sys_{enter,exit}_* tracepoints of
 *                              the mount-table calls (tracepoint rung, and
 *                              beside fanotify mount marks on the fanotify one)
 *   FSEV_TOPOLOGY_NS           unshare/clone/clone3 with CLONE_NEWNS, so user
 *                              space marks a new namespace (fanotify rung only)
 *   FSEV_HAVE_SYS_MOUNT, FSEV_HAVE_SYS_MOVE_MOUNT, FSEV_HAVE_SYS_FSCONFIG,
 *   FSEV_HAVE_SYS_MOUNT_SETATTR, FSEV_HAVE_SYS_UNSHARE, FSEV_HAVE_SYS_CLONE,
 *   FSEV_HAVE_SYS_CLONE3       1 for each call whose enter and exit
 *                              tracepoints this kernel has
 * Offsets: OFF_TASK_STRUCT_NSPROXY, OFF_NSPROXY_MNT_NS,
 * OFF_MNT_NAMESPACE_NS_INUM (task_mntns(), common.h).
 * Maps: mount_calls.
 */
#include "common.h"

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
	if (c.flags & (FSEV_MS_BIND | FSEV_MS_MOVE)) /* the source is a path */
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
	if (args->cmd != FSEV_FSCONFIG_CMD_RECONFIGURE)
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
