/* SPDX-License-Identifier: Apache-2.0
 * Shared by every probe family's .bpf.c (bcc-only: it declares maps): the per-CPU
 * and node-wide per-second rate caps and the per-CPU volume/loss counters. Each
 * family is compiled as its own BPF object, so these map names are the same in every
 * family without clashing; the Python side reads them as "kn_stats" (probes/base.py).
 * The including file defines KN_STATS_MAX (number of counters) and KN_RATE_LIMIT;
 * the plan's -D gives KN_RATE_LIMIT_NODE (0 or absent: no node-wide cap).
 *
 * Scope (sidecar mode): with -D KN_SCOPE_NETNS=1, kn_in_scope() accepts only the
 * network namespaces whose inode the user side put into kn_scope; events of other
 * namespaces (and of unknown ones, inode 0) are ignored before any work is done.
 *
 * bcc rewrites its map syntax (kn_stats.lookup()) only in the main source file, so
 * the loader pastes every `#include "*.bcc.h"` in place before compiling
 * (loader.inline_bcc_headers); plain headers (the records) are included normally.
 */
#ifndef KN_COMMON_H
#define KN_COMMON_H

BPF_PERCPU_ARRAY(kn_stats, u64, KN_STATS_MAX);

struct kn_rate { u64 window; u64 count; };
BPF_PERCPU_ARRAY(kn_rate_window, struct kn_rate, 1);

static __always_inline void kn_count(int idx)
{
	u64 *v = kn_stats.lookup(&idx);
	if (v)
		(*v)++;
}

/* Ring buffer wake-ups: the first record a CPU submits after KN_WAKE_NS without a
 * wake-up from it wakes the collector (BPF_RB_FORCE_WAKEUP); the others are written
 * without one and drained by the collector's follow-up drain KN_WAKE_NS after each
 * wake-up (collector.py _loop). An idle collector is never woken; a busy one at most
 * once per KN_WAKE_NS per CPU (the loader sets it from ringbuf.poll_interval_ms). */
#ifndef KN_WAKE_NS
#define KN_WAKE_NS 20000000ULL
#endif
BPF_PERCPU_ARRAY(kn_last_wake, u64, 1);

static __always_inline u64 kn_wake(void)
{
	int zero = 0;
	u64 now = bpf_ktime_get_ns();
	u64 *last = kn_last_wake.lookup(&zero);
	if (!last || now - *last < KN_WAKE_NS)
		return BPF_RB_NO_WAKEUP;
	*last = now;
	return BPF_RB_FORCE_WAKEUP;
}

/* Node-wide: at most KN_RATE_LIMIT_NODE records per second from all CPUs together
 * (0: no such cap). The per-CPU caps add up with the CPU count (64 CPUs x 10,000
 * drops/s is far more than one collector turns into spans, and the excess would be
 * lost in full ring buffers instead of counted here). One shared slot: the count is
 * read, then added to atomically (plain XADD, no fetch: any -mcpu), so CPUs racing at
 * the cap may pass it by a few records; the new second's reset is plain stores, so an
 * add racing with it may be lost. A bound on load, not an exact count. Only records
 * that passed the per-CPU cap touch the shared line (the ring buffer's reserve right
 * after takes a shared lock anyway). */
#ifndef KN_RATE_LIMIT_NODE
#define KN_RATE_LIMIT_NODE 0
#endif
#if KN_RATE_LIMIT_NODE
BPF_ARRAY(kn_rate_node, struct kn_rate, 1);
#endif

/* 1 while this CPU has emitted fewer than KN_RATE_LIMIT records this second (and the
 * node fewer than KN_RATE_LIMIT_NODE) */
static __always_inline int kn_rate_ok(u64 now)
{
	int zero = 0;
	struct kn_rate *r = kn_rate_window.lookup(&zero);
	if (!r)
		return 0;
	u64 window = now / 1000000000ULL;
	if (r->window != window) {
		r->window = window;
		r->count = 0;
	}
	if (r->count >= KN_RATE_LIMIT)
		return 0;
#if KN_RATE_LIMIT_NODE
	struct kn_rate *n = kn_rate_node.lookup(&zero);
	if (!n)
		return 0;
	if (n->window != window) {
		n->window = window;
		n->count = 0;
	}
	if (n->count >= KN_RATE_LIMIT_NODE)
		return 0;
	__sync_fetch_and_add(&n->count, 1);
#endif
	r->count++;
	return 1;
}

/* read one tracepoint field (at an offset from its format file) into dst, exactly
 * dst's size: plan() checked the field has that size */
#define KN_RD(dst, off) bpf_probe_read_kernel(&(dst), sizeof(dst), ctx + (off))

/* BTF offsets the shared helpers read through (-1: unknown; the helpers return 0) */
#ifndef KN_OFF_NET_NS_INUM
#define KN_OFF_NET_NS_INUM -1
#endif
#ifndef KN_OFF_SK_NET
#define KN_OFF_SK_NET -1
#endif

/* network namespace inode of a struct net (0: unknown) */
static __always_inline u32 kn_net_inum(void *net)
{
	u32 ns = 0;
#if KN_OFF_NET_NS_INUM >= 0
	if (net)
		bpf_probe_read_kernel(&ns, sizeof(ns), net + KN_OFF_NET_NS_INUM);
#endif
	return ns;
}

/* network namespace inode of a struct sock (0: unknown or no socket) */
static __always_inline u32 kn_sk_netns(void *sk)
{
	void *net = NULL;
#if KN_OFF_SK_NET >= 0
	if (sk)
		bpf_probe_read_kernel(&net, sizeof(net), sk + KN_OFF_SK_NET);
#endif
	return kn_net_inum(net);
}

#ifndef KN_SCOPE_NETNS
#define KN_SCOPE_NETNS 0
#endif
BPF_HASH(kn_scope, u32, u8, 64);

static __always_inline int kn_in_scope(u32 netns)
{
#if KN_SCOPE_NETNS
	return kn_scope.lookup(&netns) != NULL;
#else
	return 1;
#endif
}

#endif /* KN_COMMON_H */
