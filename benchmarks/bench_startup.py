"""B7 + B6 (quick): start-up, shutdown and idle footprint of the collector.

Each run execs ``otel-kernelnet run`` with the default configuration (embedded
store), measures exec -> ready file (every default family attached, exporter ready)
and the collector's own breakdown of it (its "start-up:" line), stays idle ``--idle``
seconds (CPU share of one core, wake-ups/s = context switches of all its threads, RSS
split into anonymous and file-backed), then SIGTERM -> exit (includes the kernel's
detach). On a shared machine the wall-clock figures follow the load (reported:
``loadavg_at_start`` and per run); ``cpu_s_at_ready`` (the collector's own CPU
seconds until ready) moves much less with it. The first run is reported apart as "first" (page
cache as left by whatever ran before; a truly cold run needs
``echo 3 > /proc/sys/vm/drop_caches`` first, ``--cold`` does that once).
Targets: warm p95 <= 1 s (cold <= 2 s); exit <= 2 s; idle <= 0.5% of a core,
<= 150 MB RSS. The 1-hour soak is the same script with ``--runs 1 --idle 3600``.

BPF objects: the runs share a BPF object cache private to this bench (``bpf.cache_dir``
in a temporary config), empty at the start: the first run compiles every family (a
fresh node, or a new version or kernel), the others load the cached objects (a
restart). ``--no-cache`` sets ``bpf.cache_dir: ""``: every run compiles. ``--prime``
starts and stops the collector once before the runs (before ``--cold`` drops the page
cache), so the first run is a reboot: objects cached, nothing in the page cache.

    .venv/bin/python benchmarks/bench_startup.py [--runs 10] [--idle 10] [--cold] [--no-cache] [--prime]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import CollectorRun, log, result  # noqa: E402


def _proc(pid: int) -> dict[str, float]:
    """CPU seconds, context switches (all threads) and RSS parts of a running process."""
    out: dict[str, float] = {}
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    out["cpu_s"] = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
    switches = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            for ln in (task / "status").read_text().splitlines():
                if ln.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    switches += int(ln.split()[1])
        except OSError:
            pass  # a thread that just ended
    out["switches"] = switches
    for ln in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = ln.partition(":")
        if k in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[k] = int(v.split()[0]) / 1024
    return out


def _breakdown(log: str) -> dict[str, float]:
    """{"total": s, phase: s, ...} from the collector's "start-up: 1.23 s since exec (a 0.1, ...)" line."""
    m = re.search(r"start-up: ([\d.]+) s since \w+ \(([^)]*)\)", log)
    if not m:
        return {}
    out = {"total": float(m.group(1))}
    for part in m.group(2).split(", "):
        name, _, secs = part.rpartition(" ")
        out[name] = float(secs)
    return out


def _shutdown_breakdown(log: str) -> dict[str, float]:
    """From the collector's "shutdown: 0.71 s (detach 0.62 s, then drain, free, flush 0.09 s)" line."""
    m = re.search(r"shutdown: ([\d.]+) s \(detach ([\d.]+) s, then drain, free, flush ([\d.]+) s\)", log)
    return {"total": float(m.group(1)), "detach": float(m.group(2)), "drain_free_flush": float(m.group(3))} if m else {}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--idle", type=float, default=10.0)
    ap.add_argument("--cold", action="store_true", help="drop the page cache before the first run")
    ap.add_argument("--no-cache", action="store_true", help="no BPF object cache: every run compiles")
    ap.add_argument("--prime", action="store_true", help="fill the object cache before the runs (and before --cold)")
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_startup: needs root (BPF)", file=sys.stderr)
        return 2
    from otel_kernelnet.probes import families
    runs = []
    shared = tempfile.TemporaryDirectory(prefix="kn-bench-cache-")
    config = Path(shared.name) / "config.yaml"
    cache_dir = "" if a.no_cache else str(Path(shared.name) / "bpf")
    config.write_text(f"bpf:\n  cache_dir: {cache_dir!r}\n")
    if a.prime:
        with tempfile.TemporaryDirectory(prefix="kn-bench-") as tmp:
            CollectorRun(Path(tmp), "--config", str(config)).stop()
    if a.cold:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3")
    for i in range(a.runs):
        with tempfile.TemporaryDirectory(prefix="kn-bench-") as tmp:
            load = Path("/proc/loadavg").read_text().split()[0]
            c = CollectorRun(Path(tmp), "--config", str(config))
            try:
                at_ready = _proc(c.proc.pid)
                time.sleep(1.0)  # the first poll back-off steps and the first samplers' reads
                p0, t0 = _proc(c.proc.pid), time.monotonic()
                time.sleep(a.idle)
                p1 = _proc(c.proc.pid)
                dt = time.monotonic() - t0
            finally:
                exit_s = c.stop()
            text = c.log_path.read_text()
            stopped = next((ln for ln in text.splitlines() if "stopped:" in ln), "")
            objects = next((ln.split("bpf objects: ", 1)[1] for ln in text.splitlines() if "bpf objects: " in ln), "")
            runs.append({"ready_s": round(c.ready_s, 3), "cpu_s_at_ready": round(at_ready["cpu_s"], 2),
                         "breakdown_s": _breakdown(text), "exit_s": round(exit_s, 3),
                         "shutdown_s": _shutdown_breakdown(text),
                         "idle_core_fraction": round((p1["cpu_s"] - p0["cpu_s"]) / dt, 4),
                         "idle_wakeups_per_s": round((p1["switches"] - p0["switches"]) / dt, 1),
                         "rss_mb_at_ready": round(at_ready.get("VmRSS", 0), 1), "rss_mb_idle": round(p1.get("VmRSS", 0), 1),
                         "rss_anon_mb_idle": round(p1.get("RssAnon", 0), 1), "rss_file_mb_idle": round(p1.get("RssFile", 0), 1),
                         "hwm_mb": round(p1.get("VmHWM", 0), 1), "loadavg_at_start": load,
                         "returncode": c.proc.returncode, "objects": objects,
                         "events_seen": stopped.split("stopped: ", 1)[-1].split(" events", 1)[0]})
            log(f"run {i + 1}/{a.runs}: {runs[-1]}")
    shared.cleanup()
    warm = runs[1:] or runs
    def q(xs, p):  # noqa: E306
        xs = sorted(xs)
        return xs[min(len(xs) - 1, int(round(p * (len(xs) - 1))))]
    result("startup", families=[f.name for f in families()], runs=runs, first_ready_s=runs[0]["ready_s"],
           cold=a.cold, object_cache=not a.no_cache, primed=a.prime,
           warm_ready_s={"median": statistics.median(r["ready_s"] for r in warm), "p95": q([r["ready_s"] for r in warm], 0.95)},
           cpu_s_at_ready_median=statistics.median(r["cpu_s_at_ready"] for r in warm),
           exit_s={"median": statistics.median(r["exit_s"] for r in runs), "max": max(r["exit_s"] for r in runs)},
           idle_core_fraction_median=statistics.median(r["idle_core_fraction"] for r in runs),
           idle_wakeups_per_s_median=statistics.median(r["idle_wakeups_per_s"] for r in runs),
           rss_mb_idle_max=max(r["rss_mb_idle"] for r in runs),
           rss_anon_mb_idle_max=max(r["rss_anon_mb_idle"] for r in runs), idle_s=a.idle,
           targets={"warm_ready_p95_s": 1.0, "exit_s": 2.0, "idle_core_fraction": 0.005, "rss_mb": 150})
    return 0


if __name__ == "__main__":
    sys.exit(main())
