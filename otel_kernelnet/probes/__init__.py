"""Probe families. ``FAMILIES`` lists them in start order; each has a config section
``probes.<name>`` with at least ``enabled``."""

from .base import KernelContext, ProbeFamily, ProbeUnavailable  # noqa: F401


def families() -> list["ProbeFamily"]:
    from .drop import DropFamily
    from .netns_counters import NetnsCountersFamily
    from .tcp import TcpFamily
    return [DropFamily(), NetnsCountersFamily(), TcpFamily()]
