"""Kernel test of the reclaim family: memcg reclaim provoked in a memory-limited
cgroup, spans read back from the embedded store; zone watermark gauges.

The cgroup is created by the test and removed afterwards: cgroup v2 (``memory.max``)
where the unified hierarchy has the memory controller, else (a hybrid v1/v2 machine
such as the reference VM, where ``memory`` is a v1 hierarchy) the v1 memory
hierarchy (``memory.limit_in_bytes``). The workload writes and rereads a file of
96 MiB under a 32 MiB limit (page cache must be reclaimed within the cgroup), bounded
in size and time; the file is removed. The spans must carry the workload's pid and
comm and that cgroup's path.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from otel_kernelnet.kernel import cgroups
from tests.kernel.conftest import ROOT, wait_for_store

WRITER = r"""
import os, sys
path, mb = sys.argv[1], int(sys.argv[2])
block = os.urandom(1 << 20)
with open(path, "wb") as f:
    for _ in range(mb):
        f.write(block)
    f.flush(); os.fsync(f.fileno())
with open(path, "rb") as f:  # read back: refaults under the limit
    while f.read(1 << 20):
        pass
print(os.getpid(), flush=True)
"""


class MemoryCgroup:
    """A memory-limited cgroup under the memory controller's hierarchy."""

    def __init__(self, limit_bytes: int):
        setup = cgroups.detect()
        assert setup.root, f"no cgroup hierarchy with the memory controller: {setup.note}"
        self.setup = setup
        self.rel = f"/kn-test-{uuid.uuid4().hex[:8]}"
        self.path = Path(setup.root + self.rel)
        if setup.mode == 0:  # v2: enable memory for children of the root, then memory.max
            ctl = Path(setup.root) / "cgroup.subtree_control"
            if "memory" not in ctl.read_text().split():
                ctl.write_text("+memory")
        self.path.mkdir()
        if setup.mode == 0:
            (self.path / "memory.max").write_text(str(limit_bytes))
            (self.path / "memory.swap.max").write_text("0") if (self.path / "memory.swap.max").exists() else None
        else:
            (self.path / "memory.limit_in_bytes").write_text(str(limit_bytes))

    def run(self, code: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run python code inside the cgroup (the shell moves itself in, then execs)."""
        sh = f'echo $$ > {self.path}/cgroup.procs && exec "$0" -c "$@"'
        return subprocess.run(["sh", "-c", sh, sys.executable, code, *args], capture_output=True,
                              text=True, timeout=timeout, check=True)

    def remove(self) -> None:
        for _ in range(50):
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                import time
                time.sleep(0.1)
        self.path.rmdir()


@pytest.fixture
def memcg():
    cg = MemoryCgroup(32 << 20)
    try:
        yield cg
    finally:
        cg.remove()


def test_memcg_reclaim_spans_name_the_task_and_its_cgroup(collector, memcg, tmp_path):
    c = collector(config={"probes": {"drop": {"enabled": False}, "tcp": {"enabled": False},
                                     "netns_counters": {"enabled": False}, "lifecycle": {"enabled": False},
                                     "softirq": {"enabled": False},
                                     "reclaim": {"zoneinfo_interval_ms": 100}}})
    data = ROOT / f".kn-reclaim-{uuid.uuid4().hex[:8]}.bin"  # on the disk, not tmpfs
    try:
        out = memcg.run(WRITER, str(data), "96")
    finally:
        data.unlink(missing_ok=True)
    pid = int(out.stdout.split()[0])

    def mine(spans):
        return [s for s in spans if s["name"] == "kernel.reclaim"
                and s["attributes"].get("kernelnet.reclaim.type") == "memcg"
                and s["attributes"].get("process.pid") == pid]
    spans = wait_for_store(c.output, lambda s: mine(s), timeout=20)
    c.stop()
    got = mine(spans)
    assert got, f"no memcg reclaim span of pid {pid}:\n{c.text()[-2000:]}"
    for s in got:
        a = s["attributes"]
        assert a["kernelnet.cgroup.path"] == memcg.rel
        assert a["process.command"] == "python3" or a["process.command"].startswith("python")
        assert a["kernelnet.reclaim.duration_ns"] == s["end"] - s["start"] >= 0
        assert a["kernelnet.reclaim.gfp_flags"] and not a["kernelnet.reclaim.gfp_flags"].startswith("0x")
        assert a["kernelnet.reclaim.gfp_flags"] != "none"
        assert a["kernelnet.reclaim.order"] >= 0
    assert sum(s["attributes"]["kernelnet.reclaim.nr_reclaimed"] for s in got) > 0
    assert "probe reclaim cannot run" not in c.text()


def test_zone_gauges_from_the_running_kernel():
    """gauges() reads this machine's /proc/zoneinfo: the Normal zone is there, populated,
    with ordered watermarks (the sampler, without BPF)."""
    from otel_kernelnet.probes.reclaim import ReclaimFamily, ZoneSampler
    from otel_kernelnet.spans import CountingIds
    fam = ReclaimFamily()
    fam.sampler = ZoneSampler(1.0, CountingIds(), lambda s: None)
    fam.sampler.poll()
    g = {z["zone"]: z for z in fam.gauges()}
    assert "Normal" in g or "DMA32" in g
    for z in g.values():
        assert 0 <= z["min_pages"] <= z["low_pages"] <= z["high_pages"]
        assert z["managed_pages"] > 0 and z["free_pages"] >= 0 and z["sampled_ns"] > 0
    assert os.path.exists("/proc/zoneinfo")
