"""Span names and attribute keys: the contract between the collector and the analysis.

Every attribute the collector writes is declared here once, with its type and
meaning; ``docs/spans.md`` is generated from this table (``python -m
otel_kernelnet.semconv``), and the analysis package reads spans by these names.
OpenTelemetry semantic-convention names are used where one exists; everything
else lives under the ``kernelnet.`` prefix.

Pure data: importing this module pulls in nothing else (the analysis package uses it
without bcc or the OTel SDK).
"""

from __future__ import annotations

from dataclasses import dataclass

# --- span names (one per family) -------------------------------------------------
SPAN_DROP = "kernel.skb.drop"  #: a packet freed with a drop reason (skb:kfree_skb)
SPAN_SKB = "kernel.skb.lifecycle"  #: receive path of one skb, arrival -> read/drop
SPAN_SOFTIRQ = "kernel.softirq"  #: one NET_RX/NET_TX softirq: raise -> entry -> exit
SPAN_RECLAIM = "kernel.reclaim"  #: direct or memcg reclaim of one task
SPAN_TCP_EVENT = "kernel.tcp"  #: a TCP event (retransmit, reset, state, overflow)
SPAN_COUNTER = "kernel.counter"  #: a jump of a per-netns SNMP counter

# --- values of kernelnet.kind ---------------------------------------------------------
KIND_DROP = "drop"
KIND_SKB = "skb"
KIND_SOFTIRQ = "softirq"
KIND_RECLAIM = "reclaim"
KIND_TCP_RETRANSMIT = "tcp.retransmit"
KIND_TCP_RESET_SENT = "tcp.reset.sent"
KIND_TCP_RESET_RECEIVED = "tcp.reset.received"
KIND_TCP_CONG_STATE = "tcp.cong_state"
KIND_TCP_CONNECT = "tcp.connect"
KIND_TCP_CLOSE = "tcp.close"
KIND_SOCK_RCVQUEUE_FULL = "sock.rcvqueue_full"  #: socket receive queue full (any protocol; span kernel.tcp)
KIND_SOCK_EXCEED_BUF_LIMIT = "sock.exceed_buf_limit"  #: protocol memory limit hit (span kernel.tcp)
KIND_LISTEN_OVERFLOW = "tcp.listen_overflow"
KIND_COUNTER = "counter"

# --- span events of kernel.skb.lifecycle (one per stage the packet reached) -------------
SKB_EV_ARRIVAL = "arrival"  #: first receive tracepoint (device, CPU)
SKB_EV_PROTOCOL = "protocol"  #: net:netif_receive_skb (protocol processing starts)
SKB_EV_ENQUEUE = "enqueue"  #: socket receive processing (tcp:tcp_probe)
SKB_EV_READ = "read"  #: the application's first read (skb:skb_copy_datagram_iovec)
SKB_EV_DROP = "drop"  #: skb:kfree_skb (with the reason)

SCOPE_NAME = "otel-kernelnet"
SERVICE_NAME = "otel-kernelnet"


@dataclass(frozen=True)
class Attr:
    key: str
    type: str  # "string" | "int" | "bool" | "double"
    brief: str
    families: tuple[str, ...] = ()  # kernelnet.kind values that carry it ("*" = all)


_ALL = ("*",)
_SOCKET = (KIND_DROP, KIND_SKB, KIND_TCP_RETRANSMIT, KIND_TCP_RESET_SENT,
           KIND_TCP_RESET_RECEIVED, KIND_TCP_CONG_STATE, KIND_TCP_CONNECT, KIND_TCP_CLOSE)

ATTRIBUTES: tuple[Attr, ...] = (
    # common
    Attr("kernelnet.kind", "string", "Family of the kernel span (drop, skb, softirq, reclaim, tcp.*, counter).", _ALL),
    Attr("kernelnet.cpu", "int", "CPU the kernel event happened on.", _ALL),
    Attr("kernelnet.netns", "int", "Network namespace inode number (as in /proc/PID/ns/net).", _SOCKET + (KIND_COUNTER, KIND_LISTEN_OVERFLOW)),
    Attr("kernelnet.socket.cookie", "int", "Socket cookie (getsockopt SO_COOKIE) of the socket involved; the join key with application spans.", _SOCKET),
    Attr("kernelnet.join", "string", "How the span was attached to an application span (its parent): 'cookie' (same SO_COOKIE) or 'inferred' (4-tuple match, the app span had no cookie); on reclaim stalls 'task' (a stall of the app's own process.pid) or 'cgroup' (of another task of its cgroup), by links instead of a parent when another span already linked to the stall. Absent: not joined. Also on the links to the other overlapping app spans.", _SOCKET + (KIND_RECLAIM,)),
    Attr("process.pid", "int", "Task running when the event fired (in softirq context: the interrupted task, not the socket owner).", _ALL),
    Attr("thread.id", "int", "Thread id of that task.", _ALL),
    Attr("process.command", "string", "comm of that task.", _ALL),
    # pod attribution (scope.mode daemonset; OTel k8s semantic conventions)
    Attr("k8s.pod.name", "string", "Pod of the event's network namespace or cgroup (daemonset mode).", _ALL),
    Attr("k8s.pod.uid", "string", "Its UID.", _ALL),
    Attr("k8s.namespace.name", "string", "Its Kubernetes namespace.", _ALL),
    Attr("k8s.container.name", "string", "Container, when the event's cgroup names one.", _ALL),
    Attr("k8s.node.name", "string", "Node (NODE_NAME / K8S_NODE_NAME environment variable).", _ALL),
    # packet and socket addressing (semantic conventions)
    Attr("network.transport", "string", "tcp, udp, ... (lowercase).", _SOCKET),
    Attr("network.type", "string", "ipv4 or ipv6.", _SOCKET),
    Attr("source.address", "string", "Packet source address.", (KIND_DROP, KIND_SKB)),
    Attr("source.port", "int", "Packet source port.", (KIND_DROP, KIND_SKB)),
    Attr("destination.address", "string", "Packet destination address.", (KIND_DROP, KIND_SKB)),
    Attr("destination.port", "int", "Packet destination port.", (KIND_DROP, KIND_SKB)),
    Attr("network.local.address", "string", "Local address of the socket.", _SOCKET[1:]),
    Attr("network.local.port", "int", "Local port of the socket.", _SOCKET[1:]),
    Attr("network.peer.address", "string", "Peer address of the socket.", _SOCKET[1:]),
    Attr("network.peer.port", "int", "Peer port of the socket.", _SOCKET[1:]),
    Attr("network.interface.name", "string", "Interface the packet was on.", (KIND_DROP, KIND_SKB)),
    Attr("network.connection.state", "string", "TCP state (semconv spelling: established, syn_sent, ...); on connect/close the state entered.", (KIND_TCP_RETRANSMIT, KIND_TCP_RESET_SENT, KIND_TCP_RESET_RECEIVED, KIND_TCP_CONNECT, KIND_TCP_CLOSE)),
    # drops
    Attr("kernelnet.drop.reason", "string", "Drop reason name from the running kernel (NO_SOCKET, PFMEMALLOC, ...), or unknown:<n>.", (KIND_DROP, KIND_SKB)),
    Attr("kernelnet.drop.reason_code", "int", "Numeric drop reason as the kernel reported it.", (KIND_DROP, KIND_SKB)),
    Attr("kernelnet.drop.location", "string", "Kernel function that freed the packet (symbol+offset).", (KIND_DROP, KIND_SKB)),
    Attr("kernelnet.skb.protocol", "int", "skb->protocol, the ethertype in host order (0x0800 IPv4, 0x86dd IPv6).", (KIND_DROP, KIND_SKB)),
    Attr("kernelnet.skb.len", "int", "skb->len in bytes.", (KIND_DROP, KIND_SKB)),
    Attr("kernelnet.skb.has_socket", "bool", "The kernel had already matched the packet to a receiving socket (rx_sk).", (KIND_DROP,)),
    Attr("kernelnet.skb.socket_role", "string", "Whose cookie/netns the drop carries: receiver (rx_sk), owner (skb->sk: a purged queue, a local sender) or none.", (KIND_DROP,)),
    # skb lifecycle (kernel.skb.lifecycle; stages are span events: arrival, protocol, enqueue, read, drop)
    Attr("kernelnet.skb.end", "string", "How the lifecycle ended: read (the application's first read) or dropped.", (KIND_SKB,)),
    Attr("kernelnet.skb.emitted_because", "string", "Why the volume policy emitted it, comma-separated: dropped, slow, watched, sampled.", (KIND_SKB,)),
    Attr("kernelnet.skb.arrival", "string", "Tracepoint that saw the packet first: netif_rx (veth, loopback, RPS backlog), napi_gro_receive_entry or netif_receive_skb_entry (NIC).", (KIND_SKB,)),
    Attr("kernelnet.skb.segs", "int", "GSO segments the skb carried after GRO (1 for a plain packet).", (KIND_SKB,)),
    Attr("kernelnet.skb.data_len", "int", "Payload bytes TCP saw in it (tcp:tcp_probe).", (KIND_SKB,)),
    Attr("kernelnet.skb.read_len", "int", "Bytes the first read copied from it.", (KIND_SKB,)),
    Attr("kernelnet.skb.backlog_wait_ns", "int", "arrival -> netif_receive_skb: time in the per-CPU backlog / waiting for NET_RX.", (KIND_SKB,)),
    Attr("kernelnet.skb.protocol_ns", "int", "netif_receive_skb -> socket enqueue: IP/TCP processing (including the socket backlog when the owner held the lock).", (KIND_SKB,)),
    Attr("kernelnet.skb.socket_wait_ns", "int", "socket enqueue -> first read: how long the data waited for the application.", (KIND_SKB,)),
    Attr("kernelnet.skb.total_ns", "int", "arrival -> first read (or drop).", (KIND_SKB,)),
    Attr("kernelnet.skb.arrival_cpu", "int", "CPU of the arrival (kernelnet.cpu is the CPU of the end).", (KIND_SKB,)),
    Attr("kernelnet.skb.protocol_cpu", "int", "CPU that ran protocol processing (differs from the arrival CPU under RPS).", (KIND_SKB,)),
    Attr("kernelnet.memory.below_min", "string", "Zones below their min watermark at the last sample before a PFMEMALLOC drop (node0/Normal, ...; empty: none).", (KIND_DROP,)),
    Attr("kernelnet.memory.sampled_ago_ns", "int", "How long before the drop that zone sample was taken.", (KIND_DROP,)),
    Attr("kernelnet.memory.reclaim_spans", "int", "Reclaim spans (direct, memcg, throttle) overlapping the second before a PFMEMALLOC drop; the drop links to the 32 of them that ended last.", (KIND_DROP,)),
    # softirq (issue 4)
    Attr("kernelnet.softirq.vector", "string", "Softirq vector name from the running kernel (NET_RX, NET_TX).", (KIND_SOFTIRQ,)),
    Attr("kernelnet.softirq.wait_ns", "int", "raise (or the RPS IPI queueing before it) -> entry: how long the softirq waited to run. Absent when the raise was not seen.", (KIND_SOFTIRQ,)),
    Attr("kernelnet.softirq.run_ns", "int", "entry -> exit: how long it ran.", (KIND_SOFTIRQ,)),
    Attr("kernelnet.softirq.in_ksoftirqd", "bool", "It ran in ksoftirqd (deferred), not on an interrupt exit.", (KIND_SOFTIRQ,)),
    Attr("kernelnet.softirq.ipi.wait_ns", "int", "Another CPU queued the packets by RPS IPI: queueing -> this CPU taking the IPI (interrupts were off that long).", (KIND_SOFTIRQ,)),
    Attr("kernelnet.softirq.ipi.pid", "int", "Task running when the RPS IPI was finally taken (the one that had interrupts off).", (KIND_SOFTIRQ,)),
    Attr("kernelnet.softirq.ipi.comm", "string", "comm of that task.", (KIND_SOFTIRQ,)),
    Attr("kernelnet.softirq.ksoftirqd.woken", "bool", "This CPU's ksoftirqd was woken while the work waited, or was already runnable (woken earlier, not yet run) when it started.", (KIND_SOFTIRQ,)),
    Attr("kernelnet.softirq.ksoftirqd.wait_ns", "int", "ksoftirqd wake-up -> it got the CPU.", (KIND_SOFTIRQ,)),
    Attr("kernelnet.softirq.ksoftirqd.waiting_ns", "int", "ksoftirqd was woken (possibly before the work started waiting) and still had not had the CPU when the work ran elsewhere (an interrupt exit): wake-up -> end of that run. Starved, e.g. behind a real-time task.", (KIND_SOFTIRQ,)),
    Attr("kernelnet.softirq.switches", "int", "Context switches on the CPU during the wait.", (KIND_SOFTIRQ,)),
    Attr("kernelnet.softirq.culprit_other_ns", "int", "Wait time held by tasks beyond the ones named (culprit events).", (KIND_SOFTIRQ,)),
    Attr("kernelnet.culprit.comm", "string", "Task that held the CPU longest while the softirq waited (each task kept is also a 'culprit' span event).", (KIND_SOFTIRQ,)),
    Attr("kernelnet.culprit.pid", "int", "Its pid (tgid).", (KIND_SOFTIRQ,)),
    Attr("kernelnet.culprit.tid", "int", "Its thread id.", (KIND_SOFTIRQ,)),
    Attr("kernelnet.culprit.ns", "int", "How long it held the CPU during the wait.", (KIND_SOFTIRQ,)),
    Attr("kernelnet.culprit.cgroup.path", "string", "Its cgroup path (see kernelnet.cgroup.path).", (KIND_SOFTIRQ,)),
    Attr("kernelnet.culprit.top", "string", "The tasks that held the CPU during the wait, longest first: 'comm(pid) 1.234 ms; ...'.", (KIND_SOFTIRQ,)),
    Attr("kernelnet.napi.polls", "int", "napi polls during the run.", (KIND_SOFTIRQ,)),
    Attr("kernelnet.napi.work", "int", "Packets those polls processed.", (KIND_SOFTIRQ,)),
    Attr("kernelnet.napi.budget", "int", "Budget of a poll.", (KIND_SOFTIRQ,)),
    Attr("kernelnet.napi.budget_exhausted", "int", "Polls that used their whole budget (more work was left).", (KIND_SOFTIRQ,)),
    # reclaim (issue 4)
    Attr("kernelnet.reclaim.type", "string", "direct, memcg (a task reclaiming for its cgroup's limit), kswapd (wake -> sleep of a node's kswapd), throttle (vmscan:mm_vmscan_throttled) or zone_below_min (/proc/zoneinfo).", (KIND_RECLAIM,)),
    Attr("kernelnet.reclaim.order", "int", "Allocation order that triggered reclaim.", (KIND_RECLAIM,)),
    Attr("kernelnet.reclaim.nr_reclaimed", "int", "Pages reclaimed.", (KIND_RECLAIM,)),
    Attr("kernelnet.reclaim.gfp_flags", "string", "Allocation flags, named by the running kernel's vmscan format (GFP_KERNEL|__GFP_ACCOUNT, ...).", (KIND_RECLAIM,)),
    Attr("kernelnet.reclaim.gfp_flags_raw", "int", "The same flags as a number.", (KIND_RECLAIM,)),
    Attr("kernelnet.reclaim.duration_ns", "int", "begin -> end of the reclaim (or the throttle delay): the stall of the task.", (KIND_RECLAIM,)),
    Attr("kernelnet.reclaim.throttle.reason", "string", "Why reclaim was throttled (VMSCAN_THROTTLE_WRITEBACK, ...).", (KIND_RECLAIM,)),
    Attr("kernelnet.reclaim.throttle.timeout_us", "int", "The throttle's timeout.", (KIND_RECLAIM,)),
    Attr("kernelnet.memory.node", "int", "NUMA node.", (KIND_RECLAIM,)),
    Attr("kernelnet.memory.zone", "string", "Memory zone (DMA, DMA32, Normal, ...).", (KIND_RECLAIM,)),
    Attr("kernelnet.memory.zone.free_pages", "int", "Free pages of the zone when sampled.", (KIND_RECLAIM,)),
    Attr("kernelnet.memory.zone.min_pages", "int", "Its min watermark (below it only PF_MEMALLOC/atomic reserves allocate: pfmemalloc skbs).", (KIND_RECLAIM,)),
    Attr("kernelnet.memory.zone.low_pages", "int", "Its low watermark (kswapd wakes below it).", (KIND_RECLAIM,)),
    Attr("kernelnet.memory.zone.high_pages", "int", "Its high watermark (kswapd sleeps above it).", (KIND_RECLAIM,)),
    Attr("kernelnet.cgroup.id", "int", "cgroup id of the task (inode of its cgroup directory; the memory controller's hierarchy on hybrid v1/v2 machines).", (KIND_RECLAIM, KIND_SOFTIRQ)),
    Attr("kernelnet.cgroup.path", "string", "cgroup path of the task, relative to the hierarchy's mount (v2; the memory controller's v1 hierarchy on hybrid machines).", (KIND_RECLAIM, KIND_SOFTIRQ)),
    Attr("container.id", "string", "Container id, when the cgroup path has a container runtime's shape.", (KIND_RECLAIM, KIND_SOFTIRQ)),
    # TCP events (issue 3)
    Attr("kernelnet.tcp.retransmit.type", "string", "syn (the client's SYN), synack (the server's SYN-ACK; the cookie is the listener's), fast, timeout or unknown.", (KIND_TCP_RETRANSMIT,)),
    Attr("kernelnet.tcp.reset.reason", "string", "RST reason name from the running kernel.", (KIND_TCP_RESET_SENT,)),
    Attr("kernelnet.tcp.cong_state", "string", "Congestion state entered (Open, Disorder, CWR, Recovery, Loss); on a retransmit, the state the socket was in. Names from the kernel's BTF enum tcp_ca_state.", (KIND_TCP_CONG_STATE, KIND_TCP_RETRANSMIT)),
    Attr("kernelnet.tcp.retransmit.err", "int", "Result of the retransmission as the kernel returned it (0: sent; negative errno: not sent).", (KIND_TCP_RETRANSMIT,)),
    Attr("kernelnet.tcp.reset.reason_code", "int", "Numeric RST reason as the kernel reported it.", (KIND_TCP_RESET_SENT,)),
    Attr("kernelnet.tcp.state.previous", "string", "State the socket left (semconv spelling) on a connect or close.", (KIND_TCP_CONNECT, KIND_TCP_CLOSE)),
    Attr("kernelnet.sock.protocol", "string", "Protocol name the kernel gives (TCP, UDP, ...).", (KIND_SOCK_EXCEED_BUF_LIMIT,)),
    Attr("kernelnet.sock.mem.kind", "string", "Which limit was hit, named by the kernel (SK_MEM_SEND, SK_MEM_RECV).", (KIND_SOCK_EXCEED_BUF_LIMIT,)),
    Attr("kernelnet.sock.mem.allocated", "int", "Pages the protocol had allocated.", (KIND_SOCK_EXCEED_BUF_LIMIT,)),
    Attr("kernelnet.sock.mem.min", "int", "The protocol's mem sysctl, first value (pages; e.g. net.ipv4.tcp_mem).", (KIND_SOCK_EXCEED_BUF_LIMIT,)),
    Attr("kernelnet.sock.mem.pressure", "int", "The protocol's mem sysctl, pressure threshold (pages).", (KIND_SOCK_EXCEED_BUF_LIMIT,)),
    Attr("kernelnet.sock.mem.max", "int", "The protocol's mem sysctl, hard limit (pages).", (KIND_SOCK_EXCEED_BUF_LIMIT,)),
    Attr("kernelnet.sock.rmem_alloc", "int", "Bytes in the socket's receive queue.", (KIND_SOCK_RCVQUEUE_FULL, KIND_SOCK_EXCEED_BUF_LIMIT)),
    Attr("kernelnet.sock.truesize", "int", "truesize of the packet that did not fit.", (KIND_SOCK_RCVQUEUE_FULL,)),
    Attr("kernelnet.sock.rcvbuf", "int", "The socket's sk_rcvbuf (bytes).", (KIND_SOCK_RCVQUEUE_FULL,)),
    Attr("kernelnet.sock.sysctl_rmem", "int", "The protocol's minimum receive buffer (sysctl rmem[0]).", (KIND_SOCK_EXCEED_BUF_LIMIT,)),
    Attr("kernelnet.sock.sysctl_wmem", "int", "The protocol's minimum send buffer (sysctl wmem[0]).", (KIND_SOCK_EXCEED_BUF_LIMIT,)),
    Attr("kernelnet.sock.wmem_alloc", "int", "Bytes of the socket's send buffer committed.", (KIND_SOCK_EXCEED_BUF_LIMIT,)),
    Attr("kernelnet.sock.wmem_queued", "int", "Bytes queued for sending.", (KIND_SOCK_EXCEED_BUF_LIMIT,)),
    Attr("kernelnet.listen.address", "string", "Listener address:port whose accept queue overflowed.", (KIND_LISTEN_OVERFLOW,)),
    Attr("kernelnet.listen.queue_len", "int", "Accept queue length (ss Recv-Q) when sampled.", (KIND_LISTEN_OVERFLOW,)),
    Attr("kernelnet.listen.queue_limit", "int", "Accept queue limit (ss Send-Q: min(backlog, somaxconn)).", (KIND_LISTEN_OVERFLOW,)),
    Attr("kernelnet.netns.somaxconn", "int", "net.core.somaxconn of the listener's network namespace.", (KIND_LISTEN_OVERFLOW,)),
    Attr("kernelnet.counter.name", "string", "SNMP/netstat counter, e.g. TcpExtListenOverflows.", (KIND_COUNTER, KIND_LISTEN_OVERFLOW)),
    Attr("kernelnet.counter.delta", "int", "Increase of the counter over the sample interval.", (KIND_COUNTER, KIND_LISTEN_OVERFLOW)),
)

BY_KEY = {a.key: a for a in ATTRIBUTES}
COOKIE = "kernelnet.socket.cookie"
JOIN = "kernelnet.join"  #: on kernel spans the join attached to an app span: cookie | inferred | task | cgroup
KIND = "kernelnet.kind"


def markdown_table() -> str:
    """The attribute reference as a Markdown table (docs/spans.md is made from it)."""
    rows = ["| attribute | type | on | meaning |", "|---|---|---|---|"]
    for a in ATTRIBUTES:
        rows.append(f"| `{a.key}` | {a.type} | {', '.join(a.families)} | {a.brief} |")
    return "\n".join(rows) + "\n"


def page() -> str:
    """docs/spans.md: ``python -m otel_kernelnet.semconv > docs/spans.md``."""
    return f"""# Span and attribute reference

Generated from `otel_kernelnet/semconv.py` by `python -m otel_kernelnet.semconv > docs/spans.md`
(a unit test checks this page is up to date). Families not built yet are listed so the
analysis can rely on the names.

Span names: `{SPAN_DROP}` (drop), `{SPAN_SKB}` (skb lifecycle), `{SPAN_SOFTIRQ}`, `{SPAN_RECLAIM}`,
`{SPAN_TCP_EVENT}` (TCP events), `{SPAN_COUNTER}` (namespace counters).

Kernel spans carry resource `service.name={SERVICE_NAME}` and scope `{SCOPE_NAME}`.
Timestamps are the kernel's own (CLOCK_MONOTONIC converted to epoch ns by
`otel_kernelnet/clock.py`). Application spans join on `{COOKIE}`.

""" + markdown_table()


if __name__ == "__main__":  # pragma: no cover
    print(page(), end="")
