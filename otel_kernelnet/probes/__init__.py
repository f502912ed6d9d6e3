"""Probe families. ``families()`` lists them in start (and drain) order; each has a config section
``probes.<name>`` with at least ``enabled``."""

from .base import KernelContext, ProbeFamily, ProbeUnavailable  # noqa: F401


def families() -> list["ProbeFamily"]:
    from .drop import DropFamily
    from .lifecycle import LifecycleFamily
    from .netns_counters import NetnsCountersFamily
    from .reclaim import ReclaimFamily
    from .softirq import SoftirqFamily
    from .tcp import TcpFamily
    # node-level families first: their ring buffers are drained first in each poll, so
    # the softirq/reclaim spans a packet or drop links to are indexed before it maps
    return [SoftirqFamily(), ReclaimFamily(), DropFamily(), NetnsCountersFamily(), TcpFamily(), LifecycleFamily()]
