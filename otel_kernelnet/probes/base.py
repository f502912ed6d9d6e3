"""What every probe family provides, so the collector and `check` treat them alike.

A family's lifecycle (STYLE habit 3): ``plan(ctx)`` reads what it needs from the
running kernel and returns a plan (its ``degraded`` list says what is lost here) or
raises ``ProbeUnavailable`` with the fix; ``start(loader, plan, ctx, emit, on_error)``
compiles and attaches through the loader (which detaches everything at exit) and
calls ``emit(span)`` for each span; ``stats()`` returns its loss/volume counters.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from ..clock import KernelClock
from ..spans import IdSource, KernelSpan

Emit = Callable[[KernelSpan], None]
OnError = Callable[[Exception], None]


class ProbeUnavailable(Exception):
    """The probe cannot run here; the message names the fix."""


@dataclass
class KernelContext:
    """What probes share: kernel type info, symbols, the clock, ids and the config."""
    btf: Any | None
    symbol: Callable[[int], str]
    clock: KernelClock
    ids: IdSource
    cfg: Any
    links: Any | None = None  # links.LinkIndex: recent softirq/reclaim spans other families link to
    scope_netns: frozenset[int] | None = None  # None: every namespace (see otel_kernelnet/scope.py)


def read_optional_formats(tracepoints: Iterable[Any], tracefs_root: str | None = None,
                          category: str | None = None) -> dict[str, Any]:
    """Format of each tracepoint (objects with ``key``, ``name`` and ``category``, unless
    ``category`` is given) by key; None where this kernel lacks it. Any other problem
    (tracefs unreadable) means the family cannot run: ProbeUnavailable."""
    from ..kernel import tracefs
    out: dict[str, Any] = {}
    for tp in tracepoints:
        try:
            out[tp.key] = tracefs.read_format(category or tp.category, tp.name, tracefs_root)
        except tracefs.TracepointMissing:
            out[tp.key] = None
        except tracefs.TracefsError as e:
            raise ProbeUnavailable(str(e)) from None
    return out


class ProbeFamily(ABC):
    name: str  # config section probes.<name>
    summary: str  # one line for `check` and the start-up message

    @abstractmethod
    def plan(self, ctx: KernelContext) -> Any: ...

    @abstractmethod
    def start(self, loader: Any, plan: Any, ctx: KernelContext, emit: Emit, on_error: OnError) -> None: ...

    @abstractmethod
    def stats(self) -> dict[str, int]: ...

    def poll(self) -> None:
        """Called from the collector's loop after each ring-buffer drain (samplers that
        read /proc on their own period do it here; BPF-only families need nothing)."""

    def close(self) -> None:
        """Stop anything the family started itself (threads); BPF detach is the loader's."""


class RingBufferProbe:
    """One compiled BPF object whose records arrive through one ring buffer.

    Compiles ``bpf/<source>`` with the plan's ``-D`` settings (plus the namespace
    scope, filled into ``kn_scope`` before attaching), decodes every record
    with ``decode`` and hands it to ``on_event``; a record that fails to decode or map
    is counted (``decode_errors``) and reported to ``on_error``, and the stream goes
    on. ``stats()`` reads the per-CPU counters of bpf/common.h (``kn_stats``) under
    the names in ``stat_names``, plus ``decode_errors`` and ``kernel_missed`` (events the
    kernel did not run the programs for: a tracing BPF program was already running on
    that CPU when the tracepoint fired from an interrupt nested inside it).
    """

    def __init__(self, loader: Any, name: str, source: str, defines: dict[str, int], ring_buffer: str,
                 attach: Iterable[tuple[str, str]], decode: Callable[[bytes], Any],
                 on_event: Callable[[Any], None], on_error: OnError, stat_names: tuple[str, ...],
                 scope_netns: frozenset[int] | None = None):
        self._loader = loader
        self.stat_names = stat_names
        self.decode_errors = 0
        if scope_netns is not None:
            defines = {**defines, "KN_SCOPE_NETNS": 1}
        self.prog = loader.compile(name, source, defines)
        if scope_netns is not None:  # before attaching: no event slips through unscoped
            table = self.prog.map("kn_scope")
            for inode in scope_netns:
                table.set(inode, 1)

        def cb(sample: bytes) -> None:  # the ring buffer reader's callback, per record
            try:
                on_event(decode(sample))
            except Exception as e:  # a bad record must not stop the stream; count it
                self.decode_errors += 1
                on_error(e)

        loader.open_ring_buffer(self.prog, ring_buffer, cb)
        for tracepoint, fn in attach:
            loader.attach(self.prog, tracepoint, fn)

    def stats(self) -> dict[str, int]:
        out = dict(zip(self.stat_names, self._loader.percpu_sum(self.prog, "kn_stats", len(self.stat_names))))
        out["decode_errors"] = self.decode_errors
        out["kernel_missed"] = self._loader.recursion_misses(self.prog)
        return out
