"""Sidecar scope of the node-level families (issue 8 item 1), without root:
the cgroup the reclaim family is scoped to (scope.resolve_cgroup), its plan, and the
softirq spans a scoped collector holds until a packet of the scope links to them."""

from __future__ import annotations

import doctest
import os
from pathlib import Path

import pytest

from otel_kernelnet import config, scope
from otel_kernelnet.kernel import cgroups, tracefs
from otel_kernelnet.links import LinkIndex
from otel_kernelnet.probes import reclaim
from otel_kernelnet.spans import CountingIds, KernelSpan

UID = "2f0e8c1a-6b0d-4e4f-9d39-0c5f1b7a3e21"
CTR = "ab" * 32


def test_module_doctests():
    for mod in (scope, cgroups):
        r = doctest.testmod(mod)
        assert r.attempted >= 5 and r.failed == 0, mod.__name__


@pytest.fixture
def tree(tmp_path):
    """A fake cgroup v2 mount: a systemd-driver pod with a container, a cgroupfs pod, and /a/b."""
    pod = tmp_path / "kubepods.slice" / "kubepods-burstable.slice" / f"kubepods-burstable-pod{UID.replace('-', '_')}.slice"
    (pod / f"cri-containerd-{CTR}.scope").mkdir(parents=True)
    (tmp_path / "kubepods" / "besteffort" / "pod11111111-2222-4333-8444-555555555555" / CTR).mkdir(parents=True)
    (tmp_path / "a" / "b").mkdir(parents=True)
    return tmp_path, pod


def mounts(root) -> str:
    return f"cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\ncgroup2 {root} cgroup2 rw,relatime 0 0\n"


def resolve(root, mode="sidecar", explicit="", own="/", env=None):
    return scope.resolve_cgroup(mode, explicit, mounts_text=mounts(root), proc_self_cgroup=f"4:memory:/x\n0::{own}\n",
                                environ=env or {})


def test_sidecar_scope_is_the_pod_level_of_its_own_cgroup(tree):
    root, pod = tree
    rel = "/" + str(pod.relative_to(root))
    cs = resolve(root, own=f"{rel}/cri-containerd-{CTR}.scope")
    assert (cs.path, cs.id, cs.level, cs.mount) == (rel, os.stat(pod).st_ino, 3, str(root))
    assert cs.active and cs.how.startswith("the pod of this process's cgroup")


def test_sidecar_in_its_own_cgroup_namespace_finds_the_pod_by_uid(tree):
    root, pod = tree
    # a container with a private cgroup namespace reads 0::/ ; $POD_UID (downward API) finds the pod
    cs = resolve(root, own="/", env={"POD_UID": UID})
    assert cs.path == "/" + str(pod.relative_to(root)) and "($POD_UID)" in cs.how
    cs = resolve(root, own="/", env={"POD_UID": "11111111-2222-4333-8444-555555555555"})
    assert cs.path == "/kubepods/besteffort/pod11111111-2222-4333-8444-555555555555" and cs.level == 3
    # not under this mount (the container's own view): not scoped, and the reason names the fix
    cs = resolve(root, own="/", env={"POD_UID": "99999999-2222-4333-8444-555555555555"})
    assert not cs.active and "mount the host's /sys/fs/cgroup" in cs.how


def test_sidecar_outside_kubernetes_takes_the_parent_of_its_cgroup(tree):
    root, _ = tree
    cs = resolve(root, own="/a/b")
    assert (cs.path, cs.level, cs.id) == ("/a", 1, os.stat(root / "a").st_ino)
    assert not resolve(root, own="/a").active  # the parent would be the root: every task
    assert "no parent below the root" in resolve(root, own="/").how
    assert not resolve(root, own="/gone/x").active  # not under this mount


def test_pure_v1_and_node_modes():
    cs = scope.resolve_cgroup("sidecar", mounts_text="cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n",
                              proc_self_cgroup="4:memory:/kubepods/pod1/c\n", environ={})
    assert not cs.active and "pure cgroup v1" in cs.how
    assert scope.resolve_cgroup("node") is None and scope.resolve_cgroup("daemonset") is None
    with pytest.raises(scope.ScopeError, match="pure cgroup v1"):
        scope.resolve_cgroup("node", "/a", mounts_text="", proc_self_cgroup="")


def test_explicit_scope_cgroup(tree):
    root, _ = tree
    for given in ("/a/b", "a/b/", f"{root}/a/b"):
        cs = resolve(root, mode="node", explicit=given)
        assert (cs.path, cs.level, cs.how) == ("/a/b", 2, "scope.cgroup"), given
    with pytest.raises(scope.ScopeError, match="no such cgroup"):
        resolve(root, mode="node", explicit="/nope")
    with pytest.raises(scope.ScopeError, match="root cgroup"):
        resolve(root, mode="sidecar", explicit="/")


def test_config_key():
    assert config.validate({})["scope.cgroup"] == ""
    assert config.validate({"scope": {"cgroup": "/kubepods/pod1"}})["scope.cgroup"] == "/kubepods/pod1"
    with pytest.raises(config.ConfigError, match="scope.cgroup"):
        config.validate({"scope": {"cgroup": 5}})


def test_describe_families():
    lines = scope.describe_families(None, None)
    assert lines == ["drop, tcp, lifecycle, netns_counters: every network namespace on the node",
                     "reclaim: every cgroup (with kswapd runs and zone watermarks)",
                     "softirq: every CPU's long softirqs, per-CPU histograms"]
    cs = scope.CgroupScope("/p", 9, 1, "/sys/fs/cgroup", "scope.cgroup")
    assert scope.describe_families(frozenset({7}), cs)[1] == (
        "reclaim: stalls of tasks in cgroup /p (cgroup v2 id 9, level 1; scope.cgroup) (no kswapd runs, zone watermarks)")


# --- the reclaim plan -----------------------------------------------------------------------
FIX = Path(__file__).resolve().parents[1] / "fixtures"


def test_reclaim_plan_compiles_the_cgroup_scope_in_and_drops_kswapd():
    # the recorded vmscan formats of the reference kernel (6.18)
    fmts = {tp.key: tracefs.parse_format((FIX / "tracefs" / f"vmscan.{tp.name}.6.18.format").read_text(), "vmscan", tp.name)
            for g in reclaim.GROUPS for tp in g.tracepoints}
    unscoped = reclaim.plan(fmts)
    assert unscoped.defines["KN_SCOPE_CGROUP"] == 0 and unscoped.defines["KN_HAVE_KSWAPD"] == 1
    assert not unscoped.scoped and "KN_SCOPE_CGROUP_ID" not in unscoped.defines
    p = reclaim.plan(fmts, scope=scope.CgroupScope("/kubepods/pod1", 4242, 2, "/sys/fs/cgroup", "scope.cgroup"))
    assert p.scoped and p.defines["KN_SCOPE_CGROUP"] == 1
    assert (p.defines["KN_SCOPE_CGROUP_ID"], p.defines["KN_SCOPE_CGROUP_LEVEL"]) == ("4242ULL", 2)
    assert p.defines["KN_HAVE_KSWAPD"] == 0 and "kn_rcl_on_kswapd_wake" not in [fn for _, fn in p.attach]
    assert "kn_rcl_on_memcg_end" in [fn for _, fn in p.attach] and not [d for d in p.degraded if "scope" in d]
    assert "cgroup /kubepods/pod1" in p.describe()
    # asked for but impossible: node-wide, and said so
    p = reclaim.plan(fmts, scope=scope.CgroupScope(how="pure cgroup v1"))
    assert not p.scoped and p.defines["KN_SCOPE_CGROUP"] == 0 and p.defines["KN_HAVE_KSWAPD"] == 1
    assert any("not scoped: pure cgroup v1" in d for d in p.degraded)
    assert p.fix.startswith("set scope.cgroup") and reclaim.plan(fmts).fix == ""


def test_scoped_zone_sampler_emits_no_node_level_spans():
    from otel_kernelnet.kernel.zoneinfo import Zone
    low = Zone(node=0, zone="Normal", free_pages=10, min_pages=100, low_pages=120, high_pages=140,
               managed_pages=1000, present_pages=1000)
    out: list = []
    ix = LinkIndex()
    z = reclaim.ZoneSampler(1.0, CountingIds(), out.append, ix, read=lambda: [low], emit_spans=False)
    z.poll()
    assert out == [] and z.below_min_events == 1
    assert ix.memory_pressure_at(10**20)["below_min"] == ["node0/Normal"]  # drops still see the pressure
    assert ix.memory_pressure_at(10**20)["links"] == []  # but link to no span that was never emitted
    z = reclaim.ZoneSampler(1.0, CountingIds(), out.append, None, read=lambda: [low])
    z.poll()
    assert len(out) == 1


# --- scoped softirq: held until a packet of the scope links to it ------------------------------
def span(n: int, start: int, end: int) -> KernelSpan:
    return KernelSpan("kernel.softirq", n.to_bytes(16, "big"), n.to_bytes(8, "big"), start, end,
                      {"kernelnet.kind": "softirq"})


def test_unscoped_index_never_holds():
    ix = LinkIndex()
    assert ix.add_softirq(span(1, 100, 200), cpu=0) is False and not ix.holding


def test_scoped_softirq_emitted_only_when_a_packet_waited_through_it():
    out: list[KernelSpan] = []
    ix = LinkIndex()
    ix.hold_softirq(out.append)
    assert ix.add_softirq(span(1, 100, 200), cpu=0) is True  # held
    assert ix.add_softirq(span(2, 300, 400), cpu=0) is True
    assert ix.add_softirq(span(3, 100, 200), cpu=1) is True
    assert out == []
    # a packet of the scope on CPU 0 that waited during [150, 160]: releases span 1 only
    links = ix.softirq_overlapping(0, 150, 160)
    assert [lk.span_id[-1] for lk in links] == [1] and [s.span_id[-1] for s in out] == [1]
    # asked again: linked again, never emitted twice
    assert [lk.span_id[-1] for lk in ix.softirq_overlapping(0, 120, 130)] == [1] and len(out) == 1
    assert ix.softirq_hold_stats() == {"scope_held": 2, "scope_released": 1, "scope_discarded": 0}
    # a packet on another CPU releases nothing of CPU 0
    ix.softirq_overlapping(1, 300, 400)
    assert len(out) == 1


def test_packet_before_its_softirq_span_releases_it_on_arrival():
    """The lifecycle record may be drained before the softirq record (a long run while
    the reader on another CPU already read the packet): the packet's interval is kept."""
    out: list[KernelSpan] = []
    ix = LinkIndex()
    ix.hold_softirq(out.append)
    assert ix.softirq_overlapping(0, 150, 160) == []
    assert ix.add_softirq(span(1, 100, 200), cpu=0) is False  # the caller emits it now
    assert ix.add_softirq(span(2, 300, 400), cpu=0) is True  # no packet of the scope in it
    assert ix.softirq_hold_stats()["scope_released"] == 1


def test_held_spans_are_bounded_and_discards_counted():
    out: list[KernelSpan] = []
    ix = LinkIndex(per_cpu=2)
    ix.hold_softirq(out.append)
    for i in range(5):
        ix.add_softirq(span(i + 1, i * 10, i * 10 + 5), cpu=0)
    assert ix.softirq_hold_stats() == {"scope_held": 2, "scope_released": 0, "scope_discarded": 3}
    ix.softirq_overlapping(0, 0, 100)
    assert [s.span_id[-1] for s in out] == [4, 5]
