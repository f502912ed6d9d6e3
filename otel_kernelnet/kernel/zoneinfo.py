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
from dataclasses import asdict, dataclass

PATH = "/proc/zoneinfo"

_HEADER = re.compile(r"^Node\s+(\d+),\s+zone\s+(\S+)\s*$")
_PAGES_FREE = re.compile(r"^\s+pages free\s+(\d+)\s*$")
_WATERMARK = re.compile(r"^\s+(min|low|high|present|managed|spanned)\s+(\d+)\s*$")


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
        d = asdict(self)
        d["level"] = self.level
        return d


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

    def close() -> None:
        if cur is None:
            return
        missing = [k for k in ("free", "min", "low", "high") if k not in cur]
        if missing:
            raise ZoneinfoError(f"zone {cur['node']}/{cur['zone']}: no {', '.join(missing)} line")
        zones.append(Zone(cur["node"], cur["zone"], cur["free"], cur["min"], cur["low"], cur["high"],
                          cur.get("managed", cur.get("present", 0)), cur.get("present", 0)))

    for line in text.splitlines():
        m = _HEADER.match(line)
        if m:
            close()
            cur = {"node": int(m.group(1)), "zone": m.group(2)}
            continue
        if cur is None:
            continue
        m = _PAGES_FREE.match(line)
        if m:
            cur["free"] = int(m.group(1))
            continue
        m = _WATERMARK.match(line)
        if m and m.group(1) not in cur:  # the first of each: the zone's, not a pageset's
            cur[m.group(1)] = int(m.group(2))
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
