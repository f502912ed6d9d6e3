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

Reclaim stalls (``kernel.reclaim`` of type direct, memcg or throttle) are not about a
socket: they join by *task*. App spans whose resource (or span) carries
``process.pid`` are indexed by that pid too, and the pid's cgroup is read once from
``/proc/PID/cgroup`` (the hierarchy the reclaim spans' ``kernelnet.cgroup.path`` is
relative to). A stall whose ``process.pid`` is that pid (and, when the app span
carries ``thread.id``, whose ``thread.id`` is that thread) and which strictly overlaps
the app span becomes its child with ``kernelnet.join=task``; failing that, a stall of
another task in the same (non-root) cgroup becomes the child of an overlapping app
span of that cgroup with ``kernelnet.join=cgroup``. Innermost wins, the others get
links, as for sockets. The cgroup match is tried only when no app span of the
stalled task itself can match any more (the task is not an app process, or its
buffer time ran out), so an own-task match is never pre-empted by a neighbour's.
Other reclaim spans (kswapd, zone samples, stalls of unknown tasks) pass at once.

A reclaim span is also a link target (a PFMEMALLOC drop links to the reclaim around
it, links.py). Re-parenting gives it the app's trace id, so the join keeps the ids
straight: a reclaim span that an already exported span links to keeps its own
trace and gets links to the app spans instead (``joined_by_link``); a reclaim span
that was moved has its old (trace, span) id remembered (bounded, ``remap_max``) and
links of later kernel spans to the old id are rewritten (``relinked``).

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
freshly started app may see its kernel spans exported unjoined). Reclaim stalls wait
only when their task or cgroup is one of an indexed app span (so the stalls of a
just-started app's first requests leave unjoined).

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
from .kernel import cgroups
from .spans import KernelSpan, SpanLink

TupleKey = tuple[str, int, int]  # (peer address, peer port, local port)

JOIN_COOKIE = "cookie"
JOIN_INFERRED = "inferred"
JOIN_TASK = "task"
JOIN_CGROUP = "cgroup"
#: kernelnet.reclaim.type values that are a stall of the task itself (joined by task/cgroup)
RECLAIM_STALLS = frozenset(("direct", "memcg", "throttle"))


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
    pid: int | None = None  # process.pid of the app (resource or span attribute)
    thread_id: int | None = None  # thread.id of the span, when the SDK sets it


@dataclass
class JoinStats:
    app_spans: int = 0  # app spans indexed
    app_without_key: int = 0  # app spans with no cookie, 4-tuple or process.pid (not indexed)
    app_by_pid: int = 0  # app spans indexed by process.pid (for the reclaim join)
    kernel_spans: int = 0  # kernel spans seen
    joined_cookie: int = 0  # kernel spans given an app parent through the cookie
    joined_inferred: int = 0  # ... through the 4-tuple
    joined_task: int = 0  # reclaim stalls joined to an app span of their own task
    joined_cgroup: int = 0  # ... of another task of their cgroup
    joined_by_link: int = 0  # of joined_task + joined_cgroup: by links only (another span already linked to it)
    relinked: int = 0  # links of later kernel spans rewritten to a re-parented reclaim span's new trace id
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


def reclaim_keys(span: KernelSpan) -> tuple[int, int | None, str | None] | None:
    """(pid, tid, cgroup path) of a reclaim stall of a task, else None.

    The cgroup is None for the root cgroup ("/"): every unconfined process is there.
    """
    a = span.attributes
    if a.get(sc.KIND) != sc.KIND_RECLAIM or a.get("kernelnet.reclaim.type") not in RECLAIM_STALLS:
        return None
    pid = a.get("process.pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return None
    tid = a.get("thread.id")
    cg = a.get("kernelnet.cgroup.path")
    return (pid, tid if isinstance(tid, int) and not isinstance(tid, bool) and tid > 0 else None,
            cg if isinstance(cg, str) and cg not in ("", "/") else None)


def cgroup_path_of(text: str, setup: cgroups.Setup) -> str | None:
    """The cgroup path in a ``/proc/PID/cgroup`` text of the hierarchy ``setup`` names
    (the one the reclaim spans' ``kernelnet.cgroup.path`` is relative to).

    >>> t = "4:memory:/kn-a\\n1:cpu:/\\n0::/user.slice"
    >>> cgroup_path_of(t, cgroups.Setup(1, "/sys/fs/cgroup/memory", "memory")), cgroup_path_of(t, cgroups.Setup(0, "/sys/fs/cgroup"))
    ('/kn-a', '/user.slice')
    """
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hid, ctrls, path = parts
        if setup.mode == 0 and hid == "0" and ctrls == "":
            return path
        if setup.mode == 1 and setup.subsys and setup.subsys in ctrls.split(","):
            return path
    return None


class ProcCgroups:
    """pid -> cgroup path, read from ``/proc/PID/cgroup`` (None: gone or unreadable).

    The hierarchy is chosen as the reclaim family chooses it (``cgroups.detect``).
    """

    def __init__(self, setup: cgroups.Setup | None = None, proc: str = "/proc"):
        self._setup, self._proc = setup, proc

    def __call__(self, pid: int) -> str | None:
        if self._setup is None:
            self._setup = cgroups.detect()
        try:
            with open(f"{self._proc}/{int(pid)}/cgroup") as f:
                return cgroup_path_of(f.read(), self._setup)
        except (OSError, ValueError):
            return None


class _Index:
    """App spans per key, sorted by start, with an LRU-ish global age order for eviction.

    Per key also the longest span indexed since the key appeared (``longest``): a span
    that started more than that before an interval cannot reach it, so a lookup reads
    only the spans that started within it, not every span of the key (a keep-alive
    connection has one span per request for ``join.app_ttl_ms``: 30,000 at 1,000
    requests/s, and each of its watched lifecycle spans looks them up).
    """

    def __init__(self) -> None:
        self.by_key: dict[Any, list[tuple[int, int, AppSpan]]] = {}  # key -> sorted [(start, seq, span)]
        self.longest: dict[Any, int] = {}  # key -> the longest end - start indexed (never lowered)
        self.order: deque[tuple[int, Any, int, AppSpan]] = deque()  # (expires_ns, key, seq, span), add order

    def add(self, key: Any, span: AppSpan, seq: int, expires_ns: int) -> bool:
        """Index a span; True when the key is new."""
        lst = self.by_key.get(key)
        new = lst is None
        if new:
            lst = self.by_key[key] = []
            self.longest[key] = 0
        bisect.insort(lst, (span.start_ns, seq, span))
        if span.end_ns - span.start_ns > self.longest[key]:
            self.longest[key] = span.end_ns - span.start_ns
        self.order.append((expires_ns, key, seq, span))
        return new

    def remove(self, key: Any, seq: int, span: AppSpan) -> bool:
        """Forget one span; True when its key has no span left."""
        lst = self.by_key.get(key)
        if lst is None:
            return False
        i = bisect.bisect_left(lst, (span.start_ns, seq))  # (start, seq) is unique: no span compared
        if i == len(lst) or lst[i][1] != seq or lst[i][0] != span.start_ns:
            return False
        del lst[i]
        if not lst:
            del self.by_key[key]
            del self.longest[key]
            return True
        return False

    def candidates(self, key: Any, start_ns: int, end_ns: int, slack_ns: int) -> list[AppSpan]:
        """Spans of ``key`` overlapping [start - slack, end + slack]."""
        lst = self.by_key.get(key)
        if not lst:
            return []
        lo = bisect.bisect_left(lst, (start_ns - slack_ns - self.longest[key],))
        hi = bisect.bisect_right(lst, (end_ns + slack_ns, 1 << 62))
        return [s for (_st, _q, s) in lst[lo:hi] if s.end_ns >= start_ns - slack_ns]


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
    task: tuple[int, int | None, str | None] | None = None  # reclaim stall: (pid, tid, cgroup path)
    referenced: bool = False  # an exported kernel span links to this one: join by links, keep its ids


@dataclass
class Join:
    """See the module docstring. ``emit`` receives every kernel span exactly once.

    ``cgroup_of(pid)``: the cgroup path of an app process (default: ``ProcCgroups``,
    from /proc); injectable for tests.
    """
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
    cgroup_of: Callable[[int], str | None] | None = None
    remap_max: int = 65536

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._cookies = _Index()
        self._tuples = _Index()
        self._procs = _Index()  # app spans by process.pid
        self._seq = 0
        self._app_count = 0
        self._proc_count = 0
        if self.cgroup_of is None:
            self.cgroup_of = ProcCgroups()
        self._pid_cg: dict[int, str | None] = {}  # pids with indexed app spans -> their cgroup path
        self._cg_pids: dict[str, set[int]] = {}  # cgroup path -> those pids
        # pending kernel spans: per key and in arrival order (for TTL and the cap)
        self._pending: OrderedDict[int, _Pending] = OrderedDict()
        self._pending_by_cookie: dict[int, list[int]] = {}
        self._pending_by_tuple: dict[TupleKey, list[int]] = {}
        self._pending_by_pid: dict[int, list[int]] = {}
        self._pending_by_cg: dict[str, list[int]] = {}
        self._pending_ids: dict[tuple[bytes, bytes], int] = {}  # (trace, span) of pending reclaim spans
        self._remap: OrderedDict[tuple[bytes, bytes], bytes] = OrderedDict()  # moved reclaim span -> new trace
        self._pending_seq = 0
        self._pending_live = 0
        self._watch_changes: list[tuple[bool, int]] = []
        self._last_app_ns: int | None = None

    # -- application side ------------------------------------------------------------
    def add_app_spans(self, spans: Iterable[AppSpan]) -> None:
        """Index app spans, then resolve the buffered kernel spans of their keys."""
        spans = list(spans)
        # cgroups of app processes not seen yet: read outside the lock (a /proc read each)
        new_cg = {pid: self.cgroup_of(pid) for pid in {s.pid for s in spans if s.pid is not None}
                  if pid not in self._pid_cg}  # type: ignore[misc]
        out: list[KernelSpan] = []
        with self._lock:
            touched_c: set[int] = set()
            touched_t: set[TupleKey] = set()
            touched_p: set[int] = set()
            now = self.now_ns()
            for s in spans:
                if s.cookie is None and s.tuple_key is None and s.pid is None:
                    self.stats.app_without_key += 1
                    continue
                self._seq += 1
                expires = max(s.end_ns, now) + self.app_ttl_ns
                if s.pid is not None:
                    if self._procs.add(s.pid, s, self._seq, expires):
                        cg = new_cg.get(s.pid) if s.pid in new_cg else self._pid_cg.get(s.pid)
                        self._pid_cg[s.pid] = cg
                        if cg not in (None, "", "/"):
                            self._cg_pids.setdefault(cg, set()).add(s.pid)
                    touched_p.add(s.pid)
                    self._proc_count += 1
                    self.stats.app_by_pid += 1
                if s.cookie is None and s.tuple_key is None:
                    continue
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
            while self._proc_count > self.index_max:
                self._expire_one(self._procs)
                self.stats.index_shed += 1
            ids: set[int] = set()
            for c in touched_c:
                ids.update(self._pending_by_cookie.get(c, ()))
            for t in touched_t:
                ids.update(self._pending_by_tuple.get(t, ()))
            for pid in touched_p:
                ids.update(self._pending_by_pid.get(pid, ()))
                cg = self._pid_cg.get(pid)
                if cg:
                    ids.update(self._pending_by_cg.get(cg, ()))
            for n in sorted(ids):
                p = self._pending.get(n)
                if p is not None and not p.done and self._resolve_pending(p, final=False):
                    self._drop_pending(n, p)
                    out.append(p.span)
        self._emit_all(out)

    # -- kernel side -----------------------------------------------------------------
    def add_kernel(self, span: KernelSpan) -> None:
        """Join a kernel span now, buffer it, or pass it through (no key, or nothing to wait for)."""
        self.stats.kernel_spans += 1
        task = reclaim_keys(span)
        if task is None:
            # inactive and no links: nothing to wait for, so the keys are not even needed
            cookie, tup = kernel_keys(span) if span.links or self.active else (None, None)
            if not span.links and cookie is None and tup is None:
                self.stats.unjoined += 1
                self.emit(span)
                return
        else:
            cookie, tup = None, None
        out: list[KernelSpan] = []
        with self._lock:
            if span.links:
                self._fix_links(span)
            if task is not None:
                pid, _tid, cg = task
                if pid in self._pid_cg or (cg is not None and cg in self._cg_pids):
                    p = _Pending(span, None, None, self.now_ns() + self.buffer_ttl_ns, task=task)
                    if self._resolve_pending(p, final=False):
                        out.append(span)
                    else:
                        self._buffer(p, out)
                else:
                    self.stats.unjoined += 1
                    out.append(span)
            elif (cookie is None and tup is None) or not self.active:
                self.stats.unjoined += 1
                out.append(span)
            elif self._resolve(span, cookie, tup):
                out.append(span)
            else:
                self._buffer(_Pending(span, cookie, tup, self.now_ns() + self.buffer_ttl_ns), out)
        self._emit_all(out)

    def _buffer(self, p: _Pending, out: list[KernelSpan]) -> None:
        """Keep ``p`` until its app span arrives or its time runs out (lock held)."""
        self._pending_seq += 1
        n = self._pending_seq
        self._pending[n] = p
        self._pending_live += 1
        self.stats.buffered += 1
        if p.cookie is not None:
            self._pending_by_cookie.setdefault(p.cookie, []).append(n)
        if p.tup is not None:
            self._pending_by_tuple.setdefault(p.tup, []).append(n)
        if p.task is not None:
            pid, _tid, cg = p.task
            self._pending_by_pid.setdefault(pid, []).append(n)
            if cg is not None:
                self._pending_by_cg.setdefault(cg, []).append(n)
            self._pending_ids[(p.span.trace_id, p.span.span_id)] = n
        while self._pending_live > self.buffer_max:
            on, old = next(iter(self._pending.items()))
            self._release(on, old, out)
            self.stats.buffer_shed += 1

    def _release(self, n: int, p: _Pending, out: list[KernelSpan]) -> None:
        """A pending span leaves: a last cgroup try for a reclaim stall, else unjoined (lock held)."""
        self._drop_pending(n, p)
        if not (p.task is not None and self._resolve_pending(p, final=True)):
            self.stats.unjoined += 1
        out.append(p.span)

    def _fix_links(self, span: KernelSpan) -> None:
        """Links to a reclaim span the join moved get its new trace id; links to a pending
        one mark it as referenced (it will keep its ids). Lock held."""
        for link in span.links:
            key = (link.trace_id, link.span_id)
            new = self._remap.get(key)
            if new is not None:
                link.trace_id = new
                self.stats.relinked += 1
                continue
            n = self._pending_ids.get(key)
            if n is not None:
                self._pending[n].referenced = True

    def _resolve_pending(self, p: _Pending, final: bool) -> bool:
        if p.task is None:
            return self._resolve(p.span, p.cookie, p.tup)
        return self._resolve_task(p, final)

    def _resolve_task(self, p: _Pending, final: bool) -> bool:
        """A reclaim stall: an app span of its own task, else (when ``final`` or the task
        is no app process) one of its cgroup. Strict overlap only (lock held)."""
        assert p.task is not None
        pid, tid, cg = p.task
        span = p.span
        how = JOIN_TASK
        cands = [c for c in self._procs.candidates(pid, span.start_ns, span.end_ns, 0)
                 if c.thread_id is None or tid is None or c.thread_id == tid]
        if tid is not None and any(c.thread_id == tid for c in cands):
            cands = [c for c in cands if c.thread_id == tid]  # the stalled thread's own spans
        if not cands and cg is not None and (final or pid not in self._pid_cg):
            how = JOIN_CGROUP
            for other in sorted(self._cg_pids.get(cg, ())):
                if other != pid:
                    cands.extend(self._procs.candidates(other, span.start_ns, span.end_ns, 0))
        picked = choose(span.start_ns, span.end_ns, cands)
        if picked is None:
            return False
        parent, others = picked
        if p.referenced:
            # an exported span links to this one by its ids: keep them, link to the app spans
            span.links.append(SpanLink(parent.trace_id, parent.span_id, {sc.JOIN: how}))
            span.attributes[sc.JOIN] = how
            self.stats.joined_by_link += 1
        else:
            old = (span.trace_id, span.span_id)
            self._attach(span, parent, how)
            if span.trace_id != old[0]:
                self._remap[old] = span.trace_id
                while len(self._remap) > self.remap_max:
                    self._remap.popitem(last=False)
        for o in others:
            span.links.append(SpanLink(o.trace_id, o.span_id, {sc.JOIN: how}))
        self.stats.links += len(others)
        if how == JOIN_TASK:
            self.stats.joined_task += 1
        else:
            self.stats.joined_cgroup += 1
        return True

    @staticmethod
    def _attach(span: KernelSpan, parent: AppSpan, how: str) -> None:
        span.trace_id = parent.trace_id
        span.parent_span_id = parent.span_id
        span.attributes[sc.JOIN] = how

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
        self._attach(span, parent, how)
        for o in others:
            span.links.append(SpanLink(o.trace_id, o.span_id, {sc.JOIN: how}))
        self.stats.links += len(others)
        if how == JOIN_COOKIE:
            self.stats.joined_cookie += 1
        else:
            self.stats.joined_inferred += 1
        return True

    def _drop_pending(self, n: int, p: _Pending) -> None:
        p.done = True
        self._pending.pop(n, None)
        self._pending_live -= 1
        keys: list[tuple[dict, Any]] = [(self._pending_by_cookie, p.cookie), (self._pending_by_tuple, p.tup)]
        if p.task is not None:
            keys += [(self._pending_by_pid, p.task[0]), (self._pending_by_cg, p.task[2])]
            self._pending_ids.pop((p.span.trace_id, p.span.span_id), None)
        for idx, key in keys:
            if key is None:
                continue
            lst = idx.get(key)
            if lst is not None:
                try:
                    lst.remove(n)
                except ValueError:
                    pass
                if not lst:
                    del idx[key]

    def _evict_oldest_app(self) -> None:
        """Forget the app span indexed first, of either socket index."""
        c = self._cookies.order[0] if self._cookies.order else None
        t = self._tuples.order[0] if self._tuples.order else None
        index = self._cookies if (t is None or (c is not None and c[2] < t[2])) else self._tuples
        self._expire_one(index)

    def _expire_one(self, index: _Index) -> None:
        _exp, key, seq, span = index.order.popleft()
        emptied = index.remove(key, seq, span)
        if index is self._procs:
            self._proc_count -= 1
            if emptied:  # the process has no indexed span left: forget it and its cgroup
                cg = self._pid_cg.pop(key, None)
                pids = self._cg_pids.get(cg) if cg else None
                if pids is not None:
                    pids.discard(key)
                    if not pids:
                        del self._cg_pids[cg]
            return
        self._app_count -= 1
        if emptied and index is self._cookies:
            self._watch_changes.append((False, key))

    # -- time ----------------------------------------------------------------------------
    def tick(self) -> None:
        """Expire buffered kernel spans, then app spans; apply watch-list changes."""
        out: list[KernelSpan] = []
        with self._lock:
            now = self.now_ns()
            # buffered spans first: a reclaim stall's last (cgroup) try still sees the app
            # spans that expire in this same tick
            while self._pending:
                n, p = next(iter(self._pending.items()))
                if p.expires_ns > now:
                    break
                self._release(n, p, out)
            for index in (self._cookies, self._tuples, self._procs):
                # add order ~ expiry order (TTL is the same for all); stop at the first live one
                while index.order and index.order[0][0] <= now:
                    self._expire_one(index)
            changes, self._watch_changes = self._watch_changes, []
        self._emit_all(out)
        for add, cookie in changes:
            cb = self.on_watch if add else self.on_unwatch
            if cb is not None:
                cb(cookie)

    def flush(self) -> None:
        """Release every buffered kernel span (at shutdown): reclaim stalls get their last
        (cgroup) try, the rest leave unjoined; none lost."""
        out: list[KernelSpan] = []
        with self._lock:
            for n, p in list(self._pending.items()):
                self._release(n, p, out)
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
