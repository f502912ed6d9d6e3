"""The BTF reader and the kallsyms resolver against the running kernel.

Oracle: ``bpftool btf dump file /sys/kernel/btf/vmlinux format raw``, parsed
here as text and walked with a separate, deliberately simple implementation, so
that a bug in otel_kernelnet.kernel.btf cannot also be in the expected values.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field

import pytest

from otel_kernelnet.kernel.btf import BTF, BTFError
from otel_kernelnet.kernel.ksyms import KernelSymbols

pytestmark = pytest.mark.kernel

VMLINUX = "/sys/kernel/btf/vmlinux"

# (struct, member path) the collector's BPF programs need.
NEEDED = [
    ("sk_buff", "head"),
    ("sk_buff", "network_header"),
    ("sk_buff", "transport_header"),
    ("sk_buff", "dev"),
    ("sk_buff", "sk"),
    ("net_device", "nd_net"),
    ("net_device", "ifindex"),
    ("net_device", "name"),
    ("net", "ns.inum"),
    ("sock", "__sk_common.skc_cookie"),
    ("sock_common", "skc_net"),
    ("sock_common", "skc_num"),
    ("sock_common", "skc_dport"),
    ("sock_common", "skc_daddr"),
    ("sock_common", "skc_rcv_saddr"),
]


# ----------------------------------------------------------------- bpftool oracle
@dataclass
class RawType:
    kind: str
    name: str
    attrs: dict[str, str]
    members: list[tuple[str, dict[str, str]]] = field(default_factory=list)


_HEAD = re.compile(r"^\[(\d+)\] (\w+) '([^']*)'(.*)$")
_MEMBER = re.compile(r"^\t'([^']*)'(.*)$")
_KV = re.compile(r"(\w+)=(\S+)")


class RawBTF:
    """bpftool's raw dump, as data."""

    MODIFIERS = {"TYPEDEF", "CONST", "VOLATILE", "RESTRICT", "TYPE_TAG"}

    def __init__(self, text: str):
        self.types: dict[int, RawType] = {}
        cur: RawType | None = None
        for line in text.splitlines():
            m = _HEAD.match(line)
            if m:
                cur = RawType(m[2], "" if m[3] == "(anon)" else m[3], dict(_KV.findall(m[4])))
                self.types[int(m[1])] = cur
                continue
            m = _MEMBER.match(line)
            if m and cur is not None:
                cur.members.append(("" if m[1] == "(anon)" else m[1], dict(_KV.findall(m[2]))))
        self.by_name: dict[tuple[str, str], list[int]] = {}
        for tid, t in self.types.items():
            self.by_name.setdefault((t.kind, t.name), []).append(tid)

    def struct_id(self, name: str) -> int:
        ids = self.by_name.get(("STRUCT", name), []) + self.by_name.get(("UNION", name), [])
        assert len(ids) == 1, f"bpftool: {len(ids)} definitions of struct {name}"
        return ids[0]

    def resolve(self, tid: int) -> int:
        while tid and self.types[tid].kind in self.MODIFIERS:
            tid = int(self.types[tid].attrs["type_id"])
        return tid

    def size(self, tid: int) -> int:
        t = self.types[self.resolve(tid)]
        if t.kind == "PTR":
            return 8
        if t.kind == "ARRAY":
            return int(t.attrs["nr_elems"]) * self.size(int(t.attrs["type_id"]))
        return int(t.attrs["size"])

    def find(self, tid: int, name: str) -> tuple[int, dict[str, str]] | None:
        """(bit offset, member attrs), searching anonymous struct/union members."""
        for mname, attrs in self.types[tid].members:
            off = int(attrs["bits_offset"])
            if mname == name:
                return off, attrs
            if not mname:
                inner = self.resolve(int(attrs["type_id"]))
                if self.types[inner].kind in ("STRUCT", "UNION"):
                    hit = self.find(inner, name)
                    if hit:
                        return off + hit[0], hit[1]
        return None

    def offsetof(self, struct: str, path: str) -> tuple[int, dict[str, str]]:
        tid, bits, attrs = self.struct_id(struct), 0, {}
        for i, part in enumerate(path.split(".")):
            if i:
                tid = self.resolve(int(attrs["type_id"]))
            hit = self.find(tid, part)
            assert hit is not None, f"bpftool: struct {struct} has no {path}"
            bits += hit[0]
            attrs = hit[1]
        return bits, attrs

    def enum(self, name: str) -> dict[int, str]:
        ids = self.by_name.get(("ENUM", name), []) + self.by_name.get(("ENUM64", name), [])
        assert ids, f"bpftool: no enum {name}"
        out: dict[int, str] = {}
        for ename, attrs in self.types[ids[0]].members:
            out.setdefault(int(attrs["val"]), ename)
        return out


@pytest.fixture(scope="module")
def raw() -> RawBTF:
    bpftool = shutil.which("bpftool") or (
        "/usr/sbin/bpftool" if os.path.exists("/usr/sbin/bpftool") else None
    )
    if bpftool is None:
        pytest.fail("bpftool is not installed (scripts/apt-packages.txt lists it); it is the oracle")
    out = subprocess.run(
        [bpftool, "btf", "dump", "file", VMLINUX, "format", "raw"],
        check=True, capture_output=True, text=True,
    ).stdout
    return RawBTF(out)


@pytest.fixture(scope="module")
def btf() -> BTF:
    return BTF.load(VMLINUX)


# ------------------------------------------------------------------------- tests
def test_load_time(capsys):
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        b = BTF.load(VMLINUX)
        best = min(best, time.perf_counter() - t0)
    with capsys.disabled():
        print(f"\nBTF.load({VMLINUX}): {b.type_count} types in {best * 1000:.1f} ms (best of 3)")
    assert b.type_count > 50_000
    assert best < 2.0, f"loading vmlinux BTF took {best:.2f}s"


def test_type_count_matches_bpftool(btf, raw):
    assert btf.type_count == max(raw.types)


@pytest.mark.parametrize(("struct", "path"), NEEDED, ids=[f"{s}.{p}" for s, p in NEEDED])
def test_needed_offsets_match_bpftool(btf, raw, struct, path):
    bits, attrs = raw.offsetof(struct, path)
    assert "bitfield_size" not in attrs and bits % 8 == 0
    assert btf.offsetof(struct, path) == bits // 8
    assert btf.has_member(struct, path)
    assert btf.member_size(struct, path) == raw.size(int(attrs["type_id"]))


def test_needed_sizes(btf, raw):
    for name in ("sk_buff", "net_device", "sock", "sock_common", "net"):
        assert btf.sizeof(name) == int(raw.types[raw.struct_id(name)].attrs["size"]), name
    assert btf.member_size("net_device", "name") == 16  # IFNAMSIZ
    assert btf.member_size("sk_buff", "dev") == 8
    assert btf.member_size("sk_buff", "network_header") == 2
    assert btf.member_size("sock_common", "skc_cookie") == 8


def test_sk_buff_dev_is_inside_an_anonymous_member(btf, raw):
    # Documents why anonymous members must be searched: dev is not a direct member.
    direct = {n for n, _ in raw.types[raw.struct_id("sk_buff")].members}
    assert "dev" not in direct
    assert btf.offsetof("sk_buff", "dev") == raw.offsetof("sk_buff", "dev")[0] // 8


def test_every_direct_member_of_every_unique_struct(btf, raw):
    """Broad cross-check: all named direct members of all uniquely named structs."""
    checked = 0
    for (kind, name), ids in raw.by_name.items():
        if kind not in ("STRUCT", "UNION") or not name or len(ids) != 1:
            continue
        if len(raw.by_name.get(("STRUCT", name), []) + raw.by_name.get(("UNION", name), [])) != 1:
            continue
        t = raw.types[ids[0]]
        assert btf.sizeof(name) == int(t.attrs["size"]), name
        for mname, attrs in t.members:
            if not mname:
                continue
            bits = int(attrs["bits_offset"])
            if "bitfield_size" in attrs or bits % 8:
                with pytest.raises(BTFError, match="bitfield"):
                    btf.offsetof(name, mname)
            else:
                assert btf.offsetof(name, mname) == bits // 8, f"{name}.{mname}"
            checked += 1
    assert checked > 50_000


def test_missing_member_error_names_struct_and_member(btf):
    with pytest.raises(BTFError, match=r"sk_buff.*'no_such_member'"):
        btf.offsetof("sk_buff", "no_such_member")
    with pytest.raises(BTFError, match="pointer"):
        btf.offsetof("sk_buff", "dev.ifindex")


def test_skb_drop_reason_enum(btf, raw):
    e = btf.enum("skb_drop_reason")
    assert e == raw.enum("skb_drop_reason")
    names = set(e.values())
    for n in ("SKB_DROP_REASON_NO_SOCKET", "SKB_DROP_REASON_NOT_SPECIFIED",
              "SKB_DROP_REASON_TCP_CSUM", "SKB_DROP_REASON_NETFILTER_DROP"):
        assert n in names, n


# ------------------------------------------------------------------------ ksyms
def test_ksyms_resolves_drop_function():
    addr = name = None
    with open("/proc/kallsyms") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[1] in "tT" and parts[2] in ("kfree_skb_reason", "sk_skb_reason_drop"):
                addr, name = int(parts[0], 16), parts[2]
                break
    assert name is not None, "neither kfree_skb_reason nor sk_skb_reason_drop in /proc/kallsyms"
    ks = KernelSymbols.load(require_addresses=True)
    assert not ks.restricted
    assert ks.resolve(addr + 4) == f"{name}+0x4"
    assert ks.resolve(addr) == f"{name}+0x0"


def test_bpf_prog_info_offsets_used_by_the_loader_match_btf(btf):
    from otel_kernelnet import loader
    assert btf.offsetof("bpf_prog_info", "recursion_misses") == loader.PROG_INFO_RECURSION_MISSES
    assert btf.sizeof("bpf_prog_info") >= loader.PROG_INFO_SIZE
