"""The cost of the link lookups made per span, on a full index (a long-running collector):

- ``softirq``: a lifecycle span's ``LinkIndex.softirq_overlapping`` (the softirq spans
  of its protocol CPU around its wait), with the CPU's index full (``per_cpu``, 256:
  entries never age out, so after the first 256 softirq spans of a CPU it stays full);
- ``pfmemalloc``: a PFMEMALLOC drop's ``LinkIndex.memory_pressure_at`` (the zone sample
  before it and the reclaim spans of the second before it), with the samples (512)
  and reclaim spans (2048) full, with no reclaim span in that second and with
  ``--stalls`` of them.

Per query the median of ``--rounds`` timings (``timeit``, best of each round). No root,
no kernel. Run it from a checkout (the ``otel_kernelnet`` of the current directory is
used), so the same script can time an older commit in a worktree.

    .venv/bin/python benchmarks/bench_links.py [--rounds 5] [--stalls 50]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import timeit

sys.path.insert(0, os.getcwd())  # the checkout run from (a worktree times its own code)
sys.path.insert(1, os.path.dirname(os.path.abspath(__file__)))
from common import log, result  # noqa: E402

from otel_kernelnet.links import LinkIndex  # noqa: E402
from otel_kernelnet.spans import KernelSpan  # noqa: E402

T0 = 1_700_000_000 * 10**9


def span(n: int, start: int, end: int, kind: str) -> KernelSpan:
    return KernelSpan("x", n.to_bytes(16, "big"), n.to_bytes(8, "big"), start, end, {"kernelnet.kind": kind})


def full_index(stalls: int) -> tuple[LinkIndex, dict[str, int]]:
    """An index as a long-running collector has it: every bound reached. Softirq spans
    of CPU 0 every 4 ms (50 us each), a zone sample every 100 ms, reclaim spans every
    20 ms (1 ms each) up to 2 s before the last sample, then ``stalls`` more in the
    last second. Returns the index and the query times."""
    ix = LinkIndex()
    for i in range(300):
        ix.add_softirq(span(i + 1, T0 + i * 4_000_000, T0 + i * 4_000_000 + 50_000, "softirq"), cpu=0)
    zones = [{"node": 0, "zone": z, "free": 1000, "min": 100, "low": 200, "high": 300} for z in ("DMA32", "Normal")]
    samples = 600
    for i in range(samples):
        ix.add_snapshot(T0 + i * 100_000_000, zones, [])
    last = T0 + (samples - 1) * 100_000_000
    for i in range(2100):
        t = last - 2_000_000_000 - (2100 - i) * 20_000_000
        ix.add_reclaim(span(10_000 + i, t, t + 1_000_000, "reclaim"), pid=5)
    for i in range(stalls):
        t = last - 900_000_000 + i * (800_000_000 // max(stalls, 1))
        ix.add_reclaim(span(20_000 + i, t, t + 1_000_000, "reclaim"), pid=5)
    softirq_end = T0 + 299 * 4_000_000 + 50_000
    return ix, {"softirq_start": softirq_end - 30_000, "softirq_end": softirq_end + 10_000, "drop": last + 1_000}


def time_us(fn, rounds: int) -> float:
    n = 200
    per_round = [min(timeit.repeat(fn, number=n, repeat=3)) / n * 1e6 for _ in range(rounds)]
    return round(statistics.median(per_round), 2)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--stalls", type=int, default=50, help="reclaim spans in the second before the drop")
    a = ap.parse_args()
    if a.rounds < 1 or a.stalls < 0:
        print("bench_links: --rounds >= 1 and --stalls >= 0", file=sys.stderr)
        return 2
    figures = {}
    ix, q = full_index(0)
    hits = len(ix.softirq_overlapping(0, q["softirq_start"], q["softirq_end"]))
    figures["softirq_us"] = time_us(lambda: ix.softirq_overlapping(0, q["softirq_start"], q["softirq_end"]), a.rounds)
    figures["softirq_links"] = hits
    figures["pfmemalloc_no_stall_us"] = time_us(lambda: ix.memory_pressure_at(q["drop"]), a.rounds)
    ix, q = full_index(a.stalls)
    figures["pfmemalloc_stalls_us"] = time_us(lambda: ix.memory_pressure_at(q["drop"]), a.rounds)
    figures["pfmemalloc_stalls_links"] = len(ix.memory_pressure_at(q["drop"])["links"])
    log(str(figures))
    result("links", rounds=a.rounds, stalls=a.stalls, checkout=os.getcwd(), **figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
