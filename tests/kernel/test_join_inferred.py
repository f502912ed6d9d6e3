"""The join without a cookie: an app span that carries only its 4-tuple (network.peer.*,
network.local.port: what an app without the kernelnet plugin reports) still gets the
kernel span of its own connection as a child, marked ``kernelnet.join=inferred``.

The server (namespace A) first serves a warm-up connection (the join buffers kernel
spans only once app spans arrive), then accepts one connection inside a SERVER span that has no
cookie, reads the request and aborts the connection (SO_LINGER 0): the kernel reports
``tcp.reset.sent`` on that socket while the span is open. The client (namespace B)
sends the request and sees the reset. The server exports its span to the collector's
OTLP receiver on loopback (the exporter's thread stays in the root namespace; the
main thread enters A: the lab app's trick).
"""

from __future__ import annotations

import re
import subprocess
import sys

from otel_kernelnet.lab.env import free_port
from tests.kernel.conftest import ROOT, stop_by_stdin, wait_for_store

SERVER = r"""
import os, socket, struct, sys, time
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from otel_kernelnet.lab.app import _setns
provider = TracerProvider(resource=Resource.create({"service.name": "no-plugin"}))
provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=sys.argv[1]), schedule_delay_millis=100))
tracer = provider.get_tracer("test")
home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
fd = os.open(sys.argv[2], os.O_RDONLY); _setns(fd, sys.argv[2])
ls = socket.socket(); ls.bind(("10.77.0.1", 9100)); ls.listen(4)
print("ready", flush=True)
conn, peer = ls.accept()   # warm-up: once its span reached the collector, the join is active
with tracer.start_as_current_span("GET /warmup", kind=trace.SpanKind.SERVER) as span:
    span.set_attributes({"network.peer.address": peer[0], "network.peer.port": peer[1], "network.local.port": 9100})
    conn.recv(100); conn.sendall(b"ok"); conn.close()
print("warm", flush=True)
conn, peer = ls.accept()
with tracer.start_as_current_span("GET /abort", kind=trace.SpanKind.SERVER) as span:
    span.set_attributes({"network.peer.address": peer[0], "network.peer.port": peer[1],
                         "network.local.address": "10.77.0.1", "network.local.port": 9100})
    conn.recv(100)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()          # abort: the kernel sends RST now, inside the span
    time.sleep(0.05)
    ctx = span.get_span_context()
print("%032x %016x %d" % (ctx.trace_id, ctx.span_id, peer[1]), flush=True)
_setns(home, "home")
provider.shutdown()
sys.stdin.read()
"""

CLIENT = r"""
import socket
c = socket.create_connection(("10.77.0.1", 9100), timeout=5)
c.sendall(b"GET / HTTP/1.1\r\n\r\n")
try:
    print(repr(c.recv(100)))
except ConnectionResetError:
    print("reset")
"""


def test_app_span_without_cookie_gets_its_kernel_span_by_4_tuple(veth, collector):
    port = free_port()
    c = collector(config={"receiver": {"http_endpoint": f"127.0.0.1:{port}", "grpc_endpoint": None},
                          "probes": {"lifecycle": {"enabled": False}, "softirq": {"enabled": False},
                                     "reclaim": {"enabled": False}, "netns_counters": {"enabled": False}},
                          "scope": {"netns": [f"/run/netns/{veth.a.name}", f"/run/netns/{veth.b.name}"]},
                          "status": {"interval_s": 0}})
    server = subprocess.Popen([sys.executable, "-c", SERVER, f"http://127.0.0.1:{port}/v1/traces",
                               f"/run/netns/{veth.a.name}"], cwd=ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "ready", server.stderr.read()
        assert veth.b.python(CLIENT, timeout=20).stdout.strip() == "b'ok'"
        assert server.stdout.readline().strip() == "warm"
        warm = wait_for_store(c.output, lambda sp: any(s["name"] == "GET /warmup" for s in sp), timeout=20)
        assert any(s["name"] == "GET /warmup" for s in warm), "the warm-up span never reached the collector"
        out = veth.b.python(CLIENT, timeout=20).stdout.strip()
        assert out == "reset", out
        trace_id, span_id, peer_port = server.stdout.readline().split()

        def joined(spans):
            return [s for s in spans if s["attributes"].get("kernelnet.kind") == "tcp.reset.sent"
                    and s["attributes"].get("network.peer.port") == int(peer_port) and s["parent_span_id"]]
        spans = wait_for_store(c.output, joined, timeout=30)
    finally:
        stop_by_stdin(server)
    assert c.stop() == 0, c.text()
    app = [s for s in spans if s["span_id"] == span_id]
    assert app and "kernelnet.socket.cookie" not in app[0]["attributes"], "the app span must have no cookie"
    got = joined(spans)
    assert len(got) == 1, [s["attributes"] for s in spans if s["name"] == "kernel.tcp"]
    k = got[0]
    assert (k["trace_id"], k["parent_span_id"]) == (trace_id, span_id)
    assert k["attributes"]["kernelnet.join"] == "inferred"
    assert k["attributes"]["network.local.port"] == 9100
    # the collector's own count says so too (the reset and the socket's last state change)
    m = re.search(r"join: (\d+) by cookie, (\d+) inferred", c.text())
    assert m and int(m.group(1)) == 0 and int(m.group(2)) >= 1, c.text()[-400:]
