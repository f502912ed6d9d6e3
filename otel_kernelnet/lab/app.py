"""The lab's application: an HTTP server and client instrumented with OpenTelemetry and
the kernelnet cookie plugin, as a user's service would be.

    python -m otel_kernelnet.lab.app --service NAME --otlp URL [--netns PATH] server|client ...

The span exporter's thread is started in the namespace the process starts in (the
root namespace, where the collector's receiver listens on loopback); then the main
thread enters ``--netns`` (setns), so the HTTP sockets, and every thread started
after that, live in the lab's namespace. Each app prints JSON lines on stdout (the
server: ``{"ready": ...}``; the client: a summary) and flushes its spans before exit.
"""

from __future__ import annotations

import argparse
import ctypes
import http.client
import http.server
import json
import os
import sys
import threading
import time

CLONE_NEWNET = 0x40000000


def _setns(fd: int, what: str) -> None:
    """Move the calling thread into the network namespace open at ``fd``."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"setns {what}: {os.strerror(e)}")


def _tracing(service: str, endpoint: str):
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from otel_kernelnet.instrumentation import KernelnetInstrumentor
    # process.pid as OTel's process resource detector sets it: diagnose ties a reclaim stall
    # of this process to its spans by it (the "task" match)
    provider = TracerProvider(resource=Resource.create({"service.name": service, "process.pid": os.getpid()}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, timeout=5),
                                                   schedule_delay_millis=100, max_export_batch_size=256))
    trace.set_tracer_provider(provider)
    KernelnetInstrumentor().instrument(tracer_provider=provider)
    return provider


def _hook(spec: str | None):
    """``module:function`` -> the function (a scenario's per-request work), or None."""
    if not spec:
        return None
    import importlib
    mod, fn = spec.split(":")
    return getattr(importlib.import_module(mod), fn)


def _server(a: argparse.Namespace) -> None:
    body = b"x" * a.size
    delay = a.delay_ms / 1000.0
    hook = _hook(a.hook)

    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_GET(self):
            if delay:
                time.sleep(delay)
            if hook is not None:
                hook(self, a.hook_arg)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    cls = http.server.ThreadingHTTPServer if a.threads else http.server.HTTPServer
    cls.request_queue_size = a.backlog
    srv = cls((a.addr, a.port), H)
    srv.daemon_threads = True
    if a.accept_delay_ms:
        orig = srv.get_request

        def slow_accept():  # an app that is slow to accept (nginx waiting on NFS, CASES.md #5)
            time.sleep(a.accept_delay_ms / 1000.0)
            return orig()
        srv.get_request = slow_accept
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    print(json.dumps({"ready": True, "pid": os.getpid(), "addr": a.addr, "port": a.port}), flush=True)
    sys.stdin.read()  # until the lab closes our stdin
    srv.shutdown()


def _client(a: argparse.Namespace) -> None:
    lat: list[float] = []
    errors: dict[str, int] = {}
    lock = threading.Lock()
    deadline = time.monotonic() + a.max_seconds

    def one(conn: http.client.HTTPConnection | None) -> http.client.HTTPConnection | None:
        t = time.perf_counter()
        try:
            c = conn or http.client.HTTPConnection(a.host, a.port, timeout=a.timeout)
            c.request("GET", a.path)
            r = c.getresponse()
            r.read()
            with lock:
                lat.append((time.perf_counter() - t) * 1000)
            if not a.keepalive:
                c.close()
                return None
            return c
        except Exception as e:  # counted, and the span records it
            with lock:
                errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
            return None

    def worker(n: int) -> None:
        conn = None
        for _ in range(n):
            if time.monotonic() > deadline:
                return
            conn = one(conn)
            if a.interval_ms:
                time.sleep(a.interval_ms / 1000.0)

    per = [a.requests // a.concurrency + (1 if i < a.requests % a.concurrency else 0) for i in range(a.concurrency)]
    threads = [threading.Thread(target=worker, args=(n,)) for n in per]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lat.sort()
    print(json.dumps({"ok": len(lat), "errors": errors,
                      "p50_ms": round(lat[len(lat) // 2], 2) if lat else None,
                      "max_ms": round(lat[-1], 2) if lat else None}), flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="otel_kernelnet.lab.app")
    p.add_argument("--service", required=True)
    p.add_argument("--otlp", required=True, help="OTLP/HTTP traces URL of the collector's receiver")
    p.add_argument("--netns", help="enter this network namespace (path) after starting the exporter")
    sub = p.add_subparsers(dest="role", required=True)
    s = sub.add_parser("server")
    s.add_argument("--addr", required=True)
    s.add_argument("--port", type=int, default=8080)
    s.add_argument("--backlog", type=int, default=128)
    s.add_argument("--threads", action="store_true", help="one thread per connection")
    s.add_argument("--delay-ms", type=float, default=0.0, help="handler time per request")
    s.add_argument("--accept-delay-ms", type=float, default=0.0, help="pause before each accept()")
    s.add_argument("--size", type=int, default=64, help="response body bytes")
    s.add_argument("--hook", help="module:function called as f(handler, hook_arg) in every request")
    s.add_argument("--hook-arg", default="", help="argument for --hook")
    c = sub.add_parser("client")
    c.add_argument("--host", required=True)
    c.add_argument("--port", type=int, default=8080)
    c.add_argument("--path", default="/")
    c.add_argument("--requests", type=int, default=50)
    c.add_argument("--concurrency", type=int, default=1)
    c.add_argument("--interval-ms", type=float, default=0.0)
    c.add_argument("--keepalive", action="store_true")
    c.add_argument("--timeout", type=float, default=15.0)
    c.add_argument("--max-seconds", type=float, default=30.0, help="stop starting requests after this long")
    a = p.parse_args(argv)

    provider = _tracing(a.service, a.otlp)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    if a.netns:
        target = os.open(a.netns, os.O_RDONLY)
        _setns(target, a.netns)
        os.close(target)
    try:
        (_server if a.role == "server" else _client)(a)
    finally:
        _setns(home, "back home")  # flush from where the receiver is
        provider.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
