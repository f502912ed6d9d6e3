/* SPDX-License-Identifier: Apache-2.0
 * skb lifecycle probe: the record of one finished receive-path lifecycle.
 * Single definition: lifecycle.bpf.c fills it, otel_kernelnet/records.py generates the
 * Python decoder from it, a test compiles it with cc to check sizes and offsets.
 * Times are bpf_ktime_get_ns() (CLOCK_MONOTONIC); 0 means "stage not seen".
 */
#ifndef KN_LIFECYCLE_H
#define KN_LIFECYCLE_H

/* why the record was emitted (the volume policy; several can hold) */
#define KN_LIFE_W_DROPPED  0x01 /* ended in skb:kfree_skb */
#define KN_LIFE_W_SLOW     0x02 /* arrival -> read (or drop) above the threshold */
#define KN_LIFE_W_WATCHED  0x04 /* its socket cookie is on the watch list */
#define KN_LIFE_W_SAMPLED  0x08 /* 1-in-N sampling */

#define KN_LIFE_F_ADDR     0x01 /* saddr/daddr/ports are set (local side first) */
#define KN_LIFE_F_IPV6     0x02 /* addresses are IPv6 (else IPv4 in the first 4 bytes) */
#define KN_LIFE_F_SOCK     0x04 /* the socket is known (tcp:tcp_probe): sk_cookie/skaddr */
#define KN_LIFE_F_READ     0x08 /* ended by a read: reader pid/tid/comm are set */

/* arrival tracepoint that opened the lifecycle */
#define KN_LIFE_A_NETIF_RX       1 /* net:netif_rx: veth, loopback, RPS/backlog-queued */
#define KN_LIFE_A_GRO            2 /* net:napi_gro_receive_entry: NIC with GRO */
#define KN_LIFE_A_RECEIVE_ENTRY  3 /* net:netif_receive_skb_entry / _list_entry: NIC without GRO */

/* stages of the per-stage latency histograms (log2 ns buckets) */
#define KN_LIFE_H_BACKLOG  0 /* arrival -> netif_receive_skb: backlog / softirq wait */
#define KN_LIFE_H_PROTO    1 /* netif_receive_skb -> socket enqueue (tcp:tcp_probe) */
#define KN_LIFE_H_SOCKET   2 /* socket enqueue -> first read: the application's lag */
#define KN_LIFE_H_TOTAL    3 /* arrival -> first read */
#define KN_LIFE_H_STAGES   4
#define KN_LIFE_H_BUCKETS  64 /* bucket b counts deltas in [2^(b-1), 2^b) ns; b=0: 0 ns */

/* indexes of the per-CPU stats array (kn_stats, see common.bcc.h) */
#define KN_STAT_EMITTED     0 /* records written to the ring buffer */
#define KN_STAT_RATE_CAPPED 1 /* records over the per-CPU per-second cap, not emitted */
#define KN_STAT_RB_FULL     2 /* ring buffer reservation failed (consumer too slow) */
#define KN_STAT_ARRIVED     3 /* lifecycles opened (arrivals in scope) */
#define KN_STAT_READ        4 /* lifecycles ended by a read */
#define KN_STAT_DROPPED     5 /* lifecycles ended by a drop */
#define KN_STAT_QUIET       6 /* ended, below the policy: only counted in the histograms */
#define KN_STAT_NO_DATA     7 /* closed at enqueue: no payload (pure ACK/control), never read */
#define KN_STAT_EVICTED     8 /* an arrival took a slot still holding another skb's lifecycle
                                 (set full): that one is lost, or had ended unseen */
#define KN_STAT_UNSEEN      9 /* protocol stage of a packet in scope with no recorded arrival */
#define KN_STAT_STALE       10 /* a read of a non-network skb (AF_UNIX, netlink) at the address
                                 of a lifecycle that had ended unseen: retired, not emitted */
#define KN_STAT_MAX         11

struct kn_life_event {
	__u64 t_arrival;
	__u64 t_proto;    /* net:netif_receive_skb */
	__u64 t_enqueue;  /* tcp:tcp_probe (socket receive processing) */
	__u64 t_end;      /* first read (skb:skb_copy_datagram_iovec) or drop (skb:kfree_skb) */
	__u64 skbaddr;
	__u64 skaddr;     /* the receiving socket (KN_LIFE_F_SOCK) */
	__u64 sk_cookie;  /* its cookie, as the application's getsockopt(SO_COOKIE) */
	__u32 netns;      /* network namespace inode of the receiving device */
	__u32 ifindex;
	__u32 len;        /* bytes at arrival */
	__u32 data_len;   /* payload bytes seen by TCP (tcp:tcp_probe data_len) */
	__u32 reason;     /* drop reason (enum skb_drop_reason), when dropped */
	__u32 pid;        /* the reader (KN_LIFE_F_READ): tgid */
	__u32 tid;
	__u32 read_len;   /* bytes copied by the first read */
	__u16 cpu_arrival;
	__u16 cpu_proto;
	__u16 cpu_end;
	__u16 segs;       /* GSO segments (1 for a plain packet) */
	__u16 protocol;   /* skb->protocol, host order */
	__u16 sport;      /* host order; s* is the local (receiving) side, d* the peer */
	__u16 dport;
	__u8  l4proto;
	__u8  flags;      /* KN_LIFE_F_* */
	__u8  why;        /* KN_LIFE_W_* */
	__u8  arrival_tp; /* KN_LIFE_A_* */
	__u8  reserved[6];
	__u8  saddr[16];
	__u8  daddr[16];
	char  comm[16];   /* the reader's comm, or the dropping context's */
	char  ifname[16];
};

#endif /* KN_LIFECYCLE_H */
