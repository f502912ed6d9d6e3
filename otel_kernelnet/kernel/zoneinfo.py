"""/proc/zoneinfo: free pages of each memory zone against its min/low/high watermarks.

Below ``low`` the kernel wakes kswapd; below ``min`` only allocations allowed to dip
into the reserves (PF_MEMALLOC, atomic) succeed, and packets allocated from the
reserves are pfmemalloc skbs, dropped by sockets without SOCK_MEMALLOC (drop reason
PFMEMALLOC). ``parse`` is a pure function of the file's text (fixture-tested); the
reclaim family samples it periodically (``probes.reclaim.zoneinfo_interval_ms``).

The zone header is ``Node 0, zone   Normal``; the watermarks are the lines
``pages free N`` then ``min``/``low``/``high`` (no colon; the per-CPU pageset lines
``high:  N`` further down have one and are ignored), ``present``, ``managed``. Zones
with no managed pages (an empty Movable or Device zone) cannot be "below min" and are
left out of ``below``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PATH = "/proc/zoneinfo"

_HEADER = re.compile(r"^Node\s+(\d+),\s+zone\s+(\S+)\s*$")
# the values read from a zone's section: ``pages free N``, then ``min``/``low``/``high``,
# ``spanned``, ``present``, ``managed`` (indented, no colon)
_VALUES = frozenset(("min", "low", "high", "present", "managed", "spanned"))
_COMPLETE = 2 + 1 + len(_VALUES)  # node, zone, free and the values


class ZoneinfoError(ValueError):
    pass


@dataclass(frozen=True)
class Zone:
    node: int
    zone: str
    free_pages: int
    min_pages: int
    low_pages: int
    high_pages: int
    managed_pages: int
    present_pages: int

    @property
    def key(self) -> str:
        return f"node{self.node}/{self.zone}"

    @property
    def level(self) -> str:
        """Where free pages stand: ``below_min``, ``below_low``, ``below_high`` or ``ok``
        (``empty`` for a zone without managed pages)."""
        if self.managed_pages <= 0:
            return "empty"
        if self.free_pages < self.min_pages:
            return "below_min"
        if self.free_pages < self.low_pages:
            return "below_low"
        if self.free_pages < self.high_pages:
            return "below_high"
        return "ok"

    def as_dict(self) -> dict:
        # by hand: dataclasses.asdict deep-copies field by field (10x slower; every sample)
        return {"node": self.node, "zone": self.zone, "free_pages": self.free_pages, "min_pages": self.min_pages,
                "low_pages": self.low_pages, "high_pages": self.high_pages, "managed_pages": self.managed_pages,
                "present_pages": self.present_pages, "level": self.level}


def parse(text: str) -> list[Zone]:
    """Every zone of a /proc/zoneinfo text, in file order.

    >>> z = parse('''Node 0, zone   Normal
    ...   pages free     100
    ...         boost    0
    ...         min      120
    ...         low      150
    ...         high     180
    ...         spanned  4096
    ...         present  4096
    ...         managed  4000
    ...   pagesets
    ...     cpu: 0
    ...               count: 10
    ...               high:  500
    ... ''')
    >>> z[0].key, z[0].free_pages, z[0].high_pages, z[0].level
    ('node0/Normal', 100, 180, 'below_min')
    """
    zones: list[Zone] = []
    cur: dict | None = None
    complete = False  # every value of the current zone found: the rest of its lines are skipped

    def close() -> None:
        if cur is None:
            return
        missing = [k for k in ("free", "min", "low", "high") if k not in cur]
        if missing:
            raise ZoneinfoError(f"zone {cur['node']}/{cur['zone']}: no {', '.join(missing)} line")
        zones.append(Zone(cur["node"], cur["zone"], cur["free"], cur["min"], cur["low"], cur["high"],
                          cur.get("managed", cur.get("present", 0)), cur.get("present", 0)))

    # Sampled every second by the reclaim family: string tests instead of a regex per
    # line, and a zone's remaining lines (its counters and per-CPU pagesets, most of the
    # file) are skipped once its values are found (3-4x faster than three regexes a line).
    for line in text.splitlines():
        if line.startswith("Node"):
            m = _HEADER.match(line)
            if m:
                close()
                cur = {"node": int(m.group(1)), "zone": m.group(2)}
                complete = False
                continue
        if cur is None or complete or not line[:1].isspace():
            continue
        parts = line.split()
        if len(parts) == 2:
            key, value = parts
            # the first of each: the zone's, not a pageset's (whose lines have a colon)
            if key in _VALUES and key not in cur and value.isascii() and value.isdigit():
                cur[key] = int(value)
                complete = len(cur) == _COMPLETE
        elif len(parts) == 3 and parts[0] == "pages" and parts[1] == "free" and parts[2].isascii() \
                and parts[2].isdigit():
            cur["free"] = int(parts[2])
            complete = len(cur) == _COMPLETE
    close()
    if not zones:
        raise ZoneinfoError("no 'Node N, zone NAME' sections")
    return zones


def read(path: str = PATH) -> list[Zone]:
    with open(path) as f:
        return parse(f.read())


def below_min(zones: list[Zone]) -> list[str]:
    """Keys of the populated zones whose free pages are under their min watermark."""
    return [z.key for z in zones if z.level == "below_min"]
