"""`otel-kernelnet lab reclaim` end to end, as a user runs it (CASES.md #1, the reclaim stall)."""

from __future__ import annotations

import glob
import re
from pathlib import Path

from otel_kernelnet.lab.runner import read_spans
from tests.kernel.lab_util import cross_check_rows, run_lab, top_cause


def test_reclaim_is_diagnosed_as_memory_reclaim_of_the_server(tmp_path):
    out = tmp_path / "run"
    rc, text = run_lab("reclaim", out)
    assert rc == 0, text
    assert "PASS: memory_reclaim came first" in text
    m = re.search(r"server pid (\d+), cgroup (/kn-lab-[0-9a-f]+-server)\)", text)
    assert m, text
    pid, cgroup = int(m.group(1)), m.group(2)

    kind, cause = top_cause(out, "reclaim")
    assert kind == "memory_reclaim"
    ev = cause["evidence"]
    assert ev["stall_ms"] > 0
    assert ev["type"] in ("memcg", "direct", "throttle")
    assert ev["pid"] == pid                  # the server's own stall...
    assert ev["cgroup"] == cgroup            # ...in the lab's memory-limited cgroup
    assert ev["task"].startswith("python")
    assert ev["match"] == "task"             # tied to the request by its process, not by time alone

    # the server's spans carry its pid (the join key of the "task" match)
    spans = list(read_spans(out))
    assert {s["resource"].get("process.pid") for s in spans
            if s["resource"].get("service.name") == "lab-server"} == {pid}
    stalls = [s for s in spans if s["attributes"].get("kernelnet.kind") == "reclaim"
              and s["attributes"].get("process.pid") == pid
              and s["attributes"].get("kernelnet.reclaim.type") == "memcg"]
    assert stalls and all(s["attributes"]["kernelnet.cgroup.path"] == cgroup for s in stalls)
    assert max(s["attributes"]["kernelnet.reclaim.duration_ns"] for s in stalls) >= 1_000_000

    rows = cross_check_rows(text)
    assert len(rows) == 2 and all(r.split("(")[0].rstrip().endswith("ok") for r in rows), rows
    base = next(r for r in rows if r.startswith("baseline:")).split("(")[0].split()
    assert int(base[-3]) == int(base[-2]) == 0          # no reclaim before the pressure
    whole = next(r for r in rows if r.startswith("whole run:")).split("(")[0].split()
    kernel, exported = int(whole[-3]), int(whole[-2])
    assert 0 < exported <= kernel

    # nothing left: run_lab checked namespaces and cgroups (v2 or the v1 memory hierarchy)
    assert not Path(f"/sys/fs/cgroup/memory{cgroup}").exists() and not Path(f"/sys/fs/cgroup{cgroup}").exists()
    assert not glob.glob(f"/var/tmp/kn-lab-{cgroup.split('-')[2]}-reclaim-*")   # the server's data file
