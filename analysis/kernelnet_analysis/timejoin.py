"""Time-chunked joins of kernel events at scale (10-100 M rows), in polars.

Three shapes the analysis needs when it works on raw kernel events or on very
large span sets, each processed in time chunks of ``chunk_rows`` rows (defaults:
:data:`CHUNK_ROWS_ASOF`, :data:`CHUNK_ROWS_SORT`) so that
memory stays bounded by a chunk plus the (small, integer) result, and each chunk
stays in the fast, cache-sized regime:

:func:`cpu_window_join`
    points (packets, skb or drop spans: time + CPU) x windows on the same CPU
    (softirq spans: start, end, CPU): the window containing each point. An asof
    join by CPU, then a check of the window's end. Windows on one CPU must not
    overlap (softirq runs are serialised per CPU); the latest window that starts
    at or before the point is the only candidate.
:func:`pair_next`
    lifecycle events by key (skb address): each start event (arrival) paired with
    the next start or end event of the same key when that one is an end event
    (read, drop); other kinds in between (protocol, enqueue) are passed over.
    A sort by (key, time) and a neighbour comparison, per chunk; start events
    left open at the end of a chunk are carried into the next one (up to
    ``max_age_ns``), so a lifecycle that crosses a chunk edge is still paired.
:func:`key_interval_join`
    app spans x kernel spans by key (socket cookie) and time: every (app,
    kernel) pair with the same key whose intervals overlap (the app span widened
    by ``pre_ns``/``post_ns``); a bucketed equi-join
    (:func:`kernelnet_analysis.join.interval_join`) per chunk of kernel rows.

All three take frames sorted by time (the collector writes about in time order;
they are sorted when they are not) and return row numbers into their inputs, so
the caller gathers only the columns it wants.
"""

from __future__ import annotations

import polars as pl

from .join import interval_join

#: default chunk sizes, measured on the 2 vCPU VM at 100 M rows (docs/analysis.md): the asof
#: join is fastest in 10 M-row chunks; the sort and hash joins keep memory <= 2 x input in 2 M
CHUNK_ROWS_ASOF = 10_000_000
CHUNK_ROWS_SORT = 2_000_000


def _sorted(df: pl.DataFrame, col: str) -> tuple[pl.DataFrame, pl.Series | None]:
    """``df`` sorted by ``col`` and the original row numbers (None when it already was)."""
    if df.height == 0 or df[col].is_sorted():
        return df, None
    order = df[col].arg_sort()
    return df[order], order


def cpu_window_join(points: pl.DataFrame, windows: pl.DataFrame, *, ts: str = "ts", cpu: str = "cpu",
                    start: str = "start", end: str = "end", chunk_rows: int = CHUNK_ROWS_ASOF) -> pl.Series:
    """Row number in ``windows`` of the window on the point's CPU that contains it, or null; one per point.

    >>> p = pl.DataFrame({"ts": [5, 12, 15, 30], "cpu": [0, 1, 0, 0]})
    >>> w = pl.DataFrame({"start": [0, 10, 14], "end": [10, 20, 16], "cpu": [0, 1, 0]})
    >>> cpu_window_join(p, w).to_list()
    [0, 1, 2, None]
    """
    points_s, p_order = _sorted(points.select(ts, cpu), ts)
    win, w_order = _sorted(windows.select(start, end, cpu).with_row_index("_w"), start)
    max_len = int((win[end] - win[start]).max() or 0) if win.height else 0
    starts = win[start]
    out = []
    for off in range(0, points_s.height, max(int(chunk_rows), 1)):
        pts = points_s.slice(off, chunk_rows)
        lo, hi = pts[ts][0], pts[ts][-1]
        i0 = int(starts.search_sorted(lo - max_len, side="left"))
        i1 = int(starts.search_sorted(hi, side="right"))
        w = win.slice(i0, i1 - i0)
        m = pts.join_asof(w, left_on=ts, right_on=start, by=cpu, strategy="backward", check_sortedness=False)
        out.append(m.select(pl.when(pl.col(ts) <= pl.col(end)).then(pl.col("_w")).alias("window")).to_series())
    res = pl.concat(out, rechunk=False) if out else pl.Series("window", [], pl.UInt32)
    if p_order is not None:  # back to the caller's point order
        res = res[p_order.arg_sort()]
    return res.alias("window")


def pair_next(events: pl.DataFrame, *, key: str = "skb", ts: str = "ts", kind: str = "kind",
              start_kinds: tuple = (0,), end_kinds: tuple = (1, 2), max_age_ns: int = 10_000_000_000,
              chunk_rows: int = CHUNK_ROWS_SORT) -> tuple[pl.DataFrame, int]:
    """Pairs (start event, the next start or end event of its key when that is an end), and how many starts stayed open.

    Events of other kinds (protocol, enqueue, ...) are passed over.

    Returns ``(pairs, open_starts)``: ``pairs`` has ``start_row, end_row`` (row numbers in
    ``events``), ``latency_ns`` and ``end_kind``, ordered by chunk then key; a start
    followed by another start of the same key (a reused address whose end was not seen)
    or by nothing within ``max_age_ns`` is counted in ``open_starts``, never silently
    dropped.

    >>> e = pl.DataFrame({"skb": [7, 8, 7, 8, 7], "ts": [1, 2, 3, 9, 10], "kind": [0, 0, 1, 2, 0]})
    >>> pairs, open_ = pair_next(e, chunk_rows=2)
    >>> pairs.rows(), open_
    ([(0, 2, 2, 1), (1, 3, 7, 2)], 1)
    """
    ev, _ = _sorted(events.select(key, ts, kind), ts)
    starts, ends = list(start_kinds), list(end_kinds)
    out: list[pl.DataFrame] = []
    carry = ev.clear().with_row_index("_row")
    n_open = 0
    step = max(int(chunk_rows), 1)
    for off in range(0, ev.height, step):
        chunk = ev.slice(off, step).with_row_index("_row", offset=off)
        last = off + step >= ev.height
        edge = chunk[ts][-1]
        # only starts and ends matter; the carry holds the starts still open at the previous edge
        # (all before this chunk), so the rows are in time order and a stable sort by key alone
        # leaves each key's events in time order
        work = (pl.concat([carry, chunk.filter(pl.col(kind).is_in(starts + ends))])
                .sort(key, maintain_order=True).lazy()
                .with_columns(n_key=pl.col(key).shift(-1), n_ts=pl.col(ts).shift(-1),
                              n_kind=pl.col(kind).shift(-1), n_row=pl.col("_row").shift(-1))
                .filter(pl.col(kind).is_in(starts))
                .with_columns(same=(pl.col("n_key") == pl.col(key)).fill_null(False))
                .with_columns(paired=pl.col("same") & pl.col("n_kind").is_in(ends))
                .collect())
        pairs = work.filter("paired")
        out.append(pairs.select(start_row="_row", end_row="n_row", latency_ns=pl.col("n_ts") - pl.col(ts),
                                end_kind="n_kind"))
        if last:
            n_open += work.height - pairs.height
            carry = carry.clear()
        else:
            # the last start of its key in this chunk may end in the next one, if not too old
            tail = work.filter(~pl.col("same") & (pl.col(ts) >= edge - max_age_ns))
            n_open += work.height - pairs.height - tail.height
            carry = tail.select(carry.columns).sort(ts, maintain_order=True)
    if not out:
        return pl.DataFrame(schema={"start_row": pl.UInt32, "end_row": pl.UInt32, "latency_ns": ev.schema[ts],
                                    "end_kind": ev.schema[kind]}), 0
    return pl.concat(out, rechunk=False), n_open


def key_interval_join(app: pl.DataFrame, kernel: pl.DataFrame, *, key: str = "cookie", start: str = "start",
                      end: str = "end", k_key: str = "cookie", k_start: str = "k_start", k_end: str = "k_end",
                      pre_ns: int = 20_000_000, post_ns: int = 5_000_000, bucket_ns: int | None = None,
                      chunk_rows: int = CHUNK_ROWS_SORT) -> pl.DataFrame:
    """Every (app row, kernel row) with equal keys and overlapping time (app widened by pre/post).

    Returns ``app_row, kernel_row`` (row numbers), ordered by time chunk, then kernel row,
    then app row (so by kernel row, then app row, when ``kernel`` is in time order).

    >>> a = pl.DataFrame({"cookie": [1, 1, 2], "start": [0, 100, 0], "end": [10, 110, 10]})
    >>> k = pl.DataFrame({"cookie": [1, 2, 1, 2], "k_start": [5, 50, 105, 300], "k_end": [5, 50, 105, 300]})
    >>> key_interval_join(a, k, pre_ns=0, post_ns=0).rows()
    [(0, 0), (1, 2)]
    """
    a, _ = _sorted(app.select(key, start, end).with_row_index("app_row"), start)
    k, _ = _sorted(kernel.select(k_key, k_start, k_end).with_row_index("kernel_row"), k_start)
    if bucket_ns is None:
        med = a.select((pl.col(end) - pl.col(start)).median()).item() if a.height else 0
        bucket_ns = int(min(max((med or 0) + pre_ns + post_ns, 1_000_000), 2_000_000_000))
    max_len = int((a[end] - a[start]).max() or 0) if a.height else 0
    k_max = int((k[k_end] - k[k_start]).max() or 0) if k.height else 0
    a_starts = a[start]
    out = []
    step = max(int(chunk_rows), 1)
    for off in range(0, k.height, step):
        kc = k.slice(off, step)
        lo, hi = kc[k_start][0], kc[k_start][-1] + k_max
        # app windows [start - pre, end + post] that can reach [lo, hi]
        i0 = int(a_starts.search_sorted(lo - post_ns - max_len, side="left"))
        i1 = int(a_starts.search_sorted(hi + pre_ns, side="right"))
        ac = a.slice(i0, i1 - i0).select("app_row", key, w0=pl.col(start) - pre_ns, w1=pl.col(end) + post_ns)
        pair = pl.col("kernel_row").cast(pl.UInt64) * (1 << 32) + pl.col("app_row").cast(pl.UInt64)
        out.append(interval_join(ac.lazy(), kc.lazy(), [key], [k_key], ("w0", "w1"), (k_start, k_end), bucket_ns)
                   .select(pair.alias("p")).sort("p")
                   .select(app_row=(pl.col("p") % (1 << 32)).cast(pl.UInt32),
                           kernel_row=(pl.col("p") // (1 << 32)).cast(pl.UInt32)).collect())
    # chunk by chunk: no sort of the whole result (it would double the memory)
    return pl.concat(out, rechunk=False) if out else pl.DataFrame(schema={"app_row": pl.UInt32, "kernel_row": pl.UInt32})
