"""Softirq family without root: plan() from this kernel's captured format files (and
degraded variants), the record layout against the C compiler, decoding a hand-written
record with several culprits, the span mapping against complete expected output, and
the histogram shape.

Fixtures: ``tests/fixtures/tracefs/<category>.<name>.6.18.format`` captured from the
reference machine (Linux 6.18): NET_TX = 2 and NET_RX = 3 in irq:softirq_entry's table.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from otel_kernelnet.kernel import cgroups, tracefs
from otel_kernelnet.probes import ProbeUnavailable, softirq
from otel_kernelnet.spans import CountingIds, SpanEvent
from tests.unit.test_records import test_ctypes_layout_equals_the_c_compilers as _layout_check

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "tracefs"


def formats(**override):
    out = {tp.key: tracefs.parse_format((FIX / f"{tp.category}.{tp.name}.6.18.format").read_text(),
                                        tp.category, tp.name) for tp in softirq.TRACEPOINTS}
    out.update(override)
    return out


def test_record_layout_equals_the_c_compilers(tmp_path):
    _layout_check(tmp_path, "softirq", "kn_softirq_event")


def test_plan_takes_offsets_and_vectors_from_the_format_files():
    p = softirq.plan(formats(), rps_func=0xFFFFFFFF81E5FD40, wait_threshold_ms=2, run_threshold_ms=0.5,
                     rate_limit=7, max_cpus=2, rate_limit_node=13)
    d = p.defines
    assert p.degraded == []
    assert (d["KN_VEC_NET_RX"], d["KN_VEC_NET_TX"]) == (3, 2)
    assert d["KN_TP_RAISE_VEC"] == d["KN_TP_ENTRY_VEC"] == d["KN_TP_EXIT_VEC"] == 8
    assert (d["KN_TP_SWITCH_PREV_COMM"], d["KN_TP_SWITCH_PREV_PID"], d["KN_TP_SWITCH_NEXT_PID"]) == (8, 24, 56)
    assert (d["KN_TP_NAPI_WORK"], d["KN_TP_NAPI_BUDGET"]) == (20, 24)
    assert (d["KN_TP_CSDQ_CPU"], d["KN_TP_CSDQ_FUNC"], d["KN_TP_CSDE_FUNC"]) == (8, 24, 8)
    assert d["KN_HAVE_IPI"] == 1 and d["KN_RPS_FUNC"] == "0xffffffff81e5fd40ULL"
    assert (d["KN_WAIT_THRESHOLD_NS"], d["KN_RUN_THRESHOLD_NS"]) == (2_000_000, 500_000)
    assert (d["KN_RATE_LIMIT"], d["KN_RATE_LIMIT_NODE"], d["KN_MAX_CPUS"], d["KN_CGROUP_MODE"]) == (7, 13, 2, 0)
    assert p.vector_name(3) == "NET_RX" and p.vector_name(42) == "unknown:42"
    assert [tp.key for tp in p.attach] == ["RAISE", "ENTRY", "EXIT", "SWITCH", "WAKING", "NAPI", "CSDQ", "CSDE"]


def test_plan_degrades_without_optional_tracepoints_and_refuses_without_softirq_ones():
    p = softirq.plan(formats(SWITCH=None, CSDQ=None), rps_func=1, max_cpus=2)
    assert p.defines["KN_HAVE_SWITCH"] == 0 and p.defines["KN_HAVE_IPI"] == 0
    assert any("sched:sched_switch does not exist" in x and "culprits" in x for x in p.degraded)
    assert any("RPS IPI" in x for x in p.degraded)
    assert "CSDE" not in p.formats  # the pair goes together
    p = softirq.plan(formats(), rps_func=None, max_cpus=2)
    assert p.defines["KN_HAVE_IPI"] == 0 and any("kallsyms" in x for x in p.degraded)
    with pytest.raises(ProbeUnavailable, match="irq:softirq_entry does not exist"):
        softirq.plan(formats(ENTRY=None))
    no_names = tracefs.parse_format((FIX / "irq.softirq_entry.6.18.format").read_text().replace('"NET_RX"', '"NETRX"'))
    with pytest.raises(ProbeUnavailable, match="names no NET_RX"):
        softirq.plan(formats(ENTRY=no_names))


def test_plan_hybrid_cgroups_read_the_memory_hierarchy_through_btf():
    class FakeBTF:
        def enum_members(self, name):
            return {"memory_cgrp_id": 4}

        def offsetof(self, struct, path):
            return {"task_struct": 2376, "css_set": 0, "cgroup_subsys_state": 0, "cgroup": 256, "kernfs_node": 96}[struct]
    p = softirq.plan(formats(), FakeBTF(), rps_func=1, cgroup=cgroups.Setup(1, "/sys/fs/cgroup/memory", "memory"), max_cpus=2)
    assert {k: v for k, v in p.defines.items() if "CGROUP" in k or k.startswith("KN_OFF")} == {
        "KN_CGROUP_MODE": 1, "KN_CGROUP_SUBSYS": 4, "KN_OFF_TASK_CGROUPS": 2376, "KN_OFF_CSET_SUBSYS": 0,
        "KN_OFF_CSS_CGROUP": 0, "KN_OFF_CGROUP_KN": 256, "KN_OFF_KN_ID": 96}
    p = softirq.plan(formats(), None, rps_func=1, cgroup=cgroups.Setup(1, "/x", "memory"), max_cpus=2)
    assert p.defines["KN_CGROUP_MODE"] == 0 and any("no BTF" in x for x in p.degraded)


def record(**kw) -> bytes:
    """A kn_softirq_event, field by field in softirq.h order."""
    f = dict(start_ns=1_000_000, raise_ns=1_000_000, entry_ns=4_500_000, exit_ns=4_600_000, ipi_ns=0,
             ipi_entry_ns=0, ksoftirqd_wake_ns=0, ksoftirqd_run_ns=0, other_ns=0, irq_cgroup=0, ipi_cgroup=0,
             culprit_ns=(0, 0, 0, 0), culprit_cgroup=(0, 0, 0, 0), culprit_pid=(0, 0, 0, 0),
             culprit_tid=(0, 0, 0, 0), cpu=1, vec=3, irq_pid=0, irq_tid=0, ipi_pid=0, napi_polls=0,
             napi_work=0, napi_budget=0, napi_exhausted=0, switches=0, flags=0, irq_comm=b"", ipi_comm=b"",
             culprit_comm=(b"", b"", b"", b""))
    f.update(kw)
    return b"".join([
        struct.pack("<11Q", f["start_ns"], f["raise_ns"], f["entry_ns"], f["exit_ns"], f["ipi_ns"],
                    f["ipi_entry_ns"], f["ksoftirqd_wake_ns"], f["ksoftirqd_run_ns"], f["other_ns"],
                    f["irq_cgroup"], f["ipi_cgroup"]),
        struct.pack("<4Q", *f["culprit_ns"]), struct.pack("<4Q", *f["culprit_cgroup"]),
        struct.pack("<4I", *f["culprit_pid"]), struct.pack("<4I", *f["culprit_tid"]),
        struct.pack("<12I", f["cpu"], f["vec"], f["irq_pid"], f["irq_tid"], f["ipi_pid"], f["napi_polls"],
                    f["napi_work"], f["napi_budget"], f["napi_exhausted"], f["switches"], f["flags"], 0),
        f["irq_comm"].ljust(16, b"\0"), f["ipi_comm"].ljust(16, b"\0"),
        b"".join(c.ljust(16, b"\0") for c in f["culprit_comm"]),
    ])


F = softirq.DEFS
# a NET_RX wait of 3.5 ms on CPU 1 during which four tasks held the CPU (three switches,
# then the reader was interrupted at entry); the slot order is first-come, not by time
SEVERAL = record(
    start_ns=1_000_000, raise_ns=1_200_000, entry_ns=4_500_000, exit_ns=4_600_000,
    ipi_ns=1_000_000, ipi_entry_ns=1_150_000, ksoftirqd_wake_ns=2_000_000, ksoftirqd_run_ns=4_400_000,
    other_ns=5_000, irq_cgroup=77, ipi_cgroup=77,
    culprit_ns=(300_000, 2_900_000, 0, 100_000), culprit_cgroup=(0, 77, 0, 12),
    culprit_pid=(10, 4242, 0, 31), culprit_tid=(10, 4243, 0, 31),
    cpu=1, vec=3, irq_pid=4242, irq_tid=4243, ipi_pid=10, napi_polls=2, napi_work=70, napi_budget=64,
    napi_exhausted=1, switches=3,
    flags=F["KN_SIRQ_F_KSOFTIRQD_WOKEN"] | F["KN_SIRQ_F_KSOFTIRQD_RAN"] | F["KN_SIRQ_F_IPI"],
    irq_comm=b"reader", ipi_comm=b"kworker/1:0", culprit_comm=(b"kworker/1:0", b"reader", b"", b"sshd"))


def test_decode_orders_culprits_by_time_and_drops_empty_slots():
    assert len(SEVERAL) == 328
    ev = softirq.decode(SEVERAL + b"\0" * 8)
    assert [(c.comm, c.pid, c.tid, c.ns, c.cgroup) for c in ev.culprits] == [
        ("reader", 4242, 4243, 2_900_000, 77), ("kworker/1:0", 10, 10, 300_000, 0), ("sshd", 31, 31, 100_000, 12)]
    assert ev.wait_ns == 3_500_000 and ev.run_ns == 100_000
    assert (ev.napi_polls, ev.napi_work, ev.napi_budget, ev.napi_exhausted, ev.switches) == (2, 70, 64, 1, 3)
    with pytest.raises(ValueError, match="too short"):
        softirq.decode(SEVERAL[:100])
    unknown_wait = softirq.decode(record(flags=F["KN_SIRQ_F_NO_RAISE"], raise_ns=0, start_ns=4_500_000))
    assert unknown_wait.wait_ns is None


def test_span_mapping_complete():
    ev = softirq.decode(SEVERAL)
    paths = {77: "/kubepods/pod1/" + "ab" * 32, 12: "/system.slice/sshd.service"}
    span = softirq.softirq_span(ev, to_epoch_ns=lambda t: t + 10**18, ids=CountingIds(),
                                vector_name={3: "NET_RX"}.get, cgroup_path=paths.get)
    assert span.name == "kernel.softirq"
    assert (span.start_ns, span.end_ns) == (10**18 + 1_000_000, 10**18 + 4_600_000)
    assert span.trace_id == (1).to_bytes(16, "big") and span.span_id == (1).to_bytes(8, "big")
    assert span.attributes == {
        "kernelnet.kind": "softirq", "kernelnet.softirq.vector": "NET_RX", "kernelnet.softirq.run_ns": 100_000,
        "kernelnet.softirq.wait_ns": 3_500_000, "kernelnet.cpu": 1, "process.pid": 4242, "thread.id": 4243,
        "process.command": "reader", "kernelnet.softirq.in_ksoftirqd": False, "kernelnet.cgroup.id": 77,
        "kernelnet.cgroup.path": paths[77], "container.id": "ab" * 32,
        "kernelnet.softirq.ipi.wait_ns": 150_000, "kernelnet.softirq.ipi.pid": 10,
        "kernelnet.softirq.ipi.comm": "kworker/1:0", "kernelnet.softirq.ksoftirqd.woken": True,
        "kernelnet.softirq.ksoftirqd.wait_ns": 2_400_000,
        "kernelnet.culprit.pid": 4242, "kernelnet.culprit.tid": 4243, "kernelnet.culprit.comm": "reader",
        "kernelnet.culprit.ns": 2_900_000, "kernelnet.culprit.cgroup.path": paths[77],
        "kernelnet.culprit.top": "reader(4242) 2.900 ms; kworker/1:0(10) 0.300 ms; sshd(31) 0.100 ms",
        "kernelnet.softirq.culprit_other_ns": 5_000, "kernelnet.softirq.switches": 3,
        "kernelnet.napi.polls": 2, "kernelnet.napi.work": 70, "kernelnet.napi.budget": 64,
        "kernelnet.napi.budget_exhausted": 1,
    }
    E = 10**18
    assert [(e.time_ns - E, e.name) for e in span.events] == [
        (1_000_000, "ipi.queued"), (1_150_000, "ipi.taken"), (1_200_000, "raise"), (2_000_000, "ksoftirqd.wakeup"),
        (4_400_000, "ksoftirqd.run"), (4_500_000, "culprit"), (4_500_000, "culprit"), (4_500_000, "culprit"),
        (4_500_000, "entry")]
    culprit_events = [e for e in span.events if e.name == "culprit"]
    assert culprit_events[0] == SpanEvent(E + 4_500_000, "culprit", {
        "process.pid": 4242, "thread.id": 4243, "process.command": "reader", "kernelnet.culprit.ns": 2_900_000,
        "kernelnet.cgroup.path": paths[77]})
    assert "kernelnet.cgroup.path" not in culprit_events[1].attributes  # cgroup 0: unknown


def test_every_attribute_is_declared_in_semconv():
    from otel_kernelnet import semconv
    span = softirq.softirq_span(softirq.decode(SEVERAL), to_epoch_ns=lambda t: t, ids=CountingIds(),
                                vector_name=str, cgroup_path=lambda i: "/x")
    for key in span.attributes:
        assert key in semconv.BY_KEY, key
        assert "softirq" in semconv.BY_KEY[key].families or "*" in semconv.BY_KEY[key].families, key


def test_histogram_shape():
    slots = softirq.SLOTS
    raw = [[0, 0] for _ in range(2 * 2 * slots)]
    raw[0 * slots + 11] = [5, 0]          # wait, NET_RX, 1024..2047 ns, CPU 0
    raw[(1 * 2 + 1) * slots + 0] = [0, 2]  # run, NET_TX, 0 ns, CPU 1
    h = softirq.histograms_from_counts(raw, {"NET_RX": 3, "NET_TX": 2})
    assert [(x["measure"], x["vector"], x["vector_number"], x["cpu"], x["count"]) for x in h] == [
        ("wait", "NET_RX", 3, 0, 5), ("run", "NET_TX", 2, 1, 2)]
    assert h[0]["counts"][11] == 5 and len(h[0]["counts"]) == slots == len(h[0]["bounds"])
    assert h[0]["bounds"][:4] == [0, 1, 3, 7] and h[0]["bounds"][11] == 2047
    assert softirq.SoftirqFamily().histograms() == []


def test_possible_cpus():
    assert softirq.possible_cpus("0-3,8\n") == 9 and softirq.possible_cpus("0\n") == 1
