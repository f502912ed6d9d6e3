"""Independent witnesses of how many times a receive tracepoint fired, for tests that
check the collector's accounting against the kernel.

- ``TraceCount``: ftrace itself (a private tracefs instance with an event filter), no
  BPF involved: what the kernel did.
- ``BpfSkbCount``: the smallest BPF program on the same raw tracepoint, counting skbs
  whose device is in one network namespace: what the kernel let BPF see.

They differ on this VM: the kernel runs no BPF program (raw or classic tracepoint,
and counts no recursion miss) for tracepoint hits in a softirq that interrupted a
thread of PID 1 (the VM's agent, tokio-rt-worker), while ftrace records them
(measured 2026-11-22, docs/probes/lifecycle.md, Caveats). A probe can only be held to
the second count; the gap between the two is the kernel's.
"""

from __future__ import annotations

import glob
import os
import re
import uuid
from pathlib import Path

from otel_kernelnet.kernel.btf import BTF
from otel_kernelnet.kernel.tracefs import ensure_tracefs
from otel_kernelnet.loader import RAW_PREFIX, Loader


class TraceCount:
    """Count one tracefs event matching a filter, in a private instance (removed on exit;
    the count includes events the small buffer overwrote)."""

    def __init__(self, event: str, filter_expr: str):
        root, why = ensure_tracefs()
        if root is None:
            raise RuntimeError(f"tracefs: {why}")
        self.event, self.filter = event, filter_expr
        self.dir = f"{root}/instances/kn-witness-{uuid.uuid4().hex[:8]}"
        self.count: int | None = None

    def _write(self, rel: str, text: str) -> None:
        with open(f"{self.dir}/{rel}", "w") as f:
            f.write(text)

    def __enter__(self) -> "TraceCount":
        os.mkdir(self.dir)
        try:
            self._write("buffer_size_kb", "16")
            self._write(f"events/{self.event}/filter", self.filter)
            self._write(f"events/{self.event}/enable", "1")
        except BaseException:
            os.rmdir(self.dir)
            raise
        return self

    def read(self) -> int:
        total = 0
        for stats in glob.glob(f"{self.dir}/per_cpu/cpu*/stats"):
            text = open(stats).read()
            total += sum(int(re.search(rf"^{k}: (\d+)", text, re.M).group(1)) for k in ("entries", "overrun"))
        return total

    def __exit__(self, *exc: object) -> None:
        try:
            self._write(f"events/{self.event}/enable", "0")
            self.count = self.read()
        finally:
            os.rmdir(self.dir)


class BpfSkbCount:
    """Count hits of a raw tracepoint whose first argument is an skb on a device of the
    network namespace with inode ``netns`` (witness.bpf.c; offsets from the running
    kernel's BTF), through the collector's own Loader."""

    def __init__(self, tracepoint: str, netns: int):
        self.tracepoint, self.netns = tracepoint, netns
        self.count: int | None = None
        self._loader: Loader | None = None
        self._prog = None

    def __enter__(self) -> "BpfSkbCount":
        btf = BTF.load()
        self._loader = Loader()
        try:
            self._prog = self._loader.compile("witness", "witness.bpf.c", {
                "OFF_SKB_DEV": btf.offsetof("sk_buff", "dev"),
                "OFF_DEV_ND_NET": btf.offsetof("net_device", "nd_net"),
                "OFF_NET_INUM": btf.offsetof("net", "ns.inum"),
                "NETNS": self.netns}, directory=Path(__file__).parent)
            self._loader.attach(self._prog, RAW_PREFIX + self.tracepoint, "kn_witness")
        except BaseException:
            self._loader.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.count = self._loader.percpu_sum(self._prog, "hits", 1)[0]
        finally:
            self._loader.close()  # detaches
