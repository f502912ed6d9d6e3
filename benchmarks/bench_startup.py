"""B7 + B6 (quick): start-up, shutdown and idle footprint of the collector.

Each run execs ``otel-kernelnet run`` with the default configuration (embedded
store), measures exec -> ready file (every default family attached, exporter ready),
stays idle ``--idle`` seconds (CPU share of one core and RSS), then SIGTERM -> exit
(includes the kernel's detach). The first run is reported apart as "first" (page
cache as left by whatever ran before; a truly cold run needs
``echo 3 > /proc/sys/vm/drop_caches`` first, ``--cold`` does that once).
Targets: warm p95 <= 1 s (cold <= 2 s); exit <= 2 s; idle <= 0.5% of a core,
<= 150 MB RSS. The 1-hour soak is the same script with ``--runs 1 --idle 3600``.

    .venv/bin/python benchmarks/bench_startup.py [--runs 10] [--idle 10] [--cold]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import CollectorRun, log, result  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--idle", type=float, default=10.0)
    ap.add_argument("--cold", action="store_true", help="drop the page cache before the first run")
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_startup: needs root (BPF)", file=sys.stderr)
        return 2
    from otel_kernelnet.probes import families
    if a.cold:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3")
    runs = []
    for i in range(a.runs):
        with tempfile.TemporaryDirectory(prefix="kn-bench-") as tmp:
            c = CollectorRun(Path(tmp))
            try:
                mem0 = c.status()
                cpu0, t0 = c.cpu_s(), time.monotonic()
                time.sleep(a.idle)
                idle_cpu = (c.cpu_s() - cpu0) / (time.monotonic() - t0)
                mem = c.status()
            finally:
                exit_s = c.stop()
            attached = next((ln for ln in c.log_path.read_text().splitlines() if "probes attached" in ln), "")
            runs.append({"ready_s": round(c.ready_s, 3), "exit_s": round(exit_s, 3),
                         "idle_core_fraction": round(idle_cpu, 4), "rss_mb_at_ready": round(mem0.get("VmRSS", 0) / 1024, 1),
                         "rss_mb_idle": round(mem.get("VmRSS", 0) / 1024, 1), "hwm_mb": round(mem.get("VmHWM", 0) / 1024, 1),
                         "returncode": c.proc.returncode, "attached": attached.split("otel-kernelnet: ", 1)[-1][:300]})
            log(f"run {i + 1}/{a.runs}: {runs[-1]}")
    warm = runs[1:] or runs
    def q(xs, p):  # noqa: E306
        xs = sorted(xs)
        return xs[min(len(xs) - 1, int(round(p * (len(xs) - 1))))]
    result("startup", families=[f.name for f in families()], runs=runs, first_ready_s=runs[0]["ready_s"],
           cold=a.cold,
           warm_ready_s={"median": statistics.median(r["ready_s"] for r in warm), "p95": q([r["ready_s"] for r in warm], 0.95)},
           exit_s={"median": statistics.median(r["exit_s"] for r in runs), "max": max(r["exit_s"] for r in runs)},
           idle_core_fraction_median=statistics.median(r["idle_core_fraction"] for r in runs),
           rss_mb_idle_max=max(r["rss_mb_idle"] for r in runs), idle_s=a.idle,
           targets={"warm_ready_p95_s": 1.0, "exit_s": 2.0, "idle_core_fraction": 0.005, "rss_mb": 150})
    return 0


if __name__ == "__main__":
    sys.exit(main())
