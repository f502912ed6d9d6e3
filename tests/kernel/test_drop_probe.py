"""Kernel tests of the drop probe: real tracepoints, real traffic in fresh namespaces.

Workloads use prime counts (23 refused connects, 7 filtered SYNs, 5 exported drops),
so a doubled or missing event cannot pass by accident.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from tests.kernel.conftest import CLI, ROOT, read_store, sh

CONNECT = """
import socket, sys
port, n, timeout = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
outcomes = []
for _ in range(n):
    s = socket.socket()
    s.settimeout(timeout)
    try:
        s.connect(("127.0.0.1", port))
        outcomes.append("connected")
    except ConnectionRefusedError:
        outcomes.append("refused")
    except (TimeoutError, socket.timeout):
        outcomes.append("timeout")
    finally:
        s.close()
print(",".join(sorted(set(outcomes))))
"""


def connect_n(netns, port: int, n: int, timeout: float = 2.0) -> str:
    r = netns.exec(sys.executable, "-c", CONNECT, str(port), str(n), str(timeout), timeout=60)
    return r.stdout.strip()


def drops_in(spans: list[dict], netns, reason: str, port: int) -> list[dict]:
    return [s for s in spans
            if s["attributes"].get("kernelnet.netns") == netns.inode
            and s["attributes"].get("kernelnet.drop.reason") == reason
            and s["attributes"].get("destination.port") == port]


def test_refused_connects_give_exactly_23_no_socket_drop_spans(netns, collector):
    t0 = time.time_ns()
    c = collector()
    assert connect_n(netns, 4099, 23) == "refused"
    assert c.stop() == 0, c.text()
    t1 = time.time_ns()
    spans = read_store(c.output)
    mine = drops_in(spans, netns, "NO_SOCKET", 4099)
    assert len(mine) == 23, c.text()
    for s in mine:
        a = s["attributes"]
        assert s["name"] == "kernel.skb.drop"
        assert s["status"]["code"] == 2 and "NO_SOCKET" in s["status"]["message"]
        assert s["start"] == s["end"] and t0 <= s["start"] <= t1
        assert a["kernelnet.kind"] == "drop"
        assert a["network.transport"] == "tcp" and a["network.type"] == "ipv4"
        assert a["source.address"] == a["destination.address"] == "127.0.0.1"
        assert a["network.interface.name"] == "lo"
        assert a["kernelnet.drop.location"].startswith("tcp_v4_rcv+0x")
        assert a["kernelnet.skb.protocol"] == 0x0800
        assert s["resource"]["service.name"] == "otel-kernelnet"
    # 23 distinct client ports: one span per refused SYN, no duplicates
    assert len({s["attributes"]["source.port"] for s in mine}) == 23
    assert "lost: 0 ring buffer," in c.text() and " 0 rate-capped," in c.text()


def test_firewall_drop_rule_gives_netfilter_drop_spans(netns, collector):
    netns.exec("iptables", "-A", "INPUT", "-p", "tcp", "--dport", "4111", "-j", "DROP")
    c = collector()
    # each attempt gives up before the first SYN retransmit (1 s): one SYN per attempt
    assert connect_n(netns, 4111, 7, timeout=0.3) == "timeout"
    assert c.stop() == 0, c.text()
    spans = read_store(c.output)
    mine = drops_in(spans, netns, "NETFILTER_DROP", 4111)
    assert len(mine) == 7, c.text()
    locations = {s["attributes"]["kernelnet.drop.location"].split("+")[0] for s in mine}
    # resolved to the netfilter code that freed it (nf_hook_slow, or nft_do_chain with nf_tables)
    assert locations and all(loc.startswith(("nf_", "nft_")) for loc in locations), locations
    assert not drops_in(spans, netns, "NO_SOCKET", 4111)


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_drop_spans_reach_a_real_otlp_receiver(protocol, netns, collector, rotel_relay, otlp_sink):
    if protocol == "grpc":  # endpoint from the flag, protocol from the standard variable
        c = collector("--otlp-endpoint", rotel_relay.grpc_endpoint, env={"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
    else:  # endpoint from the standard variable (the exporter reads it itself)
        c = collector(env={"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": rotel_relay.http_endpoint})
    assert "exporting OTLP " + protocol in c.text()
    assert connect_n(netns, 4127, 5) == "refused"

    def mine_of(spans):
        return [s for s in spans if s["attributes"].get("kernelnet.netns") == netns.inode
                and s["attributes"].get("destination.port") == 4127]
    otlp_sink.wait_for(lambda spans: len(mine_of(spans)) >= 5, timeout=30)
    assert c.stop() == 0, c.text()
    mine = mine_of(otlp_sink.spans())
    assert len(mine) == 5
    for s in mine:
        assert s["name"] == "kernel.skb.drop"
        assert s["attributes"]["kernelnet.drop.reason"] == "NO_SOCKET"
        assert s["status_code"] == 2
        assert s["resource"]["service.name"] == "otel-kernelnet"
        assert s["scope"] == "otel-kernelnet"
        assert s["start_ns"] == s["end_ns"] > 1_600_000_000 * 10**9
        assert len(s["trace_id"]) == 32 and len(s["span_id"]) == 16
    assert {s["transport"] for s in mine} == {"grpc"}, "rotel forwards over gRPC to the sink"
    assert not list(c.output.glob("*.jsonl")), "with an endpoint nothing goes to the embedded store"


def loaded_prog_ids() -> set[int]:
    return {p["id"] for p in json.loads(sh("bpftool", "prog", "show", "--json").stdout)}


def prog_ids_held_by(pid: int) -> set[int]:
    """BPF programs whose file descriptors the process holds (from /proc/PID/fdinfo)."""
    import os
    ids = set()
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            text = open(f"/proc/{pid}/fdinfo/{fd}").read()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("prog_id:"):
                ids.add(int(line.split()[1]))
    return ids


@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM", "duration"])
def test_probes_are_detached_on_every_exit_path(how, tmp_path):
    ready = tmp_path / "ready"
    args = [*CLI, "run", "--output", str(tmp_path / "d"), "--ready-file", str(ready)]
    if how == "duration":
        args += ["--duration", "2"]
    p = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        held = prog_ids_held_by(p.pid)
        assert held and held <= loaded_prog_ids(), "the running collector holds loaded programs"
        if how != "duration":
            p.send_signal(getattr(__import__("signal"), how))
        out, _ = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(10)
    assert p.returncode == 0, out
    assert "stopped:" in out
    assert not ready.exists(), "the ready file is removed at exit"
    assert not held & loaded_prog_ids(), "every program the collector loaded is gone"


def test_check_exits_0_here():
    r = subprocess.run([*CLI, "check", "--json"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    report = json.loads(r.stdout)
    assert r.returncode == 0, r.stdout + r.stderr
    assert report["status"] == "ok"
    assert {c["name"]: c["status"] for c in report["checks"]}["compile and attach"] == "ok"


def test_check_without_tracefs_and_privilege_exits_2_naming_the_fix():
    # a private mount namespace where tracefs is unmounted, and no capabilities left
    # to mount it again (root without its bounding set)
    script = ("umount /sys/kernel/tracing 2>/dev/null; umount /sys/kernel/debug 2>/dev/null; "
              f"exec setpriv --bounding-set=-all --inh-caps=-all {' '.join(CLI)} check")
    r = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    tracefs_line = [line for line in r.stdout.splitlines() if " tracefs:" in line]
    assert tracefs_line and tracefs_line[0].startswith("FAIL")
    assert "mount -t tracefs nodev /sys/kernel/tracing" in tracefs_line[0]
    assert "Traceback" not in r.stdout + r.stderr
    # and the host's tracefs is untouched
    assert sh("mountpoint", "-q", "/sys/kernel/tracing", check=False).returncode == 0


def test_run_without_privileges_is_one_line_with_the_fix(tmp_path):
    r = subprocess.run(["setpriv", "--bounding-set=-all", "--inh-caps=-all", *CLI, "run", "--duration", "1",
                        "--output", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "CAP_BPF" in lines[0] and "Fix:" in lines[0], r.stderr
