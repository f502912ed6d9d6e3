"""`otel-kernelnet lab pfmemalloc` (CASES.md #1): a replay of synthetic kernel records through the
real drop/reclaim/counter families, the collector's join and its embedded-store writer.

No root needed (nothing is attached to the kernel; the app runs on loopback), so this is a
unit-tier test; it runs the lab end to end as a user would.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

from otel_kernelnet import semconv as sc
from otel_kernelnet.lab import pfmemalloc as pfm
from otel_kernelnet.lab import scenario
from tests.kernel.lab_util import ROOT, cross_check_rows, top_cause


def run_replay(output: Path, timeout: float = 90) -> tuple[int, str]:
    """``otel-kernelnet lab pfmemalloc --output DIR`` as a user runs it: (exit code, output).

    Then: nothing it started is left. The replay creates no namespace or cgroup (other
    labs running beside it on a shared machine do, so those are not compared globally):
    no process of the run remains (the server's command line names the output dir, the
    clients' the receiver's URL) and the receiver's port is free again."""
    r = subprocess.run([sys.executable, "-m", "otel_kernelnet.cli", "lab", "pfmemalloc", "--output", str(output)],
                       cwd=ROOT, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    text = r.stdout + r.stderr
    m = re.search(r"receiver (127\.0\.0\.1):(\d+)\)", text)
    marks = [str(output)] + ([f"http://{m.group(1)}:{m.group(2)}/"] if m else [])
    left = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "otel_kernelnet.lab.app" in cmd and any(k in cmd for k in marks):
            left.append(f"{pid}: {cmd[:160]}")
    assert not left, f"the run left processes behind: {left}"
    if m:
        with socket.socket() as s:  # the in-process receiver is closed (TIME_WAIT of its connections is fine)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((m.group(1), int(m.group(2))))
            s.listen()
    return r.returncode, text


def _spans(out: Path) -> list[dict]:
    """Raw OTLP spans of the store (with their ids and parents) and their attributes."""
    spans = []
    for f in sorted(out.glob("traces-*.jsonl")):
        for line in f.read_text().splitlines():
            for rs in json.loads(line).get("resourceSpans", []):
                for ss in rs.get("scopeSpans", []):
                    for s in ss.get("spans", []):
                        s["attrs"] = {kv["key"]: next(iter(kv["value"].values())) for kv in s.get("attributes", [])}
                        spans.append(s)
    return spans


def test_pfmemalloc_replay_is_diagnosed_as_pfmemalloc_drop(tmp_path):
    out = tmp_path / "run"
    rc, text = run_replay(out)
    assert rc == 0, text
    # it says plainly that the kernel side is a replay
    assert "REPLAY: the kernel events of this scenario are SYNTHETIC" in text
    assert "PASS: pfmemalloc_drop came first" in text

    kind, cause = top_cause(out, "pfmemalloc")
    assert kind == "pfmemalloc_drop"
    ev = cause["evidence"]
    assert ev["reason"] == "PFMEMALLOC"
    assert ev["drops"] == len(pfm.DROP_OFFSETS_MS)               # one stalled request's drops
    assert ev["pfmemalloc_counter"] == len(pfm.DROP_OFFSETS_MS)  # its counter window, no neighbour's
    assert set(ev["zones_below_min"].split(",")) == {"node0/DMA32", "node0/Normal"}
    assert ev["location"].startswith("tcp_v4_rcv+")
    assert cause["confidence"] >= 0.9

    rows = cross_check_rows(text)
    assert len(rows) == 7 and all(r.endswith("ok  (replayed)") for r in rows), rows
    first = rows[0].split()
    assert int(first[-4]) == int(first[-3]) == pfm.STALLS * len(pfm.DROP_OFFSETS_MS)

    # the join made each drop a child of the stalled server span carrying the same cookie
    spans = _spans(out)
    servers = {s["spanId"]: s for s in spans if s.get("kind") == 2 and s["attrs"].get(sc.COOKIE)}
    drops = [s for s in spans if s["attrs"].get(sc.KIND) == sc.KIND_DROP]
    assert len(drops) == pfm.STALLS * len(pfm.DROP_OFFSETS_MS)
    for d in drops:
        parent = servers[d["parentSpanId"]]
        assert d["traceId"] == parent["traceId"]
        assert int(d["attrs"][sc.COOKIE]) == int(parent["attrs"][sc.COOKIE])
        assert int(parent["startTimeUnixNano"]) <= int(d["startTimeUnixNano"]) <= int(parent["endTimeUnixNano"])
        assert d["attrs"]["kernelnet.drop.reason"] == "PFMEMALLOC"
        assert d["attrs"]["kernelnet.memory.below_min"] == "node0/DMA32,node0/Normal"
        assert len(d.get("links", [])) >= 2  # the zone_below_min span and the direct-reclaim stall
    # the raw records replayed are kept beside the data
    assert (out / "logs" / "replay-records.log").read_text().count('"what": "drop"') == len(drops)


def test_replay_loader_feeds_the_drop_family_unchanged():
    """A raw struct kn_drop_event pushed through ReplayLoader comes out of DropFamily's own
    decoder and span mapper, with the reason named by the recorded 6.18 format file."""
    from otel_kernelnet.clock import KernelClock
    from otel_kernelnet.config import validate
    from otel_kernelnet.links import LinkIndex
    from otel_kernelnet.probes import KernelContext
    from otel_kernelnet.probes import drop as drop_mod
    from otel_kernelnet.spans import CountingIds

    fmt = pfm._fmt("skb.kfree_skb")
    code = next(v for v, n in fmt.symbols["reason"].items() if n == "PFMEMALLOC")
    ctx = KernelContext(btf=None, symbol=lambda a: pfm.SYMBOLS.get(a, hex(a)), clock=KernelClock(),
                        ids=CountingIds(), cfg=validate({}), links=LinkIndex())
    got = []
    loader = pfm.ReplayLoader()
    fam = drop_mod.DropFamily()
    fam.start(loader, drop_mod.plan(fmt, None), ctx, got.append, lambda e: got.append(e))
    r = drop_mod.RECORD()
    r.ts_ns, r.reason, r.sk_cookie, r.location, r.len = 123_000, code, 4242, pfm.LOCATION, 1500
    r.flags = drop_mod.FLAGS["KN_DROP_F_HAS_SK"]
    assert len(bytes(r)) == ctypes.sizeof(drop_mod.RECORD)
    loader.push("drop", r)
    assert len(got) == 1, got
    a = got[0].attributes
    assert a["kernelnet.drop.reason"] == "PFMEMALLOC" and a[sc.COOKIE] == 4242
    assert a["kernelnet.drop.location"] == "tcp_v4_rcv+0x6d4"
    assert fam.stats()["emitted"] == fam.stats()["seen"] == 1 and fam.stats()["decode_errors"] == 0


def test_scenario_is_registered_as_a_replay_and_its_recordings_ship():
    s = scenario("pfmemalloc")
    assert isinstance(s, pfm.Pfmemalloc) and s.replay and s.expect == "pfmemalloc_drop"
    assert any("SYNTHETIC" in line for line in s.describe())
    for name in ("skb.kfree_skb", "vmscan.mm_vmscan_direct_reclaim_begin", "vmscan.mm_vmscan_direct_reclaim_end"):
        assert (pfm.DATA / f"{name}.6.18.format").is_file()
    import tomllib
    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    assert "lab/data/*" in pyproject["tool"]["setuptools"]["package-data"]["otel_kernelnet"]
