/* SPDX-License-Identifier: Apache-2.0
 * Reclaim family: the record of one reclaim stall, kswapd run or throttle.
 * Single definition: reclaim.bpf.c fills it, the Python decoder is generated from it
 * (otel_kernelnet/records.py), a test compiles it with gcc to check the layout.
 * Fields are ordered by size; padding is explicit.
 */
#ifndef KN_RECLAIM_H
#define KN_RECLAIM_H

/* kn_reclaim_event.type */
#define KN_RCL_EV_DIRECT   1 /* vmscan:mm_vmscan_direct_reclaim_begin -> _end (the task stalled) */
#define KN_RCL_EV_MEMCG    2 /* vmscan:mm_vmscan_memcg_reclaim_begin -> _end (charge over the cgroup's limit) */
#define KN_RCL_EV_KSWAPD   3 /* vmscan:mm_vmscan_kswapd_wake -> _sleep of one node */
#define KN_RCL_EV_THROTTLE 4 /* vmscan:mm_vmscan_throttled (the task slept usec_delayed) */

/* indexes of the per-CPU stats array (kn_stats, see common.bcc.h) */
#define KN_RCL_STAT_EMITTED     0 /* records written to the ring buffer */
#define KN_RCL_STAT_RATE_CAPPED 1 /* over the per-CPU per-second cap, not emitted */
#define KN_RCL_STAT_RB_FULL     2 /* ring buffer reservation failed */
#define KN_RCL_STAT_SEEN        3 /* ends, sleeps and throttles seen */
#define KN_RCL_STAT_UNMATCHED   4 /* an end without its begin (began before attach, or evicted) */
#define KN_RCL_STAT_MAX         5

struct kn_reclaim_event {
	__u64 start_ns;      /* begin (kswapd: wake; throttle: end - delay) */
	__u64 end_ns;        /* end (kswapd: sleep) */
	__u64 gfp_flags;     /* direct/memcg: the allocation's gfp flags (named by the format file) */
	__u64 nr_reclaimed;  /* direct/memcg: pages reclaimed */
	__u64 cgroup;        /* cgroup id of the task (see cgroup.bcc.h) */
	__u32 pid;           /* the task (tgid); kswapd: kswapd itself */
	__u32 tid;
	__u32 cpu;
	__s32 order;         /* direct/memcg/kswapd: allocation order */
	__s32 nid;           /* kswapd/throttle: NUMA node */
	__s32 zid;           /* kswapd: highest zone index */
	__s32 usec_timeout;  /* throttle */
	__s32 usec_delayed;  /* throttle */
	__s32 reason;        /* throttle: VMSCAN_THROTTLE_* bits */
	__u8  type;          /* KN_RCL_EV_* */
	__u8  reserved[3];
	char  comm[16];
};

#endif /* KN_RECLAIM_H */
