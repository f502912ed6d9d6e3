"""Raw tracepoints on the running kernel (root; real veth traffic in namespaces the test
creates): the per-packet programs of lifecycle, drop and softirq attach as raw
tracepoints here (BPF_PROG_TYPE_RAW_TRACEPOINT, argument positions from this kernel's
BTF), and they produce the same records as the classic tracepoints: one datagram to a
closed port gives a drop record and a dropped lifecycle with the same 4-tuple, device,
namespace and reason either way.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from otel_kernelnet.clock import KernelClock
from otel_kernelnet.config import load
from otel_kernelnet.kernel.btf import BTF
from otel_kernelnet.loader import Loader
from otel_kernelnet.probes import KernelContext, drop, lifecycle, rawtp, softirq
from otel_kernelnet.spans import RandomIds

PROG_TYPE = {"5": "tracepoint", "17": "raw_tracepoint"}  # include/uapi/linux/bpf.h enum bpf_prog_type
SEND = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 40404))
for i in range(int(sys.argv[2])):
    s.sendto(b"q" * 48, (sys.argv[1], 4099))
"""


def ctx() -> KernelContext:
    return KernelContext(btf=BTF.load(), symbol=hex, clock=KernelClock(), ids=RandomIds(), cfg=load(None))


def prog_type(fd: int) -> str:
    info = dict(ln.split(":", 1) for ln in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines() if ":" in ln)
    return PROG_TYPE.get(info["prog_type"].strip(), info["prog_type"].strip())


def test_this_kernel_runs_every_per_packet_program_as_a_raw_tracepoint():
    c = ctx()
    plans = {f.name: f.plan(c) for f in (lifecycle.LifecycleFamily(), drop.DropFamily(), softirq.SoftirqFamily())}
    for name, p in plans.items():
        assert p.fallbacks == [], (name, p.fallbacks)
    raw = {fn for p in plans.values() for where, fn in p.attach_points() if where.startswith("raw:")}
    assert {"kn_on_netif_rx", "kn_on_netif_receive_skb", "kn_on_kfree_skb", "kn_on_copy_datagram",
            "kn_sirq_on_raise", "kn_sirq_on_entry", "kn_sirq_on_exit", "kn_sirq_on_switch",
            "kn_sirq_on_waking", "kn_sirq_on_napi_poll"} <= raw


def _run(veth, classic: bool) -> tuple[list, list, dict[str, str]]:
    if classic:
        os.environ[rawtp.CLASSIC_ENV] = "1"
    try:
        c = ctx()
        fams = [lifecycle.LifecycleFamily(), drop.DropFamily()]
        got: dict[str, list] = {"lifecycle": [], "drop": []}
        with Loader() as loader:
            for fam in fams:
                p = fam.plan(c)
                fam.start(loader, p, c, got[fam.name].append, lambda e: (_ for _ in ()).throw(e))
            types = {fn: prog_type(fam.probe.prog.obj.prog_fd(fn))
                     for fam in fams for _tp, fn in fam.probe.prog.attached}
            veth.a.python(SEND.replace("sys.argv[1]", repr(veth.addr_b)).replace("int(sys.argv[2])", "3"))
            deadline = time.monotonic() + 10
            mine_l: list = []
            mine_d: list = []
            drained = 0
            while time.monotonic() < deadline and (len(mine_l) < 3 or len(mine_d) < 3):
                drained += loader.consume()
                mine_l = [s for s in got["lifecycle"] if s.attributes.get("kernelnet.netns") == veth.b.inode]
                mine_d = [s for s in got["drop"] if s.attributes.get("kernelnet.netns") == veth.b.inode]
                time.sleep(0.05)
            # consume() returns the records it drained: one span each in these families
            assert drained == len(got["lifecycle"]) + len(got["drop"]) > 0, (drained, got)
    finally:
        os.environ.pop(rawtp.CLASSIC_ENV, None)
    return mine_l, mine_d, types


def _essentials(spans: list, keys: tuple[str, ...]) -> list[tuple]:
    return sorted(tuple(s.attributes.get(k) for k in keys) for s in spans)


def test_raw_and_classic_programs_give_the_same_drop_and_lifecycle_records(veth):
    raw_l, raw_d, raw_types = _run(veth, classic=False)
    cls_l, cls_d, cls_types = _run(veth, classic=True)
    assert raw_types["kn_on_netif_rx"] == raw_types["kn_on_kfree_skb"] == "raw_tracepoint"
    assert raw_types["kn_on_tcp_probe"] == "tracepoint"  # never raw: its record has derived values
    assert set(cls_types.values()) == {"tracepoint"}
    life_keys = ("kernelnet.skb.end", "kernelnet.drop.reason", "network.interface.name", "network.local.address",
                 "network.local.port", "network.peer.address", "network.peer.port", "network.transport",
                 "kernelnet.skb.len", "kernelnet.skb.protocol", "kernelnet.skb.arrival")
    drop_keys = ("kernelnet.drop.reason", "network.interface.name", "source.address", "source.port",
                 "destination.address", "destination.port", "network.transport", "kernelnet.skb.protocol",
                 "kernelnet.skb.len", "kernelnet.drop.location")
    expect_life = ("dropped", "NO_SOCKET", veth.dev_b, veth.addr_b, 4099, veth.addr_a, 40404, "udp", 20 + 8 + 48, 0x0800,
                   "netif_rx")
    assert _essentials(raw_l, life_keys) == [expect_life] * 3, raw_l
    assert _essentials(cls_l, life_keys) == [expect_life] * 3, cls_l
    assert len(raw_d) == len(cls_d) == 3
    assert _essentials(raw_d, drop_keys) == _essentials(cls_d, drop_keys)
    a = raw_d[0].attributes
    assert (a["kernelnet.drop.reason"], a["source.address"], a["destination.port"], a["network.interface.name"]) == (
        "NO_SOCKET", veth.addr_a, 4099, veth.dev_b)
