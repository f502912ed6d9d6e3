"""The node-wide rate cap (bpf/common.bcc.h kn_rate_ok, ``probes.<family>.rate_limit_per_node``)
on the running kernel (root): drops from two CPUs at once, against a per-CPU cap that
would let them all through, are held to the node-wide cap, and the rest is counted.
"""

from __future__ import annotations

import os
import socket
import threading
import time

from otel_kernelnet.loader import Loader
from otel_kernelnet.probes import drop

from tests.kernel.test_rawtp import ctx

NODE_CAP = 50
PER_CPU = 100_000
SENDS = 307  # per CPU (prime)


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _send_from(cpu: int, port: int, go: threading.Event) -> None:
    os.sched_setaffinity(0, {cpu})  # this thread only
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        go.wait(5)
        for _ in range(SENDS):
            s.sendto(b"x", ("127.0.0.1", port))


def test_drops_from_every_cpu_are_held_to_the_node_wide_cap(tmp_path):
    cpus = sorted(os.sched_getaffinity(0))[:2]
    assert len(cpus) == 2, "needs two CPUs"
    c = ctx()
    p = drop.plan(btf=c.btf, rate_limit=PER_CPU, rate_limit_node=NODE_CAP)
    assert p.defines["KN_RATE_LIMIT_NODE"] == NODE_CAP
    events: list = []
    port = _closed_port()
    with Loader(cache_dir=tmp_path) as loader:
        probe = drop.DropProbe(loader, p, events.append, lambda e: None)
        before = probe.stats()
        go = threading.Event()
        senders = [threading.Thread(target=_send_from, args=(cpu, port, go)) for cpu in cpus]
        for t in senders:
            t.start()
        t0 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)  # bpf_ktime_get_ns's clock
        go.set()
        for t in senders:
            t.join(30)
        t1 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            loader.wait(0.2)
            if not loader.consume():
                break
        after = probe.stats()
    windows = t1 // 10**9 - t0 // 10**9 + 1  # the caps' one-second windows the burst touched
    assert windows <= 2, "the burst took more than a second: the test cannot bound it"
    emitted = after["emitted"] - before["emitted"]
    capped = after["rate_capped"] - before["rate_capped"]
    mine = [e for e in events if e.dport == port]
    # Held to the node-wide cap (plus at most one record per CPU racing past it per
    # window); the per-CPU cap alone would have let all 2 x 307 through.
    assert NODE_CAP <= emitted <= windows * (NODE_CAP + len(cpus)), (emitted, capped, windows)
    assert len(mine) <= emitted
    assert emitted + capped >= 2 * SENDS  # every drop of ours was emitted or counted
    assert after["ringbuf_full"] == before["ringbuf_full"]
