"""Each BPF family passes its ``rate_limit_per_cpu`` and ``rate_limit_per_node`` settings
to its plan, and the plan to the compile (-D KN_RATE_LIMIT, KN_RATE_LIMIT_NODE)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from otel_kernelnet import config
from otel_kernelnet.probes import drop, lifecycle, reclaim, softirq, tcp

FAMILIES = {"drop": (drop, drop.DropFamily), "tcp": (tcp, tcp.TcpFamily),
            "lifecycle": (lifecycle, lifecycle.LifecycleFamily), "softirq": (softirq, softirq.SoftirqFamily),
            "reclaim": (reclaim, reclaim.ReclaimFamily)}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_the_family_plans_with_both_caps_from_its_settings(name, monkeypatch):
    module, family = FAMILIES[name]
    cfg = config.validate({"probes": {name: {"rate_limit_per_cpu": 123, "rate_limit_per_node": 4567}}})
    seen: dict = {}
    monkeypatch.setattr(module, "plan", lambda *a, **kw: seen.update(kw) or "planned")
    ctx = SimpleNamespace(btf=None, cfg=cfg, scope_netns=None, scope_cgroup=None, symbol=hex)
    assert family().plan(ctx) == "planned"
    assert (seen["rate_limit"], seen["rate_limit_node"]) == (123, 4567)


def test_the_defaults_bound_the_node_below_one_collectors_ceiling():
    """Sum of the node-wide defaults: what the kernel may send at most, whatever the CPU
    count (docs/benchmarks.md: one collector turns ~35-40 K spans per CPU-second)."""
    total = sum(config.SCHEMA[f"probes.{n}.rate_limit_per_node"].default for n in FAMILIES)
    assert total <= 30_000
