"""Unit tests of the BTF reader on small hand-built blobs (no root, no kernel).

The builder below writes the format of Documentation/bpf/btf.rst field by field,
independently of the reader, so a mistake in the reader's record sizes, header
handling or member/enum decoding shows up as a wrong answer here.
"""

from __future__ import annotations

import struct

import pytest

from otel_kernelnet.kernel.btf import BTF, BTFError

# BTF kinds, numbered as in include/uapi/linux/btf.h.
INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD, TYPEDEF = 1, 2, 3, 4, 5, 6, 7, 8
VOLATILE, CONST, RESTRICT, FUNC, FUNC_PROTO, VAR, DATASEC = 9, 10, 11, 12, 13, 14, 15
FLOAT, DECL_TAG, TYPE_TAG, ENUM64 = 16, 17, 18, 19


class Builder:
    """Tiny BTF writer. Each add_* returns the new type id (1, 2, ...)."""

    def __init__(self, endian: str = "<"):
        self.e = endian
        self.types = bytearray()
        self.strs = bytearray(b"\0")  # offset 0 is the empty string
        self.next_id = 1

    def s(self, name: str) -> int:
        """Append a string; return its offset in the string section."""
        if not name:
            return 0
        off = len(self.strs)
        self.strs += name.encode() + b"\0"
        return off

    def _u32(self, *vals: int) -> None:
        for v in vals:
            self.types += struct.pack(self.e + "I", v & 0xFFFFFFFF)

    def _common(self, name: str, kind: int, vlen: int, size_or_type: int, kflag: int = 0) -> int:
        # struct btf_type: name_off, info (vlen | kind << 24 | kflag << 31), size/type
        self._u32(self.s(name), (kflag << 31) | (kind << 24) | vlen, size_or_type)
        tid = self.next_id
        self.next_id += 1
        return tid

    def int_(self, name: str, size: int, bits: int | None = None, bit_off: int = 0, signed: bool = False) -> int:
        tid = self._common(name, INT, 0, size)
        # u32: encoding (bits 24-27; 1 = SIGNED), bit offset (16-23), nr_bits (0-7)
        self._u32(((1 if signed else 0) << 24) | (bit_off << 16) | (bits if bits is not None else size * 8))
        return tid

    def ptr(self, target: int) -> int:
        return self._common("", PTR, 0, target)

    def array(self, elem: int, index: int, nelems: int) -> int:
        tid = self._common("", ARRAY, 0, 0)
        self._u32(elem, index, nelems)  # struct btf_array
        return tid

    def struct(self, name: str, size: int, members, kind: int = STRUCT, kflag: int = 0) -> int:
        """members: (name, type_id, bit_offset[, bitfield_size]); with kflag the
        offset word is bitfield_size << 24 | bit_offset."""
        tid = self._common(name, kind, len(members), size, kflag)
        for m in members:
            mname, mtype, bit_off = m[:3]
            bf = m[3] if len(m) > 3 else 0
            self._u32(self.s(mname), mtype, (bf << 24) | bit_off if kflag else bit_off)
        return tid

    def union(self, name: str, size: int, members, kflag: int = 0) -> int:
        return self.struct(name, size, members, kind=UNION, kflag=kflag)

    def enum(self, name: str, size: int, values, signed: bool = False) -> int:
        tid = self._common(name, ENUM, len(values), size, 1 if signed else 0)
        for n, v in values:
            self._u32(self.s(n), v)  # struct btf_enum: name_off, val
        return tid

    def enum64(self, name: str, values, signed: bool = False) -> int:
        tid = self._common(name, ENUM64, len(values), 8, 1 if signed else 0)
        for n, v in values:
            v &= (1 << 64) - 1
            self._u32(self.s(n), v & 0xFFFFFFFF, v >> 32)  # name_off, lo32, hi32
        return tid

    def simple(self, kind: int, name: str, target: int) -> int:
        """FWD/TYPEDEF/VOLATILE/CONST/RESTRICT/FUNC/TYPE_TAG: no tail."""
        return self._common(name, kind, 0, target)

    def func_proto(self, ret: int, params) -> int:
        tid = self._common("", FUNC_PROTO, len(params), ret)
        for n, t in params:
            self._u32(self.s(n), t)  # struct btf_param
        return tid

    def var(self, name: str, t: int) -> int:
        tid = self._common(name, VAR, 0, t)
        self._u32(1)  # linkage: global
        return tid

    def datasec(self, name: str, size: int, vars_) -> int:
        tid = self._common(name, DATASEC, len(vars_), size)
        for t, off, sz in vars_:
            self._u32(t, off, sz)  # struct btf_var_secinfo
        return tid

    def float_(self, name: str, size: int) -> int:
        return self._common(name, FLOAT, 0, size)

    def decl_tag(self, name: str, t: int, component_idx: int) -> int:
        tid = self._common(name, DECL_TAG, 0, t)
        self._u32(component_idx)
        return tid

    def blob(self, hdr_extra: bytes = b"") -> bytes:
        hdr_len = 24 + len(hdr_extra)
        # btf_header: magic, version, flags, hdr_len, type_off, type_len, str_off, str_len
        hdr = struct.pack(self.e + "HBBIIIII", 0xEB9F, 1, 0, hdr_len,
                          0, len(self.types), len(self.types), len(self.strs))
        return hdr + hdr_extra + bytes(self.types) + bytes(self.strs)


def build_world(endian: str = "<") -> bytes:
    """A small kernel-like world exercising every kind."""
    b = Builder(endian)
    u8 = b.int_("unsigned char", 1)                         # [1]
    u16 = b.int_("short unsigned int", 2)                   # [2]
    u32 = b.int_("unsigned int", 4)                         # [3]
    u64 = b.int_("long long unsigned int", 8)               # [4]
    s32 = b.int_("int", 4, signed=True)                     # [5]
    t_u32 = b.simple(TYPEDEF, "__u32", u32)                 # [6] typedef unsigned int __u32
    t_u32b = b.simple(TYPEDEF, "u32", t_u32)                # [7] typedef __u32 u32 (chain)
    c_u32 = b.simple(CONST, "", t_u32b)                     # [8] const u32
    v_u32 = b.simple(VOLATILE, "", c_u32)                   # [9] volatile const u32
    fwd_dev = b.simple(FWD, "net_device", 0)                # [10] struct net_device;
    p_dev = b.ptr(fwd_dev)                                  # [11] struct net_device *
    arr_idx = b.int_("__ARRAY_SIZE_TYPE__", 4)              # [12]
    name_arr = b.array(u8, arr_idx, 16)                     # [13] unsigned char[16]
    ns_common = b.struct("ns_common", 16, [                 # [14] struct ns_common {
        ("stashed", u64, 0),                                #   u64 stashed;   @0
        ("inum", t_u32b, 64),                               #   u32 inum;      @8
        ("count", s32, 96),                                 #   int count;     @12
    ])                                                      # }
    net = b.struct("net", 40, [                             # [15] struct net {
        ("passive", u32, 0),                                #   @0
        ("ns", ns_common, 64),                              #   struct ns_common ns; @8
        ("ifindex", v_u32, 192),                            #   volatile const u32 ifindex; @24
        ("dev_name", name_arr, 224),                        #   unsigned char dev_name[16]; @28 (size 16)
    ])
    # sk_buff-like: dev lives in an anonymous union inside an anonymous struct.
    anon_inner = b.struct("", 16, [                         # [16] struct { next; prev; }
        ("next", p_dev, 0),
        ("prev", p_dev, 64),
    ])
    anon_union = b.union("", 16, [                          # [17] union {
        ("", anon_inner, 0),                                #   struct { next; prev; };
        ("dev_scratch", u64, 0),                            #   u64 dev_scratch;
        ("dev", p_dev, 64),                                 #   struct net_device *dev; @8
    ])
    p_u8 = b.ptr(u8)                                        # [18] unsigned char *
    skb = b.struct("sk_buff", 48, [                         # [19] struct sk_buff {
        ("", anon_union, 0),                                #   union { ... };        @0
        ("len", u32, 128),                                  #   @16
        ("cloned", u8, 160, 1),                             #   __u8 cloned:1;        bit 160
        ("nohdr", u8, 161, 1),                              #   __u8 nohdr:1;         bit 161
        ("mac_len", u16, 176),                              #   @22
        ("head", p_u8, 192),                                #   unsigned char *head;  @24
        ("netns", net, 256),                                #   struct net netns; @32 (not really in skb)
    ], kflag=1)
    # typedef'd struct and a plain union
    b.simple(TYPEDEF, "net_t", net)                         # [20] typedef struct net net_t
    u32x2 = b.array(u32, arr_idx, 2)                        # [21] unsigned int[2]
    b.union("pair", 8, [("as_u64", u64, 0), ("as_u32", u32x2, 0)])  # [22] union pair
    # Old-style bitfield: no kind_flag, the INT type itself carries nr_bits=3.
    bits3 = b.int_("unsigned int", 4, bits=3)               # [23]
    b.struct("oldbits", 4, [("flags", bits3, 0), ("x", bits3, 3)])  # [24]
    # Enums                                               # [25]..[29]
    b.enum("skb_drop_reason", 4, [
        ("SKB_NOT_DROPPED_YET", 0),
        ("SKB_CONSUMED", 1),
        ("SKB_DROP_REASON_NOT_SPECIFIED", 2),
        ("SKB_DROP_REASON_NO_SOCKET", 3),
        ("SKB_DROP_REASON_ALIAS_OF_3", 3),
    ])
    b.enum("signed_e", 4, [("NEG_ONE", -1), ("BIG_NEG", -2147483648), ("POS", 7)], signed=True)
    b.enum("unsigned_e", 4, [("TOP", 0xFFFFFFFF)])
    b.enum64("e64", [("HIGH", 0xFFFFF << 32), ("MAX", 0xFFFFFFFFFFFFFFFF)])
    b.enum64("e64s", [("MIN", -(1 << 63)), ("M1", -1), ("ONE", 1)], signed=True)
    # Kinds that the reader must step over correctly (record sizes): [30]..[38]
    proto = b.func_proto(s32, [("skb", b.ptr(skb)), ("reason", u32)])
    b.simple(FUNC, "kfree_skb_reason", proto)
    v = b.var("init_net", net)
    b.datasec(".data..percpu", 40, [(v, 0, 40)])
    b.float_("double", 8)
    b.decl_tag("user", skb, 1)
    b.simple(TYPE_TAG, "rcu", u8)
    b.simple(RESTRICT, "", p_dev)
    # Declared after all the above ([39]): a wrong record size anywhere before
    # would make it unreadable.
    b.struct("last", 8, [("tail", u64, 0)])
    # Two definitions of the same struct name that disagree.
    b.struct("dup", 8, [("a", u32, 0), ("b", u32, 32)])
    b.struct("dup", 8, [("b", u32, 0), ("a", u32, 32)])
    # Two definitions that agree (like vmlinux duplicates): fine.
    b.struct("same", 4, [("a", u32, 0)])
    b.struct("same", 4, [("a", u32, 0)])
    return b.blob()


@pytest.fixture(scope="module")
def btf() -> BTF:
    return BTF.from_bytes(build_world())


def test_type_count_covers_every_record(btf):
    # If any record size were wrong, later records would be misparsed/miscounted.
    assert btf.type_count == 43
    assert btf.offsetof("last", "tail") == 0
    assert btf.sizeof("last") == 8


def test_plain_and_nested_members(btf):
    assert btf.offsetof("net", "passive") == 0
    assert btf.offsetof("net", "ns") == 8
    assert btf.offsetof("net", "ns.inum") == 16          # ns @8 + inum @8 (bit 64) inside ns
    assert btf.offsetof("net", "ns.count") == 20
    assert btf.offsetof("net", "ifindex") == 24
    assert btf.offsetof("sk_buff", "netns.ns.inum") == 32 + 8 + 8


def test_anonymous_union_members_are_searched(btf):
    assert btf.offsetof("sk_buff", "dev") == 8
    assert btf.offsetof("sk_buff", "dev_scratch") == 0
    # two levels of anonymity: union { struct { next; prev; }; }
    assert btf.offsetof("sk_buff", "prev") == 8
    assert btf.offsetof("sk_buff", "next") == 0
    assert btf.has_member("sk_buff", "prev")


def test_kind_flag_offsets_decoded(btf):
    # sk_buff has kind_flag set: the offset word is bitfield_size<<24 | bit_offset
    assert btf.offsetof("sk_buff", "len") == 16
    assert btf.offsetof("sk_buff", "mac_len") == 22
    assert btf.offsetof("sk_buff", "head") == 24


def test_typedef_chains_and_modifiers(btf):
    assert btf.sizeof("u32") == 4          # typedef -> typedef -> int
    assert btf.sizeof("__u32") == 4
    assert btf.member_size("net", "ifindex") == 4  # volatile const u32
    assert btf.member_size("net", "ns.inum") == 4
    # A struct name reached via a typedef
    assert btf.offsetof("net_t", "ns.inum") == 16


def test_sizes(btf):
    assert btf.sizeof("sk_buff") == 48
    assert btf.sizeof("net") == 40
    assert btf.sizeof("pair") == 8
    assert btf.sizeof("int") == 4
    assert btf.sizeof("skb_drop_reason") == 4
    assert btf.member_size("sk_buff", "dev") == 8      # pointer to a forward-declared struct
    assert btf.member_size("sk_buff", "head") == 8
    assert btf.member_size("net", "dev_name") == 16    # unsigned char[16]
    assert btf.member_size("pair", "as_u32") == 8      # unsigned int[2]
    assert btf.member_size("sk_buff", "netns") == 40
    assert btf.member_size("net", "ns") == 16


def test_enum_values(btf):
    e = btf.enum("skb_drop_reason")
    assert e[3] == "SKB_DROP_REASON_NO_SOCKET"       # first of the aliases wins
    assert e == {0: "SKB_NOT_DROPPED_YET", 1: "SKB_CONSUMED",
                 2: "SKB_DROP_REASON_NOT_SPECIFIED", 3: "SKB_DROP_REASON_NO_SOCKET"}
    assert btf.enum_members("skb_drop_reason")["SKB_DROP_REASON_ALIAS_OF_3"] == 3


def test_enum_signedness(btf):
    assert btf.enum("signed_e") == {-1: "NEG_ONE", -2147483648: "BIG_NEG", 7: "POS"}
    assert btf.enum("unsigned_e") == {0xFFFFFFFF: "TOP"}


def test_enum64(btf):
    assert btf.enum("e64") == {0xFFFFF << 32: "HIGH", 0xFFFFFFFFFFFFFFFF: "MAX"}
    assert btf.enum("e64s") == {-(1 << 63): "MIN", -1: "M1", 1: "ONE"}
    assert btf.sizeof("e64") == 8


def test_bitfields_refused(btf):
    with pytest.raises(BTFError, match=r"sk_buff.*'cloned'.*bitfield"):
        btf.offsetof("sk_buff", "cloned")
    with pytest.raises(BTFError, match="bitfield"):
        btf.member_size("sk_buff", "nohdr")
    assert btf.has_member("sk_buff", "cloned")
    # old encoding: no kind_flag, INT with nr_bits=3
    with pytest.raises(BTFError, match="bitfield"):
        btf.offsetof("oldbits", "flags")
    with pytest.raises(BTFError, match="bitfield"):
        btf.offsetof("oldbits", "x")


def test_missing_member_messages(btf):
    with pytest.raises(BTFError) as ei:
        btf.offsetof("sk_buff", "network_header")
    assert "sk_buff" in str(ei.value) and "'network_header'" in str(ei.value)
    with pytest.raises(BTFError) as ei:
        btf.offsetof("net", "ns.nope")
    msg = str(ei.value)
    assert "struct net" in msg and "'ns'" in msg and "'nope'" in msg and "ns_common" in msg
    assert not btf.has_member("sk_buff", "network_header")
    assert not btf.has_member("no_such_struct", "x")


def test_no_walk_through_pointers_or_scalars(btf):
    with pytest.raises(BTFError, match="pointer"):
        btf.offsetof("sk_buff", "dev.ifindex")
    with pytest.raises(BTFError, match="not a struct or union"):
        btf.offsetof("net", "passive.x")


def test_unknown_names(btf):
    with pytest.raises(BTFError, match="no struct or union named 'nosuch'"):
        btf.offsetof("nosuch", "a")
    with pytest.raises(BTFError, match="forward-declared"):
        btf.offsetof("net_device", "ifindex")
    with pytest.raises(BTFError, match="'nosuch'"):
        btf.sizeof("nosuch")
    with pytest.raises(BTFError, match="no enum named 'net'"):
        btf.enum("net")
    with pytest.raises(BTFError, match="invalid member path"):
        btf.offsetof("net", "ns..inum")


def test_duplicate_struct_names(btf):
    with pytest.raises(BTFError, match="ambiguous"):
        btf.offsetof("dup", "a")
    assert btf.offsetof("same", "a") == 0


def test_big_endian_blob():
    be = BTF.from_bytes(build_world(">"))
    assert be.offsetof("sk_buff", "dev") == 8
    assert be.offsetof("net", "ns.inum") == 16
    assert be.enum("e64s")[-1] == "M1"


def test_longer_header_is_honoured():
    # Newer kernels may append fields to btf_header; hdr_len says where sections start.
    b = Builder()
    u32 = b.int_("unsigned int", 4)
    b.struct("s", 8, [("a", u32, 0), ("b", u32, 32)])
    blob = b.blob(hdr_extra=b"\0" * 8)
    assert BTF.from_bytes(blob).offsetof("s", "b") == 4
    # The same blob read as if the header were 24 bytes long is garbage.
    broken = blob[:4] + struct.pack("<I", 24) + blob[8:]
    with pytest.raises(BTFError):
        BTF.from_bytes(broken).offsetof("s", "b")


def test_bad_magic():
    blob = bytearray(build_world())
    blob[0:2] = b"\x7fE"
    with pytest.raises(BTFError, match="bad BTF magic"):
        BTF.from_bytes(bytes(blob))


def test_truncated_blobs():
    blob = build_world()
    with pytest.raises(BTFError, match="truncated"):
        BTF.from_bytes(blob[:10])
    with pytest.raises(BTFError, match="truncated"):
        BTF.from_bytes(blob[:-5])  # string section cut short


def test_record_running_past_type_section():
    # A struct claiming 2 members but carrying only 1: the type section ends mid-record.
    b = Builder()
    u32 = b.int_("unsigned int", 4)
    b.struct("s", 8, [("a", u32, 0)])
    # [1] INT is 4 words (16 bytes); [2]'s info word is bytes 20..24.
    b.types[20:24] = struct.pack("<I", (STRUCT << 24) | 2)
    with pytest.raises(BTFError, match="truncated"):
        BTF.from_bytes(b.blob())


def test_unknown_kind_rejected():
    b = Builder()
    b._common("x", 25, 0, 0)
    with pytest.raises(BTFError, match="unknown BTF kind 25"):
        BTF.from_bytes(b.blob())


def test_load_missing_file(tmp_path):
    with pytest.raises(BTFError, match="cannot read BTF"):
        BTF.load(str(tmp_path / "nope"))
    p = tmp_path / "vmlinux"
    p.write_bytes(build_world())
    assert BTF.load(str(p)).offsetof("sk_buff", "dev") == 8
