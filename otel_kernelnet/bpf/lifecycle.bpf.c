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
 * State lives in a 2-way set-associative table of 2^KN_LIFE_BITS slots indexed by a
 * hash of the skb address (kn_life, a plain BPF array: no lock, no allocation, no
 * hash-map update per packet -- an LRU hash update cost ~400 ns here, a slot write
 * ~10 ns). An arrival always (re)starts a slot of its set (a free one, else the one
 * whose lifecycle started first), so a reused address cannot inherit stale stages; a
 * lifecycle whose set is taken by two newer arrivals is lost (as the oldest entries
 * of an LRU were). A slot is published by writing skbaddr last and retired
 * by zeroing it; a reader that finishes a lifecycle re-checks skbaddr after copying
 * the record out, so a slot re-armed meanwhile by another CPU is never emitted torn.
 * Lifecycles that end otherwise (consumed without a read we see: forwarded,
 * coalesced, control segments of other protocols) are simply overwritten later: no
 * program on skb:consume_skb, one of the kernel's hottest tracepoints. Every finished
 * lifecycle feeds the per-stage log2 histograms; a record is written only when the
 * volume policy says so (dropped, slower than KN_SLOW_NS, watched cookie, or
 * 1-in-KN_SAMPLE_N), under the per-CPU rate cap.
 *
 * Cost: the arrival only stamps the slot; the device, namespace and addresses are
 * read once at the protocol stage (skb->dev is still the receiving device there; UDP
 * reuses that word as dev_scratch later), the sk_buff and net_device members in one
 * bpf_probe_read_kernel each (KN_SKB_LO..+KN_SKB_SPAN, KN_DEV_LO..+KN_DEV_SPAN).
 *
 * Raw tracepoints: with KN_RAW_<KEY> 1 a program is attached as a raw tracepoint and
 * takes its arguments from ctx->args[KN_ARG_<KEY>_<ROLE>] (positions from the running
 * kernel's BTF btf_trace_* prototypes, probes/lifecycle.py); else it is a classic
 * tracepoint reading its record at KN_TP_* offsets. Raw tracepoints skip building the
 * trace record and are not skipped when they fire nested in another BPF program.
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
#ifndef KN_LIFE_BITS
#define KN_LIFE_BITS 14          /* 2^14 slots for lifecycles in flight */
#endif
#define KN_LIFE_SLOTS (1 << KN_LIFE_BITS)
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
/* the sk_buff / net_device byte ranges read in one go (probes/lifecycle.py computes
 * them from the offsets above; span 0: nothing to read) */
#ifndef KN_SKB_LO
#define KN_SKB_LO 0
#define KN_SKB_SPAN 0
#endif
#ifndef KN_DEV_LO
#define KN_DEV_LO 0
#define KN_DEV_SPAN 0
#endif
/* raw tracepoints (1) or classic (0), and the argument positions of the raw ones */
#ifndef KN_RAW_RX
#define KN_RAW_RX 0
#endif
#ifndef KN_RAW_GRO
#define KN_RAW_GRO 0
#endif
#ifndef KN_RAW_RCV_ENTRY
#define KN_RAW_RCV_ENTRY 0
#endif
#ifndef KN_RAW_RCV_LIST_ENTRY
#define KN_RAW_RCV_LIST_ENTRY 0
#endif
#ifndef KN_RAW_RCV
#define KN_RAW_RCV 0
#endif
#ifndef KN_RAW_COPY
#define KN_RAW_COPY 0
#endif
#ifndef KN_RAW_DROP
#define KN_RAW_DROP 0
#endif
#ifndef KN_ARG_RX_SKB
#define KN_ARG_RX_SKB 0
#endif
#ifndef KN_ARG_GRO_SKB
#define KN_ARG_GRO_SKB 0
#endif
#ifndef KN_ARG_RCV_ENTRY_SKB
#define KN_ARG_RCV_ENTRY_SKB 0
#endif
#ifndef KN_ARG_RCV_LIST_ENTRY_SKB
#define KN_ARG_RCV_LIST_ENTRY_SKB 0
#endif
#ifndef KN_ARG_RCV_SKB
#define KN_ARG_RCV_SKB 0
#endif
#ifndef KN_ARG_COPY_SKB
#define KN_ARG_COPY_SKB 0
#endif
#ifndef KN_ARG_COPY_LEN
#define KN_ARG_COPY_LEN 0
#endif
#ifndef KN_ARG_DROP_SKB
#define KN_ARG_DROP_SKB 0
#endif
#ifndef KN_ARG_DROP_REASON
#define KN_ARG_DROP_REASON -1
#endif
#ifndef KN_TP_GRO_SKBADDR
#define KN_TP_GRO_SKBADDR 0
#endif
#ifndef KN_TP_RCV_ENTRY_SKBADDR
#define KN_TP_RCV_ENTRY_SKBADDR 0
#endif
#ifndef KN_TP_RCV_LIST_ENTRY_SKBADDR
#define KN_TP_RCV_LIST_ENTRY_SKBADDR 0
#endif

/* argument i of a raw tracepoint program (each is widened to 64 bits) */
#define KN_ARG(i) (((u64 *)ctx)[(i)])
/* the skb of a program that is raw or classic (a compile-time choice) */
#define KN_SKB_OF(dst, raw, argi, tpoff)		\
	do {						\
		if (raw)				\
			dst = KN_ARG(argi);		\
		else					\
			KN_RD(dst, tpoff);		\
	} while (0)
/* member at a BTF offset inside a block read in one go from byte lo */
#define KN_FROM(dst, buf, off, lo) __builtin_memcpy(&(dst), (buf) + (off) - (lo), sizeof(dst))
#define KN_BARRIER() asm volatile("" ::: "memory")

BPF_RINGBUF_OUTPUT(kn_life_events, KN_RINGBUF_PAGES);
#define KN_STATS_MAX KN_STAT_MAX
#include "common.bcc.h"

BPF_ARRAY(kn_life, struct kn_life_event, KN_LIFE_SLOTS);
BPF_HASH(kn_watch, u64, u8, KN_WATCH_MAX);
BPF_PERCPU_ARRAY(kn_life_hist, u64, KN_LIFE_H_STAGES * KN_LIFE_H_BUCKETS);
BPF_PERCPU_ARRAY(kn_life_hist_sum, u64, KN_LIFE_H_STAGES);  /* ns, for the histograms' sums */
BPF_PERCPU_ARRAY(kn_life_sample, u64, 1);

#define KN_LIFE_WAYS_LOG2 1  /* 2 slots per set */
#define KN_LIFE_WAYS (1 << KN_LIFE_WAYS_LOG2)
#define KN_CLAIMING 1ULL  /* skbaddr while an arrival arms the slot (never an skb address) */

/* first slot of the skb's set (Fibonacci hashing of its address) */
static __always_inline u32 kn_set(u64 skb)
{
	return (u32)((skb * 0x9E3779B97F4A7C15ULL) >> (64 - KN_LIFE_BITS + KN_LIFE_WAYS_LOG2)) << KN_LIFE_WAYS_LOG2;
}

/* the slot an arrival takes in its set: the one already holding skb, else a free one,
 * else the one whose lifecycle started first (4 ways measured no better than 2 in
 * tests/kernel/test_lifecycle.py's bulk transfer and cost ~70 ns more per arrival) */
static __always_inline struct kn_life_event *kn_slot(u64 skb)
{
	struct kn_life_event *pick = 0, *free = 0;
	u32 base = kn_set(skb);
#pragma unroll
	for (int w = 0; w < KN_LIFE_WAYS; w++) {
		u32 i = base + w;
		struct kn_life_event *s = kn_life.lookup(&i);
		if (!s)
			return 0;
		if (s->skbaddr == skb)
			return s;
		if (s->skbaddr == KN_CLAIMING)
			continue;  /* another CPU is arming it right now */
		if (!s->skbaddr) {
			if (!free)
				free = s;
		} else if (!pick || s->t_arrival < pick->t_arrival) {
			pick = s;
		}
	}
	return free ? free : pick;
}

/* the slot holding skb's lifecycle, or NULL */
static __always_inline struct kn_life_event *kn_find(u64 skb)
{
	if (!skb)
		return 0;
	u32 base = kn_set(skb);
#pragma unroll
	for (int w = 0; w < KN_LIFE_WAYS; w++) {
		u32 i = base + w;
		struct kn_life_event *s = kn_life.lookup(&i);
		if (s && s->skbaddr == skb)
			return s;
	}
	return 0;
}

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

/* network namespace inode and device of a net_device (0 / "" when BTF lacks them):
 * ifindex, nd_net and name in one read */
static __always_inline void kn_read_dev(struct kn_life_event *s, void *dev)
{
#if KN_OFF_DEV_ND_NET >= 0 && KN_DEV_SPAN > 0
	u8 d[KN_DEV_SPAN];
	if (!dev || bpf_probe_read_kernel(d, sizeof(d), dev + KN_DEV_LO))
		return;
	void *net = NULL;
	KN_FROM(net, d, KN_OFF_DEV_ND_NET, KN_DEV_LO);
	s->netns = kn_net_inum(net);
#if KN_OFF_DEV_IFINDEX >= 0 && KN_OFF_DEV_NAME >= 0
	KN_FROM(s->ifindex, d, KN_OFF_DEV_IFINDEX, KN_DEV_LO);
	__builtin_memcpy(s->ifname, d + KN_OFF_DEV_NAME - KN_DEV_LO, sizeof(s->ifname));
#endif
#endif
}

/* the skb's receiving device, read alone (a drop before the protocol stage) */
static __always_inline void kn_read_skb_dev(struct kn_life_event *s, void *skb)
{
#if KN_OFF_SKB_DEV >= 0
	void *dev = NULL;
	bpf_probe_read_kernel(&dev, sizeof(dev), skb + KN_OFF_SKB_DEV);
	kn_read_dev(s, dev);
#endif
}

static __always_inline int kn_arrival(u64 skb, u8 tp)
{
	struct kn_life_event *s = kn_slot(skb);
	if (!skb)
		return 0;
	if (!s) {  /* both ways are being armed by other CPUs at this moment */
		kn_count(KN_STAT_EVICTED);
		return 0;
	}
	/* claim the slot: two CPUs arming the same slot at once would each lose a
	 * lifecycle silently (and could tear it); the loser counts it instead */
	u64 prev = s->skbaddr;
	if (prev == KN_CLAIMING || __sync_val_compare_and_swap(&s->skbaddr, prev, KN_CLAIMING) != prev) {
		kn_count(KN_STAT_EVICTED);
		return 0;
	}
	if (prev && prev != skb)
		kn_count(KN_STAT_EVICTED);  /* counted, never silent: the set was full */
	__builtin_memset(s, 0, __builtin_offsetof(struct kn_life_event, skbaddr));
	__builtin_memset((u8 *)s + __builtin_offsetof(struct kn_life_event, skaddr), 0,
			 sizeof(*s) - __builtin_offsetof(struct kn_life_event, skaddr));
	s->t_arrival = bpf_ktime_get_ns();
	s->cpu_arrival = bpf_get_smp_processor_id();
	s->arrival_tp = tp;
	s->segs = 1;
#if KN_OFF_SKB_LEN >= 0
	bpf_probe_read_kernel(&s->len, sizeof(s->len), (void *)skb + KN_OFF_SKB_LEN);
#endif
	KN_BARRIER();
	s->skbaddr = skb;
	kn_count(KN_STAT_ARRIVED);
	return 0;
}

/* one program per arrival tracepoint: they differ only in where the skb is and the tag */
#define KN_ARRIVAL_PROG(fn, raw, argi, off, tp)		\
int fn(void *ctx)					\
{							\
	u64 skb = 0;					\
	KN_SKB_OF(skb, raw, argi, off);			\
	return kn_arrival(skb, tp);			\
}

KN_ARRIVAL_PROG(kn_on_netif_rx, KN_RAW_RX, KN_ARG_RX_SKB, KN_TP_RX_SKBADDR, KN_LIFE_A_NETIF_RX)
#if KN_HAVE_GRO
KN_ARRIVAL_PROG(kn_on_gro_entry, KN_RAW_GRO, KN_ARG_GRO_SKB, KN_TP_GRO_SKBADDR, KN_LIFE_A_GRO)
#endif
#if KN_HAVE_RCV_ENTRY
KN_ARRIVAL_PROG(kn_on_rcv_entry, KN_RAW_RCV_ENTRY, KN_ARG_RCV_ENTRY_SKB, KN_TP_RCV_ENTRY_SKBADDR,
		KN_LIFE_A_RECEIVE_ENTRY)
#endif
#if KN_HAVE_RCV_LIST_ENTRY
KN_ARRIVAL_PROG(kn_on_rcv_list_entry, KN_RAW_RCV_LIST_ENTRY, KN_ARG_RCV_LIST_ENTRY_SKB,
		KN_TP_RCV_LIST_ENTRY_SKBADDR, KN_LIFE_A_RECEIVE_ENTRY)
#endif

/* addresses and ports from the L3 header at l3 (skb->data at netif_receive_skb, after
 * the link layer was pulled), stored local (destination) side first: one read covers an
 * option-less IPv4 header with the ports, or an IPv6 header with the ports */
static __always_inline void kn_parse_l3(struct kn_life_event *s, void *l3)
{
	if (!l3)
		return;
	u8 h[44];
	if (bpf_probe_read_kernel(h, sizeof(h), l3))
		return;
	u8 *ports = 0;
	if (s->protocol == 0x0800) {
		if ((h[0] >> 4) != 4)
			return;
		s->l4proto = h[9];
		__builtin_memcpy(s->daddr, h + 12, 4);  /* packet source = peer */
		__builtin_memcpy(s->saddr, h + 16, 4);  /* packet destination = local */
		if ((h[0] & 0x0f) == 5)
			ports = h + 20;
	} else if (s->protocol == 0x86dd) {
		s->l4proto = h[6];
		__builtin_memcpy(s->daddr, h + 8, 16);
		__builtin_memcpy(s->saddr, h + 24, 16);
		s->flags |= KN_LIFE_F_IPV6;
		ports = h + 40;
	} else {
		return;
	}
	s->flags |= KN_LIFE_F_ADDR;
	if (s->l4proto == 6 || s->l4proto == 17 || s->l4proto == 132) {
		u16 p[2] = {};
		if (ports)
			__builtin_memcpy(p, ports, sizeof(p));
		else  /* IPv4 with options */
			bpf_probe_read_kernel(p, sizeof(p), l3 + (h[0] & 0x0f) * 4);
		s->dport = bpf_ntohs(p[0]);
		s->sport = bpf_ntohs(p[1]);
	}
}

/* a packet of the scope reached the protocol stage without an arrival we recorded (its
 * slot was taken, or the kernel ran no BPF program at its arrival: docs/probes/
 * lifecycle.md, Caveats): counted, so the histograms' shortfall is accounted for */
static __always_inline void kn_count_unseen(void *skb)
{
	if (!skb)
		return;
	struct kn_life_event tmp = {};
	kn_read_skb_dev(&tmp, skb);
	if (kn_in_scope(tmp.netns))
		kn_count(KN_STAT_UNSEEN);
}

int kn_on_netif_receive_skb(void *ctx)
{
	u64 skb = 0;
	KN_SKB_OF(skb, KN_RAW_RCV, KN_ARG_RCV_SKB, KN_TP_RCV_SKBADDR);
	struct kn_life_event *s = kn_find(skb);
	if (!s) {
		kn_count_unseen((void *)skb);
		return 0;
	}
	if (s->t_proto)  /* a re-injection (decap, bridge): keep the first */
		return 0;
	s->t_proto = bpf_ktime_get_ns();
	s->cpu_proto = bpf_get_smp_processor_id();
#if KN_SKB_SPAN > 0
	u8 b[KN_SKB_SPAN];
	if (!bpf_probe_read_kernel(b, sizeof(b), (void *)skb + KN_SKB_LO)) {
#if KN_OFF_SKB_DEV >= 0
		void *dev = NULL;
		KN_FROM(dev, b, KN_OFF_SKB_DEV, KN_SKB_LO);
		kn_read_dev(s, dev);
#endif
#if KN_OFF_SKB_DATA >= 0 && KN_OFF_SKB_PROTOCOL >= 0
		void *l3 = NULL;
		u16 proto_be = 0;
		KN_FROM(l3, b, KN_OFF_SKB_DATA, KN_SKB_LO);
		KN_FROM(proto_be, b, KN_OFF_SKB_PROTOCOL, KN_SKB_LO);
		s->protocol = bpf_ntohs(proto_be);
		kn_parse_l3(s, l3);
#endif
#if KN_OFF_SKB_HEAD >= 0 && KN_OFF_SKB_END >= 0 && KN_OFF_SHINFO_GSO_SEGS >= 0
		void *head = NULL;
		u32 end = 0;   /* sk_buff_data_t: an offset from head on 64-bit kernels */
		u16 segs = 0;
		KN_FROM(head, b, KN_OFF_SKB_HEAD, KN_SKB_LO);
		KN_FROM(end, b, KN_OFF_SKB_END, KN_SKB_LO);
		if (head && end)
			bpf_probe_read_kernel(&segs, sizeof(segs), head + end + KN_OFF_SHINFO_GSO_SEGS);
		if (segs > 1)
			s->segs = segs;
#endif
	}
#endif
	if (!kn_in_scope(s->netns)) {
		s->skbaddr = 0;
		return 0;
	}
	kn_hist(KN_LIFE_H_BACKLOG, s->t_arrival, s->t_proto);
	return 0;
}

#if KN_HAVE_TCP_PROBE
int kn_on_tcp_probe(void *ctx)
{
	u64 skb = 0;
	KN_RD(skb, KN_TP_PROBE_SKBADDR);
	struct kn_life_event *s = kn_find(skb);
	if (!s || s->t_enqueue)
		return 0;
	u16 data_len = 0;
	KN_RD(data_len, KN_TP_PROBE_DATA_LEN);
	if (!data_len) {  /* a pure ACK or control segment is never read: close it here */
		s->skbaddr = 0;
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
	u64 cookie = s->sk_cookie;
	if (cookie && kn_watch.lookup(&cookie))
		why |= KN_LIFE_W_WATCHED;
#if KN_SAMPLE_N > 0
	int zero = 0;
	u64 *n = kn_life_sample.lookup(&zero);
	if (n && ((*n)++ % KN_SAMPLE_N) == 0)
		why |= KN_LIFE_W_SAMPLED;
#endif
	return why;
}

/* copy the finished lifecycle out and retire its slot; the copy is discarded when the
 * slot was re-armed by another CPU meanwhile (it would be torn) */
static __always_inline void kn_emit(struct kn_life_event *s, u64 skb, u64 now)
{
	if (!kn_rate_ok(now)) {
		kn_count(KN_STAT_RATE_CAPPED);
		s->skbaddr = 0;
		return;
	}
	struct kn_life_event *e = kn_life_events.ringbuf_reserve(sizeof(struct kn_life_event));
	if (!e) {
		kn_count(KN_STAT_RB_FULL);
		s->skbaddr = 0;
		return;
	}
	__builtin_memcpy(e, s, sizeof(*e));
	KN_BARRIER();
	if (s->skbaddr != skb || e->skbaddr != skb) {
		kn_life_events.ringbuf_discard(e, BPF_RB_NO_WAKEUP);
		kn_count(KN_STAT_EVICTED);  /* re-armed by another CPU while copied: torn, not emitted */
		return;
	}
	s->skbaddr = 0;
	kn_life_events.ringbuf_submit(e, kn_wake());
	kn_count(KN_STAT_EMITTED);
}

int kn_on_copy_datagram(void *ctx)
{
	u64 skb = 0;
	KN_SKB_OF(skb, KN_RAW_COPY, KN_ARG_COPY_SKB, KN_TP_COPY_SKBADDR);
	struct kn_life_event *s = kn_find(skb);
	if (!s)
		return 0;
#if KN_OFF_SKB_PROTOCOL >= 0
	/* A lifecycle that ended unseen (a consumed control segment, ICMP, or any packet the
	 * enqueue stage cannot close: no tcp_probe) keeps its slot until an arrival reuses
	 * it. Its skb's memory may meanwhile be reused by an skb that never arrives from a
	 * device and is then read: an AF_UNIX or netlink message (every process's IPC, the
	 * self-pipe of an event loop), whose skb->protocol is 0. That read is not the end of
	 * the network lifecycle: the slot is retired, counted, not emitted. */
	u16 proto_be = 0;
	bpf_probe_read_kernel(&proto_be, sizeof(proto_be), (void *)skb + KN_OFF_SKB_PROTOCOL);
	if (!proto_be) {
		kn_count(KN_STAT_STALE);
		s->skbaddr = 0;
		return 0;
	}
#endif
	u64 now = bpf_ktime_get_ns();
	int read_len = 0;
	if (KN_RAW_COPY)
		read_len = (int)KN_ARG(KN_ARG_COPY_LEN);
	else
		KN_RD(read_len, KN_TP_COPY_LEN);
	s->t_end = now;
	s->read_len = read_len > 0 ? read_len : 0;
	s->cpu_end = bpf_get_smp_processor_id();
	kn_hist(KN_LIFE_H_SOCKET, s->t_enqueue, now);
	kn_hist(KN_LIFE_H_TOTAL, s->t_arrival, now);
	kn_count(KN_STAT_READ);
	u8 why = kn_policy(s);
	if (!why) {
		kn_count(KN_STAT_QUIET);
		s->skbaddr = 0;
		return 0;
	}
	u64 pid_tgid = bpf_get_current_pid_tgid();
	s->pid = pid_tgid >> 32;
	s->tid = (u32)pid_tgid;
	bpf_get_current_comm(s->comm, sizeof(s->comm));
	s->flags |= KN_LIFE_F_READ;
	s->why = why;
	kn_emit(s, skb, now);
	return 0;
}

int kn_on_kfree_skb(void *ctx)
{
	u64 skb = 0;
	KN_SKB_OF(skb, KN_RAW_DROP, KN_ARG_DROP_SKB, KN_TP_DROP_SKBADDR);
	struct kn_life_event *s = kn_find(skb);
	if (!s)
		return 0;
	if (!s->t_proto) {  /* dropped before the protocol stage: its device is read here */
		kn_read_skb_dev(s, (void *)skb);
		if (!kn_in_scope(s->netns)) {
			s->skbaddr = 0;
			return 0;
		}
	}
	u64 now = bpf_ktime_get_ns();
	s->t_end = now;
	s->cpu_end = bpf_get_smp_processor_id();
#if KN_TP_DROP_REASON >= 0
	if (KN_RAW_DROP)
		s->reason = (u32)KN_ARG(KN_ARG_DROP_REASON);
	else
		KN_RD(s->reason, KN_TP_DROP_REASON);
#endif
	bpf_get_current_comm(s->comm, sizeof(s->comm));
	kn_count(KN_STAT_DROPPED);
	s->why = KN_LIFE_W_DROPPED | kn_policy(s);
	kn_emit(s, skb, now);
	return 0;
}
