"""The whole collector joining an instrumented keep-alive connection: its CPU per span.

The lab's instrumented HTTP server (``otel_kernelnet.lab.app``, the OpenTelemetry SDK
and the cookie plugin) runs in one network namespace, its instrumented client in
another (a veth pair this script creates), making requests one after the other over
one keep-alive connection for ``--seconds``. Both send their spans to the collector's
receiver (default configuration otherwise, a free loopback port); the collector
indexes them by socket cookie, watches those cookies (every packet of the connection
becomes a lifecycle span, up to the family's caps) and joins the kernel spans to
them. Over the client's run: requests per second, the collector's CPU (% of a core)
and, from its final summary, kernel spans, how many were joined by cookie, and what
was lost. No timing assertion: a result line.

Run it from a checkout (its ``otel_kernelnet`` is the one measured), so the same
script can measure an older commit in a worktree.

    .venv/bin/python benchmarks/bench_keepalive.py [--seconds 30]

Needs root. Namespaces are removed and processes stopped by pid on every exit path.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT, CollectorRun, VethPair, log, result, stop  # noqa: E402

PORT = 8080


def nodelay(handler, _arg: str) -> None:
    """The server's per-request hook (``--hook``): answer without Nagle's algorithm. The
    lab server writes headers and body in two sends; with Nagle the body waits for the
    client's delayed ACK (~40 ms), which would hold the connection to ~20 requests/s."""
    handler.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def summary(line: str) -> dict[str, int]:
    """The counters of the collector's ``stopped:`` line that this bench reports."""
    pats = {"kernel_spans": r"stopped: (\d+) events", "exported": r"(\d+) spans exported",
            "lost_ring_buffer": r"(\d+) ring buffer", "rate_capped": r"(\d+) rate-capped",
            "lost_queue_full": r"(\d+) export queue full", "app_spans_received": r"app spans: (\d+) received",
            "joined_cookie": r"join: (\d+) by cookie", "join_waiting": r"(\d+) waiting", "join_shed": r"(\d+) shed"}
    out = {}
    for k, p in pats.items():
        m = re.search(p, line)
        out[k] = int(m.group(1)) if m else -1
    return out


def app(net: VethPair, ns: str, otlp: str, service: str, *args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "otel_kernelnet.lab.app", "--service", service, "--otlp", otlp,
                             "--netns", f"/run/netns/{ns}", *args], cwd=ROOT, text=True, **kw)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=30.0, help="how long the client makes requests")
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_keepalive: needs root (BPF, network namespaces)", file=sys.stderr)
        return 2
    if a.seconds <= 0:
        print("bench_keepalive: --seconds must be positive", file=sys.stderr)
        return 2
    coll = server = client = None
    figures: dict[str, object] = {}
    try:
        with VethPair(f"ka{os.getpid()}") as net, tempfile.TemporaryDirectory(prefix="kn-bench-") as tmpd:
            tmp = Path(tmpd)
            port = free_port()
            cfg = tmp / "config.yaml"
            cfg.write_text(f'receiver:\n  http_endpoint: "127.0.0.1:{port}"\n  grpc_endpoint: null\n')
            coll = CollectorRun(tmp, "--config", str(cfg))
            otlp = f"http://127.0.0.1:{port}/v1/traces"
            server = app(net, net.b, otlp, "kn-bench-server", "server", "--addr", "10.99.0.2", "--port", str(PORT),
                         "--threads", "--hook", "benchmarks.bench_keepalive:nodelay",
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            ready = server.stdout.readline()
            if '"ready"' not in ready:
                raise RuntimeError(f"server not ready: {ready!r}")
            cpu0, t0 = coll.cpu_s(), time.monotonic()
            client = app(net, net.a, otlp, "kn-bench-client", "client", "--host", "10.99.0.2", "--port", str(PORT),
                         "--keepalive", "--requests", str(10**8), "--max-seconds", str(a.seconds), "--timeout", "5",
                         stdout=subprocess.PIPE)
            out, _ = client.communicate(timeout=a.seconds + 60)
            wall = time.monotonic() - t0
            cpu = (coll.cpu_s() - cpu0) / wall
            done = json.loads(out.strip().splitlines()[-1])
            time.sleep(1.0)  # the server's last spans (its SDK exports every 100 ms)
            server.stdin.close()
            server.wait(timeout=30)
            time.sleep(0.5)
            coll.stop()
            stopped = [ln for ln in coll.log_path.read_text().splitlines() if "stopped:" in ln]
            counts = summary(stopped[-1]) if stopped else {}
            figures = {"requests": done.get("ok"), "request_errors": done.get("errors"),
                       "requests_per_s": round((done.get("ok") or 0) / wall, 1),
                       "collector_cpu_pct_of_core": round(cpu * 100, 1), **counts,
                       "collector_cpu_us_per_kernel_span": round(cpu * wall / counts["kernel_spans"] * 1e6, 1)
                       if counts.get("kernel_spans", 0) > 0 else None,
                       # both kinds of span it handles: kernel spans made, app spans received
                       "collector_cpu_us_per_span_in": round(cpu * wall / (counts["kernel_spans"] + counts["app_spans_received"]) * 1e6, 1)
                       if counts.get("kernel_spans", 0) + counts.get("app_spans_received", 0) > 0 else None,
                       "collector_final": stopped[-1] if stopped else None}
            log(str(figures))
    finally:
        for p in (client, server):
            if p is not None:
                stop(p, timeout=10)
        if coll is not None:
            stop(coll.proc, timeout=30)
    result("keepalive", seconds=a.seconds, checkout=str(ROOT), **figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
