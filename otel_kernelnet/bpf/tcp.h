/* SPDX-License-Identifier: Apache-2.0
 * TCP events family: the one record every program of tcp.bpf.c writes.
 * This header is the single definition: tcp.bpf.c fills it, the Python decoder is
 * generated from it (otel_kernelnet/records.py) and a test compiles it with gcc to
 * check sizes and offsets. Fields are ordered by size; padding is explicit.
 */
#ifndef KN_TCP_H
#define KN_TCP_H

/* kn_tcp_event.type: which tracepoint (and which transition) made the record */
#define KN_TCP_EV_RETRANSMIT     1 /* tcp:tcp_retransmit_skb */
#define KN_TCP_EV_RESET_SENT     2 /* tcp:tcp_send_reset */
#define KN_TCP_EV_RESET_RECEIVED 3 /* tcp:tcp_receive_reset */
#define KN_TCP_EV_CONG_STATE     4 /* tcp:tcp_cong_state_set */
#define KN_TCP_EV_CONNECT        5 /* sock:inet_sock_set_state SYN_SENT -> ESTABLISHED or CLOSE */
#define KN_TCP_EV_CLOSE          6 /* sock:inet_sock_set_state * -> CLOSE (config: close_events) */
#define KN_TCP_EV_RCVQUEUE_FULL  7 /* sock:sock_rcvqueue_full */
#define KN_TCP_EV_EXCEED_BUF     8 /* sock:sock_exceed_buf_limit */
#define KN_TCP_EV_SYNACK_RETRANSMIT 9 /* tcp:tcp_retransmit_synack (skaddr: the listener) */

#define KN_TCP_F_ADDR     0x01 /* family, addresses and ports are set */
#define KN_TCP_F_IPV6     0x02 /* addresses are IPv6 (else IPv4 in the first 4 bytes) */
#define KN_TCP_F_CA_STATE 0x04 /* ca_state is set (read from the sock, or the tracepoint's) */
#define KN_TCP_F_REASON   0x08 /* reason is set (the tracepoint has it) */
#define KN_TCP_F_ERR      0x10 /* err is set (the tracepoint has it) */

/* indexes of the per-CPU stats array (kn_stats, see common.bcc.h) */
#define KN_TCP_STAT_EMITTED     0 /* records written to the ring buffer */
#define KN_TCP_STAT_RATE_CAPPED 1 /* events over the per-CPU per-second cap, not emitted */
#define KN_TCP_STAT_RB_FULL     2 /* ring buffer reservation failed (consumer too slow) */
#define KN_TCP_STAT_SEEN        3 /* every event the programs saw (before any filter) */
#define KN_TCP_STAT_UNMATCHED   4 /* SYN_SENT left without a recorded start (evicted, or began before attach) */
#define KN_TCP_STAT_MAX         5

struct kn_tcp_event {
	__u64 ts_ns;          /* bpf_ktime_get_ns(): CLOCK_MONOTONIC; the end of a connect */
	__u64 start_ns;       /* connect: when SYN_SENT was entered; else equal to ts_ns */
	__u64 skaddr;         /* struct sock * (0: none, e.g. a reset for no socket) */
	__u64 sk_cookie;      /* socket cookie (0: no socket, or none assigned yet) */
	__s64 mem_allocated;  /* exceed_buf_limit: pages allocated by the protocol */
	__s64 sysctl_mem[3];  /* exceed_buf_limit: the protocol's mem sysctl (min, pressure, max) */
	__u32 netns;          /* network namespace inode of the socket (or skb->dev); 0 unknown */
	__u32 pid;            /* current task (tgid): in softirq context, whoever was interrupted */
	__u32 tid;
	__u32 cpu;
	__s32 state;          /* TCP state: at the retransmit/reset; the new one on connect/close */
	__s32 oldstate;       /* connect/close: the state left */
	__u32 reason;         /* reset sent: enum sk_rst_reason, named by the format file */
	__s32 err;            /* retransmit: result of the transmission (0: sent) */
	__s32 rmem_alloc;     /* rcvqueue_full / exceed_buf_limit */
	__u32 truesize;       /* rcvqueue_full: truesize of the refused skb */
	__s32 rcvbuf;         /* rcvqueue_full: sk_rcvbuf; exceed_buf_limit: sysctl_rmem */
	__s32 sysctl_wmem;    /* exceed_buf_limit */
	__s32 wmem_alloc;     /* exceed_buf_limit */
	__s32 wmem_queued;    /* exceed_buf_limit */
	__s32 mem_kind;       /* exceed_buf_limit: send or receive, named by the format file */
	__u16 sport;          /* local port, host order */
	__u16 dport;          /* peer port, host order */
	__u16 family;         /* AF_INET / AF_INET6 (0: no addresses) */
	__u8  type;           /* KN_TCP_EV_* */
	__u8  ca_state;       /* enum tcp_ca_state, named by BTF */
	__u8  flags;          /* KN_TCP_F_* */
	__u8  reserved[3];    /* explicit padding */
	__u8  saddr[16];      /* local address */
	__u8  daddr[16];      /* peer address */
	char  comm[16];
	char  proto[16];      /* exceed_buf_limit: protocol name (TCP, UDP, ...) */
};

#endif /* KN_TCP_H */
