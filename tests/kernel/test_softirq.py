"""Kernel test of the softirq family: a NET_RX delay provoked on one CPU must come out
as kernel.softirq spans naming the task that held that CPU.

Set-up (all created here, all removed): two network namespaces joined by a veth pair;
on the receiving side RPS steers the veth's packets to CPU 1. A "fragmenter" process
maps 1 GiB (without huge pages) and frees every other page, so the free lists hold
>100 k order-0 pages; a "reader" pinned to CPU 1 reads /proc/pagetypeinfo in a loop, which walks
those lists with zone->lock held and interrupts off (CASES.md #2, second culprit).
Light UDP request/response traffic from CPU 0 needs an RPS IPI to CPU 1 for each
packet; while the reader has interrupts off the IPI waits, and so does NET_RX.
Everything is bounded in time (the reader and the traffic stop after a few seconds)
and every helper is stopped by pid.

The real-time variant (issue 4: "also a real-time busy task on that CPU"): a
SCHED_FIFO task spins on CPU 1 for 3 s while a UDP flood (a small C sender,
``sendmmsg``) is steered there by RPS. On this kernel (>= 6.5, "softirq: Let ksoftirqd
do its job" reverted) an RT task alone does not delay NET_RX: softirqs run on every
interrupt exit, and light traffic shows no wait (measured: no span). Under the flood,
``__do_softirq`` runs out of restarts and hands NET_RX to ksoftirqd, which is
SCHED_OTHER and starves behind the RT task (RT throttling still gives it 5%); the
remaining work then waits for the next interrupt on that CPU, the 4 ms tick (HZ=250):
spans of ~4 ms wait naming the RT task. ksoftirqd was woken before those waits began
(it stays runnable, starved): the probe follows its runnable state outside the waits
too, so the spans say it was woken and how long it had been waiting when the work ran
without it (``kernelnet.softirq.ksoftirqd.waiting_ns``); the kernel's own account of
its starvation (``/proc/<ksoftirqd/1>/schedstat``, run delay) is checked beside it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.kernel.conftest import stop_by_stdin, wait_for_store

TARGET_CPU = 1
# spans are emitted above this wait (the probe's threshold in this test); how long the
# reader holds interrupts off depends on the machine's free-page layout, so the test
# asserts that a span over the threshold names the reader, not a fixed wait length
WAIT_THRESHOLD_NS = 1_000_000
SOURCE_CPU = 0

FRAGMENTER = r"""
import mmap, sys
size = 1 << 30
m = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
# 4 KiB pages only: inside a (m)THP folio, MADV_DONTNEED frees nothing until a
# deferred split, and the free lists stay short (a clean-clone CI run saw no hold > 1 ms)
m.madvise(mmap.MADV_NOHUGEPAGE)
page = mmap.PAGESIZE
for off in range(0, size, page):   # fault every page in
    m[off] = 1
for off in range(0, size, 2 * page):   # free every other one: order-0 holes
    m.madvise(mmap.MADV_DONTNEED, off, page)
print("ready", flush=True)
sys.stdin.read()   # until the test closes stdin
"""

READER = r"""
import os, sys, time
os.sched_setaffinity(0, {%d})
deadline = time.monotonic() + float(sys.argv[1])
n = 0
print(os.getpid(), flush=True)
while time.monotonic() < deadline:
    with open("/proc/pagetypeinfo") as f:
        f.read()
    n += 1
print(n, flush=True)
""" % TARGET_CPU

SERVER = r"""
import os, socket, sys
os.sched_setaffinity(0, {%d})
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("10.77.0.2", 7777))
s.settimeout(10)
print("ready", flush=True)
try:
    while True:
        data, addr = s.recvfrom(64)
        if data == b"stop":
            break
        s.sendto(data, addr)
except socket.timeout:
    pass
""" % TARGET_CPU

CLIENT = r"""
import os, socket, sys, time
os.sched_setaffinity(0, {%d})
c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); c.settimeout(0.5)
deadline = time.monotonic() + float(sys.argv[1])
n = 0
while time.monotonic() < deadline:
    c.sendto(b"ping", ("10.77.0.2", 7777))
    try:
        c.recv(64); n += 1
    except socket.timeout:
        pass
    time.sleep(0.001)
c.sendto(b"stop", ("10.77.0.2", 7777))
print(n, flush=True)
""" % SOURCE_CPU


@pytest.fixture
def veth_pair(veth):
    """conftest's veth pair (10.77.0.1 <-> 10.77.0.2), with RPS steering every packet the
    b side receives to TARGET_CPU."""
    veth.b.exec("sh", "-c", f"echo {1 << TARGET_CPU:x} > /sys/class/net/{veth.dev_b}/queues/rx-0/rps_cpus")
    return veth.a, veth.b


def _popen(cmd: list[str], stdin=None) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.kill()
    p.wait(10)


@pytest.fixture
def small_pcp_lists():
    """Freed pages go to the per-CPU page lists first (auto-tuned up to 1/8 of the zone
    on 6.7+), which /proc/pagetypeinfo does not walk: keep those lists small for the
    test so the fragmenter's holes reach the buddy free lists; restored afterwards."""
    knob = "/proc/sys/vm/percpu_pagelist_high_fraction"
    old = open(knob).read().strip()
    with open(knob, "w") as f:
        f.write("100000")
    try:
        yield
    finally:
        with open(knob, "w") as f:
            f.write(old)


def test_irqs_off_reader_is_named_culprit_of_net_rx_delay(collector, veth_pair, small_pcp_lists):
    assert os.cpu_count() and os.cpu_count() >= 2, "needs two CPUs"
    a, b = veth_pair
    c = collector(config={"probes": {"drop": {"enabled": False}, "tcp": {"enabled": False},
                                     "netns_counters": {"enabled": False}, "lifecycle": {"enabled": False},
                                     "reclaim": {"enabled": False},
                                     "softirq": {"wait_threshold_ms": WAIT_THRESHOLD_NS // 1_000_000, "run_threshold_ms": 50}}})
    helpers: list[subprocess.Popen] = []
    try:
        frag = _popen([sys.executable, "-c", FRAGMENTER], stdin=subprocess.PIPE)
        helpers.append(frag)
        assert frag.stdout.readline().strip() == "ready", frag.stderr.read()
        server = _popen(["ip", "netns", "exec", b.name, sys.executable, "-c", SERVER])
        helpers.append(server)
        assert server.stdout.readline().strip() == "ready", server.stderr.read()
        reader = _popen([sys.executable, "-c", READER, "4"])
        helpers.append(reader)
        reader_pid = int(reader.stdout.readline())
        client = a.exec(sys.executable, "-c", CLIENT, "3", timeout=30)
        assert int(client.stdout) > 0, "no request got an answer"
        reads = int(reader.stdout.readline())
        assert reads > 0

        def culprit_spans(spans):
            return [s for s in spans if s["name"] == "kernel.softirq"
                    and s["attributes"].get("kernelnet.cpu") == TARGET_CPU
                    and s["attributes"].get("kernelnet.culprit.pid") == reader_pid
                    and s["attributes"].get("kernelnet.softirq.wait_ns", 0) >= WAIT_THRESHOLD_NS]
        spans = wait_for_store(c.output, culprit_spans, timeout=15)
    finally:
        if helpers:
            stop_by_stdin(helpers[0])
        for p in helpers[1:]:
            _stop(p)
    c.stop()
    got = culprit_spans(spans)
    assert got, (f"no softirq span on CPU {TARGET_CPU} with wait >= the 1 ms threshold naming the reader {reader_pid}; "
                 f"softirq spans: {[s['attributes'] for s in spans if s['name'] == 'kernel.softirq'][:5]}")
    for s in got:
        at = s["attributes"]
        assert at["kernelnet.softirq.vector"] == "NET_RX"
        assert at["kernelnet.culprit.comm"] == "python3" or at["kernelnet.culprit.comm"].startswith("python")
        assert at["kernelnet.culprit.ns"] > 0
        assert s["end"] - s["start"] >= at["kernelnet.softirq.wait_ns"]
    # the interrupts-off case: the RPS IPI itself waited, and was taken in the reader
    ipi = [s for s in got if s["attributes"].get("kernelnet.softirq.ipi.pid") == reader_pid]
    assert ipi, "no span shows the RPS IPI delayed by the reader"
    assert "probe softirq cannot run" not in c.text()


# --- a real-time busy task on the RPS CPU -------------------------------------------------------
FLOOD_C = r"""
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
/* flood DST PORT SECONDS CPU: 64 small datagrams per sendmmsg; prints the count */
int main(int argc, char **argv) {
    if (argc < 5) return 2;
    cpu_set_t set; CPU_ZERO(&set); CPU_SET(atoi(argv[4]), &set);
    sched_setaffinity(0, sizeof set, &set);
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
    inet_pton(AF_INET, argv[1], &a.sin_addr);
    if (connect(fd, (struct sockaddr *)&a, sizeof a)) { perror("connect"); return 1; }
    char buf[32] = {0};
    struct iovec iov = {buf, sizeof buf};
    struct mmsghdr m[64]; memset(m, 0, sizeof m);
    for (int i = 0; i < 64; i++) { m[i].msg_hdr.msg_iov = &iov; m[i].msg_hdr.msg_iovlen = 1; }
    struct timespec t0, t; clock_gettime(CLOCK_MONOTONIC, &t0);
    double secs = atof(argv[3]); long n = 0;
    for (;;) {
        int r = sendmmsg(fd, m, 64, 0);
        if (r > 0) n += r;
        clock_gettime(CLOCK_MONOTONIC, &t);
        if ((t.tv_sec - t0.tv_sec) + (t.tv_nsec - t0.tv_nsec) / 1e9 >= secs) break;
    }
    printf("%ld\n", n);
    return 0;
}
"""

RT_SPINNER = r"""
import os, sys, time
os.sched_setaffinity(0, {%d})
os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
print(os.getpid(), flush=True)
end = time.monotonic() + float(sys.argv[1])   # bounded: it stops by itself
while time.monotonic() < end:
    pass
""" % TARGET_CPU

UDP_SINK = r"""
import os, socket, sys, time
os.sched_setaffinity(0, {%d})
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("10.77.0.2", 7777)); s.settimeout(0.5)
print("ready", flush=True)
end = time.monotonic() + float(sys.argv[1]); n = 0
while time.monotonic() < end:
    try:
        s.recv(64); n += 1
    except socket.timeout:
        pass
print(n, flush=True)
""" % SOURCE_CPU

RT_SECONDS = 3
RT_ATTEMPTS = 5  # rounds of spinner + flood at most (see the test): 1 in ~250 runs fails at 5


@pytest.fixture
def rt_throttling():
    """RT throttling on (the kernel default, 950 ms of every 1 s), so the spinner leaves the
    CPU 5% of the time; set for the test only if it was off (-1), and restored."""
    knob = Path("/proc/sys/kernel/sched_rt_runtime_us")
    old = knob.read_text().strip()
    if int(old) < 0:
        knob.write_text("950000")
    try:
        yield int(knob.read_text())
    finally:
        if knob.read_text().strip() != old:
            knob.write_text(old)


def _ksoftirqd_pid(cpu: int) -> int:
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if Path(f"/proc/{d}/comm").read_text().strip() == f"ksoftirqd/{cpu}":
                    return int(d)
            except OSError:
                pass
    raise AssertionError(f"no ksoftirqd/{cpu}")


def _run_delay_ns(pid: int) -> int:
    """Time the task spent runnable but waiting for a CPU (schedstat field 2)."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1])


def test_rt_busy_task_is_named_culprit_when_net_rx_is_left_to_a_starved_ksoftirqd(
        collector, veth_pair, rt_throttling, tmp_path):
    assert os.cpu_count() and os.cpu_count() >= 2, "needs two CPUs"
    assert 0 < rt_throttling < 1_000_000
    a, b = veth_pair
    src = tmp_path / "flood.c"
    src.write_text(FLOOD_C)
    flood = tmp_path / "flood"
    subprocess.run(["gcc", "-O2", "-o", str(flood), str(src)], check=True, capture_output=True, timeout=60)
    c = collector(config={"probes": {"drop": {"enabled": False}, "tcp": {"enabled": False},
                                     "netns_counters": {"enabled": False}, "lifecycle": {"enabled": False},
                                     "reclaim": {"enabled": False},
                                     "softirq": {"wait_threshold_ms": WAIT_THRESHOLD_NS // 1_000_000,
                                                 "run_threshold_ms": 50}},
                          "receiver": {"enabled": False}})
    ksoftirqd = _ksoftirqd_pid(TARGET_CPU)
    helpers: list[subprocess.Popen] = []
    rt_pid = starved_ns = 0

    def rt_spans(spans):
        return [s for s in spans if s["name"] == "kernel.softirq"
                and s["attributes"].get("kernelnet.cpu") == TARGET_CPU
                and s["attributes"].get("kernelnet.culprit.pid") == rt_pid
                and s["attributes"].get("kernelnet.softirq.wait_ns", 0) >= WAIT_THRESHOLD_NS]

    def starved(spans):  # spans that also carry ksoftirqd's starvation (woken, still waiting)
        return [s for s in rt_spans(spans) if s["attributes"].get("kernelnet.softirq.ksoftirqd.woken")
                and s["attributes"].get("kernelnet.softirq.ksoftirqd.waiting_ns", 0)
                >= s["attributes"]["kernelnet.softirq.wait_ns"]]
    try:
        sink = _popen(["ip", "netns", "exec", b.name, sys.executable, "-c", UDP_SINK,
                       str(RT_ATTEMPTS * (RT_SECONDS + 8))])
        helpers.append(sink)
        assert sink.stdout.readline().strip() == "ready", sink.stderr.read()
        # Whether __do_softirq overruns and defers to ksoftirqd within 3 s depends on how
        # the flood meets the RPS CPU: on a quiet VM one 3 s round gives no deferral about
        # 1 time in 3 (measured). Up to RT_ATTEMPTS rounds, bounded, each with its own
        # spinner; the spans must name the spinner of the round that produced them.
        for _attempt in range(RT_ATTEMPTS):
            delay0 = _run_delay_ns(ksoftirqd)
            rt = _popen([sys.executable, "-c", RT_SPINNER, str(RT_SECONDS)])
            helpers.append(rt)
            rt_pid = int(rt.stdout.readline())
            sent = a.exec(str(flood), "10.77.0.2", "7777", str(RT_SECONDS), str(SOURCE_CPU), timeout=30)
            assert int(sent.stdout) > 0
            assert rt.wait(30) == 0, rt.stderr.read()
            starved_ns = _run_delay_ns(ksoftirqd) - delay0
            spans = wait_for_store(c.output, starved, timeout=5)
            if starved(spans):
                break
    finally:
        for p in helpers:
            _stop(p)
    c.stop()
    got = rt_spans(spans)
    assert got, (f"no softirq span on CPU {TARGET_CPU} with wait >= 1 ms naming the RT task {rt_pid}; culprits seen: "
                 f"{[s['attributes'].get('kernelnet.culprit.top') for s in spans if s['name'] == 'kernel.softirq'][:8]}")
    # the RT task held the CPU for (nearly) the whole wait: nothing else ran, not ksoftirqd.
    # Most spans (measured: all but ~1 in 100 at >= 95%); a wait that spans an RT-throttling
    # window (the 5% others get) also has other tasks in it, so not every one
    held = [s["attributes"]["kernelnet.culprit.ns"] / s["attributes"]["kernelnet.softirq.wait_ns"] for s in got]
    assert sum(h >= 0.9 for h in held) * 2 >= len(held), sorted(held)
    for s in got:
        at = s["attributes"]
        assert at["kernelnet.softirq.vector"] == "NET_RX"
        assert at["kernelnet.culprit.comm"].startswith("python")
        assert not at.get("kernelnet.softirq.in_ksoftirqd")
        assert "ksoftirqd.run" not in [e["name"] for e in s["events"]]
    # the spans carry ksoftirqd's starvation: woken (before the wait, or during it) and
    # still without the CPU when the work ran on an interrupt exit. Not every span: RT
    # throttling lets ksoftirqd run now and then, and a wait that starts after such a run
    # (ksoftirqd not woken again yet) has no ksoftirqd to report (measured 2 to 5 of 5)
    starved_spans = starved(spans)
    assert starved_spans, [s["attributes"].get("kernelnet.softirq.ksoftirqd.waiting_ns") for s in got][:8]
    # ksoftirqd was runnable and kept waiting behind the RT task for most of the run
    # (measured ~2.6 s of run delay in a 3 s run; ~0.2 s without the RT task)
    assert starved_ns >= 500_000_000, f"ksoftirqd/{TARGET_CPU} waited only {starved_ns / 1e6:.0f} ms"
    print(f"{len(got)} spans name the RT task; waits up to "
          f"{max(s['attributes']['kernelnet.softirq.wait_ns'] for s in got) / 1e6:.2f} ms; "
          f"ksoftirqd/{TARGET_CPU} run delay +{starved_ns / 1e6:.0f} ms")
