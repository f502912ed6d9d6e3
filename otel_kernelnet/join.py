"""The join: kernel spans become children of the application spans they happened under.

Application spans reach the collector through the OTLP receiver; those carrying
``kernelnet.socket.cookie`` (the SO_COOKIE of the socket the request used) are indexed
by cookie and time range. Those without a cookie but with the semantic-convention
network attributes (``network.peer.address``/``network.peer.port``, and
``network.local.port`` or, on a server span, ``server.port``) are indexed by that
tuple instead, and whatever joins through it is marked ``kernelnet.join=inferred``.

A kernel span on an indexed socket whose time overlaps an app span becomes its child:
same trace id, parent span id = the app span, ``kernelnet.join=cookie`` (or
``inferred``). Overlap is interval overlap, so a packet that arrived just before the
handler started and was read during it counts. When several app spans overlap (a
server span and a framework span inside it, both stamped), the innermost (the latest
start, then the earliest end) is the parent and the others become links. Spans that
strictly overlap are preferred; only when none does, an app span within
``slack_ns`` of the kernel span is taken (clock conversion is not exact).

Timing: an app span reaches us only after it ENDS (plus the SDK's batch delay),
while kernel spans arrive within milliseconds. So a kernel span on a socket (it has a
cookie or a 4-tuple) that matches nothing yet is buffered per key for
``buffer_ttl_ns``; when app spans arrive, the buffered spans of their keys are
resolved; when the TTL passes they are exported unjoined. App spans stay indexed for
``app_ttl_ns`` after they end, for late kernel spans. Both stores are bounded: when
the buffer is full its oldest span is exported unjoined at once (``buffer_shed``);
when the index is full its oldest app span is forgotten (``index_shed``). Nothing is
dropped: every kernel span given to ``add_kernel`` leaves through ``emit`` exactly
once (``flush`` at shutdown releases the rest).

The buffer is used only while the join is *active*: an application has sent a span
with a cookie or 4-tuple within ``app_ttl_ns``. On a node where no instrumented app
talks to the receiver, kernel spans are exported at once (so the first request of a
freshly started app may see its kernel spans exported unjoined).

Watch list: when the first app span of a cookie is indexed, ``on_watch(cookie)`` is
queued; when its last one expires, ``on_unwatch(cookie)``. They run from ``tick()``
(the collector's loop thread), never from a receiver thread.

Thread safety: ``add_app_spans`` (receiver threads), ``add_kernel`` and ``tick`` (the
collector loop) may run concurrently; one lock guards the state and ``emit`` is
called outside it.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from . import semconv as sc
from .spans import KernelSpan, SpanLink

TupleKey = tuple[str, int, int]  # (peer address, peer port, local port)

JOIN_COOKIE = "cookie"
JOIN_INFERRED = "inferred"


@dataclass(frozen=True)
class AppSpan:
    """What the join keeps of one application span."""
    trace_id: bytes
    span_id: bytes
    start_ns: int
    end_ns: int
    cookie: int | None = None
    tuple_key: TupleKey | None = None
    name: str = ""


@dataclass
class JoinStats:
    app_spans: int = 0  # app spans indexed
    app_without_key: int = 0  # app spans with neither a cookie nor a 4-tuple (not indexed)
    kernel_spans: int = 0  # kernel spans seen
    joined_cookie: int = 0  # kernel spans given an app parent through the cookie
    joined_inferred: int = 0  # ... through the 4-tuple
    unjoined: int = 0  # kernel spans exported without a parent (no key, or no match before the TTL)
    buffered: int = 0  # kernel spans that waited in the buffer at some point
    buffer_shed: int = 0  # buffer full: the oldest span exported unjoined early
    index_shed: int = 0  # index full: the oldest app span forgotten early
    links: int = 0  # links added to other overlapping app spans

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def kernel_keys(span: KernelSpan) -> tuple[int | None, TupleKey | None]:
    """The socket a kernel span is about: (cookie, (peer addr, peer port, local port)).

    TCP spans carry the socket's own view (``network.local.*``/``network.peer.*``);
    packet spans (drop, skb lifecycle) carry ``source.*``/``destination.*`` of a
    received packet, so the peer is the source and the local side the destination.
    """
    a = span.attributes
    cookie = a.get(sc.COOKIE)
    cookie = cookie if isinstance(cookie, int) and not isinstance(cookie, bool) and cookie > 0 else None
    tup: TupleKey | None = None
    if "network.peer.address" in a and "network.peer.port" in a and "network.local.port" in a:
        tup = (str(a["network.peer.address"]), int(a["network.peer.port"]), int(a["network.local.port"]))
    elif "source.address" in a and "source.port" in a and "destination.port" in a:
        tup = (str(a["source.address"]), int(a["source.port"]), int(a["destination.port"]))
    return cookie, tup


class _Index:
    """App spans per key, sorted by start, with an LRU-ish global age order for eviction."""

    def __init__(self) -> None:
        self.by_key: dict[Any, list[tuple[int, int, AppSpan]]] = {}  # key -> sorted [(start, seq, span)]
        self.order: deque[tuple[int, Any, int, AppSpan]] = deque()  # (expires_ns, key, seq, span), add order

    def add(self, key: Any, span: AppSpan, seq: int, expires_ns: int) -> bool:
        """Index a span; True when the key is new."""
        lst = self.by_key.get(key)
        new = lst is None
        if new:
            lst = self.by_key[key] = []
        bisect.insort(lst, (span.start_ns, seq, span))
        self.order.append((expires_ns, key, seq, span))
        return new

    def remove(self, key: Any, seq: int, span: AppSpan) -> bool:
        """Forget one span; True when its key has no span left."""
        lst = self.by_key.get(key)
        if lst is None:
            return False
        try:
            lst.remove((span.start_ns, seq, span))
        except ValueError:
            return False
        if not lst:
            del self.by_key[key]
            return True
        return False

    def candidates(self, key: Any, start_ns: int, end_ns: int, slack_ns: int) -> list[AppSpan]:
        """Spans of ``key`` overlapping [start - slack, end + slack]."""
        lst = self.by_key.get(key)
        if not lst:
            return []
        hi = bisect.bisect_right(lst, (end_ns + slack_ns, 1 << 62))
        return [s for (_st, _q, s) in lst[:hi] if s.end_ns >= start_ns - slack_ns]


def choose(span_start: int, span_end: int, cands: list[AppSpan]) -> tuple[AppSpan, list[AppSpan]] | None:
    """The parent among overlapping app spans, and the others (to link).

    Strict overlap first; among those, the innermost: latest start, then earliest end.
    ``cands`` already passed the slack window; if none strictly overlaps, the closest
    in time is taken.

    >>> a = AppSpan(b"t" * 16, b"a" * 8, 100, 200); b = AppSpan(b"t" * 16, b"b" * 8, 120, 150)
    >>> parent, others = choose(130, 140, [a, b]); parent is b and others == [a]
    True
    """
    if not cands:
        return None
    strict = [c for c in cands if c.start_ns <= span_end and c.end_ns >= span_start]
    if strict:
        parent = max(strict, key=lambda c: (c.start_ns, -c.end_ns))
        return parent, [c for c in strict if c is not parent]

    def gap(c: AppSpan) -> int:
        return c.start_ns - span_end if c.start_ns > span_end else span_start - c.end_ns
    return min(cands, key=gap), []


@dataclass
class _Pending:
    span: KernelSpan
    cookie: int | None
    tup: TupleKey | None
    expires_ns: int
    done: bool = False


@dataclass
class Join:
    """See the module docstring. ``emit`` receives every kernel span exactly once."""
    emit: Callable[[KernelSpan], None]
    buffer_ttl_ns: int = 10_000_000_000
    buffer_max: int = 65536
    app_ttl_ns: int = 30_000_000_000
    index_max: int = 100_000
    slack_ns: int = 1_000_000
    on_watch: Callable[[int], None] | None = None
    on_unwatch: Callable[[int], None] | None = None
    now_ns: Callable[[], int] = time.time_ns
    stats: JoinStats = field(default_factory=JoinStats)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._cookies = _Index()
        self._tuples = _Index()
        self._seq = 0
        self._app_count = 0
        # pending kernel spans: per key and in arrival order (for TTL and the cap)
        self._pending: OrderedDict[int, _Pending] = OrderedDict()
        self._pending_by_cookie: dict[int, list[int]] = {}
        self._pending_by_tuple: dict[TupleKey, list[int]] = {}
        self._pending_seq = 0
        self._pending_live = 0
        self._watch_changes: list[tuple[bool, int]] = []
        self._last_app_ns: int | None = None

    # -- application side ------------------------------------------------------------
    def add_app_spans(self, spans: Iterable[AppSpan]) -> None:
        """Index app spans, then resolve the buffered kernel spans of their keys."""
        out: list[KernelSpan] = []
        with self._lock:
            touched_c: set[int] = set()
            touched_t: set[TupleKey] = set()
            now = self.now_ns()
            for s in spans:
                if s.cookie is None and s.tuple_key is None:
                    self.stats.app_without_key += 1
                    continue
                self._seq += 1
                expires = max(s.end_ns, now) + self.app_ttl_ns
                if s.cookie is not None:
                    if self._cookies.add(s.cookie, s, self._seq, expires):
                        self._watch_changes.append((True, s.cookie))
                    touched_c.add(s.cookie)
                else:
                    assert s.tuple_key is not None
                    self._tuples.add(s.tuple_key, s, self._seq, expires)
                    touched_t.add(s.tuple_key)
                self._app_count += 1
                self.stats.app_spans += 1
                self._last_app_ns = now
            while self._app_count > self.index_max:
                self._evict_oldest_app()
                self.stats.index_shed += 1
            ids: set[int] = set()
            for c in touched_c:
                ids.update(self._pending_by_cookie.get(c, ()))
            for t in touched_t:
                ids.update(self._pending_by_tuple.get(t, ()))
            for pid in sorted(ids):
                p = self._pending.get(pid)
                if p is not None and not p.done and self._resolve(p.span, p.cookie, p.tup):
                    self._drop_pending(pid, p)
                    out.append(p.span)
        self._emit_all(out)

    # -- kernel side -----------------------------------------------------------------
    def add_kernel(self, span: KernelSpan) -> None:
        """Join a kernel span now, buffer it, or pass it through (no socket key)."""
        cookie, tup = kernel_keys(span)
        self.stats.kernel_spans += 1
        if (cookie is None and tup is None) or not self.active:
            self.stats.unjoined += 1
            self.emit(span)
            return
        out: list[KernelSpan] = []
        with self._lock:
            if self._resolve(span, cookie, tup):
                out.append(span)
            else:
                self._pending_seq += 1
                pid = self._pending_seq
                self._pending[pid] = _Pending(span, cookie, tup, self.now_ns() + self.buffer_ttl_ns)
                self._pending_live += 1
                self.stats.buffered += 1
                if cookie is not None:
                    self._pending_by_cookie.setdefault(cookie, []).append(pid)
                if tup is not None:
                    self._pending_by_tuple.setdefault(tup, []).append(pid)
                while self._pending_live > self.buffer_max:
                    opid, old = next(iter(self._pending.items()))
                    self._drop_pending(opid, old)
                    self.stats.buffer_shed += 1
                    self.stats.unjoined += 1
                    out.append(old.span)
        self._emit_all(out)

    def _resolve(self, span: KernelSpan, cookie: int | None, tup: TupleKey | None) -> bool:
        """Attach ``span`` to its app span if one is indexed (lock held)."""
        how, cands = JOIN_COOKIE, []
        if cookie is not None:
            cands = self._cookies.candidates(cookie, span.start_ns, span.end_ns, self.slack_ns)
        if not cands and tup is not None:
            how, cands = JOIN_INFERRED, self._tuples.candidates(tup, span.start_ns, span.end_ns, self.slack_ns)
        picked = choose(span.start_ns, span.end_ns, cands)
        if picked is None:
            return False
        parent, others = picked
        span.trace_id = parent.trace_id
        span.parent_span_id = parent.span_id
        span.attributes[sc.JOIN] = how
        for o in others:
            span.links.append(SpanLink(o.trace_id, o.span_id, {sc.JOIN: how}))
        self.stats.links += len(others)
        if how == JOIN_COOKIE:
            self.stats.joined_cookie += 1
        else:
            self.stats.joined_inferred += 1
        return True

    def _drop_pending(self, pid: int, p: _Pending) -> None:
        p.done = True
        self._pending.pop(pid, None)
        self._pending_live -= 1
        for idx, key in ((self._pending_by_cookie, p.cookie), (self._pending_by_tuple, p.tup)):
            if key is None:
                continue
            lst = idx.get(key)
            if lst is not None:
                try:
                    lst.remove(pid)
                except ValueError:
                    pass
                if not lst:
                    del idx[key]

    def _evict_oldest_app(self) -> None:
        """Forget the app span indexed first, of either index."""
        c = self._cookies.order[0] if self._cookies.order else None
        t = self._tuples.order[0] if self._tuples.order else None
        index = self._cookies if (t is None or (c is not None and c[2] < t[2])) else self._tuples
        self._expire_one(index)

    def _expire_one(self, index: _Index) -> None:
        _exp, key, seq, span = index.order.popleft()
        emptied = index.remove(key, seq, span)
        self._app_count -= 1
        if emptied and index is self._cookies:
            self._watch_changes.append((False, key))

    # -- time ----------------------------------------------------------------------------
    def tick(self) -> None:
        """Expire app spans and buffered kernel spans; apply watch-list changes."""
        out: list[KernelSpan] = []
        with self._lock:
            now = self.now_ns()
            for index in (self._cookies, self._tuples):
                # add order ~ expiry order (TTL is the same for all); stop at the first live one
                while index.order and index.order[0][0] <= now:
                    self._expire_one(index)
            while self._pending:
                pid, p = next(iter(self._pending.items()))
                if p.expires_ns > now:
                    break
                self._drop_pending(pid, p)
                self.stats.unjoined += 1
                out.append(p.span)
            changes, self._watch_changes = self._watch_changes, []
        self._emit_all(out)
        for add, cookie in changes:
            cb = self.on_watch if add else self.on_unwatch
            if cb is not None:
                cb(cookie)

    def flush(self) -> None:
        """Release every buffered kernel span (at shutdown): unjoined, none lost."""
        with self._lock:
            out = [p.span for p in self._pending.values()]
            self.stats.unjoined += len(out)
            self._pending.clear()
            self._pending_by_cookie.clear()
            self._pending_by_tuple.clear()
            self._pending_live = 0
        self._emit_all(out)

    @property
    def active(self) -> bool:
        """An application has sent keyed spans within ``app_ttl_ns``: only then do kernel
        spans wait in the buffer (a node without instrumented apps exports at once)."""
        return self._last_app_ns is not None and self.now_ns() - self._last_app_ns <= self.app_ttl_ns

    @property
    def pending(self) -> int:
        return self._pending_live

    @property
    def indexed(self) -> int:
        return self._app_count

    def _emit_all(self, spans: list[KernelSpan]) -> None:
        for s in spans:
            self.emit(s)
