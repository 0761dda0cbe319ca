/* kernel_log.bpf.c: probe point kernel_log. A kernel log line of ext4, btrfs
 * or XFS was stored: one FSEV_TYPE_KERNEL_LOG record, class err, with the
 * printing task and the line's text in func+path (FSEV_F_TEXT, at most
 * FSEV_TEXT_LEN - 1 bytes and a NUL). fsev/points/kernel_log.py parses it and
 * hands it to the point of that filesystem.
 *
 * Rungs (#if switches, set by fsev/points/kernel_log.py):
 *   FSEV_KLOG_TP   tracepoint printk:console. It fires for every printk, so
 *                  the program keeps only lines whose first four bytes are
 *                  "EXT4", "BTRF" or "XFS " (fsev/linux/kernel_log.py PREFIXES):
 *                  one 4-byte read and three compares for every other line.
 * No device filter: the line names its device as text only; user space drops
 * lines of devices it does not watch (filesystems rate-limit their messages,
 * so there are few).
 * Offsets, maps: none of its own.
 */
#include "common.h"

#if FSEV_KLOG_TP
/* Little-endian words of the four-byte prefixes. */
#define FSEV_KLOG_EXT4 0x34545845u /* "EXT4" */
#define FSEV_KLOG_BTRF 0x46525442u /* "BTRF" */
#define FSEV_KLOG_XFS 0x20534658u  /* "XFS " */

TRACEPOINT_PROBE(printk, console)
{
	/* __data_loc: the low 16 bits are the text's offset in the record. */
	const char *msg = (const char *)args + (args->data_loc_msg & 0xFFFF);
	u32 head = 0;
	if (bpf_probe_read_kernel(&head, sizeof(head), msg))
		return 0;
	if (head != FSEV_KLOG_EXT4 && head != FSEV_KLOG_BTRF && head != FSEV_KLOG_XFS)
		return 0;
	struct fsev_record *r = new_record(FSEV_TYPE_KERNEL_LOG, FSEV_CLASS_ERR, FSEV_RUNG_TRACEPOINT);
	if (!r)
		return 0;
	/* func and path are adjacent char arrays: one text across both. */
	bpf_probe_read_kernel_str(r->func, FSEV_TEXT_LEN, msg);
	r->fields = FSEV_F_TEXT;
	events.ringbuf_submit(r, 0);
	return 0;
}
#endif
