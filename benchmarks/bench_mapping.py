"""Why a span costs more in the pipeline than in a loop: per drop record, the CPU of
decode and mapping (``drop_span``) with each result freed at once (``hot``: dropped
before the next is made, so the allocator hands the same warm memory back; the cost
of freeing is inside each stage) against all results held alive (``live``: every
record decoded, then every one mapped, as bench_pipeline's producer does and as the
export queue holds spans until they are encoded; then ``free``: freeing them all).

The records are ``bench_pipeline``'s synthetic ``skb:kfree_skb`` records (the drop
probe's real layout, varied values); names and symbols through the same small caches.
Rounds alternate hot and live (ABBA); per stage the median us per record of each and
the ratio live / hot. No root needed, no kernel, no receiver.

    .venv/bin/python benchmarks/bench_mapping.py [--records 20000] [--rounds 6]
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_pipeline import _reason, _symbol, make_records  # noqa: E402
from common import log, result  # noqa: E402

from otel_kernelnet.clock import KernelClock  # noqa: E402
from otel_kernelnet.collector import GC_GEN0_THRESHOLD  # noqa: E402
from otel_kernelnet.probes import drop  # noqa: E402
from otel_kernelnet.spans import RandomIds, drop_span  # noqa: E402

STAGES = ("decode", "map", "free")


def one_round(samples: list[bytes], live: bool) -> dict[str, float]:
    """CPU us per record of each stage, one pass over ``samples``."""
    clock, ids = KernelClock(), RandomIds()
    to_epoch, dec = clock.to_epoch_ns, drop.decode
    n = len(samples)
    cpu = time.thread_time
    if live:
        t0 = cpu()
        evs = [dec(s) for s in samples]
        t1 = cpu()
        spans = [drop_span(e, to_epoch_ns=to_epoch, ids=ids, reason_name=_reason, symbol=_symbol) for e in evs]
        t2 = cpu()
        assert len(spans) == n
        del evs, spans
        t3 = cpu()
    else:
        evs = [dec(s) for s in samples]  # the map stage's input (held in both settings)
        t0 = cpu()
        for s in samples:
            dec(s)
        t1 = cpu()
        for e in evs:
            drop_span(e, to_epoch_ns=to_epoch, ids=ids, reason_name=_reason, symbol=_symbol)
        t2 = t3 = cpu()  # each result freed within its stage
    return {"decode": (t1 - t0) / n * 1e6, "map": (t2 - t1) / n * 1e6, "free": (t3 - t2) / n * 1e6}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=6, help="rounds of each setting (ABBA order)")
    a = ap.parse_args()
    if a.records < 1 or a.rounds < 1:
        print("bench_mapping: --records and --rounds must be >= 1", file=sys.stderr)
        return 2
    buf, recs = make_records(a.records)
    samples = [ctypes.string_at(addr, size) for addr, size in recs]
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD)  # the collector's own setting (collector.QuietGc)
    one_round(samples, True)  # warm the caches of names, symbols and addresses
    runs: dict[str, list[dict[str, float]]] = {"hot": [], "live": []}
    for r in range(a.rounds):
        for setting in (("hot", "live") if r % 2 == 0 else ("live", "hot")):
            runs[setting].append(one_round(samples, setting == "live"))
        log(f"round {r + 1}/{a.rounds}: hot {runs['hot'][-1]} live {runs['live'][-1]}")
    figures = {s: {st: round(statistics.median(x[st] for x in runs[s]), 2) for st in STAGES} for s in runs}
    total = {s: round(sum(figures[s][st] for st in STAGES), 2) for s in runs}
    ratio = {st: round(figures["live"][st] / figures["hot"][st], 2) if figures["hot"][st] > 0 else None
             for st in ("decode", "map")}
    result("mapping", records=a.records, rounds=a.rounds, us_per_record=figures,
           us_per_record_total=total, ratio_live_to_hot=ratio)
    return 0


if __name__ == "__main__":
    sys.exit(main())
