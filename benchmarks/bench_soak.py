"""B6 soak: the collector's memory over a long run under steady load.

The collector runs with the default configuration (embedded JSON Lines store, in a
temporary directory; file rotation keeps it bounded) while UDP datagrams paced at
RATE per second go into a closed port across a veth pair (RATE drop spans per second,
plus their dropped lifecycles). Every ``--every`` seconds: RSS, CPU. Growth is the
median RSS of the last quarter of the run over the median of the first quarter after
a warm-up (the first 10% of the run, at least 30 s, is not counted). Target (issue 7):
growth <= 3% over one hour.

    .venv/bin/python benchmarks/bench_soak.py [--seconds 3600] [--rate 1000] [--every 10]

Needs root. Namespaces are removed and processes stopped by pid on every exit path.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_latency import PACED_SENDER  # noqa: E402
from common import CollectorRun, VethPair, log, result, stop  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=3600.0)
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--every", type=float, default=10.0)
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_soak: needs root (BPF, network namespaces)", file=sys.stderr)
        return 2
    coll = sender = None
    samples: list[tuple[float, int, float]] = []
    try:
        with VethPair(f"{os.getpid()}") as net, tempfile.TemporaryDirectory(prefix="kn-soak-") as tmpd:
            coll = CollectorRun(Path(tmpd))
            sender = net.popen(net.a, sys.executable, "-c", PACED_SENDER, str(a.rate), str(a.seconds), "9",
                               stdout=subprocess.PIPE, text=True)
            t0 = time.monotonic()
            cpu0 = coll.cpu_s()
            while sender.poll() is None:
                time.sleep(a.every)
                t = time.monotonic() - t0
                samples.append((t, coll.status().get("VmRSS", 0), coll.cpu_s() - cpu0))
                if len(samples) % 30 == 0:
                    log(f"{t:.0f} s: RSS {samples[-1][1] / 1024:.1f} MB")
            sent = int(sender.communicate(timeout=30)[0] or 0)
            coll.stop()
            final = [ln for ln in coll.log_path.read_text().splitlines() if "stopped:" in ln]
    finally:
        if sender is not None:
            stop(sender)
        if coll is not None:
            stop(coll.proc, timeout=30)
    warm = max(30.0, a.seconds * 0.1)
    kept = [s for s in samples if s[0] >= warm]
    q = max(1, len(kept) // 4)
    first, last = statistics.median(s[1] for s in kept[:q]), statistics.median(s[1] for s in kept[-q:])
    span = samples[-1][0] if samples else 0
    result("soak", seconds=a.seconds, rate=a.rate, datagrams_sent=sent,
           rss_mb={"first_quarter_median": round(first / 1024, 1), "last_quarter_median": round(last / 1024, 1),
                   "max": round(max(s[1] for s in samples) / 1024, 1)},
           growth=round(last / first - 1, 4), target_growth=0.03, pass_growth=last / first - 1 <= 0.03,
           cpu_pct_of_core=round(samples[-1][2] / span * 100, 2) if span else None,
           collector_final=final[-1] if final else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
