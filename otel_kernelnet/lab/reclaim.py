"""``lab reclaim``: requests stalled by memory-cgroup reclaim (CASES.md #1, the reclaim half).

The server runs inside a memory-limited cgroup (``memory.max``, or on a hybrid cgroup
machine the v1 ``memory.limit_in_bytes``) and writes a 2 MiB chunk into a file per
request (buffered: page cache, charged to its cgroup). Baseline: the writes cycle over a
small region of the file that fits under the limit, so after the first pass no page is
newly charged and nothing is reclaimed. Then a batch job of the same cgroup writes a
file as large as the limit (the cgroup is full, of dirty page cache), and the pressure
phase begins: the server's writes move on into fresh parts of its file, every chunk
must be charged, and the charge reclaims in the request's own thread (memcg reclaim).
Most of what it finds is clean (the flusher wrote it) and goes in a fraction of a
millisecond; every few requests it finds only dirty pages, wakes the flusher and waits
for writeback (``vmscan:mm_vmscan_throttled``): a stall of 5-20 ms inside the handler,
the stall the incident's transfers suffered. Expected: ``memory_reclaim`` with the
server's pid, its cgroup and the stall, matched by task.

Cross-check: every memcg reclaim in a task of the cgroup follows a failed charge of the
cgroup (its limit is the only one in its path). v2 counts them in ``memory.events``
``max`` (raised once per reclaim call, and by a forced charge that did not reclaim), v1
in ``memory.failcnt`` (which also counts a batch charge retried at its exact size and
failed charges that may not block): the exported spans, rate-capped ones counted in,
must not exceed it. During the baseline both must be 0.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

from ..kernel import cgroups
from .env import Lab, LabError, Netns
from .runner import Check, Context, Scenario

SERVER_IP, CLIENT_IP, PORT = "10.88.1.1", "10.88.1.2", 8080
LIMIT = 16 << 20            # the server cgroup's memory limit
CHUNK = 2 << 20             # written per request
BASE_REGION = 4 << 20       # baseline: the writes cycle over this much of the file (fits under the limit)
PRESSURE_REGION = 192 << 20  # pressure: fresh file pages past the baseline region (PRESSURE chunks fit)
FILL = LIMIT                # a batch job of the same cgroup writes this much before the pressure phase
BASELINE, PRESSURE = 60, 60
INTERVAL_MS = 20
HOOK = "otel_kernelnet.lab.reclaim:write_chunk"
FILLER = r"""
import os, sys
path, n = sys.argv[1], int(sys.argv[2])
block = os.urandom(1 << 20)
with open(path, "wb") as f:
    for _ in range(n >> 20):
        f.write(block)
"""

# --- the server's per-request work (runs in the app process, via --hook) ----------------------
_lock = threading.Lock()
_state: dict[str, dict] = {}


def write_chunk(handler, arg: str) -> None:
    """Write CHUNK bytes into ``arg``/data.bin (page cache): cycling over the baseline region,
    or, once ``arg``/pressure exists, into fresh pages after it."""
    with _lock:
        st = _state.get(arg)
        if st is None:
            st = _state[arg] = {"fd": os.open(os.path.join(arg, "data.bin"), os.O_RDWR | os.O_CREAT, 0o600),
                                "chunk": os.urandom(CHUNK), "base": 0, "fresh": 0}
        if os.path.exists(os.path.join(arg, "pressure")):
            off = BASE_REGION + st["fresh"] % PRESSURE_REGION
            st["fresh"] += CHUNK
        else:
            off = st["base"] % BASE_REGION
            st["base"] += CHUNK
        os.pwrite(st["fd"], st["chunk"], off)


# --- the cgroup's own counter of charges over the limit ------------------------------------

def _charge_failures(cg: Path, v1: bool) -> int:
    if v1:
        return int((cg / "memory.failcnt").read_text())
    for line in (cg / "memory.events").read_text().splitlines():
        k, v = line.split()
        if k == "max":
            return int(v)
    raise LabError(f"{cg}/memory.events has no 'max' line")


class Reclaim(Scenario):
    name = "reclaim"
    title = "requests stalled by memory-cgroup reclaim in the server's own thread"
    case = "#1 (drops under memory pressure: the reclaim stall half)"
    expect = "memory_reclaim"
    families = ("reclaim", "tcp")

    def describe(self) -> list[str]:
        return [f"server {SERVER_IP}:{PORT} in one namespace and in a memory cgroup limited to {LIMIT >> 20} MiB, "
                f"writing {CHUNK >> 20} MiB into a file per request; client {CLIENT_IP} in another namespace;",
                f"{BASELINE} requests whose writes reuse {BASE_REGION >> 20} MiB of page cache (under the limit); "
                f"a batch job of the cgroup writes {FILL >> 20} MiB;",
                f"then {PRESSURE} requests whose writes need fresh page cache: each charge reclaims in the handler, "
                "and waits for writeback when what it finds is dirty"]

    def namespaces(self, lab: Lab) -> list[Netns]:
        self.srv, self.cli = lab.netns("server"), lab.netns("client")
        lab.veth(self.srv, SERVER_IP, self.cli, CLIENT_IP)
        return [self.srv, self.cli]

    def drive(self, ctx: Context) -> None:
        lab, d = ctx.lab, ctx.facts
        setup = cgroups.detect()
        cg = lab.cgroup("server", memory_max=str(LIMIT))
        v1 = setup.mode == 1
        d["cgroup"] = self._cgroup = "/" + str(cg.relative_to(setup.root))  # as the reclaim spans name it
        d["counter"] = "memory.failcnt" if v1 else "memory.events max"
        d["v1"] = v1
        # the file the server writes: on disk (tmpfs pages could not be reclaimed without swap)
        data = Path(tempfile.mkdtemp(prefix=f"kn-lab-{lab.tag}-reclaim-", dir="/var/tmp"))
        lab.defer(f"directory {data}", lambda: shutil.rmtree(data, ignore_errors=True))
        server = ctx.server("server", "lab-server", self.srv, "--addr", SERVER_IP, "--port", str(PORT),
                            "--hook", HOOK, "--hook-arg", str(data))
        # into the cgroup before the first request (its charges from now on are the cgroup's)
        (cg / "cgroup.procs").write_text(str(server.pid))
        if b"otel_kernelnet.lab.app" not in Path(f"/proc/{server.pid}/cmdline").read_bytes():
            raise LabError(f"pid {server.pid} is not the lab's server app")
        d["server_pid"] = self._pid = server.pid
        args = ("--host", SERVER_IP, "--port", str(PORT), "--interval-ms", str(INTERVAL_MS))

        def failures() -> int:
            return _charge_failures(cg, v1)

        c0 = failures()
        ctx.step(f"baseline: {BASELINE} requests, page cache reused (server pid {server.pid}, cgroup {d['cgroup']})")
        d["baseline_t0"] = time.time_ns()
        base = ctx.client("client-baseline", "lab-client", self.cli, *args, "--requests", str(BASELINE))
        d["baseline_t1"] = time.time_ns()
        c1 = failures()
        ctx.step(f"  {base['ok']} ok, median {base['p50_ms']} ms, slowest {base['max_ms']} ms; "
                 f"{d['counter']} +{c1 - c0}")
        # a batch job of the same cgroup fills its page cache up to the limit (dirty pages), so
        # the server's first fresh page already has to reclaim
        fill = lab.spawn("filler", ["sh", "-c", f'echo $$ > {cg}/cgroup.procs && exec "$0" -c "$1" "$2" "$3"',
                                    sys.executable, FILLER, str(data / "fill.bin"), str(FILL)], stdin=False)
        if fill.wait(30) != 0:
            raise LabError(f"the batch job failed: {fill.tail()}")
        c2 = failures()
        ctx.step(f"  a batch job of the cgroup wrote {FILL >> 20} MiB of page cache; {d['counter']} +{c2 - c1}")
        (data / "pressure").touch()
        ctx.step(f"pressure: {PRESSURE} requests writing fresh page cache under the {LIMIT >> 20} MiB limit")
        pres = ctx.client("client-pressure", "lab-client", self.cli, *args, "--requests", str(PRESSURE))
        if pres["ok"] < PRESSURE // 2:
            raise LabError(f"only {pres['ok']} of {PRESSURE} requests succeeded under pressure: {pres['errors']} "
                           f"(server log: {server.tail()})")
        server.stop()  # the cgroup's last task: no charge after this
        c3 = failures()
        ctx.step(f"  {pres['ok']} ok, median {pres['p50_ms']} ms, slowest {pres['max_ms']} ms, "
                 f"errors {pres['errors'] or 'none'}; {d['counter']} +{c3 - c2}")
        d["failures_baseline"], d["failures_total"] = c1 - c0, c3 - c0
        time.sleep(0.3)  # the collector drains its ring buffer before it is stopped

    def checks(self, ctx: Context, spans: list[dict]) -> list[Check]:
        d = ctx.facts
        mine = [s for s in spans if s["attributes"].get("kernelnet.kind") == "reclaim"
                and s["attributes"].get("kernelnet.reclaim.type") == "memcg"
                and s["attributes"].get("kernelnet.cgroup.path") == d["cgroup"]]
        in_base = [s for s in mine if d["baseline_t0"] <= s["start"] <= d["baseline_t1"]]
        of_server = sum(1 for s in mine if s["attributes"].get("process.pid") == d["server_pid"])
        pages = sum(s["attributes"].get("kernelnet.reclaim.nr_reclaimed", 0) for s in mine)
        # losses of the collector (all families: the tcp ones are few here); a capped event is one
        # the kernel produced, so it counts as exported for the comparison
        m = re.findall(r"(\d+) rate-capped", (ctx.lab.logdir / "collector.log").read_text())
        capped = int(m[-1]) if m else 0
        why = ("each reclaim of a charge over the limit follows one failed charge; "
               + ("failcnt also counts failed charges that did not reclaim (a batch charge retried at its "
                  "exact size, an allocation that may not block)" if d["v1"] else
                  "memory.events max is also raised by a forced charge that did not reclaim"))
        return [
            Check(f"baseline: {d['counter']} delta vs memcg reclaim spans of the cgroup",
                  d["failures_baseline"], len(in_base), "equal",
                  "the baseline reuses its page cache: no charge over the limit, no reclaim"),
            Check(f"whole run: {d['counter']} delta vs memcg reclaim spans of the cgroup",
                  d["failures_total"], len(mine) + capped, "exported<=kernel",
                  f"{why}; {of_server} spans of the server, the rest of the batch job; {capped} rate-capped "
                  f"counted in; {pages} pages reclaimed"),
        ]

    def evidence_ok(self, cause: dict) -> list[str]:
        ev = cause.get("evidence", {})
        out = []
        if not (ev.get("stall_ms") or 0) > 0:
            out.append(f"evidence stall_ms is {ev.get('stall_ms')}")
        if ev.get("type") not in ("memcg", "direct", "throttle"):
            out.append(f"evidence type is {ev.get('type')} (not a stall of the task)")
        pid = getattr(self, "_pid", None)
        if ev.get("pid") is None or (pid is not None and ev.get("pid") != pid):
            out.append(f"evidence pid {ev.get('pid')} is not the server's ({pid})")
        cg = getattr(self, "_cgroup", "kn-lab-")
        if cg not in str(ev.get("cgroup") or ""):
            out.append(f"evidence cgroup {ev.get('cgroup')} is not the lab's ({cg})")
        if ev.get("match") != "task":
            out.append(f"evidence matched by {ev.get('match')}, not by the server's task")
        return out
