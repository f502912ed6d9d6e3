"""The Python cookie plugin: ``kernelnet.socket.cookie`` on server and client spans.

``opentelemetry-instrument`` loads ``KernelnetInstrumentor`` through the
``opentelemetry_instrumentor`` entry point (name ``kernelnet``); in code, call
``KernelnetInstrumentor().instrument()`` after setting up the tracer provider.
The cookie is the socket's ``getsockopt(SOL_SOCKET, SO_COOKIE)``, the same number the
kernel's tracepoints report, so the collector's join puts kernel spans under the
request they happened during (docs/join.md, docs/instrumentation.md).

What it covers:

- ``socketserver`` (and so ``http.server``, ``wsgiref``): while a stream request
  handler runs, the connection's cookie is the *current cookie*; every SERVER span
  started meanwhile (by any instrumentation) gets it, through a span processor.
- ``http.server``: one SERVER span per request (``BaseHTTPRequestHandler`` has no
  upstream instrumentation), from the parsed request line to the end of the
  handler, with the W3C context of the request headers, semantic-convention HTTP
  and network attributes, and the cookie. On a keep-alive connection each request
  is its own span (the idle wait between requests is in none).
- TCP connects (``socket.socket.connect``/``connect_ex``): the cookie is assigned
  before the SYN, so connect-time kernel spans (SYN retransmits, connect latency)
  carry it (one getsockopt per connect).
- ``http.client`` (and what is built on it: ``urllib.request``, ``urllib3``,
  ``requests``): when a request's bytes go out, the current CLIENT span (from the
  urllib3/requests/urllib instrumentations) gets the connection's cookie; with no
  such span, the plugin makes one CLIENT span per request()/getresponse() pair.
- ``aiohttp``: server requests set the current cookie (so the aiohttp-server
  instrumentation's SERVER span gets it); client requests stamp the current CLIENT
  span (the aiohttp-client instrumentation's) with the connection's cookie.

For anything else: ``cookie_of(sock)``, ``tag_span(sock, span=None)`` and
``socket_cookie_scope(sock)`` (a context manager making the cookie current).
"""

from __future__ import annotations

import contextlib
import contextvars
import socket
import struct
import time
from typing import Any, Collection, Iterator

from opentelemetry import context as context_api
from opentelemetry import propagate, trace
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor
from opentelemetry.trace import SpanKind, Status, StatusCode

from .. import __version__
from ..semconv import COOKIE

__all__ = ["KernelnetInstrumentor", "cookie_of", "tag_span", "socket_cookie_scope", "current_cookie", "COOKIE"]

SO_COOKIE = getattr(socket, "SO_COOKIE", 57)  # Linux >= 4.13; 57 on every architecture
_current: contextvars.ContextVar[int | None] = contextvars.ContextVar("kernelnet_socket_cookie", default=None)
_enabled = False


def cookie_of(sock: Any) -> int | None:
    """The socket's SO_COOKIE (a u64, > 0), or None when it has none (closed, not a socket, not Linux).

    Accepts a ``socket.socket``, anything with ``fileno()``, or a file descriptor.
    The kernel assigns the cookie on first use and never changes it.
    """
    try:
        if isinstance(sock, int):
            s = socket.socket(fileno=sock)
            try:
                raw = s.getsockopt(socket.SOL_SOCKET, SO_COOKIE, 8)
            finally:
                s.detach()
        elif hasattr(sock, "getsockopt"):
            raw = sock.getsockopt(socket.SOL_SOCKET, SO_COOKIE, 8)
        else:
            return cookie_of(sock.fileno())
        c = struct.unpack("Q", raw)[0]
        return c or None
    except (OSError, ValueError, AttributeError, TypeError, struct.error):
        return None


def _as_attr(cookie: int) -> int:
    """OTel int attributes are signed 64-bit; a cookie >= 2**63 is stored as its two's complement
    (the collector reads it back as unsigned)."""
    return cookie - (1 << 64) if cookie >= 1 << 63 else cookie


def tag_span(sock: Any, span: Any = None) -> int | None:
    """Put ``sock``'s cookie on ``span`` (default: the current span); returns the cookie."""
    cookie = cookie_of(sock)
    if cookie is not None:
        span = span if span is not None else trace.get_current_span()
        if span.is_recording():
            span.set_attribute(COOKIE, _as_attr(cookie))
    return cookie


@contextlib.contextmanager
def socket_cookie_scope(sock_or_cookie: Any) -> Iterator[int | None]:
    """Make a connection's cookie current: SERVER spans started inside get it."""
    cookie = sock_or_cookie if isinstance(sock_or_cookie, int) and not hasattr(sock_or_cookie, "fileno") \
        else cookie_of(sock_or_cookie)
    token = _current.set(cookie)
    try:
        yield cookie
    finally:
        _current.reset(token)


def current_cookie() -> int | None:
    return _current.get()


class CookieSpanProcessor:
    """Stamps the current cookie on SERVER spans when they start."""

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        cookie = _current.get()
        if _enabled and cookie is not None and getattr(span, "kind", None) == SpanKind.SERVER:
            span.set_attribute(COOKIE, _as_attr(cookie))

    def on_end(self, span: Any) -> None:
        pass

    def _on_ending(self, span: Any) -> None:
        pass

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def _stamp_client(sock: Any) -> None:
    span = trace.get_current_span()
    if (span.is_recording() and getattr(span, "kind", None) == SpanKind.CLIENT
            and COOKIE not in (getattr(span, "attributes", None) or {})):
        tag_span(sock, span)


def _peer(sock: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    try:
        la, lp = sock.getsockname()[:2]
        out.update({"network.local.address": la, "network.local.port": lp})
        pa, pp = sock.getpeername()[:2]
        out.update({"network.peer.address": pa, "network.peer.port": pp})
    except (OSError, ValueError, TypeError, AttributeError):
        pass
    return out


# --- the patches ------------------------------------------------------------------------
class _Patches:
    def __init__(self) -> None:
        self.saved: list[tuple[Any, str, Any]] = []

    _INHERITED = object()

    def patch(self, owner: Any, name: str, make: Any) -> None:
        own = owner.__dict__.get(name, self._INHERITED)  # inherited (e.g. from _socket.socket): delete on undo
        self.saved.append((owner, name, own))
        setattr(owner, name, make(getattr(owner, name)))

    def undo(self) -> None:
        while self.saved:
            owner, name, own = self.saved.pop()
            if own is self._INHERITED:
                delattr(owner, name)
            else:
                setattr(owner, name, own)


def _patch_socketserver(p: _Patches) -> None:
    import socketserver

    def make(orig):
        def __init__(self, request, client_address, server):
            cookie = cookie_of(request) if isinstance(request, socket.socket) and request.type == socket.SOCK_STREAM else None
            token = _current.set(cookie)
            try:
                orig(self, request, client_address, server)
            finally:
                _current.reset(token)
        return __init__
    p.patch(socketserver.BaseRequestHandler, "__init__", make)


def _patch_socket_connect(p: _Patches) -> None:
    """Assign the cookie before a TCP connect, so the kernel's connect spans (SYN
    retransmits, connect latency) already carry it: the kernel only numbers a socket
    when asked, and a TCP tracepoint reading it earlier would see 0."""
    def make(orig):
        def connect(self, address):
            if _enabled and self.family in (socket.AF_INET, socket.AF_INET6) and self.type == socket.SOCK_STREAM:
                cookie_of(self)
            return orig(self, address)
        return connect
    p.patch(socket.socket, "connect", make)
    p.patch(socket.socket, "connect_ex", make)


def _patch_http_server(p: _Patches, tracer: Any) -> None:
    import http.server as hs

    def make_parse(orig):
        def parse_request(self):
            ok = orig(self)
            if ok and _enabled and getattr(self, "_kn_span", None) is None:
                sock = self.connection
                attrs: dict[str, Any] = {"http.request.method": self.command, "url.scheme": "http",
                                         "url.path": self.path.split("?")[0],
                                         "network.protocol.version": self.request_version.split("/")[-1]}
                addr = _peer(sock)
                attrs.update(addr)
                if "network.peer.address" in addr:
                    attrs["client.address"] = addr["network.peer.address"]
                    attrs["client.port"] = addr["network.peer.port"]
                if "network.local.port" in addr:
                    attrs["server.port"] = addr["network.local.port"]
                cookie = cookie_of(sock)
                if cookie is not None:
                    attrs[COOKIE] = _as_attr(cookie)
                parent = propagate.extract(self.headers)
                span = tracer.start_span(self.command, context=parent, kind=SpanKind.SERVER, attributes=attrs,
                                         start_time=getattr(self, "_kn_t0", None))
                self._kn_span = span
                self._kn_token = context_api.attach(trace.set_span_in_context(span, parent))
            return ok
        return parse_request

    def make_send_response(orig):
        def send_response(self, code, message=None):
            span = getattr(self, "_kn_span", None)
            if span is not None:
                span.set_attribute("http.response.status_code", int(code))
                if int(code) >= 500:
                    span.set_status(Status(StatusCode.ERROR))
            return orig(self, code, message)
        return send_response

    def make_handle_one(orig):
        def handle_one_request(self):
            self._kn_span = None
            # the span starts when the request's first bytes are readable (peek blocks
            # through the idle keep-alive wait without consuming): the packets read
            # before the request line was parsed belong to this request
            self._kn_t0 = None
            peek = getattr(self.rfile, "peek", None)
            if _enabled and peek is not None:
                try:
                    peek(1)
                    self._kn_t0 = time.time_ns()
                except (OSError, ValueError):
                    pass  # timeout, reset, closed: the original reports it its own way
            try:
                return orig(self)
            finally:
                span, self._kn_span = getattr(self, "_kn_span", None), None
                if span is not None:
                    token = getattr(self, "_kn_token", None)
                    if token is not None:
                        context_api.detach(token)
                        self._kn_token = None
                    span.end()
        return handle_one_request

    p.patch(hs.BaseHTTPRequestHandler, "parse_request", make_parse)
    p.patch(hs.BaseHTTPRequestHandler, "send_response", make_send_response)
    p.patch(hs.BaseHTTPRequestHandler, "handle_one_request", make_handle_one)


def _patch_http_client(p: _Patches, tracer: Any) -> None:
    import http.client as hc

    try:
        from opentelemetry.instrumentation.utils import is_http_instrumentation_enabled
    except ImportError:  # pragma: no cover - older instrumentation package
        def is_http_instrumentation_enabled() -> bool:
            return True

    def make_send(orig):
        def send(self, data):
            r = orig(self, data)
            if _enabled and self.sock is not None:
                _stamp_client(self.sock)
            return r
        return send

    def make_request(orig):
        def request(self, method, url, body=None, headers=None, **kw):
            headers = dict(headers or {})
            _end_own(self, None)
            cur = trace.get_current_span()
            if _enabled and is_http_instrumentation_enabled() and not (
                    cur.is_recording() and getattr(cur, "kind", None) == SpanKind.CLIENT):
                attrs = {"http.request.method": method, "server.address": self.host, "server.port": self.port,
                         "url.full": f"http://{self.host}:{self.port}{url}" if url.startswith("/") else url}
                span = tracer.start_span(method, kind=SpanKind.CLIENT, attributes=attrs)
                ctx = trace.set_span_in_context(span)
                propagate.inject(headers, context=ctx)
                self._kn_span = span
                token = context_api.attach(ctx)
                try:
                    return orig(self, method, url, body, headers, **kw)
                except BaseException as e:
                    _end_own(self, e)
                    raise
                finally:
                    context_api.detach(token)
            return orig(self, method, url, body, headers, **kw)
        return request

    def _end_own(conn, error, status=None):
        span = getattr(conn, "_kn_span", None)
        if span is None:
            return
        conn._kn_span = None
        if status is not None:
            span.set_attribute("http.response.status_code", status)
            if status >= 500:
                span.set_status(Status(StatusCode.ERROR))
        if error is not None:
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, type(error).__name__))
        span.end()

    def make_getresponse(orig):
        def getresponse(self):
            try:
                resp = orig(self)
            except BaseException as e:
                _end_own(self, e)
                raise
            _end_own(self, None, resp.status)
            return resp
        return getresponse

    p.patch(hc.HTTPConnection, "send", make_send)
    p.patch(hc.HTTPConnection, "request", make_request)
    p.patch(hc.HTTPConnection, "getresponse", make_getresponse)


def _patch_aiohttp(p: _Patches) -> None:
    try:
        from aiohttp import client_reqrep, web_app
    except ImportError:
        return

    def make_handle(orig):
        async def _handle(self, request):
            sock = request.transport.get_extra_info("socket") if request.transport is not None else None
            token = _current.set(cookie_of(sock) if sock is not None else None)
            try:
                return await orig(self, request)
            finally:
                _current.reset(token)
        return _handle

    def make_send(orig):
        async def send(self, conn, *a, **kw):
            tr = getattr(conn, "transport", None)
            sock = tr.get_extra_info("socket") if tr is not None else None
            if _enabled and sock is not None:
                _stamp_client(sock)
            return await orig(self, conn, *a, **kw)
        return send

    p.patch(web_app.Application, "_handle", make_handle)
    p.patch(client_reqrep.ClientRequest, "send", make_send)


class KernelnetInstrumentor(BaseInstrumentor):
    """Stamps ``kernelnet.socket.cookie`` on server and client spans (see the module doc)."""

    _patches: _Patches | None = None

    def instrumentation_dependencies(self) -> Collection[str]:
        return ()  # standard library; aiohttp is patched only when installed

    def _instrument(self, **kwargs: Any) -> None:
        global _enabled
        provider = kwargs.get("tracer_provider") or trace.get_tracer_provider()
        tracer = trace.get_tracer("otel_kernelnet.instrumentation", __version__, tracer_provider=provider)
        if hasattr(provider, "add_span_processor") and not getattr(provider, "_kernelnet_cookie_processor", False):
            provider.add_span_processor(CookieSpanProcessor())
            provider._kernelnet_cookie_processor = True  # once per provider, even if instrumented again
        p = _Patches()
        _patch_socket_connect(p)
        _patch_socketserver(p)
        _patch_http_server(p, tracer)
        _patch_http_client(p, tracer)
        _patch_aiohttp(p)
        type(self)._patches = p
        _enabled = True

    def _uninstrument(self, **kwargs: Any) -> None:
        global _enabled
        _enabled = False  # the processor stays registered (the SDK cannot remove one) but idles
        if type(self)._patches is not None:
            type(self)._patches.undo()
            type(self)._patches = None
