"""Event records, generated from the probes' C headers.

Each probe family has one C header (``otel_kernelnet/bpf/<family>.h``) defining the
records it writes to its ring buffer. This module parses those headers and builds the
matching ``ctypes`` structures at import, so the Python side is never a hand-written
mirror; ``tests/unit/test_records.py`` compiles the same header with the system C
compiler and checks every size and offset against the generated structure.

The parser accepts exactly the subset the headers use: ``#define NAME value`` and
``struct name { <type> <field>[N]; ... };`` with fixed-width kernel types.

Decoding on the hot path does not go through ``ctypes`` (``from_buffer_copy`` plus one
attribute read per field costs ~10 us per record): ``layout(header, struct)`` derives a
precompiled ``struct.Struct`` from the generated ctypes type (every offset, size and
integer type is taken from it, so a header change moves the decoder with it), and
``Layout.reader(*names)`` returns a function that unpacks just those fields, in that
order, in one C call. ``tests/unit/test_record_readers.py`` checks every reader
against the ctypes decode, field by field, for every record type.
"""

from __future__ import annotations

import ctypes
import operator
import re
import struct
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

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


# --- struct-based readers ---------------------------------------------------------------
# ctypes scalar type -> struct code (standard sizes; "=" = host byte order, no alignment:
# every offset comes from ctypes, gaps become explicit pad bytes)
_CODES = {
    ctypes.c_uint8: "B", ctypes.c_int8: "b", ctypes.c_char: "c",
    ctypes.c_uint16: "H", ctypes.c_int16: "h",
    ctypes.c_uint32: "I", ctypes.c_int32: "i",
    ctypes.c_uint64: "Q", ctypes.c_int64: "q",
}
_BYTE_TYPES = (ctypes.c_uint8, ctypes.c_char)  # arrays of these read as one bytes value


class Layout:
    """The fields of one generated record type as ``struct`` items.

    Each field is (offset, size, code, count): a scalar has count 0; an array of
    ``__u8``/``char`` is one ``bytes`` item (code ``Ns``, the raw bytes: a C string
    keeps its NUL padding); any other array is ``count`` items, read back as a tuple.
    """

    def __init__(self, ctype: type[ctypes.Structure]):
        self.ctype = ctype
        self.size = ctypes.sizeof(ctype)
        self.fields: dict[str, tuple[int, int, str, int]] = {}
        for name, t in ctype._fields_:
            desc = getattr(ctype, name)
            if t in _CODES:
                self.fields[name] = (desc.offset, desc.size, _CODES[t], 0)
            elif issubclass(t, ctypes.Array) and t._type_ in _BYTE_TYPES:
                self.fields[name] = (desc.offset, desc.size, f"{desc.size}s", 0)
            elif issubclass(t, ctypes.Array) and t._type_ in _CODES:
                self.fields[name] = (desc.offset, desc.size, _CODES[t._type_], t._length_)
            else:
                raise HeaderError(f"{ctype.__name__}.{name}: no struct code for {t}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.fields)

    def reader(self, *names: str) -> Callable[[Any], tuple]:
        """A function ``buffer -> tuple`` of the named fields, in the order asked.

        The buffer may be longer than the record (only the start is read); shorter
        raises ``struct.error``. The format skips unrequested bytes, so a reader of a
        few fields costs little more than one of all of them.
        """
        if not names:
            raise ValueError("a reader needs at least one field")
        unknown = [n for n in names if n not in self.fields]
        if unknown:
            raise HeaderError(f"{self.ctype.__name__} has no field(s) {', '.join(unknown)}")
        if len(set(names)) != len(names):
            raise ValueError("a field is asked for twice")
        by_offset = sorted(names, key=lambda n: self.fields[n][0])
        fmt, pos, flat = ["="], 0, {}
        item = 0
        for n in by_offset:
            off, size, code, count = self.fields[n]
            if off > pos:
                fmt.append(f"{off - pos}x")
            fmt.append(f"{count}{code}" if count else code)
            flat[n] = slice(item, item + count) if count else item
            item += count or 1
            pos = off + size
        st = struct.Struct("".join(fmt))
        unpack = st.unpack_from
        spec = [flat[n] for n in names]
        if all(type(i) is int for i in spec):
            if spec == list(range(len(spec))):
                return unpack  # asked in header order: the tuple as struct returns it
            get = operator.itemgetter(*spec)
            if len(spec) == 1:
                return lambda buf: (get(unpack(buf)),)
            return lambda buf: get(unpack(buf))

        def read(buf: Any) -> tuple:
            t = unpack(buf)
            return tuple([t[i] for i in spec])  # an int: the item; a slice: the array as a tuple
        return read


@lru_cache(maxsize=None)
def layout(header: str, struct_name: str) -> Layout:
    """The ``Layout`` of ``struct <struct_name>`` from ``bpf/<header>.h``."""
    return Layout(record_type(header, struct_name))


_CSTR_CACHE: dict[bytes, str] = {}
CSTR_CACHE_MAX = 4096


def cstr(raw: bytes) -> str:
    """A fixed-size C string field as text: cut at the first NUL, invalid UTF-8 replaced.

    Commands and device names repeat, so results are cached (bounded; cleared when full).
    """
    s = _CSTR_CACHE.get(raw)
    if s is None:
        if len(_CSTR_CACHE) >= CSTR_CACHE_MAX:
            _CSTR_CACHE.clear()
        s = _CSTR_CACHE[raw] = raw.split(b"\0", 1)[0].decode("utf-8", "replace")
    return s


def event_reader(lay: Layout, cls: type, text: tuple[str, ...] = ()) -> Callable[[Any], Any]:
    """``buffer -> cls(...)`` for a dataclass whose every field is a record field of the
    same name: one reader in the class's field order, positional construction, the
    ``text`` fields (C strings) through ``cstr``. Follows both the header and the class."""
    names = tuple(cls.__dataclass_fields__)  # type: ignore[attr-defined]
    read = lay.reader(*names)
    idx = tuple(names.index(t) for t in text)
    if not idx:
        return lambda buf: cls(*read(buf))

    def decode(buf: Any, _read=read, _cls=cls, _idx=idx, _cstr=cstr) -> Any:
        v = list(_read(buf))
        for i in _idx:
            v[i] = _cstr(v[i])
        return _cls(*v)
    return decode
