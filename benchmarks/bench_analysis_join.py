"""Benchmark: the kernel join of kernelnet_analysis over N app spans and M kernel spans.

    .venv/bin/python benchmarks/bench_analysis_join.py [N_APP] [N_KERNEL] [--columns ranking|all]
                                                       (default 10000 100000, ranking)

Prints one JSON line: sizes, join seconds (best of --repeat), output rows, kernel
spans joined per second, the input size (``estimated_size``: the generated frames hold
their ~70 all-null attribute columns as cheap null arrays), the RSS before the join, the
peak RSS during it (VmHWM, reset once the frames are generated) and the difference. The
RSS before the join includes what generating the frames left in the allocator, which
the join may reuse. The synthetic mix follows what the collector
emits (drops, resets, retransmits and slow skbs per socket; softirq/reclaim/counter
spans only above thresholds, at fixed rates: softirq 10/s, reclaim 1/s of the app's
own task, counters 5/s); the rest are per-socket: 70 % skb lifecycle and 20 % TCP
events on a cookie, 10 % drops with only a 4-tuple (inferred join). App spans: 1000
connections, one request per connection per second, 5-15 ms each; every app span is a target (the
worst case: ``diagnose`` only joins the spikes).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import polars as pl

from kernelnet_analysis.causes import KERNEL_COLUMNS
from kernelnet_analysis.join import join_kernel
from kernelnet_analysis.schema import SPAN_SCHEMA

MS = 1_000_000
T0 = 1_740_787_200_000_000_000


def _rand(n: int, seed: int, mod: int) -> pl.Expr:
    return (pl.int_range(n, dtype=pl.UInt64).hash(seed) % mod).cast(pl.Int64)


def _fill(df: pl.DataFrame) -> pl.DataFrame:
    """Add the remaining schema columns as nulls (cheap) in schema order."""
    missing = [pl.lit(None, dtype=t).alias(c) for c, t in SPAN_SCHEMA.items() if c not in df.columns]
    return df.with_columns(missing).select(list(SPAN_SCHEMA)).cast(dict(SPAN_SCHEMA))


def make_frames(n_app: int, n_kernel: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    conns = 1000
    app = pl.select(j=pl.int_range(n_app, dtype=pl.Int64)).with_columns(
        c=pl.col("j") % conns, q=pl.col("j") // conns, dur=(5 * MS + _rand(n_app, 1, 10 * MS)))
    app = app.select(
        trace_id=pl.format("{}", pl.col("j")).str.pad_start(32, "0"), span_id=pl.format("a{}", pl.col("j")).str.pad_start(16, "0"),
        name=pl.lit("GET /api"), kind=pl.lit(2, pl.Int8), start_ns=T0 + pl.col("q") * 1000 * MS + pl.col("c") * MS,
        duration_ns=pl.col("dur"), service=pl.lit("api"), resource_id=pl.lit(0, pl.UInt32),
        **{"kernelnet.socket.cookie": 4096 + pl.col("c"), "network.local.address": pl.lit("10.0.1.5"),
           "network.local.port": pl.lit(8080, pl.Int64), "network.peer.address": pl.lit("10.0.2.7"),
           "network.peer.port": 20000 + pl.col("c"), "process.pid": pl.lit(4242, pl.Int64)},
    ).with_columns(end_ns=pl.col("start_ns") + pl.col("duration_ns"))
    horizon_s = max(n_app // conns, 1)
    # host-wide spans come at fixed rates (the collector emits them above thresholds only):
    # softirq 10/s, reclaim 1/s, counters 5/s; every other kernel span is on a socket
    n_soft, n_rec, n_cnt = 10 * horizon_s, horizon_s, 5 * horizon_s
    n_host = min(n_soft + n_rec + n_cnt, n_kernel)
    n_sock = n_kernel - n_host
    k = pl.select(i=pl.int_range(n_kernel, dtype=pl.Int64)).with_columns(
        j=_rand(n_kernel, 2, n_app), u=_rand(n_kernel, 3, 100), off=_rand(n_kernel, 4, 5 * MS),
        t_host=_rand(n_kernel, 5, horizon_s * 1000 * MS))
    k = k.with_columns(c=pl.col("j") % conns, q=pl.col("j") // conns, h=pl.col("i") - n_sock)
    kind = (pl.when(pl.col("h") >= n_soft + n_rec).then(pl.lit("counter"))
            .when(pl.col("h") >= n_soft).then(pl.lit("reclaim"))
            .when(pl.col("h") >= 0).then(pl.lit("softirq"))
            .when(pl.col("u") < 70).then(pl.lit("skb")).when(pl.col("u") < 90).then(pl.lit("tcp.retransmit"))
            .otherwise(pl.lit("drop")))
    k = k.with_columns(kind=kind, start_ns=pl.when(pl.col("h") >= 0).then(T0 + pl.col("t_host"))
                       .otherwise(T0 + pl.col("q") * 1000 * MS + pl.col("c") * MS + pl.col("off")))
    kind = pl.col("kind")
    sock = kind.is_in(["skb", "tcp.retransmit"])
    drop = kind == "drop"
    k = k.select(
        trace_id=pl.format("k{}", pl.col("i")).str.pad_start(32, "0"), span_id=pl.format("b{}", pl.col("i")).str.pad_start(16, "0"),
        name=pl.lit("kernel"), kind=pl.lit(1, pl.Int8), start_ns="start_ns",
        duration_ns=pl.when(kind.is_in(["softirq", "reclaim"])).then(2 * MS).when(kind == "counter").then(0).otherwise(50_000),
        service=pl.lit("otel-kernelnet"), scope=pl.lit("otel-kernelnet"), resource_id=pl.lit(1, pl.UInt32),
        **{"kernelnet.kind": kind,
           "kernelnet.socket.cookie": pl.when(sock).then(4096 + pl.col("c")),
           "source.address": pl.when(drop).then(pl.lit("10.0.2.7")), "source.port": pl.when(drop).then(20000 + pl.col("c")),
           "destination.address": pl.when(drop).then(pl.lit("10.0.1.5")),
           "destination.port": pl.when(drop).then(pl.lit(8080, pl.Int64)),
           "kernelnet.drop.reason": pl.when(drop).then(pl.lit("NETFILTER_DROP")),
           "process.pid": pl.when(kind == "reclaim").then(pl.lit(4242, pl.Int64)),
           "kernelnet.softirq.wait_ns": pl.when(kind == "softirq").then(pl.lit(2 * MS, pl.Int64)),
           "kernelnet.counter.name": pl.when(kind == "counter").then(pl.lit("TcpExtTCPTimeouts")),
           "kernelnet.counter.delta": pl.when(kind == "counter").then(pl.lit(1, pl.Int64))},
    ).with_columns(end_ns=pl.col("start_ns") + pl.col("duration_ns"))
    # the store holds spans in export order, about time order
    app, k = _fill(app.sort("start_ns")), _fill(k.sort("start_ns"))
    return app, pl.concat([app, k])


def _rss_mb(field: str) -> int:
    """VmRSS / VmHWM of this process in MB (from /proc/self/status)."""
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) // 1024
    return -1


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("n_app", type=int, nargs="?", default=10_000)
    ap.add_argument("n_kernel", type=int, nargs="?", default=100_000)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--columns", choices=("ranking", "all", "ids"), default="ranking",
                    help="kernel columns in the output: those the ranking reads (what diagnose asks for), all, or ids only")
    ap.add_argument("--chunk-rows", type=int, default=2_000_000, help="kernel spans per time chunk")
    a = ap.parse_args(argv)
    t = time.perf_counter()
    app, spans = make_frames(a.n_app, a.n_kernel)
    gen_s = time.perf_counter() - t
    input_mb = (app.estimated_size() + spans.estimated_size()) // 2**20
    columns = {"ranking": KERNEL_COLUMNS, "all": None, "ids": ()}[a.columns]
    best, out = float("inf"), None
    rss0 = _rss_mb("VmRSS")
    peak_reset = _reset_peak()
    for _ in range(a.repeat):
        out = None
        t = time.perf_counter()
        out = join_kernel(app, spans, None, columns=columns, chunk_rows=a.chunk_rows)
        best = min(best, time.perf_counter() - t)
    peak = _rss_mb("VmHWM")
    counts = dict(sorted(out.group_by("match").len().iter_rows()))
    print(json.dumps({
        "bench": "analysis_join", "app_spans": a.n_app, "kernel_spans": a.n_kernel, "columns": a.columns,
        "chunk_rows": a.chunk_rows, "seconds": round(best, 3), "kernel_spans_per_s": round(a.n_kernel / best),
        "output_rows": out.height, "output_mb": out.estimated_size() // 2**20, "by_match": counts,
        "generate_s": round(gen_s, 2), "input_mb": input_mb, "rss_before_join_mb": rss0,
        "join_extra_mb": _rss_mb("VmHWM") - rss0,
        "peak_rss_mb": peak if peak_reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
        "peak_is_join_only": peak_reset, "polars": pl.__version__, "threads": pl.thread_pool_size()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
