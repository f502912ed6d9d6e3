from pathlib import Path

import pytest

from otel_kernelnet.kernel import tracefs
from otel_kernelnet.probes import drop

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "tracefs"


def fmt(name: str) -> tracefs.TracepointFormat:
    return tracefs.parse_format((FIX / name).read_text(), "skb", "kfree_skb")


def test_this_kernels_kfree_skb_format():
    f = fmt("kfree_skb.6.18.format")
    assert f.id == 2310
    assert {n: (x.offset, x.size) for n, x in f.fields.items() if not n.startswith("common_")} == {
        "skbaddr": (8, 8), "location": (16, 8), "rx_sk": (24, 8), "protocol": (32, 2), "reason": (36, 4)}
    assert f.fields["reason"].type == "enum skb_drop_reason"
    assert f.fields["skbaddr"].type == "void *"
    reasons = f.symbols["reason"]
    assert len(reasons) == 127
    assert (reasons[2], reasons[3], reasons[12], reasons[40], reasons[123]) == (
        "NOT_SPECIFIED", "NO_SOCKET", "NETFILTER_DROP", "TCP_LISTEN_OVERFLOW", "PFMEMALLOC")
    assert f.symbol("reason", 6) == "SOCKET_RCVBUFF"
    assert f.symbol("reason", 4242) == "unknown:4242"
    assert f.size == 40


def test_an_older_kernels_format_numbers_reasons_differently():
    old = fmt("kfree_skb.5.17.format")
    assert "rx_sk" not in old.fields and old.fields["reason"].offset == 28
    assert old.symbol("reason", 1) == "NO_SOCKET"
    assert fmt("kfree_skb.6.18.format").symbol("reason", 1) == "unknown:1"


def test_plan_takes_offsets_from_the_format_and_degrades_without_rx_sk():
    new = drop.plan(fmt("kfree_skb.6.18.format"), btf=None)
    assert (new.defines["KN_TP_SKBADDR"], new.defines["KN_TP_RX_SK"], new.defines["KN_TP_REASON"]) == (8, 24, 36)
    assert new.reason_name(3) == "NO_SOCKET"
    old = drop.plan(fmt("kfree_skb.5.17.format"), btf=None)
    assert (old.defines["KN_TP_RX_SK"], old.defines["KN_TP_REASON"], old.defines["KN_TP_PROTOCOL"]) == (-1, 28, 24)
    assert any("rx_sk" in d for d in old.degraded)
    assert any("BTF" in d for d in old.degraded)
    assert old.reason_name(1) == "NO_SOCKET"


class FakeBTF:
    def __init__(self, missing=()):
        self.missing = set(missing)

    def offsetof(self, struct, path):
        if (struct, path) in self.missing:
            raise KeyError(path)
        return 100 + len(struct) + len(path)


def test_plan_btf_groups_switch_off_together():
    full = drop.plan(fmt("kfree_skb.6.18.format"), btf=FakeBTF())
    assert full.degraded == []
    assert all(v >= 0 for k, v in full.defines.items() if k.startswith("KN_OFF_"))
    part = drop.plan(fmt("kfree_skb.6.18.format"), btf=FakeBTF({("sk_buff", "network_header")}))
    assert part.defines["KN_OFF_SKB_HEAD"] == part.defines["KN_OFF_SKB_TRANSPORT_HEADER"] == -1
    assert part.defines["KN_OFF_SKB_DEV"] >= 0
    assert part.degraded == ["BTF lacks a member for packet addresses and ports"]


def test_required_field_missing_refuses_with_reason():
    text = (FIX / "kfree_skb.6.18.format").read_text().replace("location;", "where;")
    with pytest.raises(drop.ProbeUnavailable, match="location"):
        drop.plan(tracefs.parse_format(text, "skb", "kfree_skb"), btf=None)


def test_symbolic_tables_with_nested_parentheses_and_several_fields():
    f = tracefs.parse_format(
        'name: x\nID: 1\nformat:\n\tfield:int a;\toffset:8;\tsize:4;\tsigned:1;\n\tfield:int b;\toffset:12;\tsize:4;\tsigned:1;\n\n'
        'print fmt: "%s %s", __print_symbolic(REC->a, { 1, "ONE" }, { (1 << 2), "X" }, { 0x10, "HEX" }), '
        '__print_symbolic(REC->b, { -1, "NEG" })\n')
    assert f.symbols == {"a": {1: "ONE", 16: "HEX"}, "b": {-1: "NEG"}}
    assert f.fields["a"].signed


def test_missing_tracefs_is_reported_with_the_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("OTEL_KERNELNET_TRACEFS", str(tmp_path))
    assert tracefs.find_tracefs() is None
    path, how = tracefs.ensure_tracefs()
    assert path is None and str(tmp_path) in how
    with pytest.raises(tracefs.TracefsError, match="mount -t tracefs"):
        tracefs.read_format("skb", "kfree_skb")


def test_optional_formats_are_none_when_missing_and_refuse_when_unreadable(tmp_path):
    from types import SimpleNamespace

    from otel_kernelnet.probes.base import ProbeUnavailable, read_optional_formats
    fixture = Path(__file__).resolve().parents[1] / "fixtures" / "tracefs" / "net.netif_rx.6.18.format"
    d = tmp_path / "events" / "net" / "netif_rx"
    d.mkdir(parents=True)
    (d / "format").write_text(fixture.read_text())
    tps = [SimpleNamespace(key="RX", category="net", name="netif_rx"),
           SimpleNamespace(key="GRO", category="net", name="napi_gro_receive_entry")]
    got = read_optional_formats(tps, str(tmp_path))
    assert got["GRO"] is None and got["RX"].fields["skbaddr"].offset == 8
    (d / "format").unlink()
    (d / "format").mkdir()  # present but unreadable as a file: not "missing"
    with pytest.raises(ProbeUnavailable, match="cannot read"):
        read_optional_formats(tps, str(tmp_path))
