"""The span model and the pure mapping from decoded kernel events to spans.

``KernelSpan`` is a plain value: ids, kernel start/end times (epoch ns), attributes,
events, links and status. Mapping functions take a decoded event plus everything
that varies (the clock offset, an id source, name tables) as arguments, so a test can
compare their complete output with fixed ids and timestamps. Exporters turn
``KernelSpan`` into OTLP (JSON Lines or protobuf); nothing here imports the OTel SDK.
"""

from __future__ import annotations

import ipaddress
import os
import random
import socket
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from . import semconv as sc

# OTLP enum values (opentelemetry.proto.trace.v1): kept numeric, as OTLP JSON wants them
SPAN_KIND_INTERNAL = 1
STATUS_UNSET, STATUS_OK, STATUS_ERROR = 0, 1, 2

AttrValue = str | int | float | bool


@dataclass(slots=True)
class SpanEvent:
    time_ns: int
    name: str
    attributes: dict[str, AttrValue] = field(default_factory=dict)


@dataclass(slots=True)
class SpanLink:
    trace_id: bytes
    span_id: bytes
    attributes: dict[str, AttrValue] = field(default_factory=dict)


@dataclass(slots=True)
class KernelSpan:
    name: str
    trace_id: bytes  # 16 bytes
    span_id: bytes  # 8 bytes
    start_ns: int  # Unix epoch ns
    end_ns: int
    attributes: dict[str, AttrValue]
    parent_span_id: bytes = b""
    kind: int = SPAN_KIND_INTERNAL
    status_code: int = STATUS_UNSET
    status_message: str = ""
    events: list[SpanEvent] = field(default_factory=list)
    links: list[SpanLink] = field(default_factory=list)


class IdSource(Protocol):
    def trace_id(self) -> bytes: ...
    def span_id(self) -> bytes: ...


class RandomIds:
    """W3C-valid random ids (never all zero) from a PRNG seeded from ``os.urandom``.

    Two ``os.urandom`` calls per span cost ~2 us; ``getrandbits`` of a Mersenne
    Twister seeded with 32 bytes from ``os.urandom`` costs ~0.1 us (what the
    OpenTelemetry SDK's own ``RandomIdGenerator`` uses too). Ids need to be unique,
    not secret. Fork-safe: every instance reseeds from ``os.urandom`` in a forked
    child (``os.register_at_fork``), so parent and child never share a sequence.
    """

    def __init__(self) -> None:
        self.reseed()
        _LIVE_IDS.add(self)

    def reseed(self) -> None:
        self._bits = random.Random(os.urandom(32)).getrandbits

    def trace_id(self) -> bytes:
        n = self._bits(128)
        while not n:
            n = self._bits(128)
        return n.to_bytes(16, "big")

    def span_id(self) -> bytes:
        n = self._bits(64)
        while not n:
            n = self._bits(64)
        return n.to_bytes(8, "big")


_LIVE_IDS: "weakref.WeakSet[RandomIds]" = weakref.WeakSet()


def _reseed_after_fork() -> None:
    for ids in list(_LIVE_IDS):
        ids.reseed()


os.register_at_fork(after_in_child=_reseed_after_fork)


class CountingIds:
    """Deterministic ids for tests: trace 1, 2, ... and span 1, 2, ..."""

    def __init__(self) -> None:
        self.n = 0

    def trace_id(self) -> bytes:
        self.n += 1
        return self.n.to_bytes(16, "big")

    def span_id(self) -> bytes:
        return self.n.to_bytes(8, "big")


_IP_TEXT: tuple[dict[bytes, str], dict[bytes, str]] = ({}, {})  # v4, v6: packed bytes -> text
IP_TEXT_CACHE_MAX = 4096
_V4_IN_V6 = bytes(10)  # ::a.b.c.d and ::ffff:a.b.c.d: the one place inet_ntop and ipaddress differ


def ip_text(raw: bytes, v6: bool) -> str:
    """Text form of a packed address (IPv4 in the first 4 bytes).

    The text ``ipaddress`` gives (``::ffff:a00:1`` for an IPv4-mapped address), made
    with ``socket.inet_ntop`` (4x cheaper) and cached (addresses repeat; bounded).
    """
    cache = _IP_TEXT[v6]
    s = cache.get(raw)
    if s is None:
        if len(cache) >= IP_TEXT_CACHE_MAX:
            cache.clear()
        if not v6:
            s = socket.inet_ntop(socket.AF_INET, raw[:4])
        elif raw[:10] == _V4_IN_V6:
            s = str(ipaddress.IPv6Address(raw[:16]))
        else:
            s = socket.inet_ntop(socket.AF_INET6, raw[:16])
        cache[raw] = s
    return s


L4_NAMES = {6: "tcp", 17: "udp", 132: "sctp", 1: "icmp", 58: "icmp"}  # IANA protocol numbers


@dataclass(slots=True)
class DropEvent:
    """A decoded skb:kfree_skb record (see bpf/drop.h for each field's meaning).

    A slotted dataclass rather than a frozen one: building a frozen dataclass of 24
    fields costs ~2.2 us (one ``object.__setattr__`` per field), a slotted one ~0.25
    us, and a drop probe builds one per dropped packet. Treat it as a value anyway.
    """
    ts_ns: int
    location: int
    skbaddr: int
    sk_cookie: int
    reason: int
    netns: int
    pid: int
    tid: int
    cpu: int
    ifindex: int
    len: int
    protocol: int
    sport: int
    dport: int
    l4proto: int
    has_sk: bool
    has_addr: bool
    ipv6: bool
    has_dev: bool
    owner_sk: bool
    saddr: bytes
    daddr: bytes
    comm: str
    ifname: str


def drop_span(ev: DropEvent, *, to_epoch_ns: Callable[[int], int], ids: IdSource,
              reason_name: Callable[[int], str], symbol: Callable[[int], str]) -> KernelSpan:
    """One drop -> one zero-length span with status ERROR.

    ``reason_name`` names the kernel's drop reason (from the running kernel's tables,
    ``unknown:<n>`` otherwise); ``symbol`` turns the freeing address into symbol+offset.
    """
    reason = reason_name(ev.reason)
    t = to_epoch_ns(ev.ts_ns)
    attrs: dict[str, Any] = {
        sc.KIND: sc.KIND_DROP,
        "kernelnet.drop.reason": reason,
        "kernelnet.drop.reason_code": ev.reason,
        "kernelnet.drop.location": symbol(ev.location),
        "kernelnet.skb.protocol": ev.protocol,
        "kernelnet.skb.len": ev.len,
        "kernelnet.skb.has_socket": ev.has_sk,
        "kernelnet.skb.socket_role": "receiver" if ev.has_sk else ("owner" if ev.owner_sk else "none"),
        "kernelnet.cpu": ev.cpu,
        "process.pid": ev.pid,
        "thread.id": ev.tid,
        "process.command": ev.comm,
    }
    if ev.netns:
        attrs["kernelnet.netns"] = ev.netns
    if ev.has_dev:
        attrs["network.interface.name"] = ev.ifname
    if ev.sk_cookie:
        attrs[sc.COOKIE] = ev.sk_cookie
    if ev.has_addr:
        attrs["network.type"] = "ipv6" if ev.ipv6 else "ipv4"
        attrs["source.address"] = ip_text(ev.saddr, ev.ipv6)
        attrs["destination.address"] = ip_text(ev.daddr, ev.ipv6)
        transport = L4_NAMES.get(ev.l4proto)
        if transport:
            attrs["network.transport"] = transport
        if ev.l4proto in (6, 17, 132):
            attrs["source.port"] = ev.sport
            attrs["destination.port"] = ev.dport
    return KernelSpan(
        name=sc.SPAN_DROP,
        trace_id=ids.trace_id(),
        span_id=ids.span_id(),
        start_ns=t,
        end_ns=t,
        attributes=attrs,
        status_code=STATUS_ERROR,
        status_message=f"dropped: {reason}",
    )
