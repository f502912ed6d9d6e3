"""Reclaim stalls the collector's join attached to app spans (kernelnet.join = task / cgroup):
the analysis picks them up through the parent and keeps the weaker match name, so
``diagnose`` ranks memory_reclaim on them with the task (or cgroup) strength, not the
cookie's."""

import json

import polars as pl

from kernelnet_analysis import detect_spikes, join_kernel, rank_causes
from kernelnet_analysis.causes import STRENGTH
from kernelnet_analysis.otlp import FrameBuilder

MS = 1_000_000


def h(name: str) -> str:
    return name.encode().hex()


def unh(hexid: str) -> str:
    return bytes.fromhex(hexid).lstrip(b"\0").decode()


def build():
    """An app WITHOUT process.pid in its resource (the analysis' own task match cannot
    fire): every reclaim attachment below comes from the collector's parent."""
    b = FrameBuilder()
    app = b.add_resource("api", {})
    k = b.add_resource("otel-kernelnet", {})
    n = iter(range(1, 1000))

    def app_span(trace, start_ms, dur_ms):
        sid = f"{next(n):x}"
        b.add_span(h(trace), sid, None, "GET", 2, start_ms * MS, (start_ms + dur_ms) * MS, 0, None, "api", None, app, {})
        return sid

    def kernel(trace, parent, start_ms, dur_ms, **attrs):
        sid = f"{next(n):x}"
        b.add_span(h(trace), sid, parent, "kernel.reclaim", 1, start_ms * MS, (start_ms + dur_ms) * MS, 0, None,
                   "otel-kernelnet", "otel-kernelnet", k,
                   {"kernelnet.kind": "reclaim", "kernelnet.reclaim.type": "memcg",
                    "kernelnet.reclaim.duration_ns": dur_ms * MS, "kernelnet.cgroup.path": "/app", **attrs})
        return sid

    for i in range(30):
        app_span(f"b{i}", i * 100, 8 + i % 5)  # baseline 8..12 ms
    s_task = app_span("t", 5000, 300)
    s_cg = app_span("g", 7000, 300)
    s_cookie = app_span("c", 9000, 300)
    kernel("t", s_task, 5050, 200, **{"kernelnet.join": "task", "process.pid": 42})
    kernel("g", s_cg, 7050, 200, **{"kernelnet.join": "cgroup", "process.pid": 43})
    kernel("c", s_cookie, 9050, 200, **{"kernelnet.join": "cookie", "process.pid": 44})
    # joined by the collector to another app span (not a spike, far away in time): not attached here
    other = app_span("o", 20000, 10)
    kernel("o", other, 20001, 5, **{"kernelnet.join": "task", "process.pid": 42})
    return b.finish()


def test_collector_task_and_cgroup_joins_keep_their_match_name():
    t = build()
    spikes = detect_spikes(t.spans)
    assert sorted(unh(x) for x in spikes["trace_id"]) == ["c", "g", "t"]
    j = join_kernel(spikes, t.spans, t.links)
    got = {(unh(a), m, p) for a, m, p in j.select("app_trace_id", "match", "process.pid").rows()}
    # each stall under its own spike only, named by how the collector joined it
    assert got == {("t", "task", 42), ("g", "cgroup", 43), ("c", "parent", 44)}


def test_diagnose_ranks_memory_reclaim_on_collector_joined_stalls():
    t = build()
    spikes = detect_spikes(t.spans)
    c = rank_causes(join_kernel(spikes, t.spans, t.links), spikes)
    top = {unh(r["app_trace_id"]): r for r in c.group_by("app_span_id", maintain_order=True)
           .first().iter_rows(named=True)}
    for trace, match in (("t", "task"), ("g", "cgroup"), ("c", "parent")):
        assert top[trace]["kind"] == "memory_reclaim", top[trace]
        ev = json.loads(top[trace]["evidence"])
        assert ev["match"] == match and ev["stall_ms"] == 200
    # same stall, same overlap: the confidence follows the match strength
    conf = {k: v["confidence"] for k, v in top.items()}
    assert conf["c"] > conf["t"] > conf["g"]
    assert abs(conf["t"] / conf["c"] - STRENGTH["task"] / STRENGTH["parent"]) < 0.02  # confidence has 2 decimals
    assert abs(conf["g"] / conf["c"] - STRENGTH["cgroup"] / STRENGTH["parent"]) < 0.02
    assert c.filter(pl.col("kind") == "memory_reclaim").height == 3
