"""Which network namespaces the collector reports (``scope.mode`` and ``scope.netns``).

- ``node`` / ``daemonset``: every namespace (``None``: no filter);
- ``sidecar``: the collector's own network namespace (the pod's), so that N sidecars on
  one node never export N copies of the same kernel event;
- ``scope.netns`` (inode numbers or namespace paths) overrides both with an explicit set.

The BPF families receive the set at compile time (``-D KN_SCOPE_NETNS=1``) and in the
``kn_scope`` map (bpf/common.bcc.h): events of other namespaces are ignored in the
kernel before any other work; the counters family samples only these namespaces.
Events whose namespace is unknown (no socket, no device) are out of a scoped collector.

The node-level families have no network namespace (docs/deploy-sidecar.md):

- reclaim is scoped by **cgroup** (``scope.cgroup``; in sidecar mode by default the
  pod's cgroup, see ``resolve_cgroup``): bpf/reclaim.bpf.c keeps a stall only when
  ``bpf_get_current_ancestor_cgroup_id(level) == id`` of that cgroup v2 directory. The
  v2 (default) hierarchy is used also on a hybrid v1/v2 machine; with no v2 hierarchy
  at all (pure v1) reclaim is not scoped, and ``check`` says so. kswapd runs and zone
  watermarks are node-level: a cgroup-scoped collector reports neither;
- softirq is scoped by the **packets** it delayed: a sidecar emits only the
  softirq spans that a packet of its namespaces (a lifecycle span, itself scoped in
  the kernel) waited through on that CPU (links.py), and no per-CPU histograms (the
  node's: the DaemonSet's). This applies in sidecar mode only: a node-mode collector
  scoped by ``scope.netns`` (the lab's, for example) owns the node's softirqs and
  reports every long one, with the histograms.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable, Mapping

from .kernel import cgroups

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


# --- cgroup scope (the reclaim family) -----------------------------------------------------


@dataclass(frozen=True)
class CgroupScope:
    """The cgroup v2 directory whose tasks a scoped reclaim family reports.

    ``path`` is relative to the v2 mount ``mount``; ``id`` is the cgroup id as BPF sees
    it (the inode number of the directory), ``level`` its depth (the root is 0). When
    scoping was asked for but is impossible here, ``path`` is None and ``how`` says why.
    """
    path: str | None = None
    id: int = 0
    level: int = 0
    mount: str | None = None
    how: str = ""

    @property
    def active(self) -> bool:
        return self.path is not None


def pod_level(path: str) -> str | None:
    """The pod-level prefix of a Kubernetes cgroup path (None outside ``kubepods``).

    >>> pod_level("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod2f0e8c1a_6b0d_4e4f_9d39_0c5f1b7a3e21.slice/cri-containerd-" + "ab" * 32 + ".scope")
    '/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod2f0e8c1a_6b0d_4e4f_9d39_0c5f1b7a3e21.slice'
    >>> pod_level("/kubepods/besteffort/pod2f0e8c1a-6b0d-4e4f-9d39-0c5f1b7a3e21/" + "cd" * 32)
    '/kubepods/besteffort/pod2f0e8c1a-6b0d-4e4f-9d39-0c5f1b7a3e21'
    >>> pod_level("/user.slice/session-1.scope") is None
    True
    """
    from .k8s import parse_cgroup_path
    segs = [s for s in path.split("/") if s]
    for i in range(1, len(segs) + 1):
        ref = parse_cgroup_path("/" + "/".join(segs[:i]))
        if ref is not None:
            return "/" + "/".join(segs[:i])
    return None


def _pod_dir_matcher(uid: str):
    forms = (f"pod{uid}", f"pod{uid.replace('-', '_')}")
    return lambda name: any(name == f or name.endswith("-" + f + ".slice") or name == f + ".slice" for f in forms)


def resolve_cgroup(mode: str, explicit: str = "", *, mounts_text: str | None = None,
                   proc_self_cgroup: str | None = None, environ: Mapping[str, str] = os.environ,
                   max_entries: int = 20_000) -> CgroupScope | None:
    """The cgroup the reclaim family reports, None for every cgroup (node/daemonset
    without ``scope.cgroup``). Raises ScopeError for an explicit ``scope.cgroup`` that
    is not a directory of the v2 hierarchy (a configuration error). In sidecar mode:

    1. the pod level of this process's v2 cgroup (``0::/kubepods/.../pod<uid>/<ctr>``
       -> ``/kubepods/.../pod<uid>``), else
    2. the directory of pod ``$POD_UID`` (downward API) found under the v2 mount (a
       container in its own cgroup namespace sees ``0::/``; the host's /sys/fs/cgroup
       must then be mounted, see docs/deploy-sidecar.md), else
    3. the parent of this process's cgroup (a container shares its pod's parent);

    when none applies, an inactive CgroupScope whose ``how`` says why.
    ``mounts_text``/``proc_self_cgroup`` (file texts) are injectable for tests.
    """
    if not explicit and mode != "sidecar":
        return None
    if mounts_text is None:
        try:
            with open(cgroups.MOUNTS) as f:
                mounts_text = f.read()
        except OSError:
            mounts_text = ""
    mount = cgroups.v2_mount(cgroups.parse_mounts(mounts_text))
    if mount is None:
        if explicit:
            raise ScopeError(f"scope.cgroup {explicit}: no cgroup v2 hierarchy is mounted (pure cgroup v1): "
                             "reclaim cannot be scoped by cgroup here")
        return CgroupScope(how="no cgroup v2 hierarchy is mounted (pure cgroup v1): the kernel can match "
                               "a task's v2 cgroup only")

    def made(path: str, how: str) -> CgroupScope | None:
        try:
            st = os.stat(mount.path + (path if path != "/" else ""))
        except OSError:
            return None
        return CgroupScope(path, st.st_ino, cgroups.level(path), mount.path, how)

    if explicit:
        path = explicit
        if path.startswith(mount.path + "/") or path == mount.path:  # an absolute path under the mount
            path = path[len(mount.path):] or "/"
        if not path.startswith("/"):
            path = "/" + path
        path = "/" + "/".join(s for s in path.split("/") if s)
        got = made(path, "scope.cgroup")
        if got is None or not os.path.isdir(mount.path + path):
            raise ScopeError(f"scope.cgroup {explicit}: no such cgroup under the cgroup v2 mount {mount.path}")
        if path == "/":
            raise ScopeError("scope.cgroup /: the root cgroup is every task; leave scope.cgroup empty instead")
        return got
    if proc_self_cgroup is None:
        try:
            with open("/proc/self/cgroup") as f:
                proc_self_cgroup = f.read()
        except OSError:
            proc_self_cgroup = ""
    own = cgroups.v2_path_of(proc_self_cgroup)
    if own is None:
        return CgroupScope(how="this process has no cgroup v2 path in /proc/self/cgroup")
    pod = pod_level(own)
    if pod is not None:
        got = made(pod, f"the pod of this process's cgroup {own}")
        if got is not None:
            return got
    uid = environ.get("POD_UID", "").strip().lower()
    if uid:
        found = cgroups.find_dir(mount.path, _pod_dir_matcher(uid), max_entries)
        if found is not None:
            got = made(found, f"pod {uid} ($POD_UID) found under {mount.path}")
            if got is not None:
                return got
    up = cgroups.parent(own)
    if up is not None and up != "/" and pod is None and not uid:
        got = made(up, f"the parent of this process's cgroup {own}")
        if got is not None:
            return got
    if uid:
        return CgroupScope(how=f"pod {uid} ($POD_UID) not found under {mount.path} (this process's cgroup is "
                               f"{own}: a container's own cgroup view? mount the host's /sys/fs/cgroup "
                               "read-only, see docs/deploy-sidecar.md)")
    if own == "/" or up == "/":
        return CgroupScope(how=f"this process's cgroup {own} has no parent below the root to scope to")
    return CgroupScope(how=f"the cgroup of {own} is not visible under {mount.path}")


def describe_cgroup(cs: CgroupScope | None) -> str:
    """
    >>> describe_cgroup(None)
    'every cgroup'
    >>> describe_cgroup(CgroupScope(how="pure cgroup v1"))
    'not scoped: pure cgroup v1'
    >>> describe_cgroup(CgroupScope("/kubepods/pod1", 77, 2, "/sys/fs/cgroup", "scope.cgroup"))
    'cgroup /kubepods/pod1 (cgroup v2 id 77, level 2; scope.cgroup)'
    """
    if cs is None:
        return "every cgroup"
    if not cs.active:
        return f"not scoped: {cs.how}"
    return f"cgroup {cs.path} (cgroup v2 id {cs.id}, level {cs.level}; {cs.how})"


def describe_families(netns: frozenset[int] | None, cg: CgroupScope | None, sidecar: bool = True) -> list[str]:
    """What each family reports under this scope, one phrase per family group (``check``
    and the start-up message).

    >>> for line in describe_families(frozenset({5}), CgroupScope(how="pure cgroup v1")): print(line)
    drop, tcp, lifecycle, netns_counters: network namespace(s) 5 only
    reclaim: not scoped: pure cgroup v1 (every task's stalls, kswapd runs and zone watermarks of the node)
    softirq: only the softirq spans this scope's packets waited through (no per-CPU histograms)
    """
    out = [f"drop, tcp, lifecycle, netns_counters: {describe(netns)}"]
    if cg is None:
        out.append("reclaim: every cgroup (with kswapd runs and zone watermarks)")
    elif cg.active:
        out.append(f"reclaim: stalls of tasks in {describe_cgroup(cg)} (no kswapd runs, zone watermarks)")
    else:
        out.append(f"reclaim: {describe_cgroup(cg)} (every task's stalls, kswapd runs and zone watermarks of the node)")
    if netns is None:
        out.append("softirq: every CPU's long softirqs, per-CPU histograms")
    elif sidecar:
        out.append("softirq: only the softirq spans this scope's packets waited through (no per-CPU histograms)")
    else:
        out.append("softirq: node-level: every CPU's long softirqs, per-CPU histograms (scoped only in sidecar mode)")
    return out
