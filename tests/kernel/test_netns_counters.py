"""Kernel test of the netns counters family: a real accept-queue overflow in a fresh netns.

On 6.18 an accept-queue overflow never reaches kfree_skb; only the namespace's
TcpExtListenOverflows/ListenDrops show it. A listener with backlog 2 that never
accepts, 23 non-blocking connects (prime: a doubled or missing delta cannot pass by
accident), and the collector must report exactly the kernel's own counter delta and
name the listener, its queue limit and the namespace's somaxconn.
"""

from __future__ import annotations

import subprocess
import sys

from otel_kernelnet.kernel import netstat
from tests.kernel.conftest import read_store, stop_by_stdin, wait_for_store

LISTENER = """
import socket, sys
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(2)
print(s.getsockname()[1], flush=True)
sys.stdin.read()  # never accepts; exits when the test closes stdin
"""

# 23 non-blocking connects, then wait (bounded, 2 s) until the namespace's own counter
# shows the overflows, then close every socket (no SYN retransmits after that)
CLIENTS = """
import select, socket, sys, time
port, n, before, queued = (int(a) for a in sys.argv[1:5])
def overflows():
    lines = open("/proc/net/netstat").read().split("\\n")
    head, vals = lines[0].split(), lines[1].split()
    return int(vals[head.index("ListenOverflows")])
socks = []
for _ in range(n):
    c = socket.socket()
    c.setblocking(False)
    c.connect_ex(("127.0.0.1", port))
    socks.append(c)
deadline = time.monotonic() + 2.0
while overflows() - before < n - queued and time.monotonic() < deadline:
    select.select([], [], [], 0.02)
for c in socks:
    c.close()
print(overflows() - before)
"""


def kernel_counters(netns) -> dict[str, int]:
    return netstat.parse_pairs(netns.exec("cat", "/proc/net/netstat").stdout)


def test_listen_overflow_counter_and_listener_spans(netns, collector):
    somaxconn = int(netns.exec("sysctl", "-n", "net.core.somaxconn").stdout)
    c = collector(config={"probes": {"netns_counters": {"interval_ms": 100, "rescan_s": 1}}})
    srv = subprocess.Popen(["ip", "netns", "exec", netns.name, sys.executable, "-c", LISTENER],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        port = int(srv.stdout.readline())
        ss = netns.exec("ss", "-Hlnt", f"sport = :{port}").stdout.split()
        kernel_limit = int(ss[2])  # Send-Q of a listener: its accept-queue limit
        before = kernel_counters(netns)
        r = netns.exec(sys.executable, "-c", CLIENTS, str(port), "23", str(before["TcpExtListenOverflows"]), "3",
                       timeout=30)
        after = kernel_counters(netns)
        delta = {k: after[k] - before[k] for k in ("TcpExtListenOverflows", "TcpExtListenDrops")}
        assert delta["TcpExtListenOverflows"] == int(r.stdout) >= 20, (delta, r.stdout)

        def mine(spans, kind, name=None):
            return [s for s in spans if s["attributes"].get("kernelnet.netns") == netns.inode
                    and s["attributes"].get("kernelnet.kind") == kind
                    and (name is None or s["attributes"].get("kernelnet.counter.name") == name)]

        def complete(spans):
            return (sum(s["attributes"]["kernelnet.counter.delta"]
                        for s in mine(spans, "counter", "TcpExtListenOverflows")) >= delta["TcpExtListenOverflows"]
                    and mine(spans, "tcp.listen_overflow"))
        wait_for_store(c.output, complete)
        queue_seen = netns.exec("ss", "-Hlnt", f"sport = :{port}").stdout.split()
    finally:
        stop_by_stdin(srv)
    assert c.stop() == 0, c.text()
    spans = read_store(c.output)

    for name in ("TcpExtListenOverflows", "TcpExtListenDrops"):
        got = mine(spans, "counter", name)
        assert sum(s["attributes"]["kernelnet.counter.delta"] for s in got) == delta[name], (name, got, c.text())
        for s in got:
            assert s["name"] == "kernel.counter" and s["start"] < s["end"]
            assert s["attributes"]["kernelnet.counter.delta"] > 0

    assert kernel_limit == 2  # the kernel's limit for backlog 2: min(2, somaxconn)
    assert somaxconn == 4096  # a new netns starts at 4096 on 6.x (whatever the host has)
    lo = mine(spans, "tcp.listen_overflow")
    assert lo, c.text()
    for s in lo:
        a = s["attributes"]
        assert s["name"] == "kernel.tcp" and s["status"]["code"] == 2
        assert a["kernelnet.listen.address"] == f"127.0.0.1:{port}"
        assert a["kernelnet.listen.queue_limit"] == kernel_limit
        # the accept queue holds limit + 1 before the kernel refuses (sk_acceptq_is_full is '>')
        assert a["kernelnet.listen.queue_len"] == int(queue_seen[1]) == 3
        assert a["kernelnet.netns.somaxconn"] == somaxconn
        assert a["kernelnet.counter.name"] in ("TcpExtListenOverflows", "TcpExtListenDrops")
        assert 0 < a["kernelnet.counter.delta"] <= delta["TcpExtListenOverflows"]


def test_somaxconn_is_read_from_the_listeners_namespace(netns, collector):
    """A namespace somaxconn different from the host's is the one reported (incident 5)."""
    netns.exec("sysctl", "-w", "net.core.somaxconn=7")
    c = collector(config={"probes": {"netns_counters": {"interval_ms": 100}}})
    srv = subprocess.Popen(["ip", "netns", "exec", netns.name, sys.executable, "-c",
                            LISTENER.replace("s.listen(2)", "s.listen(64)")],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        port = int(srv.stdout.readline())
        before = kernel_counters(netns)["TcpExtListenOverflows"]
        netns.exec(sys.executable, "-c", CLIENTS, str(port), "13", str(before), "8", timeout=30)

        def overflow_spans(spans):
            return [s for s in spans if s["attributes"].get("kernelnet.netns") == netns.inode
                    and s["attributes"].get("kernelnet.kind") == "tcp.listen_overflow"]
        lo = overflow_spans(wait_for_store(c.output, overflow_spans))
    finally:
        stop_by_stdin(srv)
    assert c.stop() == 0, c.text()
    assert lo, c.text()
    host = int(open("/proc/sys/net/core/somaxconn").read())
    assert host != 7
    for s in lo:  # backlog 64 capped by the namespace's somaxconn 7
        assert s["attributes"]["kernelnet.netns.somaxconn"] == 7
        assert s["attributes"]["kernelnet.listen.queue_limit"] == 7
