"""Resolve kernel text addresses to ``symbol+0xoff`` using /proc/kallsyms.

/proc/kallsyms lines are ``<hex address> <type> <name>[\\t[<module>]]``.
Only text symbols (types ``t``/``T`` and weak ``w``/``W``) are named; every other
symbol is kept as a *boundary* so that an address inside data that happens to
follow a function is not reported as ``function+0x1234567`` but as a bare hex
address.

Unprivileged readers (or ``kernel.kptr_restrict`` >= 1 without CAP_SYSLOG) see
every address as 0. That is detected: :attr:`KernelSymbols.restricted` is True,
``resolve()`` then returns the hex address for everything, and
``KernelSymbols.load(require_addresses=True)`` raises
:class:`KallsymsRestrictedError` instead.

Module symbols are rendered like the kernel's ``%pS``: ``sym+0x4 [module]``.
"""

from __future__ import annotations

from bisect import bisect_right

__all__ = ["KernelSymbols", "KsymsError", "KallsymsRestrictedError", "text_address"]

_TEXT_TYPES = frozenset("tTwW")
RESOLVED_MAX = 4096  # addresses remembered by KernelSymbols.resolve
# Preference when several symbols share an address (lower wins).
_RANK = {"T": 0, "t": 1, "W": 2, "w": 3}


class KsymsError(Exception):
    """/proc/kallsyms could not be read or parsed."""


class KallsymsRestrictedError(KsymsError):
    """All addresses in kallsyms are zero: not root / kptr_restrict."""


class KernelSymbols:
    def __init__(self, addrs: list[int], names: list[str | None], restricted: bool,
                 source: str):
        self._addrs = addrs        # sorted, unique
        self._names = names        # display name, or None for a non-text boundary
        self.restricted = restricted
        self.source = source
        self._resolved: dict[int, str] = {}

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, path: str = "/proc/kallsyms", *, require_addresses: bool = False) -> "KernelSymbols":
        try:
            with open(path, "r", encoding="utf-8", errors="replace") as f:
                text = f.read()
        except OSError as e:
            raise KsymsError(f"cannot read {path}: {e}") from e
        ks = cls._parse(text, path)
        if require_addresses and ks.restricted:
            raise KallsymsRestrictedError(
                f"{path}: all symbol addresses are 0 - reading kernel addresses needs root "
                f"(CAP_SYSLOG) and kernel.kptr_restrict < 2"
            )
        return ks

    @classmethod
    def from_text(cls, text: str) -> "KernelSymbols":
        return cls._parse(text, "<text>")

    @classmethod
    def _parse(cls, text: str, source: str) -> "KernelSymbols":
        # addr -> (rank, display name or None); text symbols beat boundaries.
        best: dict[int, tuple[int, str | None]] = {}
        seen_nonzero = False
        nsyms = 0
        for line in text.splitlines():
            parts = line.split(None, 3)
            if len(parts) < 3:
                continue
            try:
                addr = int(parts[0], 16)
            except ValueError:
                continue
            nsyms += 1
            if addr:
                seen_nonzero = True
            typ = parts[1]
            if typ in _TEXT_TYPES:
                name = parts[2]
                if len(parts) == 4:
                    mod = parts[3].strip()
                    if mod:
                        name = f"{name} {mod}"  # mod keeps its brackets: "[nf_tables]"
                rank = _RANK[typ]
            else:
                name = None
                rank = 9
            cur = best.get(addr)
            if cur is None or rank < cur[0]:
                best[addr] = (rank, name)
        restricted = nsyms > 0 and not seen_nonzero
        if restricted:
            return cls([], [], True, source)
        addrs = sorted(best)
        names = [best[a][1] for a in addrs]
        return cls(addrs, names, False, source)

    # ------------------------------------------------------------------ lookup
    def __len__(self) -> int:
        return sum(1 for n in self._names if n is not None)

    def resolve(self, addr: int) -> str:
        """``name+0xoff`` (``name+0xoff [mod]`` for modules); unknown -> ``0x...``.
        Remembered per address (a drop's location repeats: one per drop span)."""
        text = self._resolved.get(addr)
        if text is None:
            if len(self._resolved) >= RESOLVED_MAX:
                self._resolved.clear()
            text = self._resolved[addr] = self._resolve(addr)
        return text

    def _resolve(self, addr: int) -> str:
        i = bisect_right(self._addrs, addr) - 1
        if i < 0:
            return hex(addr)
        name = self._names[i]
        if name is None:
            return hex(addr)
        off = addr - self._addrs[i]
        sym, sep, mod = name.partition(" ")
        return f"{sym}+{off:#x}{sep}{mod}"

    def address_of(self, name: str) -> int | None:
        """Address of text symbol `name` (as displayed, e.g. "foo [mod]"), or None."""
        for a, n in zip(self._addrs, self._names):
            if n == name:
                return a
        return None

    def __repr__(self) -> str:
        state = "restricted (all addresses 0)" if self.restricted else f"{len(self)} text symbols"
        return f"<KernelSymbols {self.source}: {state}>"


def text_address(name: str, path: str = "/proc/kallsyms") -> int | None:
    """The address of one core-kernel text symbol, without parsing the whole file
    (a byte search: ~50 ms here against ~250 ms for :meth:`KernelSymbols.load`, which a
    probe plan needing one address would otherwise spend at start-up). None when absent
    or not text; :class:`KallsymsRestrictedError` when addresses are hidden (0)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise KsymsError(f"cannot read {path}: {e}") from e
    needle = b" " + name.encode() + b"\n"
    start = 0
    while True:
        i = data.find(needle, start)
        if i < 0:
            return None
        start = i + 1
        line = data[data.rfind(b"\n", 0, i) + 1:i].split()  # [address, type]
        if len(line) != 2 or line[1].decode(errors="replace") not in _TEXT_TYPES:
            continue
        try:
            addr = int(line[0], 16)
        except ValueError:
            continue
        if addr == 0:
            raise KallsymsRestrictedError(f"{path}: symbol addresses are 0 - reading kernel addresses "
                                          f"needs root (CAP_SYSLOG) and kernel.kptr_restrict < 2")
        return addr
