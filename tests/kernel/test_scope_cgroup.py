"""Scope of the reclaim family by cgroup (issue 8 item 1, sidecar mode).

A "pod" cgroup v2 directory with two children (``app``: workload A; ``collector``:
where the sidecar collector runs) and a sibling cgroup (``other``: workload B), all
made by the test under the cgroup v2 mount (on a hybrid v1/v2 machine such as the
reference VM: the unified hierarchy, which has no controllers). Each workload also
runs in its own memory-limited cgroup (the v1 memory hierarchy on a hybrid machine,
``memory.max`` of its v2 leaf on a pure v2 one) and writes and rereads a 64 MiB file
under a 24 MiB limit, so it stalls in memcg reclaim. Bounded in size and time; files
and cgroups are removed.

- the sidecar collector (``scope.mode: sidecar``, started inside ``pod/collector``)
  finds the pod as its cgroup's parent and reports A's stalls, never B's, and no
  kswapd or zone span;
- a collector with ``scope.cgroup: /<other>`` reports B's, never A's;
- an unscoped collector reports both.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from otel_kernelnet.kernel import cgroups
from tests.kernel.conftest import RECLAIM_WRITER, ROOT, read_store, wait_for_store

LIMIT = 24 << 20
FILE_MB = "64"
ONLY_RECLAIM = {"probes": {**{f: {"enabled": False} for f in ("drop", "tcp", "netns_counters", "lifecycle", "softirq")},
                           "reclaim": {"zoneinfo_interval_ms": 100}}}


def _rmdir(path: Path) -> None:
    import time
    for _ in range(50):
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:  # tasks still leaving
            time.sleep(0.1)
    path.rmdir()


class Cgroups:
    """The test's cgroups: v2 ``pod/{app,collector}`` and ``other``; memory-limited
    cgroups for the two workloads. Removed (children first) by ``remove``."""

    def __init__(self):
        with open(cgroups.MOUNTS) as f:
            mounts = cgroups.parse_mounts(f.read())
        v2 = cgroups.v2_mount(mounts)
        assert v2 is not None, "no cgroup v2 hierarchy mounted: the cgroup scope needs one"
        self.v2 = Path(v2.path)
        self.setup = cgroups.detect()
        tag = uuid.uuid4().hex[:8]
        self.pod_rel, self.other_rel = f"/kn-pod-{tag}", f"/kn-other-{tag}"
        self.made: list[Path] = []
        self.pod = self._mkdir(self.v2 / self.pod_rel.lstrip("/"))
        self.app = self._mkdir(self.pod / "app")
        self.collector = self._mkdir(self.pod / "collector")
        self.other = self._mkdir(self.v2 / self.other_rel.lstrip("/"))
        if self.setup.mode == 1:  # hybrid: memory is a v1 hierarchy, one limited cgroup per workload
            mem = Path(self.setup.root)
            self.mem_app = self._mkdir(mem / f"kn-mem-a-{tag}")
            self.mem_other = self._mkdir(mem / f"kn-mem-b-{tag}")
            for m in (self.mem_app, self.mem_other):
                (m / "memory.limit_in_bytes").write_text(str(LIMIT))
        else:  # pure v2: the workloads' own leaves carry memory.max
            for parent in (self.v2, self.pod):
                ctl = parent / "cgroup.subtree_control"
                if "memory" not in ctl.read_text().split():
                    ctl.write_text("+memory")
            for leaf in (self.app, self.other):
                (leaf / "memory.max").write_text(str(LIMIT))
                if (leaf / "memory.swap.max").exists():
                    (leaf / "memory.swap.max").write_text("0")
            self.mem_app = self.mem_other = None

    def _mkdir(self, p: Path) -> Path:
        p.mkdir()
        self.made.append(p)
        return p

    @staticmethod
    def enter(*dirs: Path | None) -> tuple[str, ...]:
        """A command prefix that moves the shell into ``dirs`` (cgroup.procs), then execs the rest."""
        moves = " && ".join(f"echo $$ > {d}/cgroup.procs" for d in dirs if d is not None)
        return ("sh", "-c", f'{moves} && exec "$@"', "sh")

    def workload(self, v2_dir: Path, mem_dir: Path | None, data: Path, timeout: float = 90) -> int:
        out = subprocess.run([*self.enter(v2_dir, mem_dir), sys.executable, "-c", RECLAIM_WRITER, str(data), FILE_MB],
                             capture_output=True, text=True, timeout=timeout, check=True)
        return int(out.stdout.split()[0])

    def remove(self) -> None:
        for p in reversed(self.made):
            _rmdir(p)


@pytest.fixture
def cgs():
    c = Cgroups()
    try:
        yield c
    finally:
        c.remove()


def _stalls(spans, pid=None):
    return [s for s in spans if s["name"] == "kernel.reclaim"
            and s["attributes"].get("kernelnet.reclaim.type") in ("direct", "memcg")
            and (pid is None or s["attributes"].get("process.pid") == pid)]


def test_reclaim_scoped_by_the_pod_cgroup_in_the_kernel(collector, cgs):
    sidecar = collector(config={**ONLY_RECLAIM, "scope": {"mode": "sidecar"}}, prefix=cgs.enter(cgs.collector))
    listed = collector(config={**ONLY_RECLAIM, "scope": {"cgroup": cgs.other_rel}})
    node = collector(config=ONLY_RECLAIM)
    assert f"reclaim: stalls of tasks in cgroup {cgs.pod_rel} " in sidecar.text(), sidecar.text()
    assert f"reclaim: stalls of tasks in cgroup {cgs.other_rel} " in listed.text(), listed.text()
    assert "reclaim: every cgroup" in node.text(), node.text()
    data = ROOT / f".kn-scope-{uuid.uuid4().hex[:8]}.bin"  # on the disk, not tmpfs
    try:
        pid_a = cgs.workload(cgs.app, cgs.mem_app, data)
        pid_b = cgs.workload(cgs.other, cgs.mem_other, data)
    finally:
        data.unlink(missing_ok=True)

    both = lambda spans: _stalls(spans, pid_a) and _stalls(spans, pid_b)  # noqa: E731
    wait_for_store(node.output, both, timeout=20)
    wait_for_store(sidecar.output, lambda s: _stalls(s, pid_a), timeout=10)
    wait_for_store(listed.output, lambda s: _stalls(s, pid_b), timeout=10)
    for c in (sidecar, listed, node):
        assert c.stop() == 0, c.text()[-3000:]

    spans = read_store(node.output)
    assert _stalls(spans, pid_a) and _stalls(spans, pid_b), f"the unscoped collector missed a workload:\n{node.text()[-2000:]}"

    spans = read_store(sidecar.output)
    assert _stalls(spans, pid_a), f"the sidecar missed its pod's stalls:\n{sidecar.text()[-2000:]}"
    assert not _stalls(spans, pid_b)
    # nothing of any task outside the pod: only A (and the sidecar collector itself, which is in the pod)
    assert {s["attributes"]["process.pid"] for s in _stalls(spans)} <= {pid_a, sidecar.proc.pid}
    types = {s["attributes"]["kernelnet.reclaim.type"] for s in spans if s["name"] == "kernel.reclaim"}
    assert not types & {"kswapd", "zone_below_min"}, types

    spans = read_store(listed.output)
    assert _stalls(spans, pid_b), f"scope.cgroup missed its cgroup's stalls:\n{listed.text()[-2000:]}"
    assert not _stalls(spans, pid_a)
    assert {s["attributes"]["process.pid"] for s in _stalls(spans)} == {pid_b}


def test_check_prints_what_a_sidecar_sees(cgs, tmp_path):
    """``check`` run inside the pod's collector cgroup names the pod cgroup per family."""
    import json
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps({"scope": {"mode": "sidecar"}}))
    out = subprocess.run([*cgs.enter(cgs.collector), sys.executable, "-m", "otel_kernelnet.cli", "check",
                          "--config", str(cfg)],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert f"reclaim: stalls of tasks in cgroup {cgs.pod_rel} (cgroup v2 id {(cgs.pod).stat().st_ino}, level 1; " \
           f"the parent of this process's cgroup {cgs.pod_rel}/collector)" in out.stdout, out.stdout + out.stderr
    assert "softirq: only the softirq spans this scope's packets waited through" in out.stdout
