"""Join application spans to their kernel spans (interval joins in polars, no span loops).

For each target application span (usually a spike) the kernel evidence is sought
for the span *and its application descendants* (app spans of the same trace
inside its interval: a slow client call is explained by what happened under the
server span it called). A kernel span is attached by the strongest of:

``parent``
    the collector already joined it: same trace, ``parentSpanId`` = the app span.
``cookie``
    same ``kernelnet.socket.cookie`` and overlapping time.
``linked``
    reached through a span link from an attached kernel span or from the app span
    (softirq and reclaim spans are linked from the skb/TCP spans they delayed).
``task``
    a reclaim span of the app's own process (``process.pid``) in its window.
``listener``
    a ``tcp.listen_overflow`` on the listener the client span connected to
    (``kernelnet.listen.address`` = ``server.address:server.port``).
``inferred``
    same connection by addresses, seen from either end: local address, local port
    and peer port (the peer
    *address* is left out on purpose: NAT rewrites it; ``peer_mismatch`` says when
    it differed, which is itself evidence of un-NATed packets). Packets (drop, skb)
    are tried in both directions.
``window``
    a host-wide span (softirq, reclaim, counter, listen overflow) that merely
    overlaps the target's window; the weakest.

Time overlap uses the app span widened by ``pre_ns`` before and ``post_ns`` after
(data that arrived just before a handler started belongs to it); counters, which
are sampled, get ``counter_slack_ns`` on both sides.

The interval joins are bucketed equi-joins: both sides are exploded into the time
buckets they cover, joined on (key, bucket), filtered for overlap, and each pair is
kept in the first bucket both share only, so no pair is counted twice.

>>> import polars as pl
>>> l = pl.DataFrame({"k": [1, 1], "s": [0, 100], "e": [10, 120]})
>>> r = pl.DataFrame({"rk": [1, 1, 2], "rs": [5, 50, 5], "re": [105, 60, 6]})
>>> interval_join(l.lazy(), r.lazy(), ["k"], ["rk"], ("s", "e"), ("rs", "re"), 20).select("s", "rs").sort("s", "rs").collect().rows()
[(0, 5), (100, 5)]
"""

from __future__ import annotations

from typing import Sequence

import polars as pl

from otel_kernelnet import semconv as sc

from .schema import app_spans, kernel_spans

MATCH_RANK = {"parent": 0, "cookie": 1, "linked": 2, "task": 3, "listener": 4, "inferred": 5, "window": 6}
HOST_WIDE = (sc.KIND_SOFTIRQ, sc.KIND_RECLAIM, sc.KIND_COUNTER, sc.KIND_LISTEN_OVERFLOW)
_B = "_bucket"


def interval_join(left: pl.LazyFrame, right: pl.LazyFrame, left_on: Sequence[str], right_on: Sequence[str],
                  left_interval: tuple[str, str], right_interval: tuple[str, str], bucket_ns: int) -> pl.LazyFrame:
    """Inner join of rows whose keys are equal and whose closed intervals overlap.

    Column names must differ between the two sides (except none). See the module example.
    """
    ls, le = left_interval
    rs, re = right_interval
    b = max(int(bucket_ns), 1)
    lx = left.with_columns(pl.int_ranges(pl.col(ls) // b, pl.col(le) // b + 1).alias(_B)).explode(_B)
    rx = right.with_columns(pl.int_ranges(pl.col(rs) // b, pl.col(re) // b + 1).alias(_B)).explode(_B)
    return (lx.join(rx, left_on=[*left_on, _B], right_on=[*right_on, _B], how="inner")
            .filter((pl.col(ls) <= pl.col(re)) & (pl.col(rs) <= pl.col(le))
                    & (pl.col(_B) == pl.max_horizontal(pl.col(ls), pl.col(rs)) // b))
            .drop(_B))


def _coalesce_kind(generic: str, server_attr: str, client_attr: str) -> pl.Expr:
    """A socket attribute of an app span: the generic key, else by span kind (2 server, 3 client)."""
    return pl.coalesce(pl.col(generic),
                       pl.when(pl.col("kind") == 2).then(pl.col(server_attr))
                       .when(pl.col("kind") == 3).then(pl.col(client_attr)))


def socket_identity(spans: pl.LazyFrame) -> pl.LazyFrame:
    """App spans with their socket identity: ``m_cookie, m_local_addr, m_local_port,
    m_peer_addr, m_peer_port, m_listen`` (``addr:port`` of the server side) and ``m_pid``.
    """
    local_addr = _coalesce_kind("network.local.address", "server.address", "client.address")
    local_port = _coalesce_kind("network.local.port", "server.port", "client.port")
    peer_addr = _coalesce_kind("network.peer.address", "client.address", "server.address")
    peer_port = _coalesce_kind("network.peer.port", "client.port", "server.port")
    return spans.select(
        m_trace_id="trace_id", m_span_id="span_id", m_start="start_ns", m_end="end_ns",
        m_cookie=pl.col(sc.COOKIE), m_local_addr=local_addr, m_local_port=local_port,
        m_peer_addr=peer_addr, m_peer_port=peer_port, m_pid=pl.col("process.pid"),
        m_listen=pl.when(pl.col("kind") == 2).then(pl.format("{}:{}", local_addr, local_port))
        .when(pl.col("kind") == 3).then(pl.format("{}:{}", pl.coalesce("server.address", peer_addr),
                                                  pl.coalesce("server.port", peer_port))),
    )


def auto_bucket_ns(targets: pl.DataFrame | pl.LazyFrame, pre_ns: int, post_ns: int) -> int:
    """Bucket width: the median target window, clamped to [1 ms, 2 s].

    >>> auto_bucket_ns(pl.DataFrame({"duration_ns": [10_000_000]}), 0, 0)
    10000000
    """
    med = targets.lazy().select(pl.col("duration_ns").median()).collect().item()
    return int(min(max((med or 0) + pre_ns + post_ns, 1_000_000), 2_000_000_000))


def join_kernel(targets: pl.DataFrame, spans: pl.DataFrame, links: pl.DataFrame | None = None,
                pre_ns: int = 20_000_000, post_ns: int = 5_000_000, counter_slack_ns: int = 1_000_000_000,
                bucket_ns: int | None = None, window: bool = True) -> pl.DataFrame:
    """Kernel spans of each target app span, one row per (target, kernel span), best match kept.

    Columns: ``app_trace_id, app_span_id, match`` (see module docs), ``match_rank``,
    ``via_span_id`` (the app or kernel span it was attached through), ``peer_mismatch``,
    then the kernel span's own columns (``trace_id``, ``span_id``, ``kernelnet.kind``, ...).

    >>> from kernelnet_analysis.otlp import FrameBuilder
    >>> b = FrameBuilder()
    >>> app = b.add_resource("api", {}); k = b.add_resource("otel-kernelnet", {})
    >>> b.add_span("a1", "1", None, "GET", 2, 1_000_000, 9_000_000, 0, None, "api", None, app,
    ...            {"kernelnet.socket.cookie": 77})
    >>> b.add_span("b2", "2", None, "kernel.skb.drop", 1, 5_000_000, 5_000_000, 2, None, "otel-kernelnet",
    ...            "otel-kernelnet", k, {"kernelnet.kind": "drop", "kernelnet.socket.cookie": 77,
    ...                                  "kernelnet.drop.reason": "PFMEMALLOC"})
    >>> t = b.finish()
    >>> j = join_kernel(t.spans.filter(pl.col("name") == "GET"), t.spans, t.links)
    >>> j.select("match", "kernelnet.drop.reason").rows()
    [('cookie', 'PFMEMALLOC')]
    """
    tgt = targets.lazy().select(app_trace_id="trace_id", app_span_id="span_id", app_start="start_ns",
                                app_end="end_ns", duration_ns="duration_ns")
    if bucket_ns is None:
        bucket_ns = auto_bucket_ns(tgt, pre_ns, post_ns)
    all_spans = spans.lazy()
    k_all = kernel_spans(all_spans)
    links_lf = links.lazy() if links is not None else None

    # 1. members: the target and its app descendants (same trace, inside its interval, 1 ms skew)
    skew = 1_000_000
    members = (tgt.join(socket_identity(app_spans(all_spans)), left_on="app_trace_id", right_on="m_trace_id")
               .filter((pl.col("m_start") >= pl.col("app_start") - skew) & (pl.col("m_end") <= pl.col("app_end") + skew))
               .with_columns(w0=pl.col("m_start") - pre_ns, w1=pl.col("m_end") + post_ns))
    ids = ["app_trace_id", "app_span_id"]
    kid = ["k_trace_id", "k_span_id"]

    def pairs(lf: pl.LazyFrame, match: str, via: str = "m_span_id", mismatch: pl.Expr | None = None) -> pl.LazyFrame:
        return lf.select(*ids, *kid, match=pl.lit(match), via_span_id=pl.col(via),
                         peer_mismatch=mismatch if mismatch is not None else pl.lit(False))

    k = k_all.select(k_trace_id="trace_id", k_span_id="span_id", k_parent="parent_span_id",
                     k_start="start_ns", k_end="end_ns", k_kind=pl.col(sc.KIND), k_cookie=pl.col(sc.COOKIE),
                     k_pid=pl.col("process.pid"), k_listen=pl.col("kernelnet.listen.address"),
                     k_la=pl.col("network.local.address"), k_lp=pl.col("network.local.port"),
                     k_pa=pl.col("network.peer.address"), k_pp=pl.col("network.peer.port"),
                     k_src=pl.col("source.address"), k_sport=pl.col("source.port"),
                     k_dst=pl.col("destination.address"), k_dport=pl.col("destination.port"))
    parts = []
    # 2. parent
    parts.append(pairs(members.join(k, left_on=["app_trace_id", "m_span_id"], right_on=["k_trace_id", "k_parent"])
                       .with_columns(k_trace_id=pl.col("app_trace_id")), "parent"))
    # 3. cookie + time
    kc = k.filter(pl.col("k_cookie").is_not_null())
    mc = members.filter(pl.col("m_cookie").is_not_null())
    parts.append(pairs(interval_join(mc, kc, ["m_cookie"], ["k_cookie"], ("w0", "w1"), ("k_start", "k_end"), bucket_ns),
                       "cookie"))
    # 4. inferred 4-tuple (local addr, local port, peer port), packets both ways
    tup_cols = ["k_trace_id", "k_span_id", "k_start", "k_end", "k_cookie"]
    ktup = pl.concat([
        k.select(*tup_cols, t_la="k_la", t_lp="k_lp", t_pp="k_pp", t_pa="k_pa"),
        # the other end of the same connection (an RST or retransmit seen on the peer host)
        k.select(*tup_cols, t_la="k_pa", t_lp="k_pp", t_pp="k_lp", t_pa="k_la"),
        k.select(*tup_cols, t_la="k_dst", t_lp="k_dport", t_pp="k_sport", t_pa="k_src"),
        k.select(*tup_cols, t_la="k_src", t_lp="k_sport", t_pp="k_dport", t_pa="k_dst"),
    ]).filter(pl.col("t_la").is_not_null() & pl.col("t_lp").is_not_null() & pl.col("t_pp").is_not_null())
    mt = members.filter(pl.col("m_local_addr").is_not_null() & pl.col("m_local_port").is_not_null()
                        & pl.col("m_peer_port").is_not_null())
    inferred = (interval_join(mt, ktup, ["m_local_addr", "m_local_port", "m_peer_port"], ["t_la", "t_lp", "t_pp"],
                              ("w0", "w1"), ("k_start", "k_end"), bucket_ns)
                .filter(pl.col("k_cookie").is_null() | pl.col("m_cookie").is_null()
                        | (pl.col("k_cookie") == pl.col("m_cookie"))))
    parts.append(pairs(inferred, "inferred", mismatch=(pl.col("t_pa") != pl.col("m_peer_addr")).fill_null(False)))
    # 5. listener the (client) span connected to
    kl = k.filter(pl.col("k_listen").is_not_null())
    ml = members.filter(pl.col("m_listen").is_not_null())
    parts.append(pairs(interval_join(ml, kl, ["m_listen"], ["k_listen"], ("w0", "w1"), ("k_start", "k_end"), bucket_ns),
                       "listener"))
    # 6. reclaim of the app's own task
    kr = k.filter((pl.col("k_kind") == sc.KIND_RECLAIM) & pl.col("k_pid").is_not_null())
    mp = members.filter(pl.col("m_pid").is_not_null())
    parts.append(pairs(interval_join(mp, kr, ["m_pid"], ["k_pid"], ("w0", "w1"), ("k_start", "k_end"), bucket_ns),
                       "task"))
    direct = pl.concat(parts)
    # 7. linked from attached kernel spans or from the member app spans, both directions
    if links_lf is not None:
        seeds = pl.concat([direct.select(*ids, "k_trace_id", "k_span_id"),
                           members.select(*ids, k_trace_id="app_trace_id", k_span_id="m_span_id")])
        lk = links_lf.select("trace_id", "span_id", "linked_trace_id", "linked_span_id")
        fwd = seeds.join(lk, left_on=kid, right_on=["trace_id", "span_id"]).select(
            *ids, via_span_id="k_span_id", k_trace_id="linked_trace_id", k_span_id="linked_span_id")
        rev = seeds.join(lk, left_on=kid, right_on=["linked_trace_id", "linked_span_id"]).select(
            *ids, via_span_id="k_span_id", k_trace_id="trace_id", k_span_id="span_id")
        parts.append(pl.concat([fwd, rev]).with_columns(match=pl.lit("linked"), peer_mismatch=pl.lit(False))
                     .select(*ids, *kid, "match", "via_span_id", "peer_mismatch"))
    # 8. host-wide spans in the target's window
    if window:
        kh = (k.filter(pl.col("k_kind").is_in(HOST_WIDE))
              .with_columns(slack=pl.when(pl.col("k_kind") == sc.KIND_COUNTER).then(counter_slack_ns).otherwise(0))
              .with_columns(k_ws=pl.col("k_start") - pl.col("slack"), k_we=pl.col("k_end") + pl.col("slack")))
        tw = tgt.with_columns(w0=pl.col("app_start") - pre_ns, w1=pl.col("app_end") + post_ns)
        parts.append(pairs(interval_join(tw, kh, [], [], ("w0", "w1"), ("k_ws", "k_we"), bucket_ns)
                           .with_columns(m_span_id=pl.col("app_span_id")), "window"))
    rank = pl.col("match").replace_strict(MATCH_RANK, return_dtype=pl.Int8)
    best = (pl.concat(parts).with_columns(match_rank=rank)
            .sort([*ids, *kid, "match_rank"])
            .unique(subset=[*ids, *kid], keep="first", maintain_order=True))
    kernel_cols = k_all.rename({"trace_id": "k_trace_id", "span_id": "k_span_id"})
    out = best.join(kernel_cols, on=kid, how="inner").rename({"k_trace_id": "trace_id", "k_span_id": "span_id"})
    return out.collect()
