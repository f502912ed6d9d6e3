/* SPDX-License-Identifier: Apache-2.0
 * Softirq family: the record a NET_RX/NET_TX softirq that waited or ran too long
 * crosses the kernel boundary in. Single definition: softirq.bpf.c fills it, the
 * Python decoder is generated from it (otel_kernelnet/records.py), a test compiles it
 * with gcc to check sizes and offsets. Fields are ordered by size; no implicit holes.
 *
 * Culprits: the tasks that held the CPU while NET_RX work waited (raise, or the RPS
 * IPI that led to it, -> entry), the KN_SIRQ_CULPRITS longest first-come slots; time
 * of tasks that found no slot is in other_ns. culprit_comm holds KN_SIRQ_CULPRITS
 * names of 16 bytes each, back to back.
 */
#ifndef KN_SOFTIRQ_H
#define KN_SOFTIRQ_H

#define KN_SIRQ_CULPRITS   4
#define KN_SIRQ_COMM_BYTES 64  /* KN_SIRQ_CULPRITS * 16 */

/* index of a vector in our arrays and histograms (the kernel's numbers come from the
 * irq:softirq_* format files, -D KN_VEC_NET_RX / KN_VEC_NET_TX) */
#define KN_SIRQ_IDX_RX 0
#define KN_SIRQ_IDX_TX 1
#define KN_SIRQ_NIDX   2
#define KN_SIRQ_SLOTS  64      /* log2 histogram buckets (see probes/softirq.py) */

#define KN_SIRQ_F_KSOFTIRQD_WOKEN 0x01 /* ksoftirqd of this CPU was woken while the work waited */
#define KN_SIRQ_F_KSOFTIRQD_RAN   0x02 /* ... and was switched in (ksoftirqd_run_ns) */
#define KN_SIRQ_F_IN_KSOFTIRQD    0x04 /* the softirq ran in ksoftirqd, not on an interrupt exit */
#define KN_SIRQ_F_IPI             0x08 /* another CPU queued the work by RPS IPI first (ipi_ns) */
#define KN_SIRQ_F_NO_RAISE        0x10 /* no raise was seen (raised before attach): wait unknown */

/* indexes of the per-CPU stats array (kn_stats, see common.bcc.h) */
#define KN_SIRQ_STAT_EMITTED     0 /* records written to the ring buffer */
#define KN_SIRQ_STAT_RATE_CAPPED 1 /* over the per-CPU per-second cap, not emitted */
#define KN_SIRQ_STAT_RB_FULL     2 /* ring buffer reservation failed */
#define KN_SIRQ_STAT_SEEN        3 /* NET_RX/NET_TX softirq runs seen (exits) */
#define KN_SIRQ_STAT_NO_RAISE    4 /* runs without a recorded raise (wait unknown, not in the wait histogram) */
#define KN_SIRQ_STAT_MAX         5

struct kn_softirq_event {
	__u64 start_ns;          /* start of the wait: the raise, or the IPI queueing before it */
	__u64 raise_ns;          /* first softirq_raise since the last run (0: not seen) */
	__u64 entry_ns;          /* softirq_entry */
	__u64 exit_ns;           /* softirq_exit */
	__u64 ipi_ns;            /* KN_SIRQ_F_IPI: when another CPU queued the RPS IPI */
	__u64 ipi_entry_ns;      /* KN_SIRQ_F_IPI: when this CPU took it */
	__u64 ksoftirqd_wake_ns; /* KN_SIRQ_F_KSOFTIRQD_WOKEN */
	__u64 ksoftirqd_run_ns;  /* KN_SIRQ_F_KSOFTIRQD_RAN */
	__u64 other_ns;          /* wait time of tasks beyond the culprit slots */
	__u64 irq_cgroup;        /* cgroup id of the interrupted task (see cgroup.bcc.h) */
	__u64 ipi_cgroup;        /* cgroup id of the task running when the IPI was taken */
	__u64 culprit_ns[KN_SIRQ_CULPRITS];     /* time each held the CPU during the wait (0: empty slot) */
	__u64 culprit_cgroup[KN_SIRQ_CULPRITS];
	__u32 culprit_pid[KN_SIRQ_CULPRITS];    /* tgid */
	__u32 culprit_tid[KN_SIRQ_CULPRITS];
	__u32 cpu;
	__u32 vec;               /* the kernel's vector number (named by the format file) */
	__u32 irq_pid;           /* task running when the softirq started (tgid) */
	__u32 irq_tid;
	__u32 ipi_pid;           /* task running when the IPI was finally taken (tgid) */
	__u32 napi_polls;        /* napi:napi_poll calls during the run */
	__u32 napi_work;         /* packets they processed */
	__u32 napi_budget;       /* the budget of the last poll */
	__u32 napi_exhausted;    /* polls that used their whole budget */
	__u32 switches;          /* context switches on this CPU during the wait */
	__u32 flags;             /* KN_SIRQ_F_* */
	__u32 reserved;          /* explicit padding */
	char  irq_comm[16];
	char  ipi_comm[16];
	char  culprit_comm[KN_SIRQ_COMM_BYTES];
};

#endif /* KN_SOFTIRQ_H */
