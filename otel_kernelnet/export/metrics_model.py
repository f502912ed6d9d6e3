"""Plain metric points that probe families hand to the metrics exporter.

Kept free of the OTel SDK so families (and their unit tests) need nothing but this.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class HistogramPoint:
    """One cumulative explicit-bucket histogram stream (since the collector started).

    ``counts`` has ``len(bounds) + 1`` buckets; bucket ``i`` holds values in
    ``(bounds[i-1], bounds[i]]`` as OTLP defines them.
    """
    name: str
    description: str
    unit: str
    attributes: dict[str, Any]
    bounds: list[float]
    counts: list[int]
    sum: float

    @property
    def count(self) -> int:
        return sum(self.counts)

    def min_max(self) -> tuple[float, float]:
        """Bounds of the lowest and highest non-empty bucket (not exact values: OTLP's
        min/max are filled with these, and the docs say so); (0, 0) when empty."""
        nz = [i for i, c in enumerate(self.counts) if c]
        if not nz:
            return 0.0, 0.0
        lo, hi = nz[0], nz[-1]
        low = self.bounds[lo - 1] if lo > 0 else 0.0
        high = self.bounds[hi] if hi < len(self.bounds) else self.bounds[-1]
        return low, high
