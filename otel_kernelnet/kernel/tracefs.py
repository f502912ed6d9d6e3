"""tracefs: find or mount it, and read tracepoint format files.

A tracepoint's format file (``events/<category>/<name>/format``) is the running
kernel's own description of the record a BPF tracepoint program receives: field
names, offsets and sizes, and in its ``print fmt`` line the ``__print_symbolic``
tables that name enum values (drop reasons, TCP states, softirq vectors...). The
probes take their record layout and their enum names from here, never from headers
or from tables written in our code.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass, field
from typing import Iterable

TRACEFS_PATHS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
MOUNT_FIX = "mount -t tracefs nodev /sys/kernel/tracing (as root), or run the collector with CAP_SYS_ADMIN"


class TracefsError(Exception):
    """tracefs is missing or a format file cannot be read/parsed."""


class TracepointMissing(TracefsError):
    """The running kernel has no such tracepoint (an optional probe part is lost)."""


def _is_tracefs(path: str) -> bool:
    return os.path.isdir(os.path.join(path, "events"))


def find_tracefs() -> str | None:
    """The mounted tracefs directory, or None."""
    override = os.environ.get("OTEL_KERNELNET_TRACEFS")
    candidates = (override,) if override else TRACEFS_PATHS
    for path in candidates:
        if path and _is_tracefs(path):
            return path
    return None


def ensure_tracefs() -> tuple[str | None, str]:
    """Find tracefs, mounting it at /sys/kernel/tracing when we may.

    Returns ``(path or None, what happened)``; never raises.
    """
    path = find_tracefs()
    if path:
        return path, f"mounted at {path}"
    if os.environ.get("OTEL_KERNELNET_TRACEFS"):
        return None, f"OTEL_KERNELNET_TRACEFS={os.environ['OTEL_KERNELNET_TRACEFS']} is not a tracefs"
    target = TRACEFS_PATHS[0]
    try:
        r = subprocess.run(["mount", "-t", "tracefs", "nodev", target],
                           capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as e:
        return None, f"not mounted, and mounting failed: {e}"
    if r.returncode == 0 and _is_tracefs(target):
        return target, f"was not mounted: mounted it at {target}"
    err = (r.stderr or r.stdout).strip().splitlines()
    return None, f"not mounted, and mounting failed: {err[-1] if err else 'exit ' + str(r.returncode)}"


@dataclass(frozen=True)
class Field:
    name: str
    type: str
    offset: int
    size: int
    signed: bool


@dataclass
class TracepointFormat:
    category: str
    name: str
    id: int
    fields: dict[str, Field]
    print_fmt: str
    symbols: dict[str, dict[int, str]] = field(default_factory=dict)
    """field name -> {value: name} from ``__print_symbolic(REC->field, ...)``."""

    @property
    def size(self) -> int:
        return max((f.offset + f.size for f in self.fields.values()), default=0)

    def symbol(self, field_name: str, value: int) -> str:
        """The kernel's name for ``value`` of an enum field; ``unknown:<n>`` when absent."""
        name = self.symbols.get(field_name, {}).get(value)
        return name if name is not None else f"unknown:{value}"


_FIELD_RE = re.compile(
    r"^\s*field:(?P<decl>.+?);\s*offset:(?P<off>\d+);\s*size:(?P<size>\d+);\s*signed:(?P<signed>\d+);")
_SYMBOLIC_RE = re.compile(r"__print_symbolic\(\s*REC->(?P<field>\w+)\s*,")
_PAIR_RE = re.compile(r'\{\s*(-?(?:0x[0-9a-fA-F]+|\d+))\s*,\s*"([^"]*)"\s*\}')


def _split_decl(decl: str) -> tuple[str, str]:
    # "unsigned short common_type" / "void * skbaddr" / "__u8 saddr[4]" / "char comm[16]"
    decl = decl.strip()
    m = re.match(r"^(?P<type>.*?)(?P<name>\w+)(?P<arr>\[[^\]]*\])?$", decl)
    if not m:
        raise TracefsError(f"cannot parse field declaration {decl!r}")
    typ = (m.group("type").strip() + (m.group("arr") or "")).strip()
    return typ, m.group("name")


def balanced(text: str, start: int, opening: str = "(", closing: str = ")") -> str:
    """The text from ``start`` (just after an opening bracket) to its matching closing
    one, skipping quoted strings (print_fmt tables: ``(...)`` and ``{...}``)."""
    depth = 1
    i = start
    while i < len(text) and depth:
        c = text[i]
        if c == opening:
            depth += 1
        elif c == closing:
            depth -= 1
        elif c == '"':
            i = text.index('"', i + 1)
        i += 1
    return text[start:i - 1]


def parse_symbolic_tables(print_fmt: str) -> dict[str, dict[int, str]]:
    tables: dict[str, dict[int, str]] = {}
    for m in _SYMBOLIC_RE.finditer(print_fmt):
        body = balanced(print_fmt, m.start() + len("__print_symbolic("))
        pairs = {int(v, 0): name for v, name in _PAIR_RE.findall(body)}
        tables.setdefault(m.group("field"), {}).update(pairs)
    return tables


def parse_format(text: str, category: str = "", name: str = "") -> TracepointFormat:
    """Parse the text of a tracepoint format file.

    >>> fmt = parse_format('''name: demo
    ... ID: 7
    ... format:
    ... \\tfield:unsigned short common_type;\\toffset:0;\\tsize:2;\\tsigned:0;
    ... \\tfield:enum skb_drop_reason reason;\\toffset:8;\\tsize:4;\\tsigned:0;
    ...
    ... print fmt: "reason: %s", __print_symbolic(REC->reason, { 2, "NOT_SPECIFIED" }, { 3, "NO_SOCKET" })
    ... ''', "skb", "demo")
    >>> fmt.fields["reason"].offset, fmt.symbol("reason", 3), fmt.symbol("reason", 99)
    (8, 'NO_SOCKET', 'unknown:99')
    """
    fields: dict[str, Field] = {}
    tp_id = -1
    print_fmt = ""
    for line in text.splitlines():
        if line.startswith("name:") and not name:
            name = line.split(":", 1)[1].strip()
        elif line.startswith("ID:"):
            tp_id = int(line.split(":", 1)[1])
        elif line.startswith("print fmt:"):
            print_fmt = line.split(":", 1)[1].strip()
        else:
            m = _FIELD_RE.match(line)
            if m:
                typ, fname = _split_decl(m.group("decl"))
                fields[fname] = Field(fname, typ, int(m.group("off")), int(m.group("size")),
                                      m.group("signed") == "1")
    if not fields:
        raise TracefsError(f"no fields in format of {category}:{name}")
    return TracepointFormat(category, name, tp_id, fields, print_fmt, parse_symbolic_tables(print_fmt))


_HIDDEN: dict[str, frozenset[str]] = {}


def hide_fields(specs: Iterable[str]) -> None:
    """Make ``read_format`` treat these fields as absent ("kfree_skb:rx_sk",
    "kfree_skb:reason", "tcp_probe:sock_cookie"): the feature probe's view of an older
    kernel, so every family's fallback and ``check``'s report can be exercised on a
    kernel that has everything (config key ``probes.hide_fields``)."""
    hidden: dict[str, set[str]] = {}
    for spec in specs:
        tp, sep, fld = spec.partition(":")
        if not sep or not tp or not fld:
            raise ValueError(f"hidden field {spec!r}: expected tracepoint:field, e.g. kfree_skb:rx_sk")
        hidden.setdefault(tp.split("/")[-1], set()).add(fld)
    _HIDDEN.clear()
    _HIDDEN.update({k: frozenset(v) for k, v in hidden.items()})


def without_fields(fmt: TracepointFormat, names: Iterable[str]) -> TracepointFormat:
    gone = set(names)
    return TracepointFormat(fmt.category, fmt.name, fmt.id,
                            {k: v for k, v in fmt.fields.items() if k not in gone}, fmt.print_fmt,
                            {k: v for k, v in fmt.symbols.items() if k not in gone})


def read_format(category: str, name: str, tracefs: str | None = None) -> TracepointFormat:
    """Read and parse ``events/<category>/<name>/format`` of the running kernel
    (minus the fields ``hide_fields`` hides)."""
    root = tracefs or find_tracefs()
    if root is None:
        raise TracefsError(f"tracefs is not mounted: {MOUNT_FIX}")
    path = os.path.join(root, "events", category, name, "format")
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        raise TracepointMissing(f"tracepoint {category}:{name} does not exist on this kernel") from None
    except OSError as e:
        raise TracefsError(f"cannot read {path}: {e.strerror}") from None
    fmt = parse_format(text, category, name)
    hidden = _HIDDEN.get(name)
    return without_fields(fmt, hidden) if hidden else fmt
