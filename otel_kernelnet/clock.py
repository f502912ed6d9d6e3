"""Kernel monotonic time -> Unix epoch time: the one conversion every span uses.

BPF programs stamp events with ``bpf_ktime_get_ns()``, which is CLOCK_MONOTONIC
(the same clock as Python's ``time.monotonic_ns()``). OpenTelemetry wants Unix epoch
nanoseconds. The offset between the two clocks is measured by bracketing one
CLOCK_REALTIME read between two CLOCK_MONOTONIC reads and keeping the tightest
bracket of several tries; it is re-measured periodically because CLOCK_REALTIME is
slewed and stepped by NTP while CLOCK_MONOTONIC is not, so a fixed offset drifts.
"""

from __future__ import annotations

import time
from typing import Callable

NS = Callable[[], int]


class KernelClock:
    """Converts kernel monotonic ns to epoch ns with a periodically recalibrated offset."""

    def __init__(self, monotonic_ns: NS = time.monotonic_ns, realtime_ns: NS = time.time_ns,
                 recalibrate_every_ns: int = 10_000_000_000, tries: int = 7):
        self._mono = monotonic_ns
        self._real = realtime_ns
        self._every = recalibrate_every_ns
        self._tries = tries
        self.offset_ns = 0
        self.uncertainty_ns = 0
        self._calibrated_at = 0
        self.recalibrate()

    def recalibrate(self) -> int:
        best = None
        for _ in range(self._tries):
            m1 = self._mono()
            r = self._real()
            m2 = self._mono()
            width = m2 - m1
            if best is None or width < best[0]:
                best = (width, r - (m1 + width // 2))
        assert best is not None
        self.uncertainty_ns, self.offset_ns = best[0], best[1]
        self._calibrated_at = self._mono()
        return self.offset_ns

    def maybe_recalibrate(self) -> None:
        """Cheap to call often: recalibrates once the period has passed."""
        if self._mono() - self._calibrated_at >= self._every:
            self.recalibrate()

    def to_epoch_ns(self, monotonic_ns: int) -> int:
        """Epoch ns of a kernel CLOCK_MONOTONIC timestamp.

        >>> c = KernelClock(monotonic_ns=iter(range(1000, 10**6, 10)).__next__,
        ...                 realtime_ns=lambda: 1_700_000_000_000_000_000)
        >>> c.to_epoch_ns(1000) - 1_700_000_000_000_000_000
        -5
        """
        return monotonic_ns + self.offset_ns
