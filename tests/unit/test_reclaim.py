"""Reclaim family without root: plan() from captured vmscan formats, gfp/throttle
names evaluated from the format's own tables, decoding a hand-written record, the span
mapping, and the edge-triggered zone sampler."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from otel_kernelnet.kernel import tracefs, zoneinfo
from otel_kernelnet.links import LinkIndex
from otel_kernelnet.probes import ProbeUnavailable, reclaim
from otel_kernelnet.spans import CountingIds
from tests.unit.test_records import test_ctypes_layout_equals_the_c_compilers as _layout_check

FIX = Path(__file__).resolve().parents[1] / "fixtures"


def formats(**override):
    out = {tp.key: tracefs.parse_format((FIX / "tracefs" / f"vmscan.{tp.name}.6.18.format").read_text(), "vmscan", tp.name)
           for g in reclaim.GROUPS for tp in g.tracepoints}
    out.update(override)
    return out


class EnumBTF:
    def enum_members(self, name):
        assert name == "vmscan_throttle_state"
        return {"VMSCAN_THROTTLE_WRITEBACK": 0, "VMSCAN_THROTTLE_ISOLATED": 1, "VMSCAN_THROTTLE_NOPROGRESS": 2,
                "VMSCAN_THROTTLE_CONGESTED": 3, "NR_VMSCAN_THROTTLE": 4}


def test_record_layout_equals_the_c_compilers(tmp_path):
    _layout_check(tmp_path, "reclaim", "kn_reclaim_event")


def test_plan_offsets_and_names_from_the_running_kernels_formats():
    p = reclaim.plan(formats(), EnumBTF(), rate_limit=5, rate_limit_node=11)
    d = p.defines
    assert p.degraded == []
    assert (d["KN_TP_DIRECT_BEGIN_ORDER"], d["KN_TP_DIRECT_BEGIN_GFP_FLAGS"], d["KN_TP_DIRECT_END_NR_RECLAIMED"]) == (8, 16, 8)
    assert (d["KN_TP_KSWAPD_WAKE_NID"], d["KN_TP_KSWAPD_WAKE_ZID"], d["KN_TP_KSWAPD_WAKE_ORDER"]) == (8, 12, 16)
    assert (d["KN_TP_THROTTLE_USEC_DELAYED"], d["KN_TP_THROTTLE_REASON"]) == (16, 20)
    assert all(d[f"KN_HAVE_{g}"] == 1 for g in ("DIRECT", "MEMCG", "KSWAPD", "THROTTLE")) and d["KN_RATE_LIMIT"] == 5
    assert d["KN_RATE_LIMIT_NODE"] == 11
    # 6.18: GFP_KERNEL = __GFP_RECLAIM (bits 10, 11) | __GFP_IO (6) | __GFP_FS (7) = 0xcc0
    assert p.gfp_name(0xCC0) == "GFP_KERNEL"
    assert p.gfp_name(0xCC0 | 1 << 22) == "GFP_KERNEL_ACCOUNT"
    assert p.gfp_name(0x140DCA) == "GFP_HIGHUSER_MOVABLE|__GFP_ZERO|__GFP_COMP"
    assert p.gfp_name(1 << 40) == "0x10000000000" and p.gfp_name(0) == "none"
    assert p.throttle_reason(1) == "VMSCAN_THROTTLE_WRITEBACK"
    assert p.throttle_reason(0b1010) == "VMSCAN_THROTTLE_ISOLATED|VMSCAN_THROTTLE_CONGESTED"
    assert ("kswapd_wake" in " ".join(a for a, _ in p.attach)) and len(p.attach) == 7


def test_plan_degrades_per_group_and_refuses_with_nothing():
    p = reclaim.plan(formats(THROTTLE=None, MEMCG_END=None), None)
    assert p.defines["KN_HAVE_THROTTLE"] == 0 and p.defines["KN_HAVE_MEMCG"] == 0
    assert any("mm_vmscan_memcg_reclaim_end does not exist" in x and "no memcg-reclaim spans" in x for x in p.degraded)
    assert all("memcg" not in fn for _tp, fn in p.attach)
    with pytest.raises(ProbeUnavailable, match="none of the vmscan"):
        reclaim.plan({k: None for k in formats()})


def test_const_eval_refuses_anything_but_constants():
    assert reclaim.const_eval("(( gfp_t)((((1UL))) << (5)))|(( gfp_t)((((1UL))) << (11)))") == 0x820
    assert reclaim.const_eval("~(( gfp_t)1) & 0xff") == 0xFE
    for bad in ("__import__('os')", "a.b", "f(1)", "UNKNOWN_NAME"):
        with pytest.raises(ValueError):
            reclaim.const_eval(bad)


def rec(**kw) -> bytes:
    f = dict(start_ns=1_000, end_ns=5_001_000, gfp_flags=0xCC0, nr_reclaimed=32, cgroup=9572, pid=300, tid=301,
             cpu=1, order=0, nid=0, zid=0, usec_timeout=0, usec_delayed=0, reason=0, type=2, comm=b"writer")
    f.update(kw)
    return (struct.pack("<5Q", f["start_ns"], f["end_ns"], f["gfp_flags"], f["nr_reclaimed"], f["cgroup"])
            + struct.pack("<3I6i", f["pid"], f["tid"], f["cpu"], f["order"], f["nid"], f["zid"],
                          f["usec_timeout"], f["usec_delayed"], f["reason"])
            + struct.pack("<B3x", f["type"]) + f["comm"].ljust(16, b"\0"))


def test_decode_and_map_a_memcg_stall():
    p = reclaim.plan(formats(), EnumBTF())
    raw = rec()
    assert len(raw) == 96
    ev = reclaim.decode(raw)
    span = reclaim.reclaim_span(ev, to_epoch_ns=lambda t: t + 10**18, ids=CountingIds(), plan_=p,
                                cgroup_path={9572: "/system.slice/docker-" + "cd" * 32 + ".scope"}.get)
    assert (span.name, span.start_ns, span.end_ns) == ("kernel.reclaim", 10**18 + 1_000, 10**18 + 5_001_000)
    assert span.attributes == {
        "kernelnet.kind": "reclaim", "kernelnet.reclaim.type": "memcg", "kernelnet.reclaim.duration_ns": 5_000_000,
        "kernelnet.cpu": 1, "process.pid": 300, "thread.id": 301, "process.command": "writer",
        "kernelnet.reclaim.order": 0, "kernelnet.reclaim.gfp_flags": "GFP_KERNEL", "kernelnet.reclaim.gfp_flags_raw": 0xCC0,
        "kernelnet.reclaim.nr_reclaimed": 32, "kernelnet.cgroup.id": 9572,
        "kernelnet.cgroup.path": "/system.slice/docker-" + "cd" * 32 + ".scope", "container.id": "cd" * 32}
    thr = reclaim.reclaim_span(reclaim.decode(rec(type=4, nid=0, usec_timeout=100_000, usec_delayed=20_000,
                                                  reason=4, start_ns=0, end_ns=0)),
                               to_epoch_ns=lambda t: t, ids=CountingIds(), plan_=p)
    assert thr.attributes["kernelnet.reclaim.type"] == "throttle"
    assert thr.attributes["kernelnet.reclaim.throttle.reason"] == "VMSCAN_THROTTLE_NOPROGRESS"
    assert thr.attributes["kernelnet.reclaim.throttle.timeout_us"] == 100_000
    assert "kernelnet.reclaim.gfp_flags" not in thr.attributes and "kernelnet.cgroup.path" not in thr.attributes
    with pytest.raises(ValueError, match="unknown type 9"):
        reclaim.decode(rec(type=9))
    from otel_kernelnet import semconv
    for key in list(span.attributes) + list(thr.attributes):
        assert key in semconv.BY_KEY, key


def test_zone_sampler_is_edge_triggered_and_feeds_links():
    text = (FIX / "proc" / "zoneinfo.handwritten").read_text()
    healthy = text.replace("pages free     14000", "pages free     30000")
    reads = [text, text, healthy, text]
    mono = [0.0]
    spans, links = [], LinkIndex()
    s = reclaim.ZoneSampler(1.0, CountingIds(), spans.append, links, read=lambda: zoneinfo.parse(reads.pop(0)),
                            now_ns=lambda: 10**18 + int(mono[0] * 1e9), monotonic=lambda: mono[0])
    for t in (0.0, 0.5, 1.0, 2.0, 3.0):  # 0.5: not due yet
        mono[0] = t
        s.poll()
    assert reads == []
    assert [sp.start_ns for sp in spans] == [10**18, 10**18 + 3 * 10**9]  # below at 0, again at 3 (not at 1)
    a = spans[0].attributes
    assert (a["kernelnet.reclaim.type"], a["kernelnet.memory.node"], a["kernelnet.memory.zone"],
            a["kernelnet.memory.zone.free_pages"], a["kernelnet.memory.zone.min_pages"]) == ("zone_below_min", 0, "Normal", 14000, 14769)
    state = links.memory_pressure_at(10**18 + 5)
    assert state["below_min"] == ["node0/Normal"] and state["links"][0].span_id == spans[0].span_id
    assert [z["zone"] for z in state["zones"]] == ["DMA", "Normal", "Normal"]  # the empty zone left out
    assert links.memory_pressure_at(10**18 + 2 * 10**9)["below_min"] == []
    assert links.memory_pressure_at(10**18 - 1) is None
    fam = reclaim.ReclaimFamily()
    fam.sampler = s
    assert [g["level"] for g in fam.gauges()] == ["ok", "below_min", "below_high"]
