"""Kernel tests of the skb lifecycle family: real traffic over a veth pair between two
fresh network namespaces, spans and histograms read back from the embedded store.

- slow reader: the server waits DELAY before each read; its lifecycles show the
  socket wait (>= DELAY), the reader's tid, and the server socket's own SO_COOKIE;
- bulk transfer: 10 s of TCP at full speed, scoped to the receiving namespace; the
  histograms count every packet the kernel gave to BPF, checked exactly against an
  independent BPF counter, which in turn is checked against ftrace and the receiving
  interface's counter; the only spans are the ones the volume policy selects;
- fallback: with tcp_probe's cookie and kfree_skb's rx_sk/reason hidden (the feature
  probe), lifecycles and drops still arrive with their 4-tuple, and `check` reports
  the degradation.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.kernel.conftest import CLI, ROOT, read_store, stop_by_stdin
from tests.kernel.witness import BpfSkbCount, TraceCount

DELAY_S = 0.25
ROUNDS = 3
PORT = 5001

SLOW_SERVER = r"""
import json, os, select, socket, struct, sys, threading, time
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((sys.argv[1], int(sys.argv[2]))); srv.listen(1)
print("ready", flush=True)
s, peer = srv.accept()
cookie = struct.unpack("Q", s.getsockopt(socket.SOL_SOCKET, 57, 8))[0]
for _ in range(int(sys.argv[4])):
    select.select([s], [], [], 10)           # the data has arrived and is queued
    time.sleep(float(sys.argv[3]))           # the injected application delay
    assert len(s.recv(4096)) == 100
    s.sendall(b"k")
print(json.dumps({"cookie": cookie, "pid": os.getpid(), "tid": threading.get_native_id(),
                  "peer": list(peer)}), flush=True)
sys.stdin.read()
"""

CLIENT = r"""
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
for _ in range(int(sys.argv[3])):
    c.sendall(b"x" * 100)
    assert c.recv(1) == b"k"
c.close()
"""


def _popen_in(ns, code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(["ip", "netns", "exec", ns.name, sys.executable, "-c", code, *args],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _lifecycles(spans, ns_inode):
    return [s for s in spans if s["name"] == "kernel.skb.lifecycle"
            and s["attributes"].get("kernelnet.netns") == ns_inode]


def test_slow_reader_shows_the_socket_wait_with_the_readers_tid_and_cookie(veth, collector):
    c = collector()
    server = _popen_in(veth.b, SLOW_SERVER, veth.addr_b, str(PORT), str(DELAY_S), str(ROUNDS))
    try:
        assert server.stdout.readline().strip() == "ready", server.stderr.read()
        r = veth.a.exec(sys.executable, "-c", CLIENT, veth.addr_b, str(PORT), str(ROUNDS), check=False)
        assert r.returncode == 0, r.stderr
        info = json.loads(server.stdout.readline())
    finally:
        stop_by_stdin(server)
    assert c.stop() == 0, c.text()
    spans = _lifecycles(read_store(c.output), veth.b.inode)
    mine = [s for s in spans if s["attributes"].get("kernelnet.socket.cookie") == info["cookie"]]
    # one lifecycle per message (each is read before the next is sent): exactly ROUNDS
    assert len(mine) == ROUNDS, (info, [s["attributes"] for s in spans], c.text())
    for s in mine:
        a = s["attributes"]
        assert a["kernelnet.skb.end"] == "read" and "slow" in a["kernelnet.skb.emitted_because"]
        assert a["kernelnet.skb.socket_wait_ns"] >= DELAY_S * 1e9, a
        assert a["kernelnet.skb.total_ns"] == s["end"] - s["start"] >= a["kernelnet.skb.socket_wait_ns"]
        assert (a["thread.id"], a["process.pid"]) == (info["tid"], info["pid"])
        assert a["network.interface.name"] == veth.dev_b and a["kernelnet.skb.arrival"] == "netif_rx"
        assert (a["network.local.address"], a["network.local.port"]) == (veth.addr_b, PORT)
        assert [a["network.peer.address"], a["network.peer.port"]] == info["peer"]
        assert a["network.transport"] == "tcp" and a["kernelnet.skb.data_len"] == 100
        assert a["kernelnet.skb.read_len"] == 100 and a["kernelnet.skb.segs"] == 1
        names = [e["name"] for e in s["events"]]
        assert names == ["arrival", "protocol", "enqueue", "read"], names
        times = [e["time"] for e in s["events"]]
        assert times == sorted(times) and times[0] == s["start"] and times[-1] == s["end"]
        assert s["events"][-1]["attributes"]["thread.id"] == info["tid"]


BULK_SERVER = r"""
import socket, sys
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((sys.argv[1], int(sys.argv[2]))); srv.listen(1)
print("ready", flush=True)
s, _ = srv.accept()
n = 0
while True:
    b = s.recv(1 << 20)
    if not b:
        break
    n += len(b)
print(n, flush=True)
sys.stdin.read()
"""

BULK_CLIENT = r"""
import socket, sys, time
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
buf, end, cap, sent = b"\0" * 65536, time.monotonic() + float(sys.argv[3]), int(sys.argv[4]), 0
while time.monotonic() < end and sent < cap:
    c.sendall(buf)
    sent += len(buf)
c.close()
print(sent)
"""


def _last_metrics(directory: Path) -> dict:
    (f,) = directory.glob("metrics-*.jsonl")
    return json.loads(f.read_text().splitlines()[-1])


def _lost(metrics_line: dict, probe: str, stage: str) -> int:
    for sm in metrics_line["resourceMetrics"][0]["scopeMetrics"]:
        for m in sm["metrics"]:
            if m["name"] == "kernelnet.collector.lost":
                for dp in m["sum"]["dataPoints"]:
                    attrs = {a["key"]: a["value"]["stringValue"] for a in dp["attributes"]}
                    if attrs == {"probe": probe, "stage": stage}:
                        return int(dp["asInt"])
    raise AssertionError(f"no lost{{probe={probe}, stage={stage}}} in the metrics")


def _stage_counts(metrics_line: dict) -> dict[str, int]:
    out = {}
    for sm in metrics_line["resourceMetrics"][0]["scopeMetrics"]:
        for m in sm["metrics"]:
            if m["name"] == "kernelnet.skb.stage.duration":
                for dp in m["histogram"]["dataPoints"]:
                    stage = dp["attributes"][0]["value"]["stringValue"]
                    out[stage] = int(dp["count"])
                    assert sum(int(x) for x in dp["bucketCounts"]) == out[stage]
    return out


def test_bulk_transfer_feeds_the_histograms_with_every_packet_and_emits_only_by_policy(veth, collector):
    threshold_us = 20_000
    # two witnesses of the protocol stage on the receiving veth: ftrace (what the kernel
    # did) and a minimal BPF counter (what the kernel let BPF programs see; on this VM
    # that is a little less, see tests/kernel/witness.py)
    with TraceCount("net/netif_receive_skb", f'name == "{veth.dev_b}"') as kernel_seen, \
            BpfSkbCount("netif_receive_skb", veth.b.inode) as bpf_seen:
        c = collector(config={"scope": {"netns": [veth.b.inode]},
                              "probes": {"lifecycle": {"slow_threshold_us": threshold_us}}})
        server = _popen_in(veth.b, BULK_SERVER, veth.addr_b, str(PORT))
        try:
            assert server.stdout.readline().strip() == "ready", server.stderr.read()
            rx0 = veth.rx_packets(veth.b, veth.dev_b)
            r = veth.a.exec(sys.executable, "-c", BULK_CLIENT, veth.addr_b, str(PORT), "10", str(8 << 30),
                            check=False, timeout=60)
            assert r.returncode == 0, r.stderr
            received = int(server.stdout.readline())
        finally:
            stop_by_stdin(server)
        rx1 = veth.rx_packets(veth.b, veth.dev_b)
        assert c.stop() == 0, c.text()
    assert received == int(r.stdout) > 0
    last = _last_metrics(c.output)
    counts = _stage_counts(last)
    missed = _lost(last, "lifecycle", "kernel_nested_bpf")
    unseen = _lost(last, "lifecycle", "arrival_unseen")
    packets = rx1 - rx0
    assert packets > 1000
    # The windows nest: witnesses > collector > [rx0, rx1]; +4 allows for the few packets
    # that may cross the link outside the inner window (ARP; the closing handshake's
    # last ACK after the server's close).
    # 1. The kernel: every packet the receiving veth counted reached net:netif_receive_skb.
    assert packets <= kernel_seen.count <= packets + 4, (packets, kernel_seen.count)
    # 2. Us, exactly: every protocol stage a BPF program was given is in the backlog
    #    histogram, or counted as arriving unseen (its arrival's slot was taken by another
    #    lifecycle, or the arrival was not given to BPF), or is among the hits the kernel
    #    skipped because a tracing program of ours already ran on that CPU (an upper
    #    bound: recursion_misses summed over the family's programs).
    accounted = counts["backlog"] + unseen
    assert accounted <= bpf_seen.count <= accounted + missed + 4, (counts, unseen, missed, bpf_seen.count)
    assert counts["backlog"] <= packets + 4, (counts, packets)
    # 3. The kernel's own gap (not ours, and counted by no BPF program): hits in softirqs
    #    that interrupted the VM agent's threads. Measured 0-49 per 200-300 K; bounded so a
    #    larger gap is looked at.
    hidden = kernel_seen.count - bpf_seen.count
    assert 0 <= hidden <= packets // 1000, (hidden, kernel_seen.count, bpf_seen.count)
    assert counts["backlog"] >= 0.8 * packets, (counts, packets, missed, unseen)  # losses stay a small share
    assert counts["total"] >= 1  # data segments read by the application
    spans = read_store(c.output)
    life = [s for s in spans if s["name"] == "kernel.skb.lifecycle"]
    assert all(s["attributes"]["kernelnet.netns"] == veth.b.inode for s in life), "scope leaked"
    for s in life:  # nothing outside the policy: slow ones, and drops (TCP may drop under load)
        a = s["attributes"]
        why = a["kernelnet.skb.emitted_because"].split(",")
        assert set(why) <= {"slow", "dropped"} and why, a
        assert ("slow" in why) == (a["kernelnet.skb.total_ns"] > threshold_us * 1000), a
        assert ("dropped" in why) == (a["kernelnet.skb.end"] == "dropped" and "kernelnet.drop.reason" in a), a
    assert len(life) < counts["total"] // 10, (len(life), counts)


DROP_WORKLOAD = r"""
import socket, sys
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(int(sys.argv[3])):
    u.sendto(b"x" * 32, (sys.argv[1], int(sys.argv[2])))  # nobody listens: NO_SOCKET drops
"""


def test_fallback_with_fields_hidden_still_gives_4_tuples_and_check_says_why(veth, collector, tmp_path):
    hidden = {"probes": {"hide_fields": ["kfree_skb:rx_sk", "kfree_skb:reason", "tcp_probe:sock_cookie"]}}
    cfg = tmp_path / "hidden.yaml"
    cfg.write_text(json.dumps(hidden))
    chk = subprocess.run([*CLI, "check", "--json", "--config", str(cfg)], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert chk.returncode == 1, chk.stdout + chk.stderr  # degraded, not failed
    by_name = {x["name"]: x for x in json.loads(chk.stdout)["checks"]}
    drop = next(v for k, v in by_name.items() if k.startswith("probe drop"))
    life = next(v for k, v in by_name.items() if k.startswith("probe lifecycle"))
    assert drop["status"] == "degraded" and "no rx_sk field" in drop["detail"] and "no reason field" in drop["detail"]
    assert life["status"] == "degraded" and "sock_cookie" in life["detail"] and "4-tuple" in life["detail"]

    c = collector("--config", str(cfg))
    assert "hiding tracepoint fields" in c.text()
    veth.a.exec(sys.executable, "-c", DROP_WORKLOAD, veth.addr_b, "9", "7")
    server = _popen_in(veth.b, SLOW_SERVER, veth.addr_b, str(PORT), "0.02", "2")
    try:
        assert server.stdout.readline().strip() == "ready", server.stderr.read()
        r = veth.a.exec(sys.executable, "-c", CLIENT, veth.addr_b, str(PORT), "2", check=False)
        assert r.returncode == 0, r.stderr
        info = json.loads(server.stdout.readline())
    finally:
        stop_by_stdin(server)
    assert c.stop() == 0, c.text()
    spans = read_store(c.output)
    drops = [s for s in spans if s["name"] == "kernel.skb.drop" and s["attributes"].get("kernelnet.netns") == veth.b.inode
             and s["attributes"].get("destination.port") == 9]
    assert len(drops) == 7, c.text()
    for s in drops:
        a = s["attributes"]
        assert a["kernelnet.drop.reason"] == "unknown:0" and a["kernelnet.skb.has_socket"] is False
        assert (a["source.address"], a["destination.address"]) == (veth.addr_a, veth.addr_b)
    life = [s for s in _lifecycles(spans, veth.b.inode)
            if s["attributes"].get("network.local.port") == PORT and s["attributes"]["kernelnet.skb.end"] == "read"]
    assert len(life) == 2, [s["attributes"] for s in _lifecycles(spans, veth.b.inode)]
    for s in life:
        a = s["attributes"]
        assert "kernelnet.socket.cookie" not in a  # never guessed
        assert [a["network.peer.address"], a["network.peer.port"]] == info["peer"]
        assert a["thread.id"] == info["tid"]
        assert [e["name"] for e in s["events"]] == ["arrival", "protocol", "read"]
