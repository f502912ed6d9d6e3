"""Event records, generated from the probes' C headers.

Each probe family has one C header (``otel_kernelnet/bpf/<family>.h``) defining the
records it writes to its ring buffer. This module parses those headers and builds the
matching ``ctypes`` structures at import, so the Python side is never a hand-written
mirror; ``tests/unit/test_records.py`` compiles the same header with the system C
compiler and checks every size and offset against the generated structure.

The parser accepts exactly the subset the headers use: ``#define NAME value`` and
``struct name { <type> <field>[N]; ... };`` with fixed-width kernel types.
"""

from __future__ import annotations

import ctypes
import re
from functools import lru_cache
from pathlib import Path

BPF_DIR = Path(__file__).parent / "bpf"

CTYPES = {
    "__u8": ctypes.c_uint8, "__s8": ctypes.c_int8, "char": ctypes.c_char,
    "__u16": ctypes.c_uint16, "__s16": ctypes.c_int16,
    "__u32": ctypes.c_uint32, "__s32": ctypes.c_int32,
    "__u64": ctypes.c_uint64, "__s64": ctypes.c_int64,
}

_STRUCT_RE = re.compile(r"struct\s+(\w+)\s*\{(.*?)\};", re.S)
_MEMBER_RE = re.compile(r"^\s*(\w+)\s+(\w+)\s*(?:\[(\w+)\])?\s*;")
_DEFINE_RE = re.compile(r"^#define\s+(\w+)\s+(-?(?:0x[0-9a-fA-F]+|\d+))\b", re.M)


class HeaderError(Exception):
    pass


def _strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


@lru_cache(maxsize=None)
def load_header(name: str) -> tuple[dict[str, int], dict[str, type[ctypes.Structure]]]:
    """Parse ``bpf/<name>.h``: its integer #defines and its structs as ctypes types."""
    text = _strip_comments((BPF_DIR / f"{name}.h").read_text())
    defines = {k: int(v, 0) for k, v in _DEFINE_RE.findall(text)}
    structs: dict[str, type[ctypes.Structure]] = {}
    for sname, body in _STRUCT_RE.findall(text):
        fields = []
        for line in body.split(";"):
            line = line.strip()
            if not line:
                continue
            m = _MEMBER_RE.match(line + ";")
            if not m:
                raise HeaderError(f"{name}.h: struct {sname}: cannot parse member {line!r}")
            ctype, member, count = m.groups()
            if ctype not in CTYPES:
                raise HeaderError(f"{name}.h: struct {sname}.{member}: unsupported type {ctype}")
            t = CTYPES[ctype]
            if count is not None:
                t = t * (defines[count] if count in defines else int(count, 0))
            fields.append((member, t))
        structs[sname] = type(sname, (ctypes.Structure,), {"_fields_": fields})
    return defines, structs


def record_type(header: str, struct: str) -> type[ctypes.Structure]:
    return load_header(header)[1][struct]


def defines(header: str) -> dict[str, int]:
    return load_header(header)[0]
