/* SPDX-License-Identifier: Apache-2.0
 * Drop probe: the record skb:kfree_skb events cross the kernel boundary in.
 * This header is the single definition: drop.bpf.c fills it, the Python decoder is
 * generated from it (otel_kernelnet/records.py) and a test compiles it with gcc to
 * check sizes and offsets. Fields are ordered by size and the tail padding is
 * explicit, so the record has no implicit holes.
 */
#ifndef KN_DROP_H
#define KN_DROP_H

#define KN_DROP_F_HAS_SK   0x01 /* rx_sk was set: the kernel had matched a socket */
#define KN_DROP_F_ADDR     0x02 /* saddr/daddr/ports were parsed from the packet */
#define KN_DROP_F_IPV6     0x04 /* addresses are IPv6 (else IPv4 in the first 4 bytes) */
#define KN_DROP_F_DEV      0x08 /* ifindex/ifname come from skb->dev */
#define KN_DROP_F_OWNER_SK 0x10 /* no rx_sk; sk_cookie/netns are of skb->sk, the owning socket */

/* indexes of the per-CPU stats array (kn_stats, see common.bcc.h) */
#define KN_STAT_EMITTED    0 /* records written to the ring buffer */
#define KN_STAT_RATE_CAPPED 1 /* drops over the per-CPU per-second cap, not emitted */
#define KN_STAT_RB_FULL    2 /* ring buffer reservation failed (consumer too slow) */
#define KN_STAT_SEEN       3 /* every kfree_skb event the program saw */
#define KN_STAT_MAX        4

struct kn_drop_event {
	__u64 ts_ns;      /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
	__u64 location;   /* address of the code that freed the skb */
	__u64 skbaddr;    /* the skb, to correlate with other events of the same packet */
	__u64 sk_cookie;  /* cookie of rx_sk, else of skb->sk (0: no socket, or none assigned yet) */
	__u32 reason;     /* enum skb_drop_reason, named by the format file */
	__u32 netns;      /* network namespace inode (dev's, else rx_sk's; 0 unknown) */
	__u32 pid;        /* current task (tgid): in softirq context, whoever was interrupted */
	__u32 tid;
	__u32 cpu;
	__u32 ifindex;
	__u32 len;        /* skb->len */
	__u16 protocol;   /* skb->protocol, host order (ETH_P_IP 0x0800, ETH_P_IPV6 0x86dd) */
	__u16 sport;      /* host order */
	__u16 dport;      /* host order */
	__u8  l4proto;    /* IPPROTO_* */
	__u8  flags;      /* KN_DROP_F_* */
	__u8  saddr[16];
	__u8  daddr[16];
	char  comm[16];
	char  ifname[16];
	__u32 reserved;   /* explicit tail padding (the record is 8-byte aligned) */
};

#endif /* KN_DROP_H */
