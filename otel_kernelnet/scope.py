"""Which network namespaces the collector reports (``scope.mode`` and ``scope.netns``).

- ``node`` / ``daemonset``: every namespace (``None``: no filter);
- ``sidecar``: the collector's own network namespace (the pod's), so that N sidecars on
  one node never export N copies of the same kernel event;
- ``scope.netns`` (inode numbers or namespace paths) overrides both with an explicit set.

The BPF families receive the set at compile time (``-D KN_SCOPE_NETNS=1``) and in the
``kn_scope`` map (bpf/common.bcc.h): events of other namespaces are ignored in the
kernel before any other work; the counters family samples only these namespaces.
Events whose namespace is unknown (no socket, no device) are out of a scoped collector.
"""

from __future__ import annotations

import os
from typing import Iterable

MAX_SCOPED = 64  # size of the kn_scope map


class ScopeError(ValueError):
    pass


def netns_inode(path: str) -> int:
    """Inode of a network namespace file (/proc/PID/ns/net, /run/netns/NAME)."""
    try:
        return os.stat(path).st_ino
    except OSError as e:
        raise ScopeError(f"scope.netns: cannot stat {path}: {e.strerror}") from None


def resolve(mode: str, explicit: Iterable[int | str] = (), own: str = "/proc/self/ns/net") -> frozenset[int] | None:
    """The set of namespace inodes to report, or None for every namespace."""
    inodes = [x if isinstance(x, int) else netns_inode(x) for x in explicit]
    if not inodes and mode == "sidecar":
        inodes = [netns_inode(own)]
    if not inodes:
        return None
    if len(set(inodes)) > MAX_SCOPED:
        raise ScopeError(f"scope.netns: at most {MAX_SCOPED} namespaces (got {len(set(inodes))})")
    return frozenset(inodes)


def describe(scope: frozenset[int] | None) -> str:
    if scope is None:
        return "every network namespace on the node"
    return "network namespace(s) " + ", ".join(str(i) for i in sorted(scope)) + " only"
