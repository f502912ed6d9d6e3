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
from typing import Any, Callable

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
