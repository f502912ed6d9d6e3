"""End to end: a real instrumented app, a kernel cause, the joined trace at a real OTLP receiver.

Topology (everything removed with the namespaces):

    netns A (server)  10.N.1.1 <--veth--> 10.N.1.2  netns B (client)
    netns A 10.N.2.2 <--veth--> 10.N.2.1 root ns: collector OTLP/HTTP receiver
    netns B 10.N.3.2 <--veth--> 10.N.3.1 root ns: collector OTLP/gRPC receiver

Both apps run under ``opentelemetry-instrument`` with the kernelnet plugin (found
through its entry point): the server is ``http.server`` (HTTP/1.1 keep-alive), the
client ``http.client``. The collector runs in the root namespace (BPF sees every
namespace), receives both apps' spans, forwards them and its kernel spans to the real
Rotel relay, which hands them to the in-process ``otlp_sink``; the test reads the
trace there.

Workload: a warm-up connection (its spans make the join active), then ONE keep-alive
connection with four requests: /ok, /ok, /ok, /reset. The connect of that connection
happens inside request 1; on /reset the server aborts the connection (SO_LINGER 0)
inside its handler, so the kernel reports ``tcp.reset.sent`` on the server's cookie
during server request 4 and ``tcp.reset.received`` on the client's cookie while
client request 4 waits for its response. Expected parents: connect -> client
request 1, reset received -> client request 4, reset sent -> server request 4, and
nothing under requests 2 and 3.
"""

from __future__ import annotations

import json
import os
import random
import select
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.kernel.conftest import Netns, sh, stop_by_stdin

INSTRUMENT = str(Path(sys.executable).parent / "opentelemetry-instrument")

SERVER = r"""
import http.server, json, socket, struct, sys, threading
from otel_kernelnet.instrumentation import cookie_of
seen = []
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_GET(self):
        seen.append({"path": self.path, "cookie": cookie_of(self.connection)})
        print(json.dumps(seen[-1]), flush=True)
        if self.path == "/reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.rfile.close()
            self.connection.close()  # last reference: abort, the kernel sends RST now
            return
        self.send_response(200); self.send_header("Content-Length", "2"); self.end_headers(); self.wfile.write(b"ok")
srv = http.server.ThreadingHTTPServer((sys.argv[1], 8080), H)
threading.Thread(target=srv.serve_forever, daemon=True).start()
print("ready", flush=True)
sys.stdin.read()  # the test closes stdin to stop us
srv.shutdown()
"""

CLIENT = r"""
import http.client, json, sys
from otel_kernelnet.instrumentation import cookie_of
paths = sys.argv[2].split(",")
conn = http.client.HTTPConnection(sys.argv[1], 8080, timeout=10)
out = {"results": []}
for p in paths:
    try:
        conn.request("GET", p)
        r = conn.getresponse(); r.read()
        out["results"].append(r.status)
    except (ConnectionResetError, http.client.RemoteDisconnected) as e:
        out["results"].append(type(e).__name__)
    if "cookie" not in out and conn.sock is not None:
        out["cookie"] = cookie_of(conn.sock)
print(json.dumps(out), flush=True)
"""


def app_env(service: str, endpoint: str, protocol: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update({
        "OTEL_SERVICE_NAME": service, "OTEL_TRACES_EXPORTER": "otlp", "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": endpoint,
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": protocol, "OTEL_BSP_SCHEDULE_DELAY": "100",
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    })
    return env


def veth(ns_a: str, a_ip: str, ns_b: str | None, b_ip: str, tag: str) -> None:
    """A veth pair, end a in netns ns_a, end b in ns_b (None: the root namespace), /24 each."""
    a, b = f"kn{tag}a", f"kn{tag}b"
    sh("ip", "link", "add", a, "netns", ns_a, "type", "veth", "peer", "name", b,
       *(["netns", ns_b] if ns_b else []))
    sh("ip", "netns", "exec", ns_a, "ip", "addr", "add", f"{a_ip}/24", "dev", a)
    sh("ip", "netns", "exec", ns_a, "ip", "link", "set", a, "up")
    pre = ["ip", "netns", "exec", ns_b] if ns_b else []
    sh(*pre, "ip", "addr", "add", f"{b_ip}/24", "dev", b)
    sh(*pre, "ip", "link", "set", b, "up")


def free_port(ip: str) -> int:
    with socket.socket() as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


class Lines:
    """Lines of a child's stdout read from the raw pipe (no hidden buffer under select)."""

    def __init__(self, proc: subprocess.Popen):
        self.proc, self.buf = proc, b""

    def next(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            r, _, _ = select.select([self.proc.stdout], [], [], max(0.0, left))
            if not r:
                raise AssertionError(f"no output from pid {self.proc.pid} within {timeout} s")
            chunk = os.read(self.proc.stdout.fileno(), 4096)
            if not chunk:
                raise AssertionError(f"pid {self.proc.pid} closed its output: {self.proc.stderr.read()!r}")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode()


@pytest.fixture
def topology():
    tag = uuid.uuid4().hex[:6]
    n = random.randint(100, 250)
    a, b = Netns(f"kn-{tag}-srv"), Netns(f"kn-{tag}-cli")
    try:
        veth(a.name, f"10.{n}.1.1", b.name, f"10.{n}.1.2", tag + "x")
        veth(a.name, f"10.{n}.2.2", None, f"10.{n}.2.1", tag + "y")
        veth(b.name, f"10.{n}.3.2", None, f"10.{n}.3.1", tag + "z")
        yield {"srv": a, "cli": b, "server_ip": f"10.{n}.1.1", "http_rx": f"10.{n}.2.1", "grpc_rx": f"10.{n}.3.1"}
    finally:
        a.delete()
        b.delete()


def test_kernel_spans_join_the_request_they_happened_in(topology, collector, rotel_relay, otlp_sink):  # noqa: F811
    t = topology
    http_port, grpc_port = free_port(t["http_rx"]), free_port(t["grpc_rx"])
    cfg = {"receiver": {"http_endpoint": f"{t['http_rx']}:{http_port}", "grpc_endpoint": f"{t['grpc_rx']}:{grpc_port}"},
           "join": {"kernel_buffer_ms": 30000, "app_ttl_ms": 60000}, "status": {"interval_s": 0},
           "export": {"otlp": {"protocol": "grpc"}}}
    c = collector("--otlp-endpoint", rotel_relay.grpc_endpoint, config=cfg)
    assert "receiving application traces" in c.text(), c.text()

    server = subprocess.Popen(
        ["ip", "netns", "exec", t["srv"].name, INSTRUMENT, sys.executable, "-c", SERVER, t["server_ip"]],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=app_env("shop", f"http://{t['http_rx']}:{http_port}/v1/traces", "http/protobuf"))
    try:
        out = Lines(server)
        assert out.next(30).strip() == "ready"

        def client(paths: str) -> dict:
            r = subprocess.run(["ip", "netns", "exec", t["cli"].name, INSTRUMENT, sys.executable, "-c", CLIENT,
                                t["server_ip"], paths], capture_output=True, text=True, timeout=60,
                               env=app_env("shopper", f"http://{t['grpc_rx']}:{grpc_port}", "grpc"))
            assert r.returncode == 0, r.stdout + r.stderr
            return json.loads(r.stdout.strip().splitlines()[-1])

        # warm-up: once its spans went through the collector, the join is active
        warm = client("/ok")
        assert warm["results"] == [200]
        try:
            otlp_sink.wait_for(lambda spans: any(s["attributes"].get("kernelnet.socket.cookie") == warm["cookie"]
                                                 for s in spans), timeout=30)
        except TimeoutError as e:
            raise AssertionError(f"{e}\ncollector:\n{c.text()}\nrelay:\n{rotel_relay.last_log[-3000:]}") from None

        main = client("/ok,/ok,/ok,/reset")
        assert main["results"] == [200, 200, 200, "ConnectionResetError"], main
        cc = main["cookie"]
        served = [json.loads(out.next(10)) for _ in range(5)]
        sc = served[-1]["cookie"]
        assert [x["path"] for x in served[1:]] == ["/ok", "/ok", "/ok", "/reset"]
        assert {x["cookie"] for x in served[1:]} == {sc}  # keep-alive: one server socket

        def ready(spans):
            kinds = {(s["attributes"].get("kernelnet.kind"), s["attributes"].get("kernelnet.socket.cookie"))
                     for s in spans if s["name"] == "kernel.tcp" and s["parent_span_id"]}
            apps = [s for s in spans if s["attributes"].get("kernelnet.socket.cookie") in (cc, sc)
                    and not s["name"].startswith("kernel.")]
            return {("tcp.reset.received", cc), ("tcp.reset.sent", sc), ("tcp.connect", cc)} <= kinds and len(apps) >= 8
        try:
            spans = otlp_sink.wait_for(ready, timeout=60)
        except TimeoutError as e:
            mine = [(s["name"], s["attributes"].get("kernelnet.kind"), s["attributes"].get("kernelnet.socket.cookie"),
                     s["parent_span_id"], s["span_id"], s["start_ns"], s["end_ns"])
                    for s in otlp_sink.spans() if s["attributes"].get("kernelnet.socket.cookie") in (cc, sc)]
            raise AssertionError(f"{e}\nspans on the two cookies: {mine}\ncollector:\n{c.text()}") from None
    finally:
        stop_by_stdin(server)
        assert c.stop() == 0, c.text()

    def app_spans(cookie, service):
        out = [s for s in spans if s["resource"].get("service.name") == service
               and s["attributes"].get("kernelnet.socket.cookie") == cookie and not s["name"].startswith("kernel.")]
        return sorted(out, key=lambda s: s["start_ns"])

    cli_spans, srv_spans = app_spans(cc, "shopper"), app_spans(sc, "shop")
    assert [s["kind"] for s in cli_spans] == [3] * 4 and [s["kind"] for s in srv_spans] == [2] * 4
    # forwarded unchanged: the server span is the child of the client span the request carried
    for cs, ss in zip(cli_spans, srv_spans):
        assert ss["trace_id"] == cs["trace_id"] and ss["parent_span_id"] == cs["span_id"]

    kernel = [s for s in spans if s["name"] == "kernel.tcp" and s["resource"].get("service.name") == "otel-kernelnet"
              and s["attributes"].get("kernelnet.socket.cookie") in (cc, sc)]

    def one(kind, cookie):
        found = [s for s in kernel if s["attributes"]["kernelnet.kind"] == kind
                 and s["attributes"]["kernelnet.socket.cookie"] == cookie]
        assert len(found) == 1, (kind, found)
        return found[0]

    def assert_child(k, parent):
        assert (k["trace_id"], k["parent_span_id"]) == (parent["trace_id"], parent["span_id"]), (k, parent)
        assert k["attributes"]["kernelnet.join"] == "cookie"

    assert_child(one("tcp.connect", cc), cli_spans[0])
    assert_child(one("tcp.reset.received", cc), cli_spans[3])
    assert_child(one("tcp.reset.sent", sc), srv_spans[3])
    # keep-alive: every kernel span on the two sockets (lifecycle, TCP) is under the
    # request of its own socket that it overlaps, not under the first one
    on_sockets = [s for s in spans if s["name"].startswith("kernel.") and s["resource"].get("service.name") == "otel-kernelnet"
                  and s["attributes"].get("kernelnet.socket.cookie") in (cc, sc)]
    # (docs/join.md: a strictly overlapping request first, the innermost of them: latest
    # start, then earliest end; only when none overlaps, the nearest within join.slack_us.
    # A keep-alive request can start within the slack of a span that overlapped the one
    # before it: that span stays with the one it overlapped.)
    slack = 1_000_000  # join.slack_us default
    for k in on_sockets:
        mine = cli_spans if k["attributes"]["kernelnet.socket.cookie"] == cc else srv_spans
        strict = [a for a in mine if a["start_ns"] <= k["end_ns"] and a["end_ns"] >= k["start_ns"]]
        near = [a for a in mine if a["start_ns"] - slack <= k["end_ns"] and a["end_ns"] + slack >= k["start_ns"]]
        if strict:
            want = max(strict, key=lambda a: (a["start_ns"], -a["end_ns"]))
        elif near:
            want = min(near, key=lambda a: max(a["start_ns"] - k["end_ns"], k["start_ns"] - a["end_ns"]))
        else:
            assert k["parent_span_id"] is None, k
            continue
        assert k["parent_span_id"] == want["span_id"] and k["trace_id"] == want["trace_id"], (k, strict, near)
    under = {s["parent_span_id"] for s in on_sockets}
    assert under & {cli_spans[0]["span_id"]} and under & {cli_spans[3]["span_id"]} and under & {srv_spans[3]["span_id"]}
    assert "join: " in c.text() and "by cookie" in c.text()
