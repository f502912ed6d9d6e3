/* SPDX-License-Identifier: Apache-2.0
 * Reclaim family: direct and memcg reclaim of each task (begin -> end, paired per
 * thread), kswapd runs (wake -> sleep, per node) and reclaim throttling. Always
 * emitted: one record per stall, rate-capped per CPU, losses counted.
 *
 * No struct layout comes from kernel headers: tracepoint field offsets (KN_TP_*) come
 * from the running kernel's format files, cgroup-chain offsets from BTF; all arrive
 * as -D constants (probes/reclaim.py). Missing tracepoints are compiled out.
 *
 * Cgroup scope (sidecar mode, scope.cgroup; otel_kernelnet/scope.py): with
 * -D KN_SCOPE_CGROUP=1 a stall or throttle is kept only when the current task is in
 * the cgroup v2 directory KN_SCOPE_CGROUP_ID or below it: its ancestor at depth
 * KN_SCOPE_CGROUP_LEVEL is that cgroup (bpf_get_current_ancestor_cgroup_id, the
 * default hierarchy, which a hybrid v1/v2 machine has too). Other tasks' begins are
 * not stored and their ends not counted. kswapd is node-level: not attached then.
 */
#include "reclaim.h"

#ifndef KN_RATE_LIMIT
#define KN_RATE_LIMIT 1000       /* records per CPU per second; excess is counted */
#endif
#ifndef KN_RINGBUF_PAGES
#define KN_RINGBUF_PAGES 64
#endif
#ifndef KN_PENDING
#define KN_PENDING 10240         /* reclaims in progress remembered at once (LRU) */
#endif
#ifndef KN_MAX_NODES
#define KN_MAX_NODES 64
#endif
#ifndef KN_HAVE_DIRECT
#error "KN_HAVE_* and KN_TP_* must come from the running kernel's format files (probes/reclaim.py)"
#endif

BPF_RINGBUF_OUTPUT(kn_rcl_events, KN_RINGBUF_PAGES);
#define KN_STATS_MAX KN_RCL_STAT_MAX
#include "common.bcc.h"
#include "cgroup.bcc.h"

#ifndef KN_SCOPE_CGROUP
#define KN_SCOPE_CGROUP 0
#endif

/* 1 when the current task is in the scoped cgroup (or when not scoped) */
static __always_inline int kn_cgroup_in_scope(void)
{
#if KN_SCOPE_CGROUP
	return bpf_get_current_ancestor_cgroup_id(KN_SCOPE_CGROUP_LEVEL) == KN_SCOPE_CGROUP_ID;
#else
	return 1;
#endif
}

struct kn_rcl_begin {
	u64 ts;
	u64 gfp;
	s32 order;
	u32 pad;
};
/* key: type << 32 | tid */
BPF_TABLE("lru_hash", u64, struct kn_rcl_begin, kn_rcl_pending, KN_PENDING);
struct kn_rcl_wake {
	u64 ts;
	s32 zid;
	s32 order;
};
BPF_ARRAY(kn_rcl_kswapd, struct kn_rcl_wake, KN_MAX_NODES);

static __always_inline struct kn_reclaim_event *kn_begin(u8 type, u64 now)
{
	if (!kn_rate_ok(now)) {
		kn_count(KN_RCL_STAT_RATE_CAPPED);
		return NULL;
	}
	struct kn_reclaim_event *e = kn_rcl_events.ringbuf_reserve(sizeof(struct kn_reclaim_event));
	if (!e) {
		kn_count(KN_RCL_STAT_RB_FULL);
		return NULL;
	}
	__builtin_memset(e, 0, sizeof(*e));
	e->type = type;
	e->end_ns = now;
	u64 pid_tgid = bpf_get_current_pid_tgid();
	e->pid = pid_tgid >> 32;
	e->tid = (u32)pid_tgid;
	e->cpu = bpf_get_smp_processor_id();
	e->cgroup = kn_current_cgroup();
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	return e;
}

static __always_inline void kn_submit(struct kn_reclaim_event *e)
{
	kn_rcl_events.ringbuf_submit(e, kn_wake());
	kn_count(KN_RCL_STAT_EMITTED);
}

static __always_inline int kn_on_begin(void *ctx, u64 type, int o_order, int o_gfp)
{
	if (!kn_cgroup_in_scope())
		return 0;
	u64 key = type << 32 | (u32)bpf_get_current_pid_tgid();
	struct kn_rcl_begin b = {};
	b.ts = bpf_ktime_get_ns();
	b.order = *(s32 *)(ctx + o_order);
	b.gfp = *(u64 *)(ctx + o_gfp);
	kn_rcl_pending.update(&key, &b);
	return 0;
}

static __always_inline int kn_on_end(void *ctx, u64 type, int o_nr)
{
	if (!kn_cgroup_in_scope())
		return 0;
	kn_count(KN_RCL_STAT_SEEN);
	u64 key = type << 32 | (u32)bpf_get_current_pid_tgid();
	struct kn_rcl_begin *b = kn_rcl_pending.lookup(&key);
	if (!b) {
		kn_count(KN_RCL_STAT_UNMATCHED);
		return 0;
	}
	struct kn_rcl_begin copy = *b;
	kn_rcl_pending.delete(&key);
	struct kn_reclaim_event *e = kn_begin((u8)type, bpf_ktime_get_ns());
	if (!e)
		return 0;
	e->start_ns = copy.ts;
	e->gfp_flags = copy.gfp;
	e->order = copy.order;
	e->nr_reclaimed = *(u64 *)(ctx + o_nr);
	kn_submit(e);
	return 0;
}

#if KN_HAVE_DIRECT
int kn_rcl_on_direct_begin(void *ctx)
{
	return kn_on_begin(ctx, KN_RCL_EV_DIRECT, KN_TP_DIRECT_BEGIN_ORDER, KN_TP_DIRECT_BEGIN_GFP_FLAGS);
}

int kn_rcl_on_direct_end(void *ctx)
{
	return kn_on_end(ctx, KN_RCL_EV_DIRECT, KN_TP_DIRECT_END_NR_RECLAIMED);
}
#endif

#if KN_HAVE_MEMCG
int kn_rcl_on_memcg_begin(void *ctx)
{
	return kn_on_begin(ctx, KN_RCL_EV_MEMCG, KN_TP_MEMCG_BEGIN_ORDER, KN_TP_MEMCG_BEGIN_GFP_FLAGS);
}

int kn_rcl_on_memcg_end(void *ctx)
{
	return kn_on_end(ctx, KN_RCL_EV_MEMCG, KN_TP_MEMCG_END_NR_RECLAIMED);
}
#endif

#if KN_HAVE_KSWAPD
int kn_rcl_on_kswapd_wake(void *ctx)
{
	int nid = *(s32 *)(ctx + KN_TP_KSWAPD_WAKE_NID);
	struct kn_rcl_wake *w = kn_rcl_kswapd.lookup(&nid);
	if (!w)
		return 0;
	w->ts = bpf_ktime_get_ns();
	w->zid = *(s32 *)(ctx + KN_TP_KSWAPD_WAKE_ZID);
	w->order = *(s32 *)(ctx + KN_TP_KSWAPD_WAKE_ORDER);
	return 0;
}

int kn_rcl_on_kswapd_sleep(void *ctx)
{
	kn_count(KN_RCL_STAT_SEEN);
	int nid = *(s32 *)(ctx + KN_TP_KSWAPD_SLEEP_NID);
	struct kn_rcl_wake *w = kn_rcl_kswapd.lookup(&nid);
	if (!w || !w->ts) {
		kn_count(KN_RCL_STAT_UNMATCHED);
		return 0;
	}
	u64 start = w->ts;
	w->ts = 0;
	struct kn_reclaim_event *e = kn_begin(KN_RCL_EV_KSWAPD, bpf_ktime_get_ns());
	if (!e)
		return 0;
	e->start_ns = start;
	e->nid = nid;
	e->zid = w->zid;
	e->order = w->order;
	kn_submit(e);
	return 0;
}
#endif

#if KN_HAVE_THROTTLE
int kn_rcl_on_throttled(void *ctx)
{
	if (!kn_cgroup_in_scope())
		return 0;
	kn_count(KN_RCL_STAT_SEEN);
	u64 now = bpf_ktime_get_ns();
	struct kn_reclaim_event *e = kn_begin(KN_RCL_EV_THROTTLE, now);
	if (!e)
		return 0;
	e->nid = *(s32 *)(ctx + KN_TP_THROTTLE_NID);
	e->usec_timeout = *(s32 *)(ctx + KN_TP_THROTTLE_USEC_TIMEOUT);
	e->usec_delayed = *(s32 *)(ctx + KN_TP_THROTTLE_USEC_DELAYED);
	e->reason = *(s32 *)(ctx + KN_TP_THROTTLE_REASON);
	u64 delayed = e->usec_delayed > 0 ? (u64)e->usec_delayed * 1000 : 0;
	e->start_ns = now > delayed ? now - delayed : now;
	kn_submit(e);
	return 0;
}
#endif
