"""``otel-kernelnet lab SCENARIO``: the incidents of CASES.md, reproduced on this machine.

Each scenario builds its topology in fresh network namespaces, starts the collector
and an app instrumented with OpenTelemetry and the cookie plugin, injects the cause,
runs ``diagnose`` on what was exported, prints the diagnosis and a counter
cross-check, and removes everything it created (docs/lab.md).
"""

from __future__ import annotations

import importlib

from .runner import Scenario

#: scenario name (CLI contract) -> "module:Class" under otel_kernelnet.lab
SCENARIOS = {
    "accept-overflow": "accept_overflow:AcceptOverflow",
    "softirq-delay": "softirq_delay:SoftirqDelay",
    "conntrack-rst": "conntrack_rst:ConntrackRst",
    "reordering": "reordering:Reordering",
    "loss": "reordering:Loss",
    "reclaim": "reclaim:Reclaim",
    "pfmemalloc": "pfmemalloc:Pfmemalloc",
}


def scenario(name: str) -> Scenario:
    """The scenario called ``name``; KeyError with the known names otherwise."""
    if name not in SCENARIOS:
        raise KeyError(f"unknown lab scenario {name!r}; known: {', '.join(SCENARIOS)}")
    mod, cls = SCENARIOS[name].split(":")
    return getattr(importlib.import_module(f"{__name__}.{mod}"), cls)()
