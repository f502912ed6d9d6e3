"""Kernel test of the reclaim family: memcg reclaim provoked in a memory-limited
cgroup, spans read back from the embedded store; zone watermark gauges.

The cgroup is created by the test and removed afterwards: cgroup v2 (``memory.max``)
where the unified hierarchy has the memory controller, else (a hybrid v1/v2 machine
such as the reference VM, where ``memory`` is a v1 hierarchy) the v1 memory
hierarchy (``memory.limit_in_bytes``). The workload writes and rereads a file of
96 MiB under a 32 MiB limit (page cache must be reclaimed within the cgroup), bounded
in size and time; the file is removed. The spans must carry the workload's pid and
comm and that cgroup's path.

The join test (issue 4, "application-facing spans overlapping a reclaim stall of
their own task or cgroup link to it"): the lab's instrumented HTTP server runs in a
16 MiB memory cgroup and writes 2 MiB of fresh page cache per request while a batch
job of the same cgroup writes beside it, and a writer in another memory cgroup
reclaims at the same time; the collector receives the server's spans. Each stall of
the server that overlaps one of its request spans must come back as that span's
child (``kernelnet.join=task``), each stall of the batch job overlapping a request
span as a child marked ``cgroup``, and the other cgroup's stalls never attached.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest

from otel_kernelnet.kernel import cgroups
from tests.kernel.conftest import RECLAIM_WRITER, ROOT, read_store, stop_by_stdin, wait_for_store



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
        out = memcg.run(RECLAIM_WRITER, str(data), "96")
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


# --- the join of reclaim stalls to the app spans of their task or cgroup --------------------------
FILLER = r"""
import os, sys, time
path, mb = sys.argv[1], int(sys.argv[2])
block = os.urandom(1 << 20)
deadline = time.monotonic() + 20
with open(path, "wb") as f:
    for i in range(mb):
        f.write(block)
        if time.monotonic() > deadline:
            break
print(os.getpid(), flush=True)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def app_metrics(directory: Path) -> dict[str, dict[str, int]]:
    """The last ``kernelnet.collector.app`` sample of the store's metrics: {component: {counter: value}}."""
    out: dict[str, dict[str, int]] = {}
    for f in sorted(Path(directory).glob("metrics-*.jsonl")):
        for line in f.read_text().splitlines():
            for rm in json.loads(line).get("resourceMetrics", []):
                for sm in rm.get("scopeMetrics", []):
                    for m in sm.get("metrics", []):
                        if m["name"] != "kernelnet.collector.app":
                            continue
                        for dp in m["sum"]["dataPoints"]:
                            a = {kv["key"]: kv["value"]["stringValue"] for kv in dp["attributes"]}
                            out.setdefault(a["component"], {})[a["counter"]] = int(dp.get("asInt", 0))
    return out


def _overlaps(a: dict, k: dict) -> bool:
    return a["start"] <= k["end"] and a["end"] >= k["start"]


def test_reclaim_stalls_join_the_request_spans_of_their_task_or_cgroup(collector):
    rx, port = _free_port(), _free_port()
    c = collector(config={"probes": {"drop": {"enabled": False}, "tcp": {"enabled": False},
                                     "netns_counters": {"enabled": False}, "lifecycle": {"enabled": False},
                                     "softirq": {"enabled": False}, "reclaim": {"rate_limit_per_cpu": 100000}},
                          "receiver": {"http_endpoint": f"127.0.0.1:{rx}", "grpc_endpoint": None},
                          "join": {"kernel_buffer_ms": 30000, "app_ttl_ms": 60000}, "status": {"interval_s": 1}})
    assert "receiving application traces" in c.text(), c.text()
    app_cg, other_cg = MemoryCgroup(16 << 20), MemoryCgroup(32 << 20)
    data = Path(tempfile.mkdtemp(prefix="kn-test-reclaim-join-", dir="/var/tmp"))  # on disk, not tmpfs
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    server = subprocess.Popen(
        [sys.executable, "-m", "otel_kernelnet.lab.app", "--service", "kn-reclaim-srv",
         "--otlp", f"http://127.0.0.1:{rx}/v1/traces", "server", "--addr", "127.0.0.1", "--port", str(port),
         "--delay-ms", "30", "--hook", "otel_kernelnet.lab.reclaim:write_chunk", "--hook-arg", str(data)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, env=env)
    helpers: list[threading.Thread] = []
    results: dict[str, str] = {}
    try:
        ready = json.loads(server.stdout.readline() or "{}")
        assert ready.get("ready"), server.stderr.read() if server.poll() is not None else ready
        spid = ready["pid"]
        assert spid == server.pid
        # into the cgroup after start-up (the interpreter's memory stays charged where it was)
        (app_cg.path / "cgroup.procs").write_text(str(spid))

        def request() -> None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
            try:
                conn.request("GET", "/")
                r = conn.getresponse()
                r.read()
                assert r.status == 200
            finally:
                conn.close()

        # warm-up: the server's first spans reach the collector, which then knows its pid
        for _ in range(3):
            request()
        wait_for_store(c.output, lambda s: any(x["resource"].get("process.pid") == spid for x in s), timeout=20)

        def neighbour(name: str, cg: MemoryCgroup, mb: int) -> None:
            try:
                results[name] = cg.run(FILLER, str(data / f"{name}.bin"), str(mb), timeout=40).stdout
            except Exception as e:  # reported by the assertions below
                results[name] = f"failed: {e!r}"
        (data / "pressure").touch()  # the server's writes now need fresh page cache
        for name, cg, mb in (("batch", app_cg, 48), ("other", other_cg, 96)):
            t = threading.Thread(target=neighbour, args=(name, cg, mb))
            t.start()
            helpers.append(t)
        deadline = time.monotonic() + 15
        n = 0
        while n < 30 and time.monotonic() < deadline:
            request()
            n += 1
        for t in helpers:
            t.join(45)
        assert all(not t.is_alive() for t in helpers)
        batch_pid, other_pid = (int(results[k].split()[0]) for k in ("batch", "other"))

        def done(spans):
            srv = [s for s in spans if s["resource"].get("process.pid") == spid]
            stalls = [s for s in spans if s["name"] == "kernel.reclaim"
                      and s["attributes"].get("process.pid") in (spid, batch_pid, other_pid)]
            return len(srv) >= n + 3 and any(s["attributes"].get("kernelnet.join") == "task" for s in stalls)
        wait_for_store(c.output, done, timeout=20)
    finally:
        stop_by_stdin(server)
        for t in helpers:
            t.join(45)
        rc = c.stop()
        shutil.rmtree(data, ignore_errors=True)
        app_cg.remove()
        other_cg.remove()
    assert rc == 0, c.text()
    spans = read_store(c.output)  # after the stop: the join's buffer is flushed too

    srv = [s for s in spans if s["resource"].get("process.pid") == spid and not s["name"].startswith("kernel.")]
    assert len(srv) >= n + 3, (n, len(srv))
    by_id = {s["span_id"]: s for s in srv}

    def stalls(pid):
        return [s for s in spans if s["name"] == "kernel.reclaim" and s["attributes"].get("process.pid") == pid
                and s["attributes"].get("kernelnet.reclaim.type") in ("direct", "memcg", "throttle")]
    mine, batch, other = stalls(spid), stalls(batch_pid), stalls(other_pid)
    assert mine and batch and other, (len(mine), len(batch), len(other), c.text()[-1500:])
    # each kernel span exactly once in the store
    ids = [s["span_id"] for s in spans if s["name"].startswith("kernel.")]
    assert len(ids) == len(set(ids))

    def check(stall: dict, how: str) -> bool:
        """Joined iff it overlaps a request span (of the server: its own, or its cgroup's), then
        under one of those with that span's trace id; True when joined. (Requests here are
        sequential, not nested: a stall across two of them goes under the one received first.)"""
        over = [a for a in srv if _overlaps(a, stall)]
        a = stall["attributes"]
        if not over:
            assert not stall["parent_span_id"] and "kernelnet.join" not in a, stall
            return False
        assert a.get("kernelnet.join") == how, (stall, over)
        parent = by_id.get(stall["parent_span_id"])
        assert parent is not None and parent in over, (stall, over)
        assert stall["trace_id"] == parent["trace_id"]
        return True
    joined_task = sum(check(s, "task") for s in mine)
    joined_cgroup = sum(check(s, "cgroup") for s in batch)
    assert joined_task >= 1, [(s["start"], s["end"]) for s in mine]
    for s in mine + batch:
        assert s["attributes"]["kernelnet.cgroup.path"] == app_cg.rel
    # the other cgroup's stalls are never attached, even those during a request
    assert other and all(not s["parent_span_id"] and "kernelnet.join" not in s["attributes"] for s in other)
    assert any(_overlaps(a, s) for s in other for a in srv), "no stall of the other cgroup during a request"
    # the collector counts the outcomes in its own metrics (the last sample, taken at shutdown)
    join = app_metrics(c.output).get("join", {})
    stored = [s["attributes"].get("kernelnet.join") for s in spans if s["name"] == "kernel.reclaim"]
    assert join.get("joined_task") == stored.count("task") == joined_task, join
    assert join.get("joined_cgroup") == stored.count("cgroup") >= joined_cgroup, join
    assert join.get("kernel_spans") == len(ids), join  # nothing lost or added on the way
    print(f"server stalls {len(mine)} ({joined_task} joined by task), batch stalls {len(batch)} "
          f"({joined_cgroup} joined by cgroup), other cgroup {len(other)} (none joined); {n} requests")
