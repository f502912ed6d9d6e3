"""Raw or classic tracepoint: the choice every per-packet program makes at plan time.

A classic tracepoint program (``category:name``) runs after the kernel has built the
tracepoint's whole trace record (perf_trace_*: every field of the format file, device
name strings included) and is skipped by the kernel when it fires while another
tracing BPF program runs on that CPU (``bpf_prog_active``: counted as
``kernel_nested_bpf``). A raw tracepoint program (``raw:name``) gets the TP_PROTO
arguments as they are (``ctx->args[i]``), nothing is built, and only a nested run of
the *same* program is skipped. Measured on the reference VM (docs/benchmarks.md
section 2): net:netif_rx costs ~200 ns more per event with a classic program than
with no program, ~50 ns more with a raw one.

The argument order is the running kernel's, never assumed: ``kernel.btf.raw_args``
finds each role's position in the ``btf_trace_<name>`` prototype. When BTF is missing
or the prototype does not have what the program needs, the family keeps the classic
tracepoint (its fields from the format file) and says so in ``Plan.fallbacks``, which
``otel-kernelnet check`` prints.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..kernel.btf import raw_args
from ..loader import RAW_PREFIX

# set to 1: every program stays on its classic tracepoint (benchmarks compare the two;
# diagnosis of a kernel whose raw tracepoints misbehave); or to tracepoint names
# ("netif_rx,kfree_skb"): those stay classic
CLASSIC_ENV = "OTEL_KERNELNET_CLASSIC_TRACEPOINTS"
FALLBACK_COST = ("classic tracepoint instead: its trace record is built on every event, "
                 "and it is skipped when nested in another tracing BPF program (kernel_nested_bpf)")


@dataclass(frozen=True)
class Raw:
    """What a program needs from a raw tracepoint: (role, argument type) pairs in the
    order the program was written against (``expect``, the full prototype, settles
    roles whose type occurs more than once)."""
    roles: tuple[tuple[str, str], ...]
    expect: tuple[str, ...] | None = None


def choose(btf: object | None, key: str, name: str, full_name: str, raw: Raw | None,
           roles: tuple[str, ...] | None = None) -> tuple[dict[str, int], str | None]:
    """-D settings for one program: ``KN_RAW_<key>`` 1 and ``KN_ARG_<key>_<ROLE>`` when
    it can be a raw tracepoint, else ``KN_RAW_<key>`` 0 and the fallback line.

    ``roles`` limits the roles to those the classic program would also have (a field
    hidden or missing from the format file stays missing on the raw path too, so the
    family behaves the same either way).

    >>> choose(None, "RX", "netif_rx", "net:netif_rx", Raw((("skb", "struct sk_buff *"),)))
    ({'KN_RAW_RX': 0}, 'net:netif_rx: no kernel BTF: classic tracepoint instead: its trace record is built on every event, and it is skipped when nested in another tracing BPF program (kernel_nested_bpf)')
    """
    if raw is None:
        return {f"KN_RAW_{key}": 0}, None
    forced = os.environ.get(CLASSIC_ENV, "")
    if forced == "1" or name in forced.split(","):
        return {f"KN_RAW_{key}": 0}, f"{full_name}: {CLASSIC_ENV}={forced}: {FALLBACK_COST}"
    want = [(r, t) for r, t in raw.roles if roles is None or r in roles]
    found, why = raw_args(btf, name, want, list(raw.expect) if raw.expect else None)
    if found is None:
        return {f"KN_RAW_{key}": 0}, f"{full_name}: {why}: {FALLBACK_COST}"
    d = {f"KN_RAW_{key}": 1}
    d.update({f"KN_ARG_{key}_{role.upper()}": i for role, i in found.items()})
    return d, None


def attach_name(defines: dict[str, int], key: str, category: str, name: str) -> str:
    """What Loader.attach takes: ``raw:<name>`` or ``<category>:<name>``."""
    return f"{RAW_PREFIX}{name}" if defines.get(f"KN_RAW_{key}") == 1 else f"{category}:{name}"
