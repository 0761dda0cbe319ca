/* sys_exit.bpf.c: the one raw tracepoint program on sys_exit, which two probe
 * points share (a program can be defined once): enospc's raw and kprobe
 * rungs look at every syscall that failed with ENOSPC, read_only's raw rung
 * at the exit of a task that raised an ext4 error.
 *
 * Switches (set by fsev/points/enospc.py and fsev/points/read_only.py):
 *   FSEV_ENOSPC_RAW_TP, FSEV_ENOSPC_KPROBE   call enospc_at_exit()
 *                                            (bpf/enospc.bpf.c)
 *   FSEV_RO_RAW_TP                           call ro_check_at_exit()
 *                                            (bpf/read_only.bpf.c)
 * Compiled after those two files (bpf/fsev.bpf.c includes them first).
 * Offsets: none of its own. Maps: none.
 */
#include "common.h"

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
