"""The collector's join on a keep-alive connection: CPU per kernel span.

One socket cookie carries ``--rps`` requests per second (one app span each, 0.9 ms
long); its watched lifecycle spans come at ``--kernel-per-request`` per request (the
watch list makes the lifecycle family emit every packet of an indexed cookie); the
app's spans reach the collector in batches every ``--batch-s`` seconds (the SDK's
batch delay), so the kernel spans of a batch wait in the join's buffer until then.
The ``Join`` object itself, on a fake clock (no receiver, no kernel, no root): CPU
seconds per kernel span over ``--seconds`` of simulated time, and how many were joined.

Run it from a checkout (the ``otel_kernelnet`` of the current directory is used), so
the same script can time an older commit in a worktree.

    .venv/bin/python benchmarks/bench_join.py [--seconds 12] [--rps 1000] [--kernel-per-request 4]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.getcwd())  # the checkout run from (a worktree times its own code)
sys.path.insert(1, os.path.dirname(os.path.abspath(__file__)))
from common import log, result  # noqa: E402

from otel_kernelnet.join import AppSpan, Join  # noqa: E402
from otel_kernelnet.spans import KernelSpan  # noqa: E402

T0 = 1_700_000_000 * 10**9
COOKIE = 7


def run(seconds: float, rps: int, per_request: int, batch_s: float) -> dict[str, float | int]:
    clock = [T0]
    out: list[KernelSpan] = []
    j = Join(emit=out.append, now_ns=lambda: clock[0], cgroup_of=lambda pid: None)
    gap = 10**9 // rps
    batch_every = max(1, int(batch_s * rps))
    pending: list[AppSpan] = []
    kernel = 0
    cpu = time.process_time()
    for r in range(int(seconds * rps)):
        clock[0] = t = T0 + r * gap
        pending.append(AppSpan((r + 1).to_bytes(16, "big"), (r + 1).to_bytes(8, "big"), t, t + gap * 9 // 10,
                               cookie=COOKIE))
        for k in range(per_request):
            ts = t + k * (gap // (per_request + 1))
            j.add_kernel(KernelSpan("kernel.skb.lifecycle", b"\x02" * 16, (10**9 + kernel).to_bytes(8, "big"),
                                    ts, ts + gap // 20, {"kernelnet.kind": "skb", "kernelnet.socket.cookie": COOKIE}))
            kernel += 1
        if (r + 1) % batch_every == 0:
            j.add_app_spans(pending)
            pending = []
        if r % max(1, rps // 10) == 0:
            j.tick()  # the collector's loop ticks the join about every 100 ms while it is active
    j.add_app_spans(pending)
    j.flush()
    used = time.process_time() - cpu
    if len(out) != kernel:
        raise SystemExit(f"bench_join: {kernel} kernel spans in, {len(out)} out")
    return {"kernel_spans": kernel, "joined": j.stats.joined_cookie, "cpu_s": round(used, 3),
            "us_per_kernel_span": round(used / kernel * 1e6, 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=12.0, help="simulated seconds")
    ap.add_argument("--rps", type=int, default=1000)
    ap.add_argument("--kernel-per-request", type=int, default=4)
    ap.add_argument("--batch-s", type=float, default=5.0, help="the app SDK's export interval")
    a = ap.parse_args()
    if a.seconds <= 0 or a.rps < 1 or a.kernel_per_request < 1 or a.batch_s <= 0:
        print("bench_join: --seconds, --rps, --kernel-per-request and --batch-s must be positive", file=sys.stderr)
        return 2
    figures = run(a.seconds, a.rps, a.kernel_per_request, a.batch_s)
    log(str(figures))
    result("join", seconds=a.seconds, rps=a.rps, kernel_per_request=a.kernel_per_request, batch_s=a.batch_s,
           checkout=os.getcwd(), **figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
