"""The generated ctypes records match the C headers as the C compiler lays them out,
and decoding a hand-written record gives every field back."""

import ctypes
import shutil
import struct
import subprocess

import pytest

from otel_kernelnet import records
from otel_kernelnet.probes import drop

HEADERS = {"drop": ["kn_drop_event"], "tcp": ["kn_tcp_event"], "lifecycle": ["kn_life_event"]}


@pytest.mark.parametrize("header,struct_name", [(h, s) for h, ss in HEADERS.items() for s in ss])
def test_ctypes_layout_equals_the_c_compilers(tmp_path, header, struct_name):
    cc = shutil.which("cc") or shutil.which("gcc")
    assert cc, "a C compiler is needed to check the record layout"
    T = records.record_type(header, struct_name)
    prog = ["#include <stddef.h>", "#include <stdio.h>", "#include <linux/types.h>",
            f'#include "{records.BPF_DIR / (header + ".h")}"', "int main(void) {",
            f'printf("size %zu\\n", sizeof(struct {struct_name}));']
    for name, _t in T._fields_:
        prog.append(f'printf("{name} %zu %zu\\n", offsetof(struct {struct_name}, {name}), '
                    f'sizeof(((struct {struct_name} *)0)->{name}));')
    prog.append("return 0; }")
    src = tmp_path / "layout.c"
    src.write_text("\n".join(prog))
    subprocess.run([cc, "-o", str(tmp_path / "layout"), str(src)], check=True, capture_output=True)
    out = subprocess.run([str(tmp_path / "layout")], check=True, capture_output=True, text=True).stdout.split("\n")
    assert out[0] == f"size {ctypes.sizeof(T)}"
    for line, (name, _t) in zip(out[1:], T._fields_):
        field = getattr(T, name)
        assert line == f"{name} {field.offset} {field.size}"


def test_decode_a_hand_written_drop_record():
    rec = b"".join([
        struct.pack("<Q", 123_456_789_000),         # ts_ns
        struct.pack("<Q", 0xFFFFFFFF81ABCDEF),      # location
        struct.pack("<Q", 0xFFFF888012345600),      # skbaddr
        struct.pack("<Q", 4097),                    # sk_cookie
        struct.pack("<I", 3),                       # reason (NO_SOCKET on 6.18)
        struct.pack("<I", 4026531840),              # netns inode
        struct.pack("<I", 1234),                    # pid
        struct.pack("<I", 1235),                    # tid
        struct.pack("<I", 1),                       # cpu
        struct.pack("<I", 7),                       # ifindex
        struct.pack("<I", 60),                      # len
        struct.pack("<H", 0x0800),                  # protocol (host order)
        struct.pack("<H", 40000),                   # sport
        struct.pack("<H", 8080),                    # dport
        struct.pack("<B", 6),                       # l4proto = TCP
        struct.pack("<B", 0x01 | 0x02 | 0x08),      # flags: HAS_SK | ADDR | DEV
        bytes([10, 0, 0, 1]) + bytes(12),           # saddr
        bytes([10, 0, 0, 2]) + bytes(12),           # daddr
        b"swapper/1".ljust(16, b"\0"),              # comm
        b"veth0".ljust(16, b"\0"),                  # ifname
        bytes(4),                                   # reserved (tail padding)
    ])
    assert len(rec) == ctypes.sizeof(drop.RECORD) == 136
    ev = drop.decode(rec + b"\xff" * 8)  # ring buffer records may be padded
    assert ev.ts_ns == 123_456_789_000 and ev.location == 0xFFFFFFFF81ABCDEF
    assert ev.skbaddr == 0xFFFF888012345600 and ev.sk_cookie == 4097
    assert (ev.reason, ev.netns, ev.pid, ev.tid, ev.cpu, ev.ifindex, ev.len) == (3, 4026531840, 1234, 1235, 1, 7, 60)
    assert (ev.protocol, ev.sport, ev.dport, ev.l4proto) == (0x0800, 40000, 8080, 6)
    assert (ev.has_sk, ev.has_addr, ev.ipv6, ev.has_dev, ev.owner_sk) == (True, True, False, True, False)
    assert ev.saddr[:4] == bytes([10, 0, 0, 1]) and ev.comm == "swapper/1" and ev.ifname == "veth0"
    with pytest.raises(ValueError, match="too short"):
        drop.decode(rec[:100])


def test_header_constants_are_parsed():
    d = records.defines("drop")
    assert d["KN_DROP_F_HAS_SK"] == 1 and d["KN_DROP_F_OWNER_SK"] == 0x10 and d["KN_STAT_MAX"] == len(drop.STATS)
