"""The encoders' attribute cache: encoded ``KeyValue`` text or bytes, by key, then value.

Most kernel attributes repeat (a drop reason, a device, a command, a CPU), so both
encoders (``otlp_proto``, ``otlp_json``) keep each encoded attribute and reuse it. Some
never repeat (durations in ns, lengths, sequence numbers): caching those only costs
memory. The old cache, one dict by (key, value) cleared when 65536 entries were reached,
let such values fill it: in the 1-hour soak the JSON encoder's cache reached its bound
after 30-45 minutes, and the collector's RSS kept the step (+5 MB, docs/benchmarks.md
section 7).

So the cache is kept per key. A key whose values reach ``per_key_max`` distinct entries
is not cached any more (its entries are freed, and it is written directly from then
on); a key that repeats stays cached. Memory is bounded by ``keys_max`` keys of fewer
than ``per_key_max`` entries each, and in practice is a few hundred entries.

Str and int values are cached per key; bools apart, by (key, value), since a bool would
meet its int in a dict (``True == 1``); other values (floats: ``1.0 == 1``, lists) are
encoded every time. ``encode(attrs)`` is the one loop both encoders call, once per span.
"""

from __future__ import annotations

from typing import Any, Callable, Generic, Mapping, TypeVar

T = TypeVar("T", str, bytes)

PER_KEY_MAX = 256
KEYS_MAX = 1024
EVENTS_MAX = 4096


class AttrCache(Generic[T]):
    def __init__(self, encode: Callable[[str, Any], T], per_key_max: int = PER_KEY_MAX,
                 keys_max: int = KEYS_MAX):
        self.by_key: dict[str, dict[Any, T]] = {}  # str and int values
        self.uncached: set[str] = set()  # keys whose values did not repeat
        self.bools: dict[tuple[str, bool], T] = {}  # at most two per key
        self._encode = encode
        self.per_key_max = per_key_max
        self.keys_max = keys_max
        self.clears = 0  # times keys_max was reached (everything forgotten)

    def encode(self, attrs: Mapping[str, Any]) -> list[T]:
        """Each attribute's encoding, in order (a hit costs two dict lookups)."""
        by_key, bools, miss = self.by_key, self.bools, self._miss
        out = []
        for k, v in attrs.items():
            t = v.__class__
            if t is str or t is int:
                d = by_key.get(k)
                b = d.get(v) if d is not None else None
                if b is None:
                    b = miss(k, v)
            elif t is bool:
                b = bools.get((k, v))
                if b is None:
                    b = bools[(k, v)] = self._encode(k, v)
            else:
                b = self._encode(k, v)
            out.append(b)
        return out

    def _miss(self, k: str, v: Any) -> T:
        """A str or int value's encoding, kept for the next time unless ``k`` does not repeat."""
        b = self._encode(k, v)
        if k in self.uncached:
            return b
        d = self.by_key.get(k)
        if d is None:
            if len(self.by_key) + len(self.uncached) >= self.keys_max:
                self.by_key.clear()
                self.uncached.clear()
                self.bools.clear()
                self.clears += 1
            d = self.by_key[k] = {}
        elif len(d) >= self.per_key_max:
            del self.by_key[k]
            self.uncached.add(k)
            return b
        d[v] = b
        return b


class EventCache(Generic[T]):
    """An event's encoding without its time, by (name, attribute items).

    Events repeat (a CPU, a device, a reason). Only events whose every value is a str or
    an int are looked up and kept (a bool would meet its int in the key, ``True == 1``,
    and ``1.0 == 1``). At most ``max_entries``; cleared when full (an event with a value
    that never repeats, a culprit's ns, only churns this bounded dict).
    """

    def __init__(self, encode: Callable[[Any], T], max_entries: int = EVENTS_MAX):
        self.entries: dict[tuple[str, tuple], T] = {}
        self._encode = encode
        self.max_entries = max_entries
        self.clears = 0

    def get(self, e: Any) -> T:
        items = tuple(e.attributes.items())
        if not all(v.__class__ is str or v.__class__ is int for _k, v in items):
            return self._encode(e)
        key = (e.name, items)
        b = self.entries.get(key)
        if b is None:
            if len(self.entries) >= self.max_entries:
                self.entries.clear()
                self.clears += 1
            b = self.entries[key] = self._encode(e)
        return b
