/* SPDX-License-Identifier: Apache-2.0
 * Drop probe: one record per skb:kfree_skb, rate-capped per CPU, losses counted.
 *
 * No struct layout comes from kernel headers. Tracepoint field offsets (KN_TP_*) come
 * from the running kernel's format file; the few struct members read through pointers
 * (KN_OFF_*) come from its BTF. Both arrive as -D constants (probes/drop.py); the
 * defaults below only make the file self-describing, the loader always sets them.
 *
 * Raw tracepoint: with KN_RAW_DROP 1 the program is attached to the raw tracepoint
 * kfree_skb and takes skb, location, reason and rx_sk from ctx->args[KN_ARG_DROP_*]
 * (positions from the running kernel's BTF prototype btf_trace_kfree_skb,
 * probes/drop.py) and skb->protocol through BTF; no trace record is built and the
 * program is not skipped when it fires nested in another BPF program. With 0 it is the
 * classic skb:kfree_skb tracepoint reading its record at the KN_TP_* offsets.
 */
#include "drop.h"

#ifndef KN_RATE_LIMIT
#define KN_RATE_LIMIT 10000      /* drop records per CPU per second; excess is counted */
#endif
#ifndef KN_RINGBUF_PAGES
#define KN_RINGBUF_PAGES 64
#endif
#ifndef KN_TP_SKBADDR
#error "KN_TP_* offsets must come from the skb:kfree_skb format file"
#endif
/* optional tracepoint fields: -1 when the running kernel lacks them */
#ifndef KN_TP_RX_SK
#define KN_TP_RX_SK -1
#endif
#ifndef KN_TP_REASON
#define KN_TP_REASON -1
#endif
/* BTF-derived member offsets: -1 when unknown (the probe then skips that part) */
#ifndef KN_OFF_SKB_HEAD
#define KN_OFF_SKB_HEAD -1
#endif
#ifndef KN_OFF_SKB_NETWORK_HEADER
#define KN_OFF_SKB_NETWORK_HEADER -1
#endif
#ifndef KN_OFF_SKB_TRANSPORT_HEADER
#define KN_OFF_SKB_TRANSPORT_HEADER -1
#endif
#ifndef KN_OFF_SKB_LEN
#define KN_OFF_SKB_LEN -1
#endif
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
#ifndef KN_OFF_SK_COOKIE
#define KN_OFF_SK_COOKIE -1
#endif
#ifndef KN_OFF_SKB_SK
#define KN_OFF_SKB_SK -1
#endif
#ifndef KN_OFF_SKB_PROTOCOL
#define KN_OFF_SKB_PROTOCOL -1
#endif
#ifndef KN_RAW_DROP
#define KN_RAW_DROP 0
#endif
#ifndef KN_ARG_DROP_SKB
#define KN_ARG_DROP_SKB 0
#endif
#ifndef KN_ARG_DROP_LOCATION
#define KN_ARG_DROP_LOCATION 1
#endif
#ifndef KN_ARG_DROP_REASON
#define KN_ARG_DROP_REASON -1
#endif
#ifndef KN_ARG_DROP_RX_SK
#define KN_ARG_DROP_RX_SK -1
#endif
#define KN_ARG(i) (((u64 *)ctx)[(i)])
/* one tracepoint value: an argument (raw) or a record field (classic) */
#if KN_RAW_DROP
#define KN_SKB()      KN_ARG(KN_ARG_DROP_SKB)
#define KN_LOCATION() KN_ARG(KN_ARG_DROP_LOCATION)
#define KN_REASON()   ((u32)KN_ARG(KN_ARG_DROP_REASON))
#define KN_RX_SK()    KN_ARG(KN_ARG_DROP_RX_SK)
#else
#define KN_SKB()      (*(u64 *)(ctx + KN_TP_SKBADDR))
#define KN_LOCATION() (*(u64 *)(ctx + KN_TP_LOCATION))
#define KN_REASON()   (*(u32 *)(ctx + KN_TP_REASON))
#define KN_RX_SK()    (*(u64 *)(ctx + KN_TP_RX_SK))
#endif

BPF_RINGBUF_OUTPUT(kn_drop_events, KN_RINGBUF_PAGES);
#define KN_STATS_MAX KN_STAT_MAX
#include "common.bcc.h"

static __always_inline void kn_parse_packet(struct kn_drop_event *e, void *skb)
{
#if KN_OFF_SKB_HEAD >= 0
	void *head = NULL;
	u16 nh = 0xffff, th = 0xffff;
	bpf_probe_read_kernel(&head, sizeof(head), skb + KN_OFF_SKB_HEAD);
	bpf_probe_read_kernel(&nh, sizeof(nh), skb + KN_OFF_SKB_NETWORK_HEADER);
	bpf_probe_read_kernel(&th, sizeof(th), skb + KN_OFF_SKB_TRANSPORT_HEADER);
	if (!head || nh == 0xffff)
		return;
	void *l3 = head + nh;
	void *l4 = NULL;
	if (e->protocol == 0x0800) {
		u8 vihl = 0;
		bpf_probe_read_kernel(&vihl, 1, l3);
		if ((vihl >> 4) != 4)
			return;
		bpf_probe_read_kernel(&e->l4proto, 1, l3 + 9);
		bpf_probe_read_kernel(e->saddr, 4, l3 + 12);
		bpf_probe_read_kernel(e->daddr, 4, l3 + 16);
		l4 = (th != 0xffff && th > nh) ? head + th : l3 + (vihl & 0x0f) * 4;
	} else if (e->protocol == 0x86dd) {
		bpf_probe_read_kernel(&e->l4proto, 1, l3 + 6);
		bpf_probe_read_kernel(e->saddr, 16, l3 + 8);
		bpf_probe_read_kernel(e->daddr, 16, l3 + 24);
		e->flags |= KN_DROP_F_IPV6;
		l4 = (th != 0xffff && th > nh) ? head + th : l3 + 40;
	} else {
		return;
	}
	e->flags |= KN_DROP_F_ADDR;
	if (e->l4proto == 6 || e->l4proto == 17 || e->l4proto == 132) {
		u16 ports[2] = {};
		bpf_probe_read_kernel(ports, sizeof(ports), l4);
		e->sport = bpf_ntohs(ports[0]);
		e->dport = bpf_ntohs(ports[1]);
	}
#endif
}

/* the drop's network namespace, read before any other work so that a scoped collector
 * spends nothing more on other namespaces: the device's, else the receiving (rx_sk) or
 * owning (skb->sk) socket's */
static __always_inline u32 kn_drop_netns(void *ctx, void *skb)
{
	u32 ns = 0;
#if KN_OFF_SKB_DEV >= 0
	void *dev = NULL, *net = NULL;
	bpf_probe_read_kernel(&dev, sizeof(dev), skb + KN_OFF_SKB_DEV);
	if (dev)
		bpf_probe_read_kernel(&net, sizeof(net), dev + KN_OFF_DEV_ND_NET);
	ns = kn_net_inum(net);
#endif
	if (!ns) {
		void *sk = NULL;
#if KN_TP_RX_SK >= 0
		sk = (void *)KN_RX_SK();
#endif
#if KN_OFF_SKB_SK >= 0
		if (!sk)
			bpf_probe_read_kernel(&sk, sizeof(sk), skb + KN_OFF_SKB_SK);
#endif
		ns = kn_sk_netns(sk);
	}
	return ns;
}

int kn_on_kfree_skb(void *ctx)
{
	kn_count(KN_STAT_SEEN);
	u64 skbaddr = KN_SKB();
	u32 netns = kn_drop_netns(ctx, (void *)skbaddr);
	if (!kn_in_scope(netns))
		return 0;
	u64 now = bpf_ktime_get_ns();
	if (!kn_rate_ok(now)) {
		kn_count(KN_STAT_RATE_CAPPED);
		return 0;
	}
	struct kn_drop_event *e = kn_drop_events.ringbuf_reserve(sizeof(struct kn_drop_event));
	if (!e) {
		kn_count(KN_STAT_RB_FULL);
		return 0;
	}
	__builtin_memset(e, 0, sizeof(*e));
	e->ts_ns = now;
	e->netns = netns;
	e->skbaddr = skbaddr;
	e->location = KN_LOCATION();
#if KN_RAW_DROP
#if KN_OFF_SKB_PROTOCOL >= 0
	u16 proto_be = 0;
	bpf_probe_read_kernel(&proto_be, sizeof(proto_be), (void *)skbaddr + KN_OFF_SKB_PROTOCOL);
	e->protocol = bpf_ntohs(proto_be);  /* as the classic record has it */
#endif
#else
	e->protocol = *(u16 *)(ctx + KN_TP_PROTOCOL);
#endif
#if KN_TP_REASON >= 0
	e->reason = KN_REASON();
#endif
	u64 pid_tgid = bpf_get_current_pid_tgid();
	e->pid = pid_tgid >> 32;
	e->tid = (u32)pid_tgid;
	e->cpu = bpf_get_smp_processor_id();
	bpf_get_current_comm(e->comm, sizeof(e->comm));

	void *skb = (void *)e->skbaddr;
#if KN_OFF_SKB_LEN >= 0
	bpf_probe_read_kernel(&e->len, sizeof(e->len), skb + KN_OFF_SKB_LEN);
#endif
#if KN_OFF_SKB_DEV >= 0
	void *dev = NULL;
	bpf_probe_read_kernel(&dev, sizeof(dev), skb + KN_OFF_SKB_DEV);
	if (dev) {
		e->flags |= KN_DROP_F_DEV;
		bpf_probe_read_kernel(&e->ifindex, sizeof(e->ifindex), dev + KN_OFF_DEV_IFINDEX);
		bpf_probe_read_kernel(e->ifname, sizeof(e->ifname), dev + KN_OFF_DEV_NAME);
	}
#endif
	void *sk = NULL;
#if KN_TP_RX_SK >= 0
	sk = (void *)KN_RX_SK();
	if (sk)
		e->flags |= KN_DROP_F_HAS_SK;
#endif
#if KN_OFF_SKB_SK >= 0
	/* no receiving socket: the owner (a purged send/receive queue, a local sender) */
	if (!sk) {
		bpf_probe_read_kernel(&sk, sizeof(sk), skb + KN_OFF_SKB_SK);
		if (sk)
			e->flags |= KN_DROP_F_OWNER_SK;
	}
#endif
	if (sk) {
#if KN_OFF_SK_COOKIE >= 0
		bpf_probe_read_kernel(&e->sk_cookie, sizeof(e->sk_cookie), sk + KN_OFF_SK_COOKIE);
#endif
	}
	kn_parse_packet(e, skb);
	kn_drop_events.ringbuf_submit(e, kn_wake());
	kn_count(KN_STAT_EMITTED);
	return 0;
}
