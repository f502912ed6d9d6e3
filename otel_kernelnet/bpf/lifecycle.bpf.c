/* SPDX-License-Identifier: Apache-2.0
 * skb lifecycle probe (receive path), stitched in the kernel.
 *
 *   arrival (net:netif_rx | net:napi_gro_receive_entry | net:netif_receive_skb_entry
 *            | net:netif_receive_skb_list_entry)
 *   -> protocol processing (net:netif_receive_skb: the gap is the backlog/softirq wait)
 *   -> socket enqueue (tcp:tcp_probe: gives the socket, its cookie and the 4-tuple)
 *   -> first read by the application (skb:skb_copy_datagram_iovec, in the reader's task)
 *   -> or a drop (skb:kfree_skb, with its reason)
 *
 * State lives in an LRU hash keyed by the skb address (bounded: KN_LIFE_MAX); an
 * arrival always starts a fresh lifecycle, so a reused address cannot inherit stale
 * stages. Lifecycles that end otherwise (consumed without a read we see: forwarded,
 * coalesced, control segments of other protocols) age out of the LRU: no program on
 * skb:consume_skb, one of the kernel's hottest tracepoints, mostly in process context
 * where a running program makes the kernel skip nested tracepoint programs. Every finished lifecycle feeds the per-stage log2 histograms; a record is
 * written only when the volume policy says so (dropped, slower than KN_SLOW_NS,
 * watched cookie, or 1-in-KN_SAMPLE_N), under the per-CPU rate cap.
 *
 * No struct layout comes from kernel headers: tracepoint offsets (KN_TP_*) from the
 * format files, member offsets (KN_OFF_*) from BTF, both as -D (probes/lifecycle.py).
 */
#include "lifecycle.h"

#ifndef KN_RATE_LIMIT
#define KN_RATE_LIMIT 2000       /* records per CPU per second; excess is counted */
#endif
#ifndef KN_RINGBUF_PAGES
#define KN_RINGBUF_PAGES 64
#endif
#ifndef KN_LIFE_MAX
#define KN_LIFE_MAX 16384        /* lifecycles in flight at once (LRU) */
#endif
#ifndef KN_WATCH_MAX
#define KN_WATCH_MAX 4096        /* watched cookies */
#endif
#ifndef KN_SLOW_NS
#define KN_SLOW_NS 1000000ULL    /* arrival -> read above this is emitted */
#endif
#ifndef KN_SAMPLE_N
#define KN_SAMPLE_N 0            /* emit 1 in N of the rest; 0 = no sampling */
#endif
#ifndef KN_TP_RX_SKBADDR
#error "KN_TP_* offsets must come from the running kernel's format files (probes/lifecycle.py)"
#endif
#ifndef KN_HAVE_GRO
#define KN_HAVE_GRO 0
#endif
#ifndef KN_HAVE_RCV_ENTRY
#define KN_HAVE_RCV_ENTRY 0
#endif
#ifndef KN_HAVE_RCV_LIST_ENTRY
#define KN_HAVE_RCV_LIST_ENTRY 0
#endif
#ifndef KN_HAVE_TCP_PROBE
#define KN_HAVE_TCP_PROBE 0
#endif
#ifndef KN_TP_DROP_REASON
#define KN_TP_DROP_REASON -1
#endif
/* BTF member offsets; -1 = unknown (that part is skipped) */
#ifndef KN_OFF_SKB_DEV
#define KN_OFF_SKB_DEV -1
#endif
#ifndef KN_OFF_DEV_IFINDEX
#define KN_OFF_DEV_IFINDEX -1
#endif
#ifndef KN_OFF_DEV_NAME
#define KN_OFF_DEV_NAME -1
#endif
#ifndef KN_OFF_DEV_ND_NET
#define KN_OFF_DEV_ND_NET -1
#endif
#ifndef KN_OFF_SKB_LEN
#define KN_OFF_SKB_LEN -1
#endif
#ifndef KN_OFF_SKB_DATA
#define KN_OFF_SKB_DATA -1
#endif
#ifndef KN_OFF_SKB_PROTOCOL
#define KN_OFF_SKB_PROTOCOL -1
#endif
#ifndef KN_OFF_SKB_HEAD
#define KN_OFF_SKB_HEAD -1
#endif
#ifndef KN_OFF_SKB_END
#define KN_OFF_SKB_END -1
#endif
#ifndef KN_OFF_SHINFO_GSO_SEGS
#define KN_OFF_SHINFO_GSO_SEGS -1
#endif

BPF_RINGBUF_OUTPUT(kn_life_events, KN_RINGBUF_PAGES);
#define KN_STATS_MAX KN_STAT_MAX
#include "common.bcc.h"

BPF_TABLE("lru_hash", u64, struct kn_life_event, kn_life, KN_LIFE_MAX);
BPF_HASH(kn_watch, u64, u8, KN_WATCH_MAX);
BPF_PERCPU_ARRAY(kn_life_hist, u64, KN_LIFE_H_STAGES * KN_LIFE_H_BUCKETS);
BPF_PERCPU_ARRAY(kn_life_hist_sum, u64, KN_LIFE_H_STAGES);  /* ns, for the histograms' sums */
BPF_PERCPU_ARRAY(kn_life_sample, u64, 1);


/* floor(log2(v)) for v >= 1, branch-free (the verifier needs no loop) */
static __always_inline u32 kn_log2(u64 v)
{
	u32 r, shift;
	r = (v > 0xFFFFFFFFULL) << 5; v >>= r;
	shift = (v > 0xFFFF) << 4; v >>= shift; r |= shift;
	shift = (v > 0xFF) << 3; v >>= shift; r |= shift;
	shift = (v > 0xF) << 2; v >>= shift; r |= shift;
	shift = (v > 0x3) << 1; v >>= shift; r |= shift;
	return r | (u32)(v >> 1);
}

static __always_inline void kn_hist(int stage, u64 from, u64 to)
{
	if (!from || !to || to < from)
		return;
	u64 d = to - from;
	u32 b = d ? kn_log2(d) + 1 : 0;
	if (b >= KN_LIFE_H_BUCKETS)
		b = KN_LIFE_H_BUCKETS - 1;
	int idx = stage * KN_LIFE_H_BUCKETS + b;
	u64 *v = kn_life_hist.lookup(&idx);
	if (v)
		(*v)++;
	u64 *sum = kn_life_hist_sum.lookup(&stage);
	if (sum)
		*sum += d;
}

/* network namespace inode and device of an skb (0 / "" when BTF lacks them) */
static __always_inline void kn_read_dev(struct kn_life_event *s, void *skb)
{
#if KN_OFF_SKB_DEV >= 0 && KN_OFF_DEV_ND_NET >= 0
	void *dev = NULL;
	bpf_probe_read_kernel(&dev, sizeof(dev), skb + KN_OFF_SKB_DEV);
	if (!dev)
		return;
	void *net = NULL;
	bpf_probe_read_kernel(&net, sizeof(net), dev + KN_OFF_DEV_ND_NET);
	s->netns = kn_net_inum(net);
#if KN_OFF_DEV_IFINDEX >= 0 && KN_OFF_DEV_NAME >= 0
	bpf_probe_read_kernel(&s->ifindex, sizeof(s->ifindex), dev + KN_OFF_DEV_IFINDEX);
	bpf_probe_read_kernel(s->ifname, sizeof(s->ifname), dev + KN_OFF_DEV_NAME);
#endif
#endif
}

static __always_inline int kn_arrival(void *ctx, u64 skb, u8 tp)
{
	struct kn_life_event s = {};
	kn_read_dev(&s, (void *)skb);
	if (!kn_in_scope(s.netns))
		return 0;
	s.t_arrival = bpf_ktime_get_ns();
	s.skbaddr = skb;
	s.cpu_arrival = bpf_get_smp_processor_id();
	s.arrival_tp = tp;
	s.segs = 1;
#if KN_OFF_SKB_LEN >= 0
	bpf_probe_read_kernel(&s.len, sizeof(s.len), (void *)skb + KN_OFF_SKB_LEN);
#endif
	kn_life.update(&skb, &s);
	kn_count(KN_STAT_ARRIVED);
	return 0;
}

/* one program per arrival tracepoint: they differ only in the skbaddr offset and the tag */
#define KN_ARRIVAL_PROG(fn, off, tp)			\
int fn(void *ctx)					\
{							\
	u64 skb = 0;					\
	KN_RD(skb, off);				\
	return kn_arrival(ctx, skb, tp);		\
}

KN_ARRIVAL_PROG(kn_on_netif_rx, KN_TP_RX_SKBADDR, KN_LIFE_A_NETIF_RX)
#if KN_HAVE_GRO
KN_ARRIVAL_PROG(kn_on_gro_entry, KN_TP_GRO_SKBADDR, KN_LIFE_A_GRO)
#endif
#if KN_HAVE_RCV_ENTRY
KN_ARRIVAL_PROG(kn_on_rcv_entry, KN_TP_RCV_ENTRY_SKBADDR, KN_LIFE_A_RECEIVE_ENTRY)
#endif
#if KN_HAVE_RCV_LIST_ENTRY
KN_ARRIVAL_PROG(kn_on_rcv_list_entry, KN_TP_RCV_LIST_ENTRY_SKBADDR, KN_LIFE_A_RECEIVE_ENTRY)
#endif

/* addresses and ports from the L3 header at skb->data (netif_receive_skb runs after
 * the link layer was pulled), stored local (destination) side first */
static __always_inline void kn_parse_l3(struct kn_life_event *s, void *skb)
{
#if KN_OFF_SKB_DATA >= 0 && KN_OFF_SKB_PROTOCOL >= 0
	void *l3 = NULL;
	u16 proto_be = 0;
	bpf_probe_read_kernel(&l3, sizeof(l3), skb + KN_OFF_SKB_DATA);
	bpf_probe_read_kernel(&proto_be, sizeof(proto_be), skb + KN_OFF_SKB_PROTOCOL);
	s->protocol = bpf_ntohs(proto_be);
	if (!l3)
		return;
	void *l4 = NULL;
	if (s->protocol == 0x0800) {
		u8 vihl = 0;
		bpf_probe_read_kernel(&vihl, 1, l3);
		if ((vihl >> 4) != 4)
			return;
		bpf_probe_read_kernel(&s->l4proto, 1, l3 + 9);
		bpf_probe_read_kernel(s->daddr, 4, l3 + 12);  /* packet source = peer */
		bpf_probe_read_kernel(s->saddr, 4, l3 + 16);  /* packet destination = local */
		l4 = l3 + (vihl & 0x0f) * 4;
	} else if (s->protocol == 0x86dd) {
		bpf_probe_read_kernel(&s->l4proto, 1, l3 + 6);
		bpf_probe_read_kernel(s->daddr, 16, l3 + 8);
		bpf_probe_read_kernel(s->saddr, 16, l3 + 24);
		s->flags |= KN_LIFE_F_IPV6;
		l4 = l3 + 40;
	} else {
		return;
	}
	s->flags |= KN_LIFE_F_ADDR;
	if (s->l4proto == 6 || s->l4proto == 17 || s->l4proto == 132) {
		u16 ports[2] = {};
		bpf_probe_read_kernel(ports, sizeof(ports), l4);
		s->dport = bpf_ntohs(ports[0]);
		s->sport = bpf_ntohs(ports[1]);
	}
#endif
}

int kn_on_netif_receive_skb(void *ctx)
{
	u64 skb = 0;
	KN_RD(skb, KN_TP_RCV_SKBADDR);
	struct kn_life_event *s = kn_life.lookup(&skb);
	if (!s || s->t_proto)  /* not ours, or a re-injection (decap, bridge): keep the first */
		return 0;
	s->t_proto = bpf_ktime_get_ns();
	s->cpu_proto = bpf_get_smp_processor_id();
	kn_parse_l3(s, (void *)skb);
#if KN_OFF_SKB_HEAD >= 0 && KN_OFF_SKB_END >= 0 && KN_OFF_SHINFO_GSO_SEGS >= 0
	void *head = NULL;
	u32 end = 0;   /* sk_buff_data_t: an offset from head on 64-bit kernels */
	u16 segs = 0;
	bpf_probe_read_kernel(&head, sizeof(head), (void *)skb + KN_OFF_SKB_HEAD);
	bpf_probe_read_kernel(&end, sizeof(end), (void *)skb + KN_OFF_SKB_END);
	if (head && end)
		bpf_probe_read_kernel(&segs, sizeof(segs), head + end + KN_OFF_SHINFO_GSO_SEGS);
	if (segs > 1)
		s->segs = segs;
#endif
	kn_hist(KN_LIFE_H_BACKLOG, s->t_arrival, s->t_proto);
	return 0;
}

#if KN_HAVE_TCP_PROBE
int kn_on_tcp_probe(void *ctx)
{
	u64 skb = 0;
	KN_RD(skb, KN_TP_PROBE_SKBADDR);
	struct kn_life_event *s = kn_life.lookup(&skb);
	if (!s || s->t_enqueue)
		return 0;
	u16 data_len = 0;
	KN_RD(data_len, KN_TP_PROBE_DATA_LEN);
	if (!data_len) {  /* a pure ACK or control segment is never read: close it here */
		kn_life.delete(&skb);
		kn_count(KN_STAT_NO_DATA);
		return 0;
	}
	s->t_enqueue = bpf_ktime_get_ns();
	s->data_len = data_len;
	KN_RD(s->sk_cookie, KN_TP_PROBE_SOCK_COOKIE);
	KN_RD(s->skaddr, KN_TP_PROBE_SKADDR);
	s->flags |= KN_LIFE_F_SOCK;
	/* the socket's own view of the 4-tuple (sockaddr_in/in6: port at 2, address at 4/8) */
	u16 family = 0, sport = 0, dport = 0;
	KN_RD(family, KN_TP_PROBE_FAMILY);
	KN_RD(sport, KN_TP_PROBE_SPORT);
	KN_RD(dport, KN_TP_PROBE_DPORT);
	s->sport = sport;
	s->dport = dport;
	s->l4proto = 6;
	if (family == KN_AF_INET6) {
		bpf_probe_read_kernel(s->saddr, 16, ctx + KN_TP_PROBE_SADDR + 8);
		bpf_probe_read_kernel(s->daddr, 16, ctx + KN_TP_PROBE_DADDR + 8);
		s->flags |= KN_LIFE_F_IPV6 | KN_LIFE_F_ADDR;
	} else {
		__builtin_memset(s->saddr, 0, sizeof(s->saddr));
		__builtin_memset(s->daddr, 0, sizeof(s->daddr));
		bpf_probe_read_kernel(s->saddr, 4, ctx + KN_TP_PROBE_SADDR + 4);
		bpf_probe_read_kernel(s->daddr, 4, ctx + KN_TP_PROBE_DADDR + 4);
		s->flags = (s->flags & ~KN_LIFE_F_IPV6) | KN_LIFE_F_ADDR;
	}
	kn_hist(KN_LIFE_H_PROTO, s->t_proto, s->t_enqueue);
	return 0;
}
#endif

/* the volume policy: why to emit (0 = histograms only) */
static __always_inline u8 kn_policy(struct kn_life_event *s)
{
	u8 why = 0;
	if (s->t_end - s->t_arrival > KN_SLOW_NS)
		why |= KN_LIFE_W_SLOW;
	if (s->sk_cookie && kn_watch.lookup(&s->sk_cookie))
		why |= KN_LIFE_W_WATCHED;
#if KN_SAMPLE_N > 0
	int zero = 0;
	u64 *n = kn_life_sample.lookup(&zero);
	if (n && ((*n)++ % KN_SAMPLE_N) == 0)
		why |= KN_LIFE_W_SAMPLED;
#endif
	return why;
}

static __always_inline void kn_emit(struct kn_life_event *s, u64 now)
{
	if (!kn_rate_ok(now)) {
		kn_count(KN_STAT_RATE_CAPPED);
		return;
	}
	struct kn_life_event *e = kn_life_events.ringbuf_reserve(sizeof(struct kn_life_event));
	if (!e) {
		kn_count(KN_STAT_RB_FULL);
		return;
	}
	__builtin_memcpy(e, s, sizeof(*e));
	kn_life_events.ringbuf_submit(e, BPF_RB_NO_WAKEUP);
	kn_count(KN_STAT_EMITTED);
}

int kn_on_copy_datagram(void *ctx)
{
	u64 skb = 0;
	KN_RD(skb, KN_TP_COPY_SKBADDR);
	struct kn_life_event *s = kn_life.lookup(&skb);
	if (!s)
		return 0;
	u64 now = bpf_ktime_get_ns();
	int read_len = 0;
	KN_RD(read_len, KN_TP_COPY_LEN);
	s->t_end = now;
	s->read_len = read_len > 0 ? read_len : 0;
	s->cpu_end = bpf_get_smp_processor_id();
	u64 pid_tgid = bpf_get_current_pid_tgid();
	s->pid = pid_tgid >> 32;
	s->tid = (u32)pid_tgid;
	bpf_get_current_comm(s->comm, sizeof(s->comm));
	s->flags |= KN_LIFE_F_READ;
	kn_hist(KN_LIFE_H_SOCKET, s->t_enqueue, now);
	kn_hist(KN_LIFE_H_TOTAL, s->t_arrival, now);
	kn_count(KN_STAT_READ);
	u8 why = kn_policy(s);
	if (why) {
		s->why = why;
		kn_emit(s, now);
	} else {
		kn_count(KN_STAT_QUIET);
	}
	kn_life.delete(&skb);
	return 0;
}

int kn_on_kfree_skb(void *ctx)
{
	u64 skb = 0;
	KN_RD(skb, KN_TP_DROP_SKBADDR);
	struct kn_life_event *s = kn_life.lookup(&skb);
	if (!s)
		return 0;
	u64 now = bpf_ktime_get_ns();
	s->t_end = now;
	s->cpu_end = bpf_get_smp_processor_id();
#if KN_TP_DROP_REASON >= 0
	KN_RD(s->reason, KN_TP_DROP_REASON);
#endif
	bpf_get_current_comm(s->comm, sizeof(s->comm));
	kn_count(KN_STAT_DROPPED);
	s->why = KN_LIFE_W_DROPPED | kn_policy(s);
	kn_emit(s, now);
	kn_life.delete(&skb);
	return 0;
}
