"""A small bounded index of recent node-level spans, for other families to link to.

Softirq and reclaim spans are not per-socket: their value is in being linked from
the packets and requests they delayed. The softirq and reclaim families add their
spans here as they emit them; the skb lifecycle, drop and join code ask:

- ``softirq_overlapping(cpu, start_ns, end_ns)``: softirq spans of that CPU whose
  window (wait start -> exit) overlaps the interval;
- ``reclaim_overlapping(pid=..., cgroup=..., start_ns=..., end_ns=...)``: reclaim
  spans (direct, memcg, throttle) of that task (tgid) or cgroup (id or path)
  overlapping the interval;
- ``memory_pressure_at(t_ns)``: the zone watermark state sampled at or just before
  ``t_ns`` and the reclaim activity around it (for a PFMEMALLOC drop).

Each query returns ``SpanLink`` values (attribute ``kernelnet.kind`` names the
linked family) ready to append to ``KernelSpan.links``. Times are Unix epoch ns, as
in ``KernelSpan``. Memory is bounded: ``per_cpu`` softirq spans per CPU, ``reclaims``
reclaim spans and ``snapshots`` zone samples in all; the oldest go first
(``evicted`` counts them). Thread-safe (the join may query from receiver threads).

Sidecar scope of softirq spans (``hold_softirq``): a softirq span has no pod; in a
scoped collector (``scope.mode: sidecar`` or ``scope.netns``) the honest scope is "the
softirqs that delayed this scope's packets". The softirq family then hands its spans
here instead of emitting them: a span is emitted (through the ``emit`` given) only
once a packet of the scope waited through it, i.e. once a lifecycle span (scoped in
the kernel by network namespace) asks ``softirq_overlapping`` for that CPU and
interval; a packet that asked before the softirq span arrived (the two ring buffers
are drained in rounds) releases it on arrival. Spans never linked are dropped when
the per-CPU index evicts them (``softirq_hold_stats``: held now, released, discarded).
Only emitted lifecycle spans pull: a packet below the lifecycle volume policy
(``probes.lifecycle.slow_threshold_us``, sampling) releases nothing.
"""

from __future__ import annotations

import bisect
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from . import semconv as sc
from .spans import KernelSpan, SpanLink


@dataclass(frozen=True)
class Entry:
    start_ns: int
    end_ns: int
    trace_id: bytes
    span_id: bytes
    kind: str
    pid: int = 0
    cgroup: int = 0
    cgroup_path: str = ""

    def link(self) -> SpanLink:
        return SpanLink(self.trace_id, self.span_id, {sc.KIND: self.kind})


def _ending_since(q: deque[Entry] | tuple, t_ns: int) -> Iterator[Entry]:
    """The entries of an end-ordered deque (``LinkIndex._insert``) that end at or after
    ``t_ns``, the latest end first."""
    for e in reversed(q):
        if e.end_ns < t_ns:
            return
        yield e


@dataclass
class Snapshot:
    t_ns: int
    zones: list[dict[str, Any]]  # zoneinfo.Zone.as_dict() of each populated zone
    below_min: list[str] = field(default_factory=list)  # "node0/Normal" of zones under min
    span: Entry | None = None  # the zone_below_min span emitted for this sample, if any


# A PFMEMALLOC drop links to at most this many reclaim spans of the second before it (the
# latest; ``kernelnet.memory.reclaim_spans`` counts them all): under heavy reclaim the
# window can hold up to the reclaim family's node cap (2,000 by default), and every
# drop of a burst would carry them all.
MAX_STALL_LINKS = 32


def _sample_time(s: Snapshot) -> int:
    return s.t_ns


def _end_time(e: Entry) -> int:
    return e.end_ns


class LinkIndex:
    def __init__(self, per_cpu: int = 256, reclaims: int = 2048, snapshots: int = 512):
        self._lock = threading.Lock()
        self._per_cpu = per_cpu
        self._softirq: dict[int, deque[Entry]] = {}
        self._reclaims = reclaims
        self._reclaim: deque[Entry] = deque()
        self._snapshots: deque[Snapshot] = deque(maxlen=snapshots)
        self.evicted = 0
        # scoped softirq (hold_softirq): spans not emitted yet, by span id; recent packet intervals per CPU
        self._hold_emit: Callable[[KernelSpan], None] | None = None
        self._held: dict[bytes, KernelSpan] = {}
        self._pulls: dict[int, deque[tuple[int, int]]] = {}
        self.softirq_released = 0
        self.softirq_discarded = 0

    # -- scoped softirq ------------------------------------------------------------
    def hold_softirq(self, emit: Callable[[KernelSpan], None]) -> None:
        """Scoped collector: from now on ``add_softirq`` holds spans, and ``emit`` gets
        each one once a packet of the scope links to it (see the module doc)."""
        self._hold_emit = emit

    @property
    def holding(self) -> bool:
        return self._hold_emit is not None

    def softirq_hold_stats(self) -> dict[str, int]:
        with self._lock:
            return {"scope_held": len(self._held), "scope_released": self.softirq_released,
                    "scope_discarded": self.softirq_discarded}

    # -- adding (the softirq and reclaim families) -------------------------------
    @staticmethod
    def _entry(span: KernelSpan, **kw: Any) -> Entry:
        return Entry(span.start_ns, span.end_ns, span.trace_id, span.span_id,
                     str(span.attributes.get(sc.KIND, "")), **kw)

    def add_softirq(self, span: KernelSpan, cpu: int) -> bool:
        """Index a softirq span of ``cpu``. Returns True when the span is held (a scoped
        collector: the caller must not emit it; it is emitted once a packet links to
        it), False when the caller emits it now."""
        entry = self._entry(span)
        with self._lock:
            q = self._softirq.get(cpu)
            if q is None:
                q = self._softirq[cpu] = deque()
            old = self._insert(q, entry, self._per_cpu)
            if old is not None and self._held.pop(old.span_id, None) is not None:
                self.softirq_discarded += 1
            if self._hold_emit is None:
                return False
            if any(s <= span.end_ns and e >= span.start_ns for s, e in self._pulls.get(cpu, ())):
                self.softirq_released += 1  # a packet of the scope already waited through it
                return False
            self._held[span.span_id] = span
            return True

    def add_reclaim(self, span: KernelSpan, pid: int = 0, cgroup: int = 0, cgroup_path: str = "") -> None:
        entry = self._entry(span, pid=pid, cgroup=cgroup, cgroup_path=cgroup_path or "")
        with self._lock:
            self._insert(self._reclaim, entry, self._reclaims)

    def _insert(self, q: deque[Entry], entry: Entry, limit: int) -> Entry | None:
        """Add ``entry`` to ``q``, which is kept in order of end time, and return the entry
        evicted to make room (the earliest end; counted), if any. Spans are emitted when
        they end, so this is an append but for a record that comes late (another CPU's
        ring, or a nested program): the queries below stop at the first entry that ended
        before their interval instead of reading all of them. Lock held."""
        old = None
        if len(q) >= limit:
            old = q.popleft()
            self.evicted += 1
        i = len(q)
        while i and q[i - 1].end_ns > entry.end_ns:
            i -= 1
        if i == len(q):
            q.append(entry)
        else:
            q.insert(i, entry)
        return old

    def add_snapshot(self, t_ns: int, zones: list[dict[str, Any]], below_min: list[str],
                     span: KernelSpan | None = None) -> None:
        """One /proc/zoneinfo sample (and the zone_below_min span made of it, if any)."""
        with self._lock:
            if len(self._snapshots) == self._snapshots.maxlen:
                self.evicted += 1
            self._snapshots.append(Snapshot(t_ns, zones, list(below_min),
                                            self._entry(span) if span is not None else None))

    # -- queries (lifecycle, drop, join) -----------------------------------------
    def softirq_overlapping(self, cpu: int, start_ns: int, end_ns: int) -> list[SpanLink]:
        """Softirq spans of ``cpu`` whose window overlaps [start_ns, end_ns]. When
        holding (a scoped collector), the caller is a packet of the scope: the held
        spans it overlaps are emitted now, and the interval is remembered for softirq
        spans that arrive after it."""
        release: list[KernelSpan] = []
        hits: list[Entry] = []
        with self._lock:
            for e in _ending_since(self._softirq.get(cpu, ()), start_ns):
                if e.start_ns <= end_ns:
                    hits.append(e)
            hits.reverse()
            if self._hold_emit is not None:
                self._pulls.setdefault(cpu, deque(maxlen=self._per_cpu)).append((start_ns, end_ns))
                for e in hits:
                    span = self._held.pop(e.span_id, None)
                    if span is not None:
                        release.append(span)
                self.softirq_released += len(release)
            emit = self._hold_emit
        for span in release:  # outside the lock: emit may take its time
            assert emit is not None
            emit(span)
        return [e.link() for e in hits]

    def reclaim_overlapping(self, pid: int | None = None, cgroup: int | str | None = None, *,
                            start_ns: int, end_ns: int) -> list[SpanLink]:
        """Reclaim spans of task ``pid`` or cgroup ``cgroup`` (id, or path) overlapping
        [start_ns, end_ns]; with neither, every reclaim span (node-wide pressure)."""
        with self._lock:
            out = []
            for e in _ending_since(self._reclaim, start_ns):
                if e.start_ns > end_ns:
                    continue
                if pid is not None or cgroup is not None:
                    mine = (pid is not None and e.pid == pid) or (
                        cgroup is not None and cgroup != "" and cgroup != 0
                        and (e.cgroup == cgroup or e.cgroup_path == cgroup))
                    if not mine:
                        continue
                out.append(e.link())
            out.reverse()
            return out

    def memory_pressure_at(self, t_ns: int, window_ns: int = 1_000_000_000,
                           max_stalls: int = MAX_STALL_LINKS) -> dict[str, Any] | None:
        """The memory state at ``t_ns``: the last zone sample at or before it, whether
        a zone was below its min watermark, and links to the zone_below_min span (if
        that sample made one) and to reclaim activity within ``window_ns`` before
        ``t_ns``: how many reclaim spans overlap that window (``reclaim_spans``) and
        links to the ``max_stalls`` of them that ended last. None before the first
        sample.

        ``{"sampled_ns": int, "below_min": ["node0/Normal"], "zones": [{...}], "links": [SpanLink],
        "reclaim_spans": int}``
        """
        with self._lock:
            # samples are taken in time order; bisect instead of a list of all their times
            i = bisect.bisect_right(self._snapshots, t_ns, key=_sample_time) - 1
            if i < 0:
                return None
            snap = self._snapshots[i]
            # the entries ending in or after the window are a suffix (ordered by end);
            # of those, the ones that start after t_ns end after it too, so they are
            # at its end: read back only past them and the links taken
            q = self._reclaim
            n = len(q) - bisect.bisect_left(q, t_ns - window_ns, key=_end_time)
            stalls: list[SpanLink] = []
            for e in _ending_since(q, t_ns - window_ns):
                if e.start_ns > t_ns:
                    n -= 1
                elif len(stalls) < max_stalls:
                    stalls.append(e.link())
                elif e.end_ns <= t_ns:
                    break  # the rest end (and so start) at or before t_ns: all in n
            stalls.reverse()
            links = ([snap.span.link()] if snap.span is not None else []) + stalls
            return {"sampled_ns": snap.t_ns, "below_min": list(snap.below_min),
                    "zones": [dict(z) for z in snap.zones], "links": links, "reclaim_spans": n}
