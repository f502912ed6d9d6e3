/* SPDX-License-Identifier: Apache-2.0
 * TCP events family: retransmits, resets sent/received, congestion state changes,
 * connect latency (and optionally closes) from sock:inet_sock_set_state, and the
 * socket buffer-limit events. One record type (tcp.h), one ring buffer, one per-CPU
 * rate cap shared by every program, losses counted.
 *
 * No struct layout comes from kernel headers. Tracepoint field offsets (KN_TP_<TP>_*)
 * come from the running kernel's format files; the few struct members read through
 * pointers (KN_OFF_*) from its BTF; TCP state numbers (KN_TCP_STATE_*) and
 * IPPROTO_TCP (KN_PROTO_TCP) from the format's __print_symbolic tables. All arrive as
 * -D constants (probes/tcp.py). A program whose tracepoint is missing is compiled
 * out (KN_HAVE_<TP> 0) and not attached.
 */
#include "tcp.h"

#ifndef KN_RATE_LIMIT
#define KN_RATE_LIMIT 10000      /* records per CPU per second; excess is counted */
#endif
#ifndef KN_RINGBUF_PAGES
#define KN_RINGBUF_PAGES 64
#endif
#ifndef KN_CONNECT_PENDING
#define KN_CONNECT_PENDING 16384 /* connects in SYN_SENT remembered at once (LRU) */
#endif
#ifndef KN_CLOSE_EVENTS
#define KN_CLOSE_EVENTS 0
#endif
#ifndef KN_HAVE_RTX
#error "KN_HAVE_* and KN_TP_* must come from the running kernel's format files (probes/tcp.py)"
#endif

/* BTF-derived member offsets: -1 when unknown (that part is skipped) */
#ifndef KN_OFF_SK_COOKIE
#define KN_OFF_SK_COOKIE -1
#endif
#ifndef KN_OFF_SKB_DEV
#define KN_OFF_SKB_DEV -1
#endif
#ifndef KN_OFF_DEV_ND_NET
#define KN_OFF_DEV_ND_NET -1
#endif
#ifndef KN_OFF_CA_STATE          /* byte holding inet_connection_sock.icsk_ca_state */
#define KN_OFF_CA_STATE -1
#endif
#ifndef KN_CA_STATE_SHIFT
#define KN_CA_STATE_SHIFT 0
#endif
#ifndef KN_CA_STATE_MASK
#define KN_CA_STATE_MASK 0
#endif

BPF_RINGBUF_OUTPUT(kn_tcp_events, KN_RINGBUF_PAGES);
#define KN_STATS_MAX KN_TCP_STAT_MAX
#include "common.bcc.h"
/* skaddr -> bpf_ktime_get_ns() when the socket entered SYN_SENT */
BPF_TABLE("lru_hash", u64, u64, kn_tcp_connecting, KN_CONNECT_PENDING);


/* scope (sidecar mode), rate cap, reserve, common fields; NULL when out of scope,
 * capped or the ring buffer is full. netns: the event's, 0 when unknown */
static __always_inline struct kn_tcp_event *kn_begin(u8 type, u64 now, u32 netns)
{
	if (!kn_in_scope(netns))
		return NULL;
	if (!kn_rate_ok(now)) {
		kn_count(KN_TCP_STAT_RATE_CAPPED);
		return NULL;
	}
	struct kn_tcp_event *e = kn_tcp_events.ringbuf_reserve(sizeof(struct kn_tcp_event));
	if (!e) {
		kn_count(KN_TCP_STAT_RB_FULL);
		return NULL;
	}
	__builtin_memset(e, 0, sizeof(*e));
	e->ts_ns = now;
	e->start_ns = now;
	e->type = type;
	e->netns = netns;
	u64 pid_tgid = bpf_get_current_pid_tgid();
	e->pid = pid_tgid >> 32;
	e->tid = (u32)pid_tgid;
	e->cpu = bpf_get_smp_processor_id();
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	return e;
}

static __always_inline void kn_submit(struct kn_tcp_event *e)
{
	kn_tcp_events.ringbuf_submit(e, kn_wake());
	kn_count(KN_TCP_STAT_EMITTED);
}

/* cookie (unless the tracepoint gave it), netns and congestion state of a socket */
static __always_inline void kn_sock(struct kn_tcp_event *e, void *sk, int want_ca)
{
	e->skaddr = (u64)sk;
	if (!sk)
		return;
#if KN_OFF_SK_COOKIE >= 0
	if (!e->sk_cookie)
		bpf_probe_read_kernel(&e->sk_cookie, sizeof(e->sk_cookie), sk + KN_OFF_SK_COOKIE);
#endif
	if (!e->netns)  /* kn_begin() had it from the same socket, unless it had none */
		e->netns = kn_sk_netns(sk);
#if KN_OFF_CA_STATE >= 0
	if (want_ca) {
		u8 b = 0;
		bpf_probe_read_kernel(&b, 1, sk + KN_OFF_CA_STATE);
		e->ca_state = (b >> KN_CA_STATE_SHIFT) & KN_CA_STATE_MASK;
		e->flags |= KN_TCP_F_CA_STATE;
	}
#endif
}

/* the common sport/dport/family/saddr/daddr/saddr_v6/daddr_v6 field set */
static __always_inline void kn_tuple(struct kn_tcp_event *e, void *ctx, int o_sport, int o_dport,
				     int o_family, int o_saddr, int o_daddr, int o_saddr6, int o_daddr6)
{
	if (o_sport < 0)
		return;
	bpf_probe_read_kernel(&e->sport, 2, ctx + o_sport);
	bpf_probe_read_kernel(&e->dport, 2, ctx + o_dport);
	bpf_probe_read_kernel(&e->family, 2, ctx + o_family);
	if (e->family == 10 /* AF_INET6, UAPI */) {
		bpf_probe_read_kernel(e->saddr, 16, ctx + o_saddr6);
		bpf_probe_read_kernel(e->daddr, 16, ctx + o_daddr6);
		e->flags |= KN_TCP_F_ADDR | KN_TCP_F_IPV6;
	} else if (e->family == 2 /* AF_INET, UAPI */) {
		bpf_probe_read_kernel(e->saddr, 4, ctx + o_saddr);
		bpf_probe_read_kernel(e->daddr, 4, ctx + o_daddr);
		e->flags |= KN_TCP_F_ADDR;
	}
}

#define KN_TUPLE(e, P) kn_tuple(e, ctx, KN_TP_##P##_SPORT, KN_TP_##P##_DPORT, KN_TP_##P##_FAMILY, \
	KN_TP_##P##_SADDR, KN_TP_##P##_DADDR, KN_TP_##P##_SADDR_V6, KN_TP_##P##_DADDR_V6)

/* struct sockaddr_in / sockaddr_in6 (UAPI layouts) as tcp_send_reset stores them */
static __always_inline void kn_sockaddr(u16 *family, u16 *port, u8 *addr, void *p)
{
	bpf_probe_read_kernel(family, 2, p);
	u16 be = 0;
	bpf_probe_read_kernel(&be, 2, p + 2);
	*port = bpf_ntohs(be);
	if (*family == 10)
		bpf_probe_read_kernel(addr, 16, p + 8);  /* sin6_addr */
	else if (*family == 2)
		bpf_probe_read_kernel(addr, 4, p + 4);   /* sin_addr */
}

#if KN_HAVE_RTX
int kn_tcp_on_retransmit(void *ctx)
{
	kn_count(KN_TCP_STAT_SEEN);
	void *sk = NULL;
	KN_RD(sk, KN_TP_RTX_SKADDR);
	struct kn_tcp_event *e = kn_begin(KN_TCP_EV_RETRANSMIT, bpf_ktime_get_ns(), kn_sk_netns(sk));
	if (!e)
		return 0;
	KN_RD(e->state, KN_TP_RTX_STATE);
#if KN_TP_RTX_ERR >= 0
	KN_RD(e->err, KN_TP_RTX_ERR);
	e->flags |= KN_TCP_F_ERR;
#endif
	KN_TUPLE(e, RTX);
	kn_sock(e, sk, 1);
	kn_submit(e);
	return 0;
}
#endif

#if KN_HAVE_SRST
int kn_tcp_on_send_reset(void *ctx)
{
	kn_count(KN_TCP_STAT_SEEN);
	void *sk = NULL;
	KN_RD(sk, KN_TP_SRST_SKADDR);
	u32 netns = kn_sk_netns(sk);
#if KN_OFF_SKB_DEV >= 0 && KN_OFF_DEV_ND_NET >= 0
	if (!netns) {  /* no socket (NO_SOCKET): the netns of the packet's device */
		void *skb = NULL, *dev = NULL, *net = NULL;
		KN_RD(skb, KN_TP_SRST_SKBADDR);
		if (skb)
			bpf_probe_read_kernel(&dev, sizeof(dev), skb + KN_OFF_SKB_DEV);
		if (dev)
			bpf_probe_read_kernel(&net, sizeof(net), dev + KN_OFF_DEV_ND_NET);
		netns = kn_net_inum(net);
	}
#endif
	struct kn_tcp_event *e = kn_begin(KN_TCP_EV_RESET_SENT, bpf_ktime_get_ns(), netns);
	if (!e)
		return 0;
	KN_RD(e->state, KN_TP_SRST_STATE);  /* 0: no socket, state unknown */
#if KN_TP_SRST_REASON >= 0
	KN_RD(e->reason, KN_TP_SRST_REASON);
	e->flags |= KN_TCP_F_REASON;
#endif
#if KN_TP_SRST_SADDR >= 0
	/* saddr is the RST's sender (this host), daddr its target, for sk and skb alike */
	u16 dfamily = 0;
	kn_sockaddr(&e->family, &e->sport, e->saddr, ctx + KN_TP_SRST_SADDR);
	kn_sockaddr(&dfamily, &e->dport, e->daddr, ctx + KN_TP_SRST_DADDR);
	if (e->family == 10)
		e->flags |= KN_TCP_F_ADDR | KN_TCP_F_IPV6;
	else if (e->family == 2)
		e->flags |= KN_TCP_F_ADDR;
#endif
	kn_sock(e, sk, 0);
	kn_submit(e);
	return 0;
}
#endif

#if KN_HAVE_RRST
int kn_tcp_on_receive_reset(void *ctx)
{
	kn_count(KN_TCP_STAT_SEEN);
	void *sk = NULL;
	KN_RD(sk, KN_TP_RRST_SKADDR);
	struct kn_tcp_event *e = kn_begin(KN_TCP_EV_RESET_RECEIVED, bpf_ktime_get_ns(), kn_sk_netns(sk));
	if (!e)
		return 0;
#if KN_TP_RRST_SOCK_COOKIE >= 0
	KN_RD(e->sk_cookie, KN_TP_RRST_SOCK_COOKIE);
#endif
	KN_TUPLE(e, RRST);
	kn_sock(e, sk, 0);
	kn_submit(e);
	return 0;
}
#endif

#if KN_HAVE_CONG
int kn_tcp_on_cong_state(void *ctx)
{
	kn_count(KN_TCP_STAT_SEEN);
	void *sk = NULL;
	KN_RD(sk, KN_TP_CONG_SKADDR);
	struct kn_tcp_event *e = kn_begin(KN_TCP_EV_CONG_STATE, bpf_ktime_get_ns(), kn_sk_netns(sk));
	if (!e)
		return 0;
	KN_RD(e->ca_state, KN_TP_CONG_CONG_STATE);  /* the state entered */
	e->flags |= KN_TCP_F_CA_STATE;
	KN_TUPLE(e, CONG);
	kn_sock(e, sk, 0);
	kn_submit(e);
	return 0;
}
#endif

#if KN_HAVE_STATE
int kn_tcp_on_set_state(void *ctx)
{
	kn_count(KN_TCP_STAT_SEEN);
	u16 protocol = 0;
	KN_RD(protocol, KN_TP_STATE_PROTOCOL);
	if (protocol != KN_PROTO_TCP)
		return 0;
	int oldstate = 0, newstate = 0;
	u64 sk = 0;
	KN_RD(oldstate, KN_TP_STATE_OLDSTATE);
	KN_RD(newstate, KN_TP_STATE_NEWSTATE);
	KN_RD(sk, KN_TP_STATE_SKADDR);
	u64 now = bpf_ktime_get_ns();
	if (newstate == KN_TCP_STATE_SYN_SENT) {
		kn_tcp_connecting.update(&sk, &now);
		return 0;
	}
	u64 start = 0;
	if (oldstate == KN_TCP_STATE_SYN_SENT) {
		u64 *p = kn_tcp_connecting.lookup(&sk);
		if (p)
			start = *p;
		else
			kn_count(KN_TCP_STAT_UNMATCHED);
		kn_tcp_connecting.delete(&sk);
	}
	u8 type = 0;
	if (start)
		type = KN_TCP_EV_CONNECT;  /* established, or failed (-> CLOSE) */
	else if (KN_CLOSE_EVENTS && newstate == KN_TCP_STATE_CLOSE)
		type = KN_TCP_EV_CLOSE;
	if (!type)
		return 0;
	struct kn_tcp_event *e = kn_begin(type, now, kn_sk_netns((void *)sk));
	if (!e)
		return 0;
	if (start)
		e->start_ns = start;
	e->state = newstate;
	e->oldstate = oldstate;
	KN_TUPLE(e, STATE);
	kn_sock(e, (void *)sk, 0);
	kn_submit(e);
	return 0;
}
#endif

#if KN_HAVE_SYNACK
int kn_tcp_on_retransmit_synack(void *ctx)
{
	kn_count(KN_TCP_STAT_SEEN);
	void *sk = NULL;  /* the listener: the connection has no socket of its own yet */
	KN_RD(sk, KN_TP_SYNACK_SKADDR);
	struct kn_tcp_event *e = kn_begin(KN_TCP_EV_SYNACK_RETRANSMIT, bpf_ktime_get_ns(), kn_sk_netns(sk));
	if (!e)
		return 0;
	KN_TUPLE(e, SYNACK);
	kn_sock(e, sk, 0);
	kn_submit(e);
	return 0;
}
#endif

#if KN_HAVE_RQF
int kn_tcp_on_rcvqueue_full(void *ctx)
{
	kn_count(KN_TCP_STAT_SEEN);
	struct kn_tcp_event *e = kn_begin(KN_TCP_EV_RCVQUEUE_FULL, bpf_ktime_get_ns(), 0);  /* no socket: out of any netns scope */
	if (!e)
		return 0;
	KN_RD(e->rmem_alloc, KN_TP_RQF_RMEM_ALLOC);
	KN_RD(e->truesize, KN_TP_RQF_TRUESIZE);
	KN_RD(e->rcvbuf, KN_TP_RQF_SK_RCVBUF);
	kn_submit(e);
	return 0;
}
#endif

#if KN_HAVE_EXB
int kn_tcp_on_exceed_buf(void *ctx)
{
	kn_count(KN_TCP_STAT_SEEN);
	struct kn_tcp_event *e = kn_begin(KN_TCP_EV_EXCEED_BUF, bpf_ktime_get_ns(), 0);  /* no socket: out of any netns scope */
	if (!e)
		return 0;
	bpf_probe_read_kernel(e->proto, sizeof(e->proto) - 1, ctx + KN_TP_EXB_NAME);
	KN_RD(e->sysctl_mem, KN_TP_EXB_SYSCTL_MEM);
	KN_RD(e->mem_allocated, KN_TP_EXB_ALLOCATED);
	KN_RD(e->rcvbuf, KN_TP_EXB_SYSCTL_RMEM);
	KN_RD(e->rmem_alloc, KN_TP_EXB_RMEM_ALLOC);
	KN_RD(e->sysctl_wmem, KN_TP_EXB_SYSCTL_WMEM);
	KN_RD(e->wmem_alloc, KN_TP_EXB_WMEM_ALLOC);
	KN_RD(e->wmem_queued, KN_TP_EXB_WMEM_QUEUED);
	KN_RD(e->mem_kind, KN_TP_EXB_KIND);
	kn_submit(e);
	return 0;
}
#endif
