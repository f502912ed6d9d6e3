"""Join application spans to their kernel spans (interval joins in polars, no span loops).

For each target application span (usually a spike) the kernel evidence is sought
for the span *and its application descendants* (app spans of the same trace
inside its interval: a slow client call is explained by what happened under the
server span it called). A kernel span is attached by the strongest of:

``parent``
    the collector already joined it: same trace, ``parentSpanId`` = the app span
    (a reclaim stall the collector joined by task or cgroup, ``kernelnet.join`` =
    ``task``/``cgroup``, keeps that weaker name).
``cookie``
    same ``kernelnet.socket.cookie`` and overlapping time.
``linked``
    reached through a span link from an attached kernel span or from the app span
    (softirq and reclaim spans are linked from the skb/TCP spans they delayed).
``task``
    a reclaim span of the app's own process (``process.pid``) in its window.
``cgroup``
    a reclaim stall of another task of the app's cgroup, as joined by the collector.
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
    a host-wide span (softirq, reclaim, counter, listen overflow, ``sock.*``) that merely
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


MATCH_RANK = {"parent": 0, "cookie": 1, "linked": 2, "task": 3, "listener": 4, "inferred": 5, "cgroup": 6,
              "window": 7}  # ranks < 8: _best packs them in 3 bits
#: kernel kinds matched by time window alone (no socket of their own)
HOST_WIDE = (sc.KIND_SOFTIRQ, sc.KIND_RECLAIM, sc.KIND_COUNTER, sc.KIND_LISTEN_OVERFLOW,
             sc.KIND_SOCK_RCVQUEUE_FULL, sc.KIND_SOCK_EXCEED_BUF_LIMIT)
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


def socket_identity(spans: pl.LazyFrame, extra: Sequence[str] = ()) -> pl.LazyFrame:
    """App spans with their socket identity: ``m_cookie, m_local_addr, m_local_port,
    m_peer_addr, m_peer_port, m_listen`` (``addr:port`` of the server side) and ``m_pid``;
    ``extra`` columns are passed through.
    """
    local_addr = _coalesce_kind("network.local.address", "server.address", "client.address")
    local_port = _coalesce_kind("network.local.port", "server.port", "client.port")
    peer_addr = _coalesce_kind("network.peer.address", "client.address", "server.address")
    peer_port = _coalesce_kind("network.peer.port", "client.port", "server.port")
    return spans.select(
        *extra, m_trace_id="trace_id", m_span_id="span_id", m_start="start_ns", m_end="end_ns",
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


#: rank -> match name (MATCH_RANK inverted)
MATCH_NAMES = {r: m for m, r in MATCH_RANK.items()}
_R = "_r"  # row index into the spans frame (app and kernel spans alike)
_T = "_t"  # row index into the targets frame
_PART = {_T: pl.UInt32, "k_r": pl.UInt32, "rank": pl.UInt8, "via_r": pl.UInt32, "mm": pl.Boolean}


def _is_kernel() -> pl.Expr:
    return ((pl.col("service") == sc.SERVICE_NAME) | (pl.col("scope") == sc.SCOPE_NAME)).fill_null(False)


def _chunk_bounds(starts: pl.LazyFrame, n_chunks: int, bins: int = 4096) -> list[int]:
    """Start times splitting the kernel spans into ``n_chunks`` time ranges of about equal count.

    One pass: a histogram of ``start_ns`` in ``bins`` bins, cut at its quantiles.

    >>> _chunk_bounds(pl.LazyFrame({"start_ns": list(range(100))}), 4, bins=100)
    [25, 50, 75]
    """
    if n_chunks <= 1:
        return []
    lo, hi = starts.select(lo=pl.col("start_ns").min(), hi=pl.col("start_ns").max()).collect().row(0)
    if lo is None or hi <= lo:
        return []
    width = (hi - lo) // bins + 1
    hist = starts.group_by(b=(pl.col("start_ns") - lo) // width).len().sort("b").collect()
    cum, total = hist["len"].cum_sum(), hist["len"].sum()
    bounds: list[int] = []
    for i in range(1, n_chunks):
        j = min(int(cum.search_sorted(total * i / n_chunks, side="left")), hist.height - 1)
        b = lo + (int(hist["b"][j]) + 1) * width
        if b <= hi and (not bounds or b > bounds[-1]):
            bounds.append(b)
    return bounds


def _part(lf: pl.LazyFrame, match: str, via: str | None = "m_r", mismatch: pl.Expr | None = None,
          keep: Sequence[str] = ()) -> pl.LazyFrame:
    return lf.select(pl.col(_T), pl.col("k_r"), rank=pl.lit(MATCH_RANK[match], pl.UInt8),
                     via_r=pl.col(via) if via else pl.lit(None, pl.UInt32),
                     mm=mismatch if mismatch is not None else pl.lit(False), *keep)


def _kernel_narrow(kernel: pl.LazyFrame) -> pl.LazyFrame:
    """The kernel span columns the matching reads, renamed so they never clash with the app side."""
    return kernel.select(
        k_r=_R, k_start="start_ns", k_end="end_ns", k_kind=pl.col(sc.KIND), k_cookie=pl.col(sc.COOKIE),
        k_pid=pl.col("process.pid"), k_listen=pl.col("kernelnet.listen.address"),
        k_la=pl.col("network.local.address"), k_lp=pl.col("network.local.port"),
        k_pa=pl.col("network.peer.address"), k_pp=pl.col("network.peer.port"),
        k_src=pl.col("source.address"), k_sport=pl.col("source.port"),
        k_dst=pl.col("destination.address"), k_dport=pl.col("destination.port"))


def _match_chunk(m: pl.LazyFrame, tw: pl.LazyFrame, k: pl.LazyFrame, bucket_ns: int,
                 counter_slack_ns: int, window: bool) -> pl.LazyFrame:
    """Cookie, inferred, listener, task and window matches of one chunk of members against its kernel spans."""
    parts = []
    # cookie + time
    kc = k.filter(pl.col("k_cookie").is_not_null())
    mc = m.filter(pl.col("m_cookie").is_not_null())
    parts.append(_part(interval_join(mc, kc, ["m_cookie"], ["k_cookie"], ("w0", "w1"), ("k_start", "k_end"),
                                     bucket_ns), "cookie"))
    # inferred 4-tuple (local addr, local port, peer port), packets both ways. A kernel span with a cookie
    # can only add something for a member without one (same cookie: already a cookie match in the same
    # window; another cookie: not the same socket), so those are joined with cookie-less members only.
    tup_cols = ["k_r", "k_start", "k_end", "k_cookie"]
    ktup = pl.concat([
        k.select(*tup_cols, t_la="k_la", t_lp="k_lp", t_pp="k_pp", t_pa="k_pa"),
        # the other end of the same connection (an RST or retransmit seen on the peer host)
        k.select(*tup_cols, t_la="k_pa", t_lp="k_pp", t_pp="k_lp", t_pa="k_la"),
        k.select(*tup_cols, t_la="k_dst", t_lp="k_dport", t_pp="k_sport", t_pa="k_src"),
        k.select(*tup_cols, t_la="k_src", t_lp="k_sport", t_pp="k_dport", t_pa="k_dst"),
    ]).filter(pl.col("t_la").is_not_null() & pl.col("t_lp").is_not_null() & pl.col("t_pp").is_not_null())
    mt = m.filter(pl.col("m_local_addr").is_not_null() & pl.col("m_local_port").is_not_null()
                  & pl.col("m_peer_port").is_not_null())
    keys = (["m_local_addr", "m_local_port", "m_peer_port"], ["t_la", "t_lp", "t_pp"])
    mismatch = (pl.col("t_pa") != pl.col("m_peer_addr")).fill_null(False)
    for ms, ks in ((mt, ktup.filter(pl.col("k_cookie").is_null())),
                   (mt.filter(pl.col("m_cookie").is_null()), ktup.filter(pl.col("k_cookie").is_not_null()))):
        parts.append(_part(interval_join(ms, ks, *keys, ("w0", "w1"), ("k_start", "k_end"), bucket_ns),
                           "inferred", mismatch=mismatch))
    # listener the (client) span connected to
    kl = k.filter(pl.col("k_listen").is_not_null())
    ml = m.filter(pl.col("m_listen").is_not_null())
    parts.append(_part(interval_join(ml, kl, ["m_listen"], ["k_listen"], ("w0", "w1"), ("k_start", "k_end"),
                                     bucket_ns), "listener"))
    # reclaim of the app's own task
    kr = k.filter((pl.col("k_kind") == sc.KIND_RECLAIM) & pl.col("k_pid").is_not_null())
    mp = m.filter(pl.col("m_pid").is_not_null())
    parts.append(_part(interval_join(mp, kr, ["m_pid"], ["k_pid"], ("w0", "w1"), ("k_start", "k_end"), bucket_ns),
                       "task"))
    # host-wide spans in the target's window (via: the target itself)
    if window:
        kh = (k.filter(pl.col("k_kind").is_in(HOST_WIDE))
              .with_columns(slack=pl.when(pl.col("k_kind") == sc.KIND_COUNTER).then(counter_slack_ns).otherwise(0))
              .select("k_r", k_ws=pl.col("k_start") - pl.col("slack"), k_we=pl.col("k_end") + pl.col("slack")))
        parts.append(_part(interval_join(tw, kh, [], [], ("w0", "w1"), ("k_ws", "k_we"), bucket_ns), "window",
                           via=None))
    return pl.concat(parts)


def join_kernel(targets: pl.DataFrame | pl.LazyFrame, spans: pl.DataFrame | pl.LazyFrame,
                links: pl.DataFrame | pl.LazyFrame | None = None, pre_ns: int = 20_000_000,
                post_ns: int = 5_000_000, counter_slack_ns: int = 1_000_000_000, bucket_ns: int | None = None,
                window: bool = True, columns: Sequence[str] | None = None,
                chunk_rows: int = 2_000_000) -> pl.DataFrame:
    """Kernel spans of each target app span, one row per (target, kernel span), best match kept.

    Columns: ``app_trace_id, app_span_id, match`` (see module docs), ``match_rank``,
    ``via_span_id`` (the app or kernel span it was attached through), ``peer_mismatch``,
    then the kernel span's own columns (``trace_id``, ``span_id``, ``kernelnet.kind``, ...):
    all of them, or ``trace_id``, ``span_id`` and those named in ``columns``
    (:data:`kernelnet_analysis.causes.KERNEL_COLUMNS` is what the ranking reads; much
    less memory on large joins). Rows are ordered by the target's start time, then by the
    kernel span's row in ``spans``.

    ``spans`` may be lazy (:func:`~kernelnet_analysis.store.scan_parquet`): only the
    columns the matching and the output need are read. The matching runs in time
    chunks of about ``chunk_rows`` kernel spans, on integer row numbers, so memory
    stays bounded by the chunk and the output.

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
    # targets numbered in start order: time chunks are then ranges of target numbers
    tgt_df = (targets.lazy().select("trace_id", "span_id", "start_ns", "end_ns", "duration_ns")
              .sort("start_ns", maintain_order=True).collect())
    if bucket_ns is None:
        bucket_ns = auto_bucket_ns(tgt_df, pre_ns, post_ns)
    tgt = tgt_df.lazy().select(app_trace_id="trace_id", app_start="start_ns", app_end="end_ns").with_row_index(_T)
    eager = isinstance(spans, pl.DataFrame)
    spans_lf = spans.lazy().with_row_index(_R)
    kernel = spans_lf.filter(_is_kernel())

    # 1. members: the target and its app descendants (same trace, inside its interval, 1 ms skew)
    skew = 1_000_000
    ident = socket_identity(spans_lf.filter(~_is_kernel()), extra=(_R,)).rename({_R: "m_r"})
    members = (tgt.join(ident, left_on="app_trace_id", right_on="m_trace_id")
               .filter((pl.col("m_start") >= pl.col("app_start") - skew) & (pl.col("m_end") <= pl.col("app_end") + skew))
               .with_columns(w0=pl.col("m_start") - pre_ns, w1=pl.col("m_end") + post_ns)
               .drop("m_start", "m_end")).collect()
    tw_all = tgt.select(_T, "app_start", w0=pl.col("app_start") - pre_ns, w1=pl.col("app_end") + post_ns).collect()

    # 2. parent: joined by the collector (needs no time)
    kpar = kernel.filter(pl.col("parent_span_id").is_not_null()).select(
        k_r=_R, kp_trace="trace_id", kp_parent="parent_span_id", kp_join=pl.col(sc.JOIN))
    parent = (_part(members.lazy().join(kpar, left_on=["app_trace_id", "m_span_id"],
                                        right_on=["kp_trace", "kp_parent"]), "parent", keep=("kp_join",))
              .with_columns(rank=pl.col("kp_join").replace_strict(
                  {"task": MATCH_RANK["task"], "cgroup": MATCH_RANK["cgroup"]}, default=MATCH_RANK["parent"],
                  return_dtype=pl.UInt8))
              .drop("kp_join").collect())

    # 3.-6., 8. by time chunk of targets: cookie, inferred, listener, task, window
    n_kernel = kernel.select(pl.len()).collect().item()
    n_chunks = max(1, -(-n_kernel // max(int(chunk_rows), 1)))
    bounds = _chunk_bounds(kernel.select("start_ns"), n_chunks)
    chunk_of = pl.sum_horizontal([(pl.col("app_start") >= b).cast(pl.UInt32) for b in bounds] or [pl.lit(0, pl.UInt32)])
    tw_all = tw_all.with_columns(_chunk=chunk_of)
    members = members.join(tw_all.select(_T, "_chunk"), on=_T, how="left")
    slack = counter_slack_ns if window else 0
    narrow = _kernel_narrow(kernel)
    chunks: dict[int, list[pl.DataFrame]] = {}
    for c in range(len(bounds) + 1):
        m = members.filter(pl.col("_chunk") == c)
        tw = tw_all.filter(pl.col("_chunk") == c)
        if tw.height == 0:
            continue
        lo = min(x for x in (m["w0"].min(), tw["w0"].min()) if x is not None) - slack
        hi = max(x for x in (m["w1"].max(), tw["w1"].max()) if x is not None) + slack
        k = narrow.filter((pl.col("k_end") >= lo) & (pl.col("k_start") <= hi)).collect()
        chunks[c] = [_match_chunk(m.lazy(), tw.lazy().select(_T, "w0", "w1"), k.lazy(), bucket_ns,
                                  counter_slack_ns, window).collect()]
        del k

    # 7. linked from matched kernel spans or from the member app spans, both directions
    extra = [parent]
    if links is not None:
        direct = [p.filter(pl.col("rank") != MATCH_RANK["window"]).select(_T, "k_r") for ps in chunks.values() for p in ps]
        seeds = pl.concat([parent.select(_T, "k_r"), *direct, members.select(_T, k_r="m_r")]).lazy()
        ids = spans_lf.select(_R, "trace_id", "span_id")
        lk = (links.lazy().select("trace_id", "span_id", "linked_trace_id", "linked_span_id")
              .join(ids.rename({_R: "src"}), on=["trace_id", "span_id"])
              .join(ids.rename({_R: "dst", "trace_id": "linked_trace_id", "span_id": "linked_span_id"}),
                    on=["linked_trace_id", "linked_span_id"])
              .select("src", "dst"))
        fwd = seeds.join(lk, left_on="k_r", right_on="src").select(_T, via_r="k_r", k_r="dst")
        rev = seeds.join(lk, left_on="k_r", right_on="dst").select(_T, via_r="k_r", k_r="src")
        extra.append(_part(pl.concat([fwd, rev]), "linked", via="via_r").collect())
    # the global parts go to the chunk of their target
    chunk_by_t = tw_all["_chunk"]  # tw_all is in target order
    for x in extra:
        for (c,), g in x.with_columns(_chunk=chunk_by_t.gather(x[_T])).partition_by("_chunk", as_dict=True).items():
            chunks.setdefault(int(c), []).append(g.drop("_chunk"))
    del extra

    # per chunk: the best match per (target, kernel span), kernel spans only, then its output rows
    kflag = spans_lf.select(_is_kernel()).collect().to_series()
    names = spans_lf.select("span_id").collect().to_series()
    t_ids = tgt_df.select(app_trace_id="trace_id", app_span_id="span_id")
    all_cols = spans_lf.collect_schema().names()
    all_cols.remove(_R)
    want = all_cols if columns is None else ["trace_id", "span_id", *[c for c in columns if c not in ("trace_id", "span_id")]]
    heads, kcols = [], []
    for c in sorted(chunks):
        best = _best(pl.concat([p.cast(_PART) for p in chunks.pop(c)]))
        best = best.filter(kflag.gather(best["k_r"]))
        ti = t_ids[best[_T]]
        heads.append(ti.with_columns(
            match=best["rank"].replace_strict(MATCH_NAMES, return_dtype=pl.String),
            match_rank=best["rank"].cast(pl.Int8),
            via_span_id=names.gather(best["via_r"]).fill_null(ti["app_span_id"]).alias("via_span_id"),
            peer_mismatch=best["mm"]))
        kcols.append(spans.select(want)[best["k_r"]] if eager else best.select("k_r"))
    del kflag, names
    if not heads:  # no targets: empty, with the columns
        heads, kcols = [t_ids.clear().with_columns(match=pl.lit(None, pl.String), match_rank=pl.lit(None, pl.Int8),
                                                   via_span_id=pl.lit(None, pl.String),
                                                   peer_mismatch=pl.lit(None, pl.Boolean))], \
            [spans_lf.select(want).clear().collect() if not eager else spans.select(want).clear()]
        eager = True
    head = pl.concat(heads, rechunk=False)
    if eager:
        return pl.concat([head, pl.concat(kcols, rechunk=False)], how="horizontal")
    k_r = pl.concat(kcols).with_row_index("_o").lazy()
    body = k_r.join(spans_lf.select(_R, *want), left_on="k_r", right_on=_R).sort("_o").drop("_o", "k_r").collect()
    return pl.concat([head, body], how="horizontal")


def _best(parts: pl.DataFrame) -> pl.DataFrame:
    """The best (lowest rank, then lowest via) row of each (target, kernel span) pair, ordered by pair.

    >>> p = pl.DataFrame({"_t": [0, 0, 0], "k_r": [5, 5, 6], "rank": [6, 1, 2], "via_r": [None, 3, 4],
    ...                   "mm": [False] * 3}, schema=_PART)
    >>> _best(p).select("k_r", "rank").rows()
    [(5, 1), (6, 2)]
    """
    key = pl.col(_T).cast(pl.UInt64) * (1 << 35) + pl.col("k_r").cast(pl.UInt64) * 8 + pl.col("rank").cast(pl.UInt64)
    return (parts.lazy().with_columns(key=key)
            .sort("key", "via_r", nulls_last=True)
            .filter((pl.col("key") // 8 != (pl.col("key") // 8).shift(1)).fill_null(True))
            .drop("key").collect())
