import time

from otel_kernelnet.clock import KernelClock


class FakeClocks:
    """CLOCK_MONOTONIC advances 1 µs per read; CLOCK_REALTIME runs `ppm` fast and
    started at `epoch0` (NTP slewing it is what makes a fixed offset drift)."""

    def __init__(self, ppm: float, epoch0: int = 1_700_000_000 * 10**9):
        self.t = 5_000_000_000
        self.ppm = ppm
        self.epoch0 = epoch0

    def mono(self) -> int:
        self.t += 1_000
        return self.t

    def real(self) -> int:
        return self.epoch0 + int(self.t * (1 + self.ppm / 1e6))

    def true_epoch(self, mono: int) -> int:
        return self.epoch0 + int(mono * (1 + self.ppm / 1e6))


def test_conversion_matches_the_real_clocks():
    c = KernelClock()
    for _ in range(5):
        m, r = time.monotonic_ns(), time.time_ns()
        assert abs(c.to_epoch_ns(m) - r) < 2_000_000  # 2 ms, allowing for scheduling
    assert c.uncertainty_ns < 1_000_000


def test_recalibration_bounds_drift():
    f = FakeClocks(ppm=50)
    fixed = KernelClock(f.mono, f.real, recalibrate_every_ns=10**18)
    tracking = KernelClock(f.mono, f.real, recalibrate_every_ns=1_000_000_000)
    worst_fixed = worst_tracking = 0
    for _ in range(600):  # 600 s of kernel time, one event per second
        f.t += 1_000_000_000
        tracking.maybe_recalibrate()
        fixed.maybe_recalibrate()
        m = f.mono()
        worst_fixed = max(worst_fixed, abs(fixed.to_epoch_ns(m) - f.true_epoch(m)))
        worst_tracking = max(worst_tracking, abs(tracking.to_epoch_ns(m) - f.true_epoch(m)))
    assert worst_fixed > 25_000_000          # 50 ppm over 600 s: ~30 ms off without recalibration
    assert worst_tracking < 100_000          # within 0.1 ms with it (50 µs drift per second)


def test_narrowest_bracket_wins():
    reads = iter([100, 5_000, 200, 210] + list(range(10_000, 10_100)))  # (m1, m2) per try
    c = KernelClock(lambda: next(reads), lambda: 7_000_000, tries=2)
    # try 1: mono 100..5000 (width 4900); try 2: mono 200..210 (width 10) -> offset from try 2
    assert c.uncertainty_ns == 10
    assert c.offset_ns == 7_000_000 - 205
