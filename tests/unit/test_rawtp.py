"""Raw tracepoint selection without root: the btf_trace_* prototype read from a
hand-built BTF blob, role matching by type (and by the full prototype when a type
repeats), and each per-packet family's plan choosing raw or falling back to the
classic tracepoint with a line `check` prints."""

from __future__ import annotations

from pathlib import Path

import pytest

from otel_kernelnet.kernel import tracefs
from otel_kernelnet.kernel.btf import BTF, raw_args
from otel_kernelnet.probes import drop, lifecycle, rawtp, softirq
from tests.unit.test_btf import CONST, TYPEDEF, Builder

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "tracefs"


def blob() -> BTF:
    b = Builder()
    uint = b.int_("unsigned int", 4)
    sint = b.int_("int", 4, signed=True)
    void_ptr = b.ptr(0)
    skb = b.struct("sk_buff", 232, [("len", uint, 112 * 8)])
    task = b.struct("task_struct", 4000, [("pid", sint, 1264 * 8)])
    sock = b.struct("sock", 800, [])
    cskb = b.simple(CONST, "", skb)
    reason = b.enum("skb_drop_reason", 4, [("SKB_DROP_REASON_NOT_SPECIFIED", 2)])
    boolean = b.simple(TYPEDEF, "bool", b.int_("_Bool", 1))
    protos = {
        "netif_rx": [b.ptr(skb)],
        "skb_copy_datagram_iovec": [b.ptr(cskb), sint],
        "kfree_skb": [b.ptr(skb), void_ptr, reason, b.ptr(sock)],
        "softirq_entry": [uint],
        "sched_switch": [boolean, b.ptr(task), b.ptr(task), uint],
        "napi_poll": [b.ptr(b.struct("napi_struct", 64, [])), sint, sint],
    }
    for name, params in protos.items():
        # typedef void (*btf_trace_<name>)(void *, params...): as the kernel's BTF has it
        proto = b.func_proto(0, [("", void_ptr)] + [("", t) for t in params])
        b.simple(TYPEDEF, f"btf_trace_{name}", b.ptr(proto))
    # a prototype without the leading void * is not a tracepoint's
    b.simple(TYPEDEF, "btf_trace_odd", b.ptr(b.func_proto(0, [("", uint)])))
    return BTF.from_bytes(b.blob())


@pytest.fixture(scope="module")
def btf() -> BTF:
    return blob()


def test_raw_tracepoint_args_spell_the_prototype_without_the_data_pointer(btf):
    assert btf.raw_tracepoint_args("netif_rx") == ["struct sk_buff *"]
    assert btf.raw_tracepoint_args("skb_copy_datagram_iovec") == ["struct sk_buff *", "int"]  # const dropped
    assert btf.raw_tracepoint_args("kfree_skb") == ["struct sk_buff *", "void *", "enum skb_drop_reason",
                                                    "struct sock *"]
    assert btf.raw_tracepoint_args("sched_switch") == ["bool", "struct task_struct *", "struct task_struct *",
                                                       "unsigned int"]
    assert btf.raw_tracepoint_args("missing") is None
    assert btf.raw_tracepoint_args("odd") is None


def test_roles_are_found_by_type_wherever_the_kernel_puts_them(btf):
    found, why = raw_args(btf, "kfree_skb", [("rx_sk", "struct sock *"), ("skb", "struct sk_buff *"),
                                             ("reason", "enum skb_drop_reason")])
    assert (found, why) == ({"rx_sk": 3, "skb": 0, "reason": 2}, "")
    found, why = raw_args(btf, "kfree_skb", [("skb", "struct sk_buff *"), ("cpu", "unsigned int")])
    assert found is None and "no unsigned int for cpu" in why
    assert raw_args(btf, "nope", [("skb", "struct sk_buff *")]) == (
        None, "BTF has no prototype for it (btf_trace_nope)")


def test_repeated_types_need_the_whole_prototype_to_match(btf):
    expect = ["bool", "struct task_struct *", "struct task_struct *", "unsigned int"]
    roles = [("prev", "struct task_struct *"), ("next", "struct task_struct *")]
    assert raw_args(btf, "sched_switch", roles, expect) == ({"prev": 1, "next": 2}, "")
    found, why = raw_args(btf, "sched_switch", roles, expect[:3])  # e.g. a kernel before prev_state
    assert found is None and "ambiguous" in why
    found, _ = raw_args(btf, "sched_switch", roles)
    assert found is None


def _fmt(category: str, name: str):
    file = "kfree_skb.6.18.format" if name == "kfree_skb" else f"{category}.{name}.6.18.format"
    return tracefs.parse_format((FIX / file).read_text(), category, name)


def test_lifecycle_plan_goes_raw_where_btf_allows_and_says_which_stay_classic(btf):
    formats = {tp.key: _fmt(tp.category, tp.name) for tp in lifecycle.TRACEPOINTS}
    p = lifecycle.plan(formats, btf)
    d = p.defines
    assert (d["KN_RAW_RX"], d["KN_ARG_RX_SKB"]) == (1, 0)
    assert (d["KN_RAW_COPY"], d["KN_ARG_COPY_SKB"], d["KN_ARG_COPY_LEN"]) == (1, 0, 1)
    assert (d["KN_RAW_DROP"], d["KN_ARG_DROP_SKB"], d["KN_ARG_DROP_REASON"]) == (1, 0, 2)
    points = dict((fn, where) for where, fn in p.attach_points())
    assert points["kn_on_netif_rx"] == "raw:netif_rx" and points["kn_on_tcp_probe"] == "tcp:tcp_probe"
    # this blob has no prototype for netif_receive_skb or the GRO/entry tracepoints: classic, said so
    assert points["kn_on_netif_receive_skb"] == "net:netif_receive_skb" and d["KN_RAW_RCV"] == 0
    assert any(f.startswith("net:netif_receive_skb: BTF has no prototype") and "kernel_nested_bpf" in f
               for f in p.fallbacks)
    assert not any("tcp_probe" in f for f in p.fallbacks)  # never meant to be raw


def test_lifecycle_without_btf_stays_classic_and_a_hidden_reason_stays_hidden(btf):
    formats = {tp.key: _fmt(tp.category, tp.name) for tp in lifecycle.TRACEPOINTS}
    p = lifecycle.plan(formats, None)
    assert all(v == 0 for k, v in p.defines.items() if k.startswith("KN_RAW_"))
    assert all(where.split(":")[0] != "raw" for where, _ in p.attach_points())
    assert len(p.fallbacks) == sum(1 for tp in lifecycle.TRACEPOINTS if tp.raw) and "no kernel BTF" in p.fallbacks[0]
    formats["DROP"] = tracefs.without_fields(formats["DROP"], {"reason"})
    p = lifecycle.plan(formats, btf)
    assert p.defines["KN_RAW_DROP"] == 1 and "KN_ARG_DROP_REASON" not in p.defines


def test_slot_table_is_a_power_of_two_covering_twice_max_in_flight():
    formats = {tp.key: _fmt(tp.category, tp.name) for tp in lifecycle.TRACEPOINTS}
    assert lifecycle.plan(formats, None, max_in_flight=5000).defines["KN_LIFE_BITS"] == 14  # 2x, rounded up
    assert "KN_LIFE_MAX" not in lifecycle.plan(formats, None).defines


def test_lifecycle_and_drop_plans_write_both_rate_caps():
    formats = {tp.key: _fmt(tp.category, tp.name) for tp in lifecycle.TRACEPOINTS}
    d = lifecycle.plan(formats, None, rate_limit=17, rate_limit_node=301).defines
    assert (d["KN_RATE_LIMIT"], d["KN_RATE_LIMIT_NODE"]) == (17, 301)
    d = drop.plan(_fmt("skb", "kfree_skb"), None, rate_limit=19, rate_limit_node=0).defines
    assert (d["KN_RATE_LIMIT"], d["KN_RATE_LIMIT_NODE"]) == (19, 0)


def test_drop_plan_raw_needs_skb_protocol_from_btf(btf):
    fmt = _fmt("skb", "kfree_skb")
    p = drop.plan(fmt, btf)  # the blob's sk_buff has no 'protocol' member
    assert p.defines["KN_RAW_DROP"] == 0 and p.attach_points() == [("skb:kfree_skb", "kn_on_kfree_skb")]
    assert any("sk_buff.protocol" in f for f in p.fallbacks)


def test_drop_plan_roles_follow_the_format_file(monkeypatch, btf):
    real = drop.btf_offsets
    monkeypatch.setattr(drop, "btf_offsets", lambda b: ({**real(b)[0], "KN_OFF_SKB_PROTOCOL": 176}, []))
    p = drop.plan(_fmt("skb", "kfree_skb"), btf)
    d = p.defines
    assert (d["KN_RAW_DROP"], d["KN_ARG_DROP_SKB"], d["KN_ARG_DROP_LOCATION"], d["KN_ARG_DROP_REASON"],
            d["KN_ARG_DROP_RX_SK"]) == (1, 0, 1, 2, 3)
    assert p.attach_points() == [("raw:kfree_skb", "kn_on_kfree_skb")] and p.fallbacks == []
    p = drop.plan(tracefs.without_fields(_fmt("skb", "kfree_skb"), {"rx_sk"}), btf)
    assert p.defines["KN_RAW_DROP"] == 1 and "KN_ARG_DROP_RX_SK" not in p.defines and p.defines["KN_TP_RX_SK"] == -1


def test_softirq_plan_raw_vectors_and_switch_by_full_prototype(btf):
    formats = {tp.key: _fmt(tp.category, tp.name) for tp in softirq.TRACEPOINTS}
    p = softirq.plan(formats, btf, rps_func=1, max_cpus=2)
    d = p.defines
    assert (d["KN_RAW_ENTRY"], d["KN_ARG_ENTRY_VEC"]) == (1, 0)
    assert (d["KN_RAW_SWITCH"], d["KN_ARG_SWITCH_NEXT"], d["KN_OFF_TASK_PID"]) == (1, 2, 1264)
    assert (d["KN_RAW_NAPI"], d["KN_ARG_NAPI_WORK"], d["KN_ARG_NAPI_BUDGET"]) == (1, 1, 2)
    # softirq_raise/exit and sched_waking have no prototype in the blob; csd is never raw
    assert d["KN_RAW_RAISE"] == 0 and d["KN_RAW_WAKING"] == 0 and "KN_RAW_CSDQ" in d
    assert {f.split(":")[0] + ":" + f.split(":")[1] for f in p.fallbacks} == {
        "irq:softirq_raise", "irq:softirq_exit", "sched:sched_waking"}
    assert p.degraded == []


def test_classic_env_forces_every_program_classic(monkeypatch, btf):
    monkeypatch.setenv(rawtp.CLASSIC_ENV, "1")
    formats = {tp.key: _fmt(tp.category, tp.name) for tp in softirq.TRACEPOINTS}
    p = softirq.plan(formats, btf, rps_func=1, max_cpus=2)
    assert all(where.split(":")[0] != "raw" for where, _ in p.attach_points())
    assert any(rawtp.CLASSIC_ENV in f for f in p.fallbacks)
