"""The cookie plugin with real servers and clients on loopback and an in-memory exporter.

Each server records the cookie of the socket it served on (cookie_of, i.e. SO_COOKIE)
and each client the cookie of its connection: the spans must carry exactly those.
"""

from __future__ import annotations

import asyncio
import http.client
import http.server
import threading
from importlib.metadata import entry_points

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from otel_kernelnet.instrumentation import KernelnetInstrumentor, cookie_of, socket_cookie_scope, tag_span

COOKIE = "kernelnet.socket.cookie"


@pytest.fixture
def traced():
    exp = InMemorySpanExporter()
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(exp))
    inst = KernelnetInstrumentor()
    inst.instrument(tracer_provider=tp)
    try:
        yield tp, exp
    finally:
        inst.uninstrument()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list[int] = []

    def log_message(self, *a):
        pass

    def do_GET(self):
        Handler.seen.append(cookie_of(self.connection))
        body = b"ok"
        self.send_response(200 if self.path != "/fail" else 503)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def server():
    Handler.seen = []
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


def test_entry_point_is_registered():
    eps = entry_points(group="opentelemetry_instrumentor")
    [ep] = [e for e in eps if e.name == "kernelnet"]
    assert ep.load() is KernelnetInstrumentor


def test_cookie_of_is_so_cookie_and_stable():
    import socket
    with socket.socket() as s:
        c = cookie_of(s)
        assert isinstance(c, int) and c > 0 and cookie_of(s) == c == cookie_of(s.fileno())
    assert cookie_of(object()) is None


def test_http_server_and_client_keep_alive_each_request_its_own_span_with_the_cookie(traced, server):
    tp, exp = traced
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=10)
    statuses = []
    for path in ("/a", "/b", "/fail"):
        conn.request("GET", path)
        r = conn.getresponse()
        r.read()
        statuses.append(r.status)
    client_cookie = cookie_of(conn.sock)
    conn.close()
    server.shutdown()
    spans = exp.get_finished_spans()
    srv = [s for s in spans if s.kind == SpanKind.SERVER]
    cli = [s for s in spans if s.kind == SpanKind.CLIENT]
    assert statuses == [200, 200, 503]
    assert len(srv) == 3 and len(cli) == 3
    assert len(set(Handler.seen)) == 1  # keep-alive: one connection
    assert [s.attributes[COOKIE] for s in srv] == Handler.seen
    assert [s.attributes[COOKIE] for s in cli] == [client_cookie] * 3
    assert client_cookie != Handler.seen[0]
    assert [s.attributes["url.path"] for s in srv] == ["/a", "/b", "/fail"]
    assert [s.attributes["http.response.status_code"] for s in srv] == [200, 200, 503]
    # the client's context went over the wire: each server span is a child of its client span
    for c, s in zip(cli, srv):
        assert s.context.trace_id == c.context.trace_id and s.parent.span_id == c.context.span_id
    assert srv[0].attributes["network.local.port"] == server.server_address[1]
    # one thread serves the connection, request after request: the server spans are
    # disjoint, so a kernel span on this cookie overlaps at most one of them
    assert srv[0].end_time < srv[1].start_time < srv[1].end_time < srv[2].start_time


def test_requests_instrumentation_client_span_gets_the_cookie(traced, server):
    import requests
    from opentelemetry.instrumentation.requests import RequestsInstrumentor
    tp, exp = traced
    RequestsInstrumentor().instrument(tracer_provider=tp)
    try:
        with requests.Session() as sess:
            for _ in range(2):
                assert sess.get(f"http://127.0.0.1:{server.server_address[1]}/r", timeout=10).status_code == 200
    finally:
        RequestsInstrumentor().uninstrument()
    server.shutdown()
    spans = exp.get_finished_spans()
    cli = [s for s in spans if s.kind == SpanKind.CLIENT]
    srv = [s for s in spans if s.kind == SpanKind.SERVER]
    assert len(cli) == 2 and len(srv) == 2, [(s.name, s.kind) for s in spans]
    assert all(s.instrumentation_scope.name.startswith("opentelemetry.instrumentation.requests") for s in cli)
    cookies = {s.attributes[COOKIE] for s in cli}
    assert len(cookies) == 1 and cookies.pop() > 0  # one pooled connection
    assert [s.attributes[COOKIE] for s in srv] == Handler.seen


def test_socketserver_scope_stamps_server_spans_started_by_anyone(traced):
    tp, exp = traced
    import socket
    a, b = socket.socketpair()
    try:
        with socket_cookie_scope(a) as c:
            with tp.get_tracer("x").start_as_current_span("handler", kind=SpanKind.SERVER):
                pass
            with tp.get_tracer("x").start_as_current_span("internal"):
                pass
        with tp.get_tracer("x").start_as_current_span("manual", kind=SpanKind.CLIENT) as sp:
            assert tag_span(b, sp) == cookie_of(b)
    finally:
        a.close()
        b.close()
    by = {s.name: s for s in exp.get_finished_spans()}
    assert by["handler"].attributes[COOKIE] == c
    assert COOKIE not in by["internal"].attributes
    assert by["manual"].attributes[COOKIE] != c


def test_aiohttp_server_and_client_spans_get_their_cookies(traced):
    from aiohttp import ClientSession, web
    from opentelemetry.instrumentation.aiohttp_client import AioHttpClientInstrumentor
    from opentelemetry.instrumentation.aiohttp_server import AioHttpServerInstrumentor
    tp, exp = traced
    AioHttpServerInstrumentor().instrument(tracer_provider=tp)
    AioHttpClientInstrumentor().instrument(tracer_provider=tp)
    seen_srv: list[int] = []
    seen_cli: list[int] = []

    async def hello(request):
        seen_srv.append(cookie_of(request.transport.get_extra_info("socket")))
        return web.Response(text="hi")

    async def main():
        app = web.Application()
        app.router.add_get("/hi", hello)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        try:
            async with ClientSession() as sess:
                for _ in range(2):
                    async with sess.get(f"http://127.0.0.1:{port}/hi") as r:
                        assert await r.text() == "hi"
                        seen_cli.append(cookie_of(r.connection.transport.get_extra_info("socket"))
                                        if r.connection else None)
        finally:
            await runner.cleanup()

    try:
        asyncio.run(main())
    finally:
        AioHttpClientInstrumentor().uninstrument()
        AioHttpServerInstrumentor().uninstrument()
    spans = exp.get_finished_spans()
    srv = [s for s in spans if s.kind == SpanKind.SERVER]
    cli = [s for s in spans if s.kind == SpanKind.CLIENT]
    assert len(srv) == 2 and len(cli) == 2, [(s.name, s.kind) for s in spans]
    assert [s.attributes.get(COOKIE) for s in srv] == seen_srv and all(seen_srv)
    assert len({s.attributes.get(COOKIE) for s in cli}) == 1 and cli[0].attributes.get(COOKIE)
    assert cli[0].attributes[COOKIE] not in seen_srv
