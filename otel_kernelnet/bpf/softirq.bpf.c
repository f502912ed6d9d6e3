/* SPDX-License-Identifier: Apache-2.0
 * Softirq family: per CPU, NET_RX and NET_TX raise -> entry (wait) -> exit (run).
 *
 * Every run goes into log2 histograms of wait and run (kn_sirq_hist, per CPU); a run
 * whose wait or run reaches its threshold becomes one record (softirq.h), rate-capped
 * per CPU, losses counted. For NET_RX the record names the culprits: the tasks that
 * held the CPU while the work waited (sched:sched_switch charges the task switched
 * out; the task interrupted at entry is charged up to the entry), whether ksoftirqd
 * was woken and when it got the CPU, and, when another CPU queued the packets by RPS
 * IPI (csd:csd_queue_cpu of rps_trigger_softirq), how long this CPU took to take that
 * IPI: a CPU with interrupts off delays the raise itself, and the task running when
 * the IPI is finally taken is the one that had them off.
 *
 * The sched_switch handler runs on every context switch: it is O(1) (a per-CPU
 * lookup, a timestamp, and when NET_RX is pending a scan of KN_SIRQ_CULPRITS slots).
 *
 * No struct layout comes from kernel headers: tracepoint field offsets (KN_TP_*) come
 * from the running kernel's format files, vector numbers (KN_VEC_*) from their
 * __print_symbolic tables, the RPS IPI function's address (KN_RPS_FUNC) from
 * kallsyms; all arrive as -D constants (probes/softirq.py). Optional parts are
 * compiled out with KN_HAVE_* 0.
 *
 * Raw tracepoints: with KN_RAW_<KEY> 1 a program is attached as a raw tracepoint and
 * takes its arguments from ctx->args[KN_ARG_<KEY>_<ROLE>] (positions from the running
 * kernel's BTF btf_trace_* prototypes; task_struct.pid at KN_OFF_TASK_PID from BTF);
 * the kernel then builds no trace record and does not skip the program when it fires
 * nested in another BPF program. With 0 it is the classic tracepoint (KN_TP_* offsets).
 *
 * Cost: programs test the vector (raise/entry/exit) or the pending NET_RX state
 * (switch/waking/napi) before anything else; the name and cgroup of the task
 * interrupted at entry are read at exit and only for a run that becomes a record (the
 * softirq runs in that task's context from entry to exit).
 */
#include "softirq.h"

#ifndef KN_RATE_LIMIT
#define KN_RATE_LIMIT 1000       /* records per CPU per second; excess is counted */
#endif
#ifndef KN_RINGBUF_PAGES
#define KN_RINGBUF_PAGES 64
#endif
#ifndef KN_WAIT_THRESHOLD_NS
#define KN_WAIT_THRESHOLD_NS 1000000ULL
#endif
#ifndef KN_RUN_THRESHOLD_NS
#define KN_RUN_THRESHOLD_NS 1000000ULL
#endif
#ifndef KN_MAX_CPUS
#define KN_MAX_CPUS 1024
#endif
#ifndef KN_VEC_NET_RX
#error "KN_VEC_* and KN_TP_* must come from the running kernel's format files (probes/softirq.py)"
#endif
#ifndef KN_HAVE_SWITCH
#define KN_HAVE_SWITCH 0
#endif
#ifndef KN_HAVE_WAKING
#define KN_HAVE_WAKING 0
#endif
#ifndef KN_HAVE_NAPI
#define KN_HAVE_NAPI 0
#endif
#ifndef KN_HAVE_IPI
#define KN_HAVE_IPI 0
#endif
#ifndef KN_RAW_RAISE
#define KN_RAW_RAISE 0
#endif
#ifndef KN_RAW_ENTRY
#define KN_RAW_ENTRY 0
#endif
#ifndef KN_RAW_EXIT
#define KN_RAW_EXIT 0
#endif
#ifndef KN_RAW_SWITCH
#define KN_RAW_SWITCH 0
#endif
#ifndef KN_RAW_WAKING
#define KN_RAW_WAKING 0
#endif
#ifndef KN_RAW_NAPI
#define KN_RAW_NAPI 0
#endif
#ifndef KN_OFF_TASK_PID
#define KN_OFF_TASK_PID -1
#endif
#define KN_ARG(i) (((u64 *)ctx)[(i)])
/* the vector of a softirq_* event: an argument (raw) or a record field (classic) */
#define KN_VEC_OF(key) (KN_RAW_##key ? (u32)KN_ARG(KN_ARG_##key##_VEC) : *(u32 *)(ctx + KN_TP_##key##_VEC))
#ifndef KN_ARG_RAISE_VEC
#define KN_ARG_RAISE_VEC 0
#endif
#ifndef KN_ARG_ENTRY_VEC
#define KN_ARG_ENTRY_VEC 0
#endif
#ifndef KN_ARG_EXIT_VEC
#define KN_ARG_EXIT_VEC 0
#endif
#ifndef KN_ARG_SWITCH_NEXT
#define KN_ARG_SWITCH_NEXT 0
#endif
#ifndef KN_ARG_WAKING_P
#define KN_ARG_WAKING_P 0
#endif

BPF_RINGBUF_OUTPUT(kn_sirq_events, KN_RINGBUF_PAGES);
#define KN_STATS_MAX KN_SIRQ_STAT_MAX
#include "common.bcc.h"
#include "cgroup.bcc.h"

/* log2 histograms, per CPU: index (measure * KN_SIRQ_NIDX + vector index) * SLOTS + slot,
 * measure 0 = wait, 1 = run; slot 0: 0 ns, slot s >= 1: [2^(s-1), 2^s) ns */
BPF_PERCPU_ARRAY(kn_sirq_hist, u64, 2 * KN_SIRQ_NIDX * KN_SIRQ_SLOTS);
/* ns summed per (measure, vector index), for the histograms' sums */
BPF_PERCPU_ARRAY(kn_sirq_hist_sum, u64, 2 * KN_SIRQ_NIDX);
/* cpu -> pid of that CPU's ksoftirqd (filled by probes/softirq.py at start) */
BPF_ARRAY(kn_sirq_ksoftirqd, u32, KN_MAX_CPUS);
/* target cpu -> when another CPU queued the RPS IPI to it (0: none outstanding) */
BPF_ARRAY(kn_sirq_ipi, u64, KN_MAX_CPUS);

struct kn_sirq_vec {
	u64 raise_ns;  /* pending since (0: not pending) */
	u64 start_ns;  /* raise_ns, or the earlier IPI queueing */
	u64 entry_ns;  /* in a run since (0: not running) */
	u64 run_raise_ns, run_start_ns;  /* the raise/start of the run in progress */
};

struct kn_sirq_cpu {
	struct kn_sirq_vec v[KN_SIRQ_NIDX];
	u64 since;                  /* last context switch on this CPU */
	/* NET_RX culprits of the current wait */
	u64 slot_ns[KN_SIRQ_CULPRITS];
	u64 slot_cgroup[KN_SIRQ_CULPRITS];
	u32 slot_pid[KN_SIRQ_CULPRITS];
	u32 slot_tid[KN_SIRQ_CULPRITS];
	char slot_comm[KN_SIRQ_CULPRITS][16];
	u64 other_ns;
	u32 switches;
	u32 flags;
	u64 ksoftirqd_wake_ns, ksoftirqd_run_ns;
	/* this CPU's ksoftirqd is runnable since (woken, or preempted) and has not had the
	 * CPU yet; tracked also outside a wait, so a ksoftirqd woken before the work started
	 * waiting (starved behind a real-time task) is seen. 0: not runnable or unknown */
	u64 ksd_runnable_ns;
	/* the RPS IPI that preceded the raise */
	u64 ipi_ns, ipi_entry_ns, ipi_cgroup;
	u32 ipi_pid;
	char ipi_comm[16];
	/* the interrupted task at entry, and napi work of the run */
	u64 irq_cgroup;
	u32 irq_pid, irq_tid;
	char irq_comm[16];
	u32 napi_polls, napi_work, napi_budget, napi_exhausted;
	int irq_slot;  /* culprit slot opened at entry for the interrupted task: name/cgroup filled at exit */
};
BPF_PERCPU_ARRAY(kn_sirq_state, struct kn_sirq_cpu, 1);

static __always_inline struct kn_sirq_cpu *kn_state(void)
{
	int zero = 0;
	return kn_sirq_state.lookup(&zero);
}

static __always_inline int kn_vec_index(u32 vec)
{
	if (vec == KN_VEC_NET_RX)
		return KN_SIRQ_IDX_RX;
	if (vec == KN_VEC_NET_TX)
		return KN_SIRQ_IDX_TX;
	return -1;
}

static __always_inline u32 kn_log2_slot(u64 v)
{
	if (!v)
		return 0;
	u32 r = 1;
	if (v >> 32) { v >>= 32; r += 32; }
	if (v >> 16) { v >>= 16; r += 16; }
	if (v >> 8) { v >>= 8; r += 8; }
	if (v >> 4) { v >>= 4; r += 4; }
	if (v >> 2) { v >>= 2; r += 2; }
	if (v >> 1) { r += 1; }
	return r < KN_SIRQ_SLOTS ? r : KN_SIRQ_SLOTS - 1;
}

static __always_inline void kn_hist(int measure, int idx, u64 v)
{
	int i = (measure * KN_SIRQ_NIDX + idx) * KN_SIRQ_SLOTS + kn_log2_slot(v);
	u64 *c = kn_sirq_hist.lookup(&i);
	if (c)
		(*c)++;
	int j = measure * KN_SIRQ_NIDX + idx;
	u64 *sum = kn_sirq_hist_sum.lookup(&j);
	if (sum)
		*sum += v;
}

/* charge `d` ns of the NET_RX wait to task tid (current); O(KN_SIRQ_CULPRITS). Returns
 * the slot it opened (-1: none); with fill 0 the new slot's name and cgroup are left for
 * the caller to fill later (kn_fill_slot, while tid is still current). */
static __always_inline int kn_charge(struct kn_sirq_cpu *s, u32 tid, u32 pid, const char *comm,
				     int comm_from_ctx, u64 d, int fill)
{
	if (!d)
		return -1;
	int free = -1, min = 0;
#pragma unroll
	for (int i = 0; i < KN_SIRQ_CULPRITS; i++) {
		if (s->slot_ns[i] && s->slot_tid[i] == tid) {
			s->slot_ns[i] += d;
			return -1;
		}
		if (!s->slot_ns[i] && free < 0)
			free = i;
		if (s->slot_ns[i] < s->slot_ns[min])
			min = i;
	}
	int i = free;
	if (i < 0) {
		/* full: the shortest slot gives way only to a longer holder */
		if (d <= s->slot_ns[min]) {
			s->other_ns += d;
			return -1;
		}
		s->other_ns += s->slot_ns[min];
		i = min;
	}
	if (i < 0 || i >= KN_SIRQ_CULPRITS)
		return -1;
	s->slot_ns[i] = d;
	s->slot_tid[i] = tid;
	s->slot_pid[i] = pid;
	if (!fill)
		return i;
	s->slot_cgroup[i] = kn_current_cgroup();  /* the charged task is current in both callers */
	if (comm_from_ctx)
		bpf_probe_read_kernel(s->slot_comm[i], 16, comm);
	else
		bpf_get_current_comm(s->slot_comm[i], 16);
	return i;
}

/* name and cgroup of a slot opened without them (fill 0): the task is current again */
static __always_inline void kn_fill_slot(struct kn_sirq_cpu *s, int i)
{
	if (i < 0 || i >= KN_SIRQ_CULPRITS)
		return;
	s->slot_cgroup[i] = kn_current_cgroup();
	bpf_get_current_comm(s->slot_comm[i], 16);
}

static __always_inline void kn_reset_wait(struct kn_sirq_cpu *s)
{
	__builtin_memset(s->slot_ns, 0, sizeof(s->slot_ns));
	s->other_ns = 0;
	s->switches = 0;
	s->flags = 0;
	s->ksoftirqd_wake_ns = 0;
	s->ksoftirqd_run_ns = 0;
	s->irq_slot = -1;
}

static __always_inline u32 kn_ksoftirqd_pid(u32 cpu)
{
	int k = cpu;
	u32 *p = kn_sirq_ksoftirqd.lookup(&k);
	return p ? *p : 0;
}

/* pid is this CPU's ksoftirqd (0 never is) */
static __always_inline int kn_is_ksoftirqd(u32 pid)
{
	return pid && pid == kn_ksoftirqd_pid(bpf_get_smp_processor_id());
}

/* pid of a task given to a tracepoint: a raw one passes the task_struct (pid at its BTF
 * offset), a classic one the pid field of its record */
#define KN_TASK_PID(dst, raw, argi, tpoff)								\
	do {												\
		if (raw)										\
			bpf_probe_read_kernel(&(dst), sizeof(dst), (void *)KN_ARG(argi) + KN_OFF_TASK_PID);	\
		else											\
			dst = *(u32 *)(ctx + (tpoff));							\
	} while (0)

int kn_sirq_on_raise(void *ctx)
{
	u32 vec = KN_VEC_OF(RAISE);
	int idx = kn_vec_index(vec);
	if (idx < 0)
		return 0;
	struct kn_sirq_cpu *s = kn_state();
	if (!s)
		return 0;
	struct kn_sirq_vec *v = &s->v[idx & 1];
	if (v->raise_ns)
		return 0;  /* already pending: the wait started at the first raise */
	u64 now = bpf_ktime_get_ns();
	v->raise_ns = now;
	v->start_ns = now;
	if (idx == KN_SIRQ_IDX_RX && s->ipi_ns && s->ipi_ns < now)
		v->start_ns = s->ipi_ns;
	return 0;
}

int kn_sirq_on_entry(void *ctx)
{
	u32 vec = KN_VEC_OF(ENTRY);
	int idx = kn_vec_index(vec);
	if (idx < 0)
		return 0;
	struct kn_sirq_cpu *s = kn_state();
	if (!s)
		return 0;
	u64 now = bpf_ktime_get_ns();
	struct kn_sirq_vec *v = &s->v[idx & 1];
	v->entry_ns = now;
	v->run_raise_ns = v->raise_ns;
	v->run_start_ns = v->start_ns;
	v->raise_ns = 0;
	v->start_ns = 0;
	if (idx != KN_SIRQ_IDX_RX)
		return 0;
	u64 pid_tgid = bpf_get_current_pid_tgid();
	u32 tid = (u32)pid_tgid, pid = pid_tgid >> 32;
	s->irq_tid = tid;
	s->irq_pid = pid;
	s->irq_slot = -1;
	s->napi_polls = s->napi_work = s->napi_budget = s->napi_exhausted = 0;
	if (kn_is_ksoftirqd(tid)) {
		s->flags |= KN_SIRQ_F_IN_KSOFTIRQD;
	} else if (v->run_start_ns) {
		/* the interrupted task held the CPU from its switch-in (or the wait's start) */
		u64 from = s->since > v->run_start_ns ? s->since : v->run_start_ns;
		if (now > from)
			s->irq_slot = kn_charge(s, tid, pid, 0, 0, now - from, 0);
	}
	if (s->ipi_ns && v->run_start_ns && s->ipi_ns <= v->run_start_ns) {
		v->run_start_ns = s->ipi_ns;
		s->flags |= KN_SIRQ_F_IPI;
	}
	s->ipi_ns = 0;
	return 0;
}

int kn_sirq_on_exit(void *ctx)
{
	u32 vec = KN_VEC_OF(EXIT);
	int idx = kn_vec_index(vec);
	if (idx < 0)
		return 0;
	struct kn_sirq_cpu *s = kn_state();
	if (!s)
		return 0;
	struct kn_sirq_vec *v = &s->v[idx & 1];
	if (!v->entry_ns)
		return 0;  /* entered before attach */
	kn_count(KN_SIRQ_STAT_SEEN);
	u64 now = bpf_ktime_get_ns();
	u64 run = now - v->entry_ns;
	u64 wait = 0;
	kn_hist(1, idx, run);
	if (v->run_start_ns && v->entry_ns >= v->run_start_ns) {
		wait = v->entry_ns - v->run_start_ns;
		kn_hist(0, idx, wait);
	} else {
		kn_count(KN_SIRQ_STAT_NO_RAISE);
	}
	if (wait >= KN_WAIT_THRESHOLD_NS || run >= KN_RUN_THRESHOLD_NS) {
		if (!kn_rate_ok(now)) {
			kn_count(KN_SIRQ_STAT_RATE_CAPPED);
		} else {
			struct kn_softirq_event *e = kn_sirq_events.ringbuf_reserve(sizeof(struct kn_softirq_event));
			if (!e) {
				kn_count(KN_SIRQ_STAT_RB_FULL);
			} else {
				__builtin_memset(e, 0, sizeof(*e));
				e->start_ns = v->run_start_ns ? v->run_start_ns : v->entry_ns;
				e->raise_ns = v->run_raise_ns;
				e->entry_ns = v->entry_ns;
				e->exit_ns = now;
				e->cpu = bpf_get_smp_processor_id();
				e->vec = vec;
				if (!v->run_start_ns)
					e->flags |= KN_SIRQ_F_NO_RAISE;
				if (idx == KN_SIRQ_IDX_RX) {
					e->flags |= s->flags;
					e->ipi_ns = s->flags & KN_SIRQ_F_IPI ? e->start_ns : 0;
					e->ipi_entry_ns = s->flags & KN_SIRQ_F_IPI ? s->ipi_entry_ns : 0;
					e->ipi_cgroup = s->ipi_cgroup;
					e->ipi_pid = s->ipi_pid;
					__builtin_memcpy(e->ipi_comm, s->ipi_comm, 16);
					e->ksoftirqd_wake_ns = s->ksoftirqd_wake_ns;
					e->ksoftirqd_run_ns = s->ksoftirqd_run_ns;
					/* ksoftirqd woken before the wait and still waiting for the CPU
					 * (bounded to 1 s: a missed switch-in must not age forever) */
					if (!s->ksoftirqd_wake_ns && s->ksd_runnable_ns &&
					    now - s->ksd_runnable_ns < 1000000000ULL) {
						e->ksoftirqd_wake_ns = s->ksd_runnable_ns;
						e->flags |= KN_SIRQ_F_KSOFTIRQD_WOKEN;
					}
					e->other_ns = s->other_ns;
					/* the interrupted task is current again: its name and cgroup now */
					kn_fill_slot(s, s->irq_slot);
					e->irq_cgroup = kn_current_cgroup();
					e->irq_pid = s->irq_pid;
					e->irq_tid = s->irq_tid;
					bpf_get_current_comm(e->irq_comm, sizeof(e->irq_comm));
					e->napi_polls = s->napi_polls;
					e->napi_work = s->napi_work;
					e->napi_budget = s->napi_budget;
					e->napi_exhausted = s->napi_exhausted;
					e->switches = s->switches;
#pragma unroll
					for (int i = 0; i < KN_SIRQ_CULPRITS; i++) {
						e->culprit_ns[i] = s->slot_ns[i];
						e->culprit_cgroup[i] = s->slot_cgroup[i];
						e->culprit_pid[i] = s->slot_pid[i];
						e->culprit_tid[i] = s->slot_tid[i];
						__builtin_memcpy(e->culprit_comm + 16 * i, s->slot_comm[i], 16);
					}
				} else {
					u64 pid_tgid = bpf_get_current_pid_tgid();
					e->irq_pid = pid_tgid >> 32;
					e->irq_tid = (u32)pid_tgid;
					e->irq_cgroup = kn_current_cgroup();
					bpf_get_current_comm(e->irq_comm, sizeof(e->irq_comm));
				}
				kn_sirq_events.ringbuf_submit(e, kn_wake());
				kn_count(KN_SIRQ_STAT_EMITTED);
			}
		}
	}
	v->entry_ns = 0;
	if (idx == KN_SIRQ_IDX_RX) {
		kn_reset_wait(s);
		s->ipi_entry_ns = 0;
		s->since = now;  /* time in the softirq itself is no task's */
	}
	return 0;
}

#if KN_HAVE_SWITCH
int kn_sirq_on_switch(void *ctx)
{
	struct kn_sirq_cpu *s = kn_state();
	if (!s)
		return 0;
	u64 now = bpf_ktime_get_ns();
	u64 start = s->v[KN_SIRQ_IDX_RX].start_ns;
	if (start) {
		/* NET_RX is pending: the task switched out (current) held the CPU */
		u64 from = s->since > start ? s->since : start;
		u64 pid_tgid = bpf_get_current_pid_tgid();
#if KN_RAW_SWITCH
		/* prev is current at sched_switch: its tid and name from the task helpers */
		if (now > from)
			kn_charge(s, (u32)pid_tgid, pid_tgid >> 32, 0, 0, now - from, 1);
#else
		u32 prev = *(u32 *)(ctx + KN_TP_SWITCH_PREV_PID);
		if (now > from)
			kn_charge(s, prev, pid_tgid >> 32, ctx + KN_TP_SWITCH_PREV_COMM, 1, now - from, 1);
#endif
		s->switches++;
	}
	s->since = now;
	if (s->ksd_runnable_ns || (start && s->ksoftirqd_wake_ns && !s->ksoftirqd_run_ns)) {
		u32 next = 0;
		KN_TASK_PID(next, KN_RAW_SWITCH, KN_ARG_SWITCH_NEXT, KN_TP_SWITCH_NEXT_PID);
		if (kn_is_ksoftirqd(next)) {
			if (start && !s->ksoftirqd_run_ns) {
				if (!s->ksoftirqd_wake_ns && s->ksd_runnable_ns) {
					s->ksoftirqd_wake_ns = s->ksd_runnable_ns;  /* woken before the wait */
					s->flags |= KN_SIRQ_F_KSOFTIRQD_WOKEN;
				}
				if (s->ksoftirqd_wake_ns) {
					s->ksoftirqd_run_ns = now;
					s->flags |= KN_SIRQ_F_KSOFTIRQD_RAN;
				}
			}
			s->ksd_runnable_ns = 0;
		}
	}
#if KN_RAW_SWITCH
	if ((u8)KN_ARG(0)) {  /* prev was preempted: if it is ksoftirqd it stays runnable */
		if (kn_is_ksoftirqd((u32)bpf_get_current_pid_tgid()))
			s->ksd_runnable_ns = now;
	}
#endif
	return 0;
}
#endif

#if KN_HAVE_WAKING
int kn_sirq_on_waking(void *ctx)
{
	struct kn_sirq_cpu *s = kn_state();
	if (!s || s->ksd_runnable_ns)  /* already runnable: this wake-up changes nothing */
		return 0;
	u32 pid = 0;
	KN_TASK_PID(pid, KN_RAW_WAKING, KN_ARG_WAKING_P, KN_TP_WAKING_PID);
	if (kn_is_ksoftirqd(pid)) {
		u64 now = bpf_ktime_get_ns();
		s->ksd_runnable_ns = now;
		if (s->v[KN_SIRQ_IDX_RX].start_ns && !s->ksoftirqd_wake_ns) {
			s->ksoftirqd_wake_ns = now;
			s->flags |= KN_SIRQ_F_KSOFTIRQD_WOKEN;
		}
	}
	return 0;
}
#endif

#if KN_HAVE_NAPI
int kn_sirq_on_napi_poll(void *ctx)
{
	struct kn_sirq_cpu *s = kn_state();
	if (!s || !s->v[KN_SIRQ_IDX_RX].entry_ns)
		return 0;  /* busy polling outside a NET_RX run */
#if KN_RAW_NAPI
	int work = (int)KN_ARG(KN_ARG_NAPI_WORK);
	int budget = (int)KN_ARG(KN_ARG_NAPI_BUDGET);
#else
	int work = *(int *)(ctx + KN_TP_NAPI_WORK);
	int budget = *(int *)(ctx + KN_TP_NAPI_BUDGET);
#endif
	s->napi_polls++;
	if (work > 0)
		s->napi_work += work;
	s->napi_budget = budget;
	if (budget > 0 && work >= budget)
		s->napi_exhausted++;
	return 0;
}
#endif

#if KN_HAVE_IPI
int kn_sirq_on_csd_queue(void *ctx)
{
	u64 func = *(u64 *)(ctx + KN_TP_CSDQ_FUNC);
	if (func != KN_RPS_FUNC)
		return 0;
	int cpu = *(u32 *)(ctx + KN_TP_CSDQ_CPU);
	u64 *q = kn_sirq_ipi.lookup(&cpu);
	if (q && !*q)
		*q = bpf_ktime_get_ns();
	return 0;
}

int kn_sirq_on_csd_entry(void *ctx)
{
	u64 func = *(u64 *)(ctx + KN_TP_CSDE_FUNC);
	if (func != KN_RPS_FUNC)
		return 0;
	int cpu = bpf_get_smp_processor_id();
	u64 *q = kn_sirq_ipi.lookup(&cpu);
	if (!q || !*q)
		return 0;
	u64 queued = *q;
	*q = 0;
	struct kn_sirq_cpu *s = kn_state();
	if (!s || s->ipi_ns)
		return 0;
	u64 now = bpf_ktime_get_ns();
	s->ipi_ns = queued;
	s->ipi_entry_ns = now;
	u64 pid_tgid = bpf_get_current_pid_tgid();
	s->ipi_pid = pid_tgid >> 32;
	s->ipi_cgroup = kn_current_cgroup();
	bpf_get_current_comm(s->ipi_comm, sizeof(s->ipi_comm));
	/* NET_RX already pending (raised before the IPI): the wait began at the queueing */
	struct kn_sirq_vec *v = &s->v[KN_SIRQ_IDX_RX];
	if (v->start_ns && queued < v->start_ns)
		v->start_ns = queued;
	return 0;
}
#endif
