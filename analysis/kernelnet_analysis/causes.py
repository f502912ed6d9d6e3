"""Rank the kernel causes of each spike into the ``diagnose`` kinds.

Input: the spikes (:func:`~kernelnet_analysis.spikes.detect_spikes`) and their
kernel spans (:func:`~kernelnet_analysis.join.join_kernel`). Output: one row per
(spike, kind) with ``confidence`` in [0, 1], ``evidence`` (a JSON object) and a
``remedy``, best first.

Confidence = how surely the evidence belongs to the span (:data:`STRENGTH` of the
join) x how much of the spike it explains or how specific it is. Each kind's rule
is documented in ``docs/analysis.md``; in short:

* rcvbuf_drop also from ``sock.rcvqueue_full`` / ``sock.exceed_buf_limit`` (receive side)
  events: weak alone (they name no socket), lifting and enriching SOCKET_RCVBUFF drops;
* drops: one kind per reason (``PFMEMALLOC`` -> pfmemalloc_drop, ``SOCKET_RCVBUFF`` ->
  rcvbuf_drop, ``NETFILTER_DROP`` -> netfilter_drop, ``NO_SOCKET`` -> no_socket_rst,
  ``TCP_LISTEN_OVERFLOW`` -> listen_overflow, else ``drop:<REASON>``), stronger with count;
* memory_reclaim / softirq_delay / softirq_long_run: by the share of the spike's
  excess latency the stall (reclaim duration, softirq wait, softirq run) covers;
* retransmits: reordering when DSACK/reorder counters account for the fast
  retransmits, loss by the share of timeouts and of retransmits nothing shows spurious;
  a tail loss probe (a retransmit the kernel sent in congestion state Open or CWR,
  which the tcp family types ``unknown``) counts with the fast retransmits; one the
  kernel did not send (``kernelnet.tcp.retransmit.err`` set) is evidence ``not_sent``
  only, never loss;
  loss is discounted when a matched drop reason already explains it;
* resets: conntrack_invalid_rst when a reset meets a conntrack INVALID counter jump
  or an RST for the un-NATed address, else no_socket_rst;
* listen_overflow: an overflow on the listener the client connected to, plus SYN
  retransmits of the client.

>>> STRENGTH["cookie"], STRENGTH["window"]
(1.0, 0.5)
"""

from __future__ import annotations

import polars as pl

from otel_kernelnet import semconv as sc

#: how surely a kernel span belongs to the app span, by join match
STRENGTH = {"parent": 1.0, "cookie": 1.0, "linked": 0.95, "task": 0.9, "listener": 0.85,
            "inferred": 0.85, "cgroup": 0.7, "window": 0.5}
DIRECT = ("parent", "cookie", "inferred")

#: counter names (kernelnet.counter.name) the rules read
C_PFMEMALLOC = "TcpExtPFMemallocDrop"
C_DSACK = ("TcpExtTCPDSACKRecv", "TcpExtTCPDSACKOfoRecv")
C_REORDER = ("TcpExtTCPSACKReorder", "TcpExtTCPTSReorder", "TcpExtTCPRenoReorder", "TcpExtTCPReordering")
C_TIMEOUTS = "TcpExtTCPTimeouts"
C_LISTEN = ("TcpExtListenOverflows", "TcpExtListenDrops")
#: congestion states in which the kernel sends a tail loss probe (TLP: the last segment again,
#: after 2 RTTs without an ACK; ``tcp_schedule_loss_probe`` arms it in these states only). An
#: RTO enters Loss and a SACK- or RACK-driven retransmit enters Recovery (or Disorder) first,
#: so a retransmit in one of these states is a TLP. The tcp family, which never guesses,
#: types it ``unknown`` and gives the state in ``kernelnet.tcp.cong_state``.
TLP_STATES = ("Open", "CWR")
#: a conntrack INVALID counter: not yet in semconv; any counter name matching this
CONNTRACK_INVALID_PATTERN = r"(?i)conntrack.*invalid|invalid.*conntrack"

#: kernel span columns the ranking reads (``join_kernel(..., columns=KERNEL_COLUMNS)``)
KERNEL_COLUMNS = (
    "trace_id", "span_id", "start_ns", "end_ns", "duration_ns", sc.KIND, "kernelnet.cpu", "process.pid",
    "process.command", "network.peer.address", "network.interface.name", "source.address", "source.port",
    "destination.address", "destination.port", "kernelnet.drop.reason", "kernelnet.drop.location",
    "kernelnet.skb.len", "kernelnet.reclaim.type", "kernelnet.reclaim.nr_reclaimed", "kernelnet.cgroup.path",
    "kernelnet.softirq.vector", "kernelnet.softirq.wait_ns", "kernelnet.softirq.run_ns", "kernelnet.culprit.comm",
    "kernelnet.culprit.pid", "kernelnet.culprit.ns", "kernelnet.tcp.retransmit.type", "kernelnet.tcp.retransmit.err",
    "kernelnet.tcp.cong_state",
    "kernelnet.tcp.reset.reason", "kernelnet.listen.address", "kernelnet.listen.queue_len",
    "kernelnet.listen.queue_limit", "kernelnet.netns.somaxconn", "kernelnet.counter.name", "kernelnet.counter.delta",
    "kernelnet.sock.rmem_alloc", "kernelnet.sock.rcvbuf", "kernelnet.sock.truesize", "kernelnet.sock.protocol",
    "kernelnet.sock.mem.kind", "kernelnet.sock.mem.allocated", "kernelnet.sock.mem.max",
    "kernelnet.memory.below_min", "kernelnet.reclaim.duration_ns", "kernelnet.reclaim.gfp_flags",
    "kernelnet.skb.backlog_wait_ns", "kernelnet.skb.arrival_cpu",
)

#: kernelnet.reclaim.type values that are a stall of the task itself
RECLAIM_STALLS = ("direct", "memcg", "throttle")

DROP_KINDS = {"PFMEMALLOC": "pfmemalloc_drop", "SOCKET_RCVBUFF": "rcvbuf_drop",
              "NETFILTER_DROP": "netfilter_drop", "NO_SOCKET": "no_socket_rst",
              "TCP_LISTEN_OVERFLOW": "listen_overflow"}

REMEDIES = {
    "pfmemalloc_drop": "Packets were dropped because they were allocated from the memory reserves "
                       "(free memory below the zone min watermark). Raise vm.min_free_kbytes and "
                       "vm.watermark_scale_factor on the node, and alert on direct reclaim.",
    "memory_reclaim": "The task stalled in memory reclaim. Raise the cgroup's memory limit or cut its page-cache "
                      "churn, and raise vm.min_free_kbytes / vm.watermark_scale_factor so kswapd reclaims ahead.",
    "softirq_delay": "NET_RX waited for a CPU held by another task. Move that task off the CPUs that handle "
                     "NET_RX (cpuset/taskset; e.g. pin kubelet away) or spread receive work with RPS/RSS.",
    "vcpu_stall": "NET_RX waited while its CPU was idle: nothing held the CPU, the CPU itself did not run. "
                  "On a VM the hypervisor did not run the vCPU (steal time: the steal column of /proc/stat, "
                  "node_cpu_seconds_total{mode=\"steal\"}). Use instances without CPU overcommit (dedicated or "
                  "pinned vCPUs) or spread NET_RX over more vCPUs with RPS/RSS; on bare metal look for SMIs and "
                  "deep C-state exit latency.",
    "softirq_long_run": "The receive softirq itself ran long: look for code holding locks with interrupts off "
                        "(e.g. a periodic reader of /proc/pagetypeinfo holding zone->lock) and stop it; spread "
                        "NET_RX with RPS so one long run does not stall every flow.",
    "conntrack_invalid_rst": "conntrack marked an out-of-window segment INVALID and let it through un-NATed; the "
                             "client answered RST and the server dropped the connection. Set "
                             "net.netfilter.nf_conntrack_tcp_be_liberal=1 (or drop ctstate INVALID), and remove "
                             "the cause of the delayed segment (e.g. RPS/reordering).",
    "reordering_retransmit": "Spurious fast retransmits from packet reordering (DSACKs show the originals arrived). "
                             "Enable RPS on the receiving veth/queue (or keep the sender on one CPU), or raise "
                             "net.ipv4.tcp_reordering (e.g. 3 -> 9).",
    "loss_retransmit": "Real packet loss (RTO timeouts, tail loss probes or SACK-hole retransmits, no DSACK). "
                       "Look for drops on the path (drop spans, interface/qdisc counters) and congestion.",
    "listen_overflow": "The listener's accept queue is full, so SYNs are dropped and clients retry after 1 s, 3 s, "
                       "7 s. Raise net.core.somaxconn in the pod's network namespace (pod sysctls; a new netns "
                       "starts at 128 whatever the node has) and the server's listen backlog (e.g. nginx "
                       "'listen ... backlog='), and make the server accept faster.",
    "rcvbuf_drop": "The socket's receive buffer was full: the application reads too slowly. Read faster, or raise "
                   "SO_RCVBUF / net.ipv4.tcp_rmem / net.core.rmem_max. If the protocol's memory limit was hit "
                   "(sock.exceed_buf_limit), raise net.ipv4.tcp_mem / udp_mem or find what holds socket memory.",
    "netfilter_drop": "A netfilter rule dropped the packets. Check rule counters (iptables -vnL, nft list ruleset) "
                      "and the conntrack table (nf_conntrack_count vs nf_conntrack_max).",
    "no_socket_rst": "Packets reached a host with no socket for the flow and were answered with RST: the peer "
                     "closed or restarted, or nothing listens on the port. Check the service endpoints and the "
                     "idle/keepalive timeouts on both sides.",
}


def remedy(kind: str) -> str:
    """The remedy text of a kind (``drop:<REASON>`` gets a generic one).

    >>> remedy("drop:TCP_OFOMERGE").startswith("The kernel dropped")
    True
    """
    if kind in REMEDIES:
        return REMEDIES[kind]
    reason = kind.split(":", 1)[-1]
    return (f"The kernel dropped packets with reason {reason}: see its meaning in include/net/dropreason-core.h "
            "and the freeing function in kernelnet.drop.location.")


def _ms(e: pl.Expr) -> pl.Expr:
    return (e / 1e6).round(3)


def _explain(ns: pl.Expr) -> pl.Expr:
    """Share of the spike's excess latency covered by a stall of ``ns``, in [0, 1]."""
    return (ns / pl.max_horizontal(pl.col("excess_ns"), pl.lit(1_000_000))).clip(0.0, 1.0)


def _overlap(e_start: str = "start_ns", e_end: str = "end_ns") -> pl.Expr:
    return (pl.min_horizontal(pl.col(e_end), pl.col("app_end")) -
            pl.max_horizontal(pl.col(e_start), pl.col("app_start"))).clip(lower_bound=0)


_IDS = ["app_trace_id", "app_span_id"]


def _best_rows(df: pl.LazyFrame, kind: pl.Expr, conf: pl.Expr, evidence: pl.Expr) -> pl.LazyFrame:
    """Per row candidate -> the best row per (spike, kind)."""
    return (df.with_columns(kind=kind, confidence=conf, evidence=evidence)
            .filter(pl.col("confidence") > 0)
            .sort("confidence", descending=True)
            .unique(subset=[*_IDS, "kind"], keep="first", maintain_order=True)
            .select(*_IDS, "kind", "confidence", pl.col("evidence").struct.json_encode()))


def _counters(e: pl.LazyFrame) -> pl.LazyFrame:
    """Per spike: sums of counter deltas seen in its window, by family."""
    name, delta = pl.col("kernelnet.counter.name"), pl.col("kernelnet.counter.delta").fill_null(0)
    return (e.filter(pl.col(sc.KIND).is_in([sc.KIND_COUNTER, sc.KIND_LISTEN_OVERFLOW]) & name.is_not_null())
            .group_by(_IDS).agg(
                c_pfm=delta.filter(name == C_PFMEMALLOC).sum(),
                c_dsack=delta.filter(name.is_in(C_DSACK)).sum(),
                c_reorder=delta.filter(name.is_in(C_REORDER)).sum(),
                c_timeouts=delta.filter(name == C_TIMEOUTS).sum(),
                c_listen=delta.filter(name.is_in(C_LISTEN) & (pl.col(sc.KIND) == sc.KIND_COUNTER)).sum(),
                c_ct_invalid=delta.filter(name.str.contains(CONNTRACK_INVALID_PATTERN)).sum()))


def rank_causes(joined: pl.DataFrame, spikes: pl.DataFrame) -> pl.DataFrame:
    """Candidate causes of every spike, best first per spike.

    Columns: ``app_trace_id, app_span_id, kind, confidence, evidence`` (JSON text), ``remedy``.

    >>> from kernelnet_analysis import synth, load, detect_spikes, join_kernel
    >>> import tempfile
    >>> t = load(synth.generate("rcvbuf", tempfile.mkdtemp(), seed=2))
    >>> s = detect_spikes(t.spans)
    >>> c = rank_causes(join_kernel(s, t.spans, t.links), s)
    >>> c.group_by("app_span_id").first()["kind"].value_counts().sort("count")["kind"][-1]
    'rcvbuf_drop'
    """
    sp = spikes.lazy().select(app_trace_id="trace_id", app_span_id="span_id", app_start="start_ns",
                              app_end="end_ns", app_duration_ns="duration_ns", excess_ns="excess_ns")
    e = (joined.lazy().join(sp, on=_IDS, how="inner")
         .with_columns(strength=pl.col("match").replace_strict(STRENGTH, return_dtype=pl.Float64),
                       inferred=pl.col("match") == "inferred"))
    counters = _counters(e)
    kind_col = pl.col(sc.KIND)
    direct = pl.col("match").is_in(DIRECT)
    out: list[pl.LazyFrame] = []

    # --- drops, by reason ---------------------------------------------------------------
    reason = pl.col("kernelnet.drop.reason")
    drops = (e.filter((kind_col == sc.KIND_DROP) & direct & reason.is_not_null())
             .group_by([*_IDS, "kernelnet.drop.reason"]).agg(
                 n=pl.len(), strength=pl.col("strength").max(), inferred=pl.col("inferred").all(),
                 bytes=pl.col("kernelnet.skb.len").sum(), first_ns=pl.col("start_ns").min(),
                 interface=pl.col("network.interface.name").drop_nulls().first(),
                 location=pl.col("kernelnet.drop.location").drop_nulls().first(),
                 below_min=pl.col("kernelnet.memory.below_min").drop_nulls().first(),
                 source=pl.format("{}:{}", pl.col("source.address"), pl.col("source.port")).drop_nulls().first(),
                 destination=pl.format("{}:{}", pl.col("destination.address"), pl.col("destination.port")).drop_nulls().first())
             .join(counters, on=_IDS, how="left"))
    legacy_pfm = (reason == "SOCKET_FILTER") & (pl.col("c_pfm").fill_null(0) > 0)
    drop_kind = (pl.when(legacy_pfm).then(pl.lit("pfmemalloc_drop"))
                 .otherwise(reason.replace_strict(DROP_KINDS, default=pl.format("drop:{}", reason), return_dtype=pl.String)))
    out.append(_best_rows(
        drops, drop_kind,
        pl.col("strength") * (0.8 + 0.15 * (pl.col("n") / 3).clip(upper_bound=1.0)) * pl.when(legacy_pfm).then(0.85).otherwise(1.0),
        pl.struct(drops=pl.col("n"), reason=reason, bytes=pl.col("bytes"), interface=pl.col("interface"),
                  source=pl.col("source"), destination=pl.col("destination"), location=pl.col("location"),
                  pfmemalloc_counter=pl.col("c_pfm").fill_null(0), inferred=pl.col("inferred"),
                  zones_below_min=pl.col("below_min"))))
    # PFMEMALLOC seen only as a counter jump in the window (older kernels without the reason)
    pfm_c = counters.filter(pl.col("c_pfm") > 0)
    out.append(_best_rows(pfm_c, pl.lit("pfmemalloc_drop"), pl.lit(0.45),
                          pl.struct(pfmemalloc_counter=pl.col("c_pfm"), drops=pl.lit(0), match=pl.lit("window"))))

    # --- receive buffer full: sock.rcvqueue_full / sock.exceed_buf_limit (receive side) ----------
    # Both tracepoints carry no socket: they join by window (or by cookie/4-tuple when present).
    # Alone they stay below 0.5 on a window match; with SOCKET_RCVBUFF drops on the span's socket
    # they lift that claim slightly and add the queue figures to its evidence.
    is_rqf = kind_col == sc.KIND_SOCK_RCVQUEUE_FULL
    is_exb = ((kind_col == sc.KIND_SOCK_EXCEED_BUF_LIMIT)
              & ~pl.col("kernelnet.sock.mem.kind").fill_null("").str.contains("SEND"))
    is_sock = is_rqf | is_exb
    rb_drop = (kind_col == sc.KIND_DROP) & direct & (reason == "SOCKET_RCVBUFF")
    rb = (e.filter(is_sock | rb_drop).group_by(_IDS).agg(
        rqf=is_rqf.sum(), exb=is_exb.sum(), drops=rb_drop.sum(),
        s_strength=pl.col("strength").filter(is_sock).max(), d_strength=pl.col("strength").filter(rb_drop).max(),
        rmem_alloc=pl.col("kernelnet.sock.rmem_alloc").filter(is_sock).max(),
        rcvbuf=pl.col("kernelnet.sock.rcvbuf").filter(is_rqf).drop_nulls().first(),
        truesize=pl.col("kernelnet.sock.truesize").filter(is_rqf).max(),
        protocol=pl.col("kernelnet.sock.protocol").filter(is_exb).drop_nulls().first(),
        mem_allocated=pl.col("kernelnet.sock.mem.allocated").filter(is_exb).max(),
        mem_max=pl.col("kernelnet.sock.mem.max").filter(is_exb).drop_nulls().first(),
        match=pl.col("match").filter(is_sock).sort_by(pl.col("match_rank").filter(is_sock)).first())
        .filter(pl.col("s_strength").is_not_null()))
    s_conf = pl.col("s_strength") * (0.55 + 0.15 * ((pl.col("rqf") + pl.col("exb")) / 3).clip(upper_bound=1.0))
    d_conf = pl.col("d_strength") * (0.8 + 0.15 * (pl.col("drops") / 3).clip(upper_bound=1.0))
    out.append(_best_rows(
        rb, pl.lit("rcvbuf_drop"),
        pl.when(pl.col("drops") > 0).then(pl.max_horizontal(s_conf, d_conf) + 0.03).otherwise(s_conf),
        pl.struct(rcvqueue_full=pl.col("rqf"), protocol_mem_limit=pl.col("exb"), drops=pl.col("drops"),
                  rmem_alloc=pl.col("rmem_alloc"), rcvbuf=pl.col("rcvbuf"), truesize=pl.col("truesize"),
                  protocol=pl.col("protocol"), mem_allocated_pages=pl.col("mem_allocated"),
                  mem_max_pages=pl.col("mem_max"), match=pl.col("match"))))

    # --- reclaim -----------------------------------------------------------------------------
    # only a task's own stall (direct, memcg, throttle) delays a request; kswapd running and zone
    # samples are context (seen in the window, they are not the span's stall)
    rtype_ = pl.col("kernelnet.reclaim.type")
    rec = (e.filter((kind_col == sc.KIND_RECLAIM) & (rtype_.is_null() | rtype_.is_in(RECLAIM_STALLS)))
           .with_columns(overlap_ns=_overlap()))
    out.append(_best_rows(
        rec, pl.lit("memory_reclaim"),
        pl.col("strength") * (0.3 + 0.65 * _explain(pl.col("overlap_ns"))),
        pl.struct(stall_ms=_ms(pl.coalesce("kernelnet.reclaim.duration_ns", "duration_ns")),
                  overlap_ms=_ms(pl.col("overlap_ns")), type=rtype_, gfp_flags=pl.col("kernelnet.reclaim.gfp_flags"),
                  task=pl.col("process.command"), pid=pl.col("process.pid"),
                  cgroup=pl.col("kernelnet.cgroup.path"), nr_reclaimed=pl.col("kernelnet.reclaim.nr_reclaimed"),
                  match=pl.col("match"))))

    # --- softirq -----------------------------------------------------------------------------
    sirq = e.filter(kind_col == sc.KIND_SOFTIRQ)
    # A wait held by the idle task (pid 0, swapper/N) for most of it: nothing held the CPU, the
    # CPU itself did not run. Idle with interrupts on takes an IPI or a raise in microseconds; on a
    # VM, milliseconds mean the hypervisor did not run the vCPU (steal), which no task's move fixes.
    idle_held = ((pl.col("kernelnet.culprit.pid") == 0)
                 & (pl.col("kernelnet.culprit.ns").fill_null(0) * 2 >= pl.col("kernelnet.softirq.wait_ns").fill_null(0))
                 ).fill_null(False)
    delay_kind = pl.when(idle_held).then(pl.lit("vcpu_stall")).otherwise(pl.lit("softirq_delay"))
    for kind, col in ((delay_kind, "kernelnet.softirq.wait_ns"), (pl.lit("softirq_long_run"), "kernelnet.softirq.run_ns")):
        v = pl.col(col).fill_null(0)
        out.append(_best_rows(
            sirq.filter(v >= 1_000_000), kind,
            pl.col("strength") * (0.3 + 0.65 * _explain(v)),
            pl.struct(wait_ms=_ms(pl.col("kernelnet.softirq.wait_ns")), run_ms=_ms(pl.col("kernelnet.softirq.run_ns")),
                      cpu=pl.col("kernelnet.cpu"), vector=pl.col("kernelnet.softirq.vector"),
                      culprit=pl.col("kernelnet.culprit.comm"), culprit_pid=pl.col("kernelnet.culprit.pid"),
                      culprit_ms=_ms(pl.col("kernelnet.culprit.ns")), match=pl.col("match"))))

    # the span's own packets waited in the per-CPU backlog for NET_RX (skb lifecycle spans). Weighed
    # 0.9: the softirq span they link to names the culprit and wins when it was exported too.
    backlog = pl.col("kernelnet.skb.backlog_wait_ns").fill_null(0)
    skb = (e.filter((kind_col == sc.KIND_SKB) & direct & (backlog >= 1_000_000))
           .group_by(_IDS).agg(strength=pl.col("strength").max(), wait=backlog.max(), n=pl.len(),
                               excess_ns=pl.col("excess_ns").first(),
                               cpu=pl.col("kernelnet.skb.arrival_cpu").sort_by(backlog).last(),
                               match=pl.col("match").sort_by("match_rank").first()))
    out.append(_best_rows(
        skb, pl.lit("softirq_delay"), 0.9 * pl.col("strength") * (0.3 + 0.65 * _explain(pl.col("wait"))),
        pl.struct(backlog_wait_ms=_ms(pl.col("wait")), packets_delayed=pl.col("n"), cpu=pl.col("cpu"),
                  match=pl.col("match"))))

    # --- per-spike facts shared by retransmits, resets and listen overflow -------------------
    rtype = pl.col("kernelnet.tcp.retransmit.type")
    any_rtx = (kind_col == sc.KIND_TCP_RETRANSMIT) & direct
    # a retransmit the kernel did not send (err < 0, e.g. -EBUSY: the original still in this
    # host's queues) lost nothing on the path: counted apart, as the lab's cross-check does
    not_sent = any_rtx & (pl.col("kernelnet.tcp.retransmit.err").fill_null(0) != 0)
    is_rtx = any_rtx & ~not_sent
    untyped = is_rtx & (rtype.fill_null("unknown") == "unknown")
    is_tlp = untyped & pl.col("kernelnet.tcp.cong_state").is_in(TLP_STATES).fill_null(False)
    facts = (e.group_by(_IDS).agg(
        fast=(is_rtx & (rtype == "fast")).sum(), timeout=(is_rtx & (rtype == "timeout")).sum(),
        loss_probe=is_tlp.sum(), unknown=(untyped & ~is_tlp).sum(),
        syn=(is_rtx & (rtype == "syn")).sum(), synack=(is_rtx & (rtype == "synack")).sum(),
        not_sent=not_sent.sum(), rtx_strength=pl.col("strength").filter(any_rtx).max(),
        recovery=((kind_col == sc.KIND_TCP_CONG_STATE) & direct
                  & pl.col("kernelnet.tcp.cong_state").is_in(["Recovery", "Disorder"])).sum(),
        loss_state=((kind_col == sc.KIND_TCP_CONG_STATE) & direct & (pl.col("kernelnet.tcp.cong_state") == "Loss")).sum(),
        explained_drops=((kind_col == sc.KIND_DROP) & direct
                         & pl.col("kernelnet.drop.reason").is_in(["PFMEMALLOC", "SOCKET_RCVBUFF", "NETFILTER_DROP"])).sum(),
        rst_recv=((kind_col == sc.KIND_TCP_RESET_RECEIVED) & direct).sum(),
        rst_sent=((kind_col == sc.KIND_TCP_RESET_SENT) & direct).sum(),
        rst_sent_unnated=((kind_col == sc.KIND_TCP_RESET_SENT) & pl.col("peer_mismatch")).sum(),
        rst_reason=pl.col("kernelnet.tcp.reset.reason").filter(kind_col == sc.KIND_TCP_RESET_SENT).drop_nulls().first(),
        rst_peer=pl.col("network.peer.address").filter(kind_col == sc.KIND_TCP_RESET_SENT).drop_nulls().first(),
        rst_strength=pl.col("strength").filter(kind_col.is_in([sc.KIND_TCP_RESET_SENT, sc.KIND_TCP_RESET_RECEIVED]) & direct).max(),
        no_socket_drops=((kind_col == sc.KIND_DROP) & direct & (pl.col("kernelnet.drop.reason") == "NO_SOCKET")).sum(),
        lo_strength=pl.col("strength").filter(kind_col == sc.KIND_LISTEN_OVERFLOW).max(),
        lo_address=pl.col("kernelnet.listen.address").sort_by("match_rank").drop_nulls().first(),
        lo_queue_len=pl.col("kernelnet.listen.queue_len").max(),
        lo_queue_limit=pl.col("kernelnet.listen.queue_limit").drop_nulls().first(),
        lo_somaxconn=pl.col("kernelnet.netns.somaxconn").drop_nulls().first(),
        lo_delta=pl.col("kernelnet.counter.delta").filter(kind_col == sc.KIND_LISTEN_OVERFLOW).sum(),
    ).join(counters, on=_IDS, how="left").with_columns(pl.col("^c_.*$").fill_null(0)))

    # --- retransmits: reordering vs loss ---------------------------------------------------------
    # retransmits that led to a reset on a conntrack INVALID verdict are its prelude, not the cause
    ct_rst = (((pl.col("rst_recv") + pl.col("rst_sent")) > 0)
              & ((pl.col("c_ct_invalid") > 0) | (pl.col("rst_sent_unnated") > 0)))
    # A tail loss probe is a retransmit that nothing but DSACKs could show to be spurious, like a
    # fast retransmit: it stands with them against the DSACK/reorder counters (r) and in the
    # loss share. Retransmits of unknown type outside Open/CWR (no readable state) stay out, as
    # SYNs do: only the 0.55 "a retransmit on the socket" claim below.
    sack_like = (pl.col("fast") + pl.col("loss_probe")).cast(pl.Float64)
    nonsyn = sack_like + pl.col("timeout")
    r = ((pl.col("c_dsack") + pl.col("c_reorder")) / pl.max_horizontal(sack_like, pl.lit(1))).clip(0.0, 1.0)
    listen_seen = pl.col("lo_strength").is_not_null() | (pl.col("c_listen") > 0)
    rtx = facts.filter(pl.col("rtx_strength").is_not_null()).with_columns(reorder_ratio=r)
    rtx_ev = pl.struct(fast=pl.col("fast"), timeout=pl.col("timeout"), loss_probe=pl.col("loss_probe"),
                       unknown=pl.col("unknown"), syn=pl.col("syn"), synack=pl.col("synack"),
                       not_sent=pl.col("not_sent"), dsack_recv=pl.col("c_dsack"), sack_reorder=pl.col("c_reorder"),
                       timeouts_counter=pl.col("c_timeouts"), recovery_events=pl.col("recovery"),
                       loss_events=pl.col("loss_state"), reorder_ratio=pl.col("reorder_ratio").round(2),
                       explained_by_drops=pl.col("explained_drops"))
    reorder_conf = (pl.col("rtx_strength") * (0.3 + 0.65 * pl.col("reorder_ratio"))
                    * (pl.col("fast") / nonsyn) * pl.when(pl.col("loss_state") > 0).then(0.8).otherwise(1.0))
    out.append(_best_rows(rtx.filter(pl.col("fast") > 0), pl.lit("reordering_retransmit"), reorder_conf, rtx_ev))
    # the share of the span's retransmits that were real loss: its timeouts, and the fast retransmits
    # and probes the DSACK/reorder counters do not prove spurious. (Was the larger of the two
    # terms: a tail loss whose probe was lost too, 1 TLP + 1 RTO, came out at 0.62 instead of 0.95.)
    loss_share = (pl.col("timeout") + (1 - pl.col("reorder_ratio")) * sack_like) / nonsyn
    loss_conf = (pl.when(nonsyn > 0).then(pl.col("rtx_strength") * (0.3 + 0.65 * loss_share))
                 .otherwise(pl.col("rtx_strength") * 0.55 * pl.when(listen_seen).then(0.5).otherwise(1.0))
                 * pl.when(pl.col("explained_drops") > 0).then(0.6).otherwise(1.0)
                 * pl.when(ct_rst).then(0.6).otherwise(1.0)
                 # a full accept queue also drops the handshake's last ACK: the client thinks it
                 # is connected and its first data goes out again on timeout (not path loss)
                 * pl.when(listen_seen & (nonsyn > 0)).then(0.6).otherwise(1.0))
    out.append(_best_rows(rtx, pl.lit("loss_retransmit"), loss_conf, rtx_ev))

    # --- resets --------------------------------------------------------------------------------
    rst_any = (pl.col("rst_recv") + pl.col("rst_sent") + pl.col("rst_sent_unnated")) > 0
    rst = facts.filter(rst_any | (pl.col("no_socket_drops") > 0)).with_columns(
        rst_strength=pl.col("rst_strength").fill_null(0.85))
    ct = (pl.col("c_ct_invalid") > 0) | (pl.col("rst_sent_unnated") > 0)
    rst_ev = pl.struct(resets_received=pl.col("rst_recv"), resets_sent=pl.col("rst_sent"),
                       reset_reason=pl.col("rst_reason"), rst_to_unnated_address=pl.col("rst_sent_unnated") > 0,
                       reset_peer=pl.col("rst_peer"), conntrack_invalid=pl.col("c_ct_invalid"),
                       timeouts_before=pl.col("timeout"), no_socket_drops=pl.col("no_socket_drops"))
    ct_conf = (pl.col("rst_strength") * (pl.when(pl.col("c_ct_invalid") > 0).then(0.75).otherwise(0.55)
                                         + 0.1 * (pl.col("rst_sent_unnated") > 0) + 0.1 * (pl.col("timeout") > 0)))
    out.append(_best_rows(rst.filter(rst_any & ct), pl.lit("conntrack_invalid_rst"), ct_conf, rst_ev))
    ns_conf = (pl.col("rst_strength") * (0.6 + 0.15 * (pl.col("no_socket_drops") > 0) + 0.1 * (pl.col("rst_reason") == "NO_SOCKET").fill_null(False))
               * pl.when(ct).then(0.45).otherwise(1.0))
    out.append(_best_rows(rst, pl.lit("no_socket_rst"), ns_conf, rst_ev))

    # --- listen overflow ----------------------------------------------------------------------
    lo = facts.filter(listen_seen).with_columns(
        lo_base=pl.coalesce(pl.col("lo_strength"), pl.lit(0.4)))
    out.append(_best_rows(
        lo, pl.lit("listen_overflow"),
        (pl.col("lo_base") * 0.95 + 0.1 * ((pl.col("syn") + pl.col("synack")) > 0)).clip(upper_bound=0.97),
        pl.struct(listen_address=pl.col("lo_address"), queue_len=pl.col("lo_queue_len"),
                  queue_limit=pl.col("lo_queue_limit"), netns_somaxconn=pl.col("lo_somaxconn"),
                  overflows=pl.max_horizontal(pl.col("lo_delta"), pl.col("c_listen")),
                  syn_retransmits=pl.col("syn"), synack_retransmits=pl.col("synack"),
                  match=pl.when(pl.col("lo_strength").is_not_null()).then(pl.lit("listener")).otherwise(pl.lit("window")))))

    ranked = (pl.concat(out).sort("confidence", descending=True)
              .unique(subset=[*_IDS, "kind"], keep="first", maintain_order=True)
              .with_columns(confidence=pl.col("confidence").clip(0.0, 0.99).round(2))
              .collect())
    generic = pl.format("The kernel dropped packets with reason {}: see its meaning in include/net/dropreason-core.h "
                        "and the freeing function in kernelnet.drop.location.", pl.col("kind").str.strip_prefix("drop:"))
    return (ranked.with_columns(remedy=pl.col("kind").replace_strict(REMEDIES, default=generic, return_dtype=pl.String))
            .sort([*_IDS, "confidence", "kind"], descending=[False, False, True, False]))
