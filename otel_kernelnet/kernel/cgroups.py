"""cgroup ids -> paths, and which hierarchy the BPF side should take its ids from.

A cgroup id as BPF sees it (``bpf_get_current_cgroup_id()``, or a kernfs node id read
through BTF, see ``bpf/cgroup.bcc.h``) is the inode number of the cgroup's directory
in its hierarchy's mount. ``CgroupPaths`` maps ids back to paths relative to that
mount by walking it (bounded, and at most once per ``rescan_s`` when an id is unknown).

Which hierarchy (``choose``): the cgroup v2 mount when it has the memory controller
(pure v2, the normal case today); on a hybrid machine where ``memory`` is a v1
hierarchy, that hierarchy (the v2 id would be the root for every task), with the
task's id read through ``task->cgroups->subsys[memory_cgrp_id]`` (mode 1). Pure
functions take the text of ``/proc/self/mounts`` so they are tested without root.

Container ids are recognised in the usual runtime path shapes (docker, containerd,
CRI-O, podman: ``docker-<64 hex>.scope``, ``cri-containerd-<id>.scope``,
``crio-<id>.scope``, ``/docker/<id>``, ``libpod-<id>.scope``); pod attribution is
``otel_kernelnet/k8s.py``'s job.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass

MOUNTS = "/proc/self/mounts"


@dataclass(frozen=True)
class Mount:
    path: str
    fstype: str  # cgroup or cgroup2
    options: tuple[str, ...]


def parse_mounts(text: str) -> list[Mount]:
    """cgroup and cgroup2 mounts of a ``/proc/self/mounts`` text.

    >>> [m.path for m in parse_mounts("cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid 0 0\\nproc /proc proc rw 0 0")]
    ['/sys/fs/cgroup']
    """
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[2] in ("cgroup", "cgroup2"):
            path = parts[1].replace("\\040", " ")
            out.append(Mount(path, parts[2], tuple(parts[3].split(","))))
    return out


@dataclass(frozen=True)
class Setup:
    """Where cgroup ids come from: ``mode`` 0 (the v2 id) or 1 (a v1 subsystem's
    hierarchy, ``subsys`` e.g. "memory"), and the mount that maps ids to paths
    (None: no path resolution, ids only)."""
    mode: int
    root: str | None
    subsys: str = ""
    note: str = ""


def choose(mounts: list[Mount], v2_controllers: str | None) -> Setup:
    """Pick the hierarchy (see the module doc). ``v2_controllers`` is the text of the
    v2 mount's ``cgroup.controllers`` (None when unreadable)."""
    v2 = next((m for m in mounts if m.fstype == "cgroup2"), None)
    v1_mem = next((m for m in mounts if m.fstype == "cgroup" and "memory" in m.options), None)
    if v2 is not None and (v1_mem is None or "memory" in (v2_controllers or "").split()):
        return Setup(0, v2.path, "", f"cgroup v2 at {v2.path}")
    if v1_mem is not None:
        return Setup(1, v1_mem.path, "memory",
                     f"hybrid cgroups: the memory controller is a v1 hierarchy at {v1_mem.path}; "
                     "cgroup paths are those of that hierarchy")
    return Setup(0, None, "", "no cgroup mount found: cgroup ids are reported without paths")


def detect(mounts_file: str = MOUNTS) -> Setup:
    """``choose`` for this machine."""
    try:
        with open(mounts_file) as f:
            mounts = parse_mounts(f.read())
    except OSError:
        return Setup(0, None, "", f"cannot read {mounts_file}: cgroup ids are reported without paths")
    v2 = next((m for m in mounts if m.fstype == "cgroup2"), None)
    controllers = None
    if v2 is not None:
        try:
            with open(os.path.join(v2.path, "cgroup.controllers")) as f:
                controllers = f.read()
        except OSError:
            pass
    return choose(mounts, controllers)


_CONTAINER_RE = re.compile(
    r"(?:docker-|cri-containerd-|crio-|libpod-|containerd-)([0-9a-f]{12,64})\.scope"
    r"|/(?:docker|crio|containerd|libpod)/([0-9a-f]{64})(?:/|$)"
    r"|/kubepods[^/]*/(?:[^/]+/)*pod[^/]+/([0-9a-f]{64})(?:/|$)")


def container_id(path: str) -> str | None:
    """The container id in a cgroup path, when it has a runtime's shape.

    >>> container_id("/system.slice/docker-" + "ab" * 32 + ".scope")[:6]
    'ababab'
    >>> container_id("/user.slice/user-0.slice") is None
    True
    """
    m = _CONTAINER_RE.search(path)
    if not m:
        return None
    return next(g for g in m.groups() if g)


def add_attributes(attrs: dict, cgroup_id: int, path: str | None) -> None:
    """``kernelnet.cgroup.id``, ``kernelnet.cgroup.path`` and ``container.id`` of a task's
    cgroup, each only when known (one place for every family that names a task's cgroup).

    >>> a = {}; add_attributes(a, 7, "/system.slice/docker-" + "ab" * 32 + ".scope")
    >>> sorted(a), a["kernelnet.cgroup.id"]
    (['container.id', 'kernelnet.cgroup.id', 'kernelnet.cgroup.path'], 7)
    >>> a = {}; add_attributes(a, 0, None); a
    {}
    """
    if cgroup_id:
        attrs["kernelnet.cgroup.id"] = cgroup_id
    if path is not None:
        attrs["kernelnet.cgroup.path"] = path
        cid = container_id(path)
        if cid:
            attrs["container.id"] = cid


class CgroupPaths:
    """id -> path under ``root`` ("/" for the root itself), by walking the mount.

    Unknown ids trigger a rescan at most every ``rescan_s`` seconds; the walk stops
    after ``max_entries`` directories (counted in ``truncated``). ``clock`` is
    injectable for tests.
    """

    def __init__(self, root: str | None, rescan_s: float = 2.0, max_entries: int = 200_000, clock=time.monotonic):
        self.root = root
        self.rescan_s = rescan_s
        self.max_entries = max_entries
        self.clock = clock
        self._paths: dict[int, str] = {}
        self._last_scan = -1e18
        self.scans = 0
        self.truncated = 0

    def scan(self) -> None:
        if not self.root:
            return
        self._last_scan = self.clock()
        self.scans += 1
        paths: dict[int, str] = {}
        n = 0
        for dirpath, dirnames, _files in os.walk(self.root):
            try:
                ino = os.stat(dirpath).st_ino
            except OSError:
                continue
            rel = os.path.relpath(dirpath, self.root)
            paths[ino] = "/" if rel == "." else "/" + rel
            n += 1
            if n >= self.max_entries:
                self.truncated += 1
                dirnames.clear()
                break
        self._paths = paths

    def path(self, cgroup_id: int) -> str | None:
        """The path of ``cgroup_id``, or None (unknown even after a rescan, or 0)."""
        if not cgroup_id or not self.root:
            return None
        p = self._paths.get(cgroup_id)
        if p is None and self.clock() - self._last_scan >= self.rescan_s:
            self.scan()
            p = self._paths.get(cgroup_id)
        return p


def btf_defines(btf, setup: Setup) -> tuple[dict[str, int], list[str]]:
    """-D settings for ``bpf/cgroup.bcc.h`` and what is lost (mode 1 needs BTF)."""
    if setup.mode == 0:
        return {"KN_CGROUP_MODE": 0}, []
    if btf is None:
        return {"KN_CGROUP_MODE": 0}, ["no BTF: cannot read the memory-cgroup of tasks on this hybrid "
                                       "cgroup machine; cgroup ids are the v2 ones (the root for most tasks)"]
    try:
        d = {
            "KN_CGROUP_MODE": 1,
            "KN_CGROUP_SUBSYS": btf.enum_members("cgroup_subsys_id")[f"{setup.subsys}_cgrp_id"],
            "KN_OFF_TASK_CGROUPS": btf.offsetof("task_struct", "cgroups"),
            "KN_OFF_CSET_SUBSYS": btf.offsetof("css_set", "subsys"),
            "KN_OFF_CSS_CGROUP": btf.offsetof("cgroup_subsys_state", "cgroup"),
            "KN_OFF_CGROUP_KN": btf.offsetof("cgroup", "kn"),
            "KN_OFF_KN_ID": btf.offsetof("kernfs_node", "id"),
        }
    except Exception as e:
        return {"KN_CGROUP_MODE": 0}, [f"BTF lacks the task -> {setup.subsys} cgroup chain ({e}): "
                                       "cgroup ids are the v2 ones"]
    return d, []


# --- the cgroup v2 hierarchy, for scoping (otel_kernelnet/scope.py) ------------------------


def v2_mount(mounts: list[Mount]) -> Mount | None:
    """The cgroup v2 (unified, "default") hierarchy's mount, if any: the hierarchy
    ``bpf_get_current_cgroup_id()`` and ``bpf_get_current_ancestor_cgroup_id()`` read,
    also on a hybrid machine whose controllers are v1 hierarchies.

    >>> v2_mount(parse_mounts("cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\\n"
    ...                       "cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0")).path
    '/sys/fs/cgroup/unified'
    >>> v2_mount(parse_mounts("cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0")) is None
    True
    """
    return next((m for m in mounts if m.fstype == "cgroup2"), None)


def v2_path_of(proc_cgroup_text: str) -> str | None:
    """The cgroup v2 path of a ``/proc/<pid>/cgroup`` text (its ``0::`` line), or None
    (pure cgroup v1: no such line).

    >>> v2_path_of("4:memory:/a\\n0::/kubepods/pod1/c1\\n")
    '/kubepods/pod1/c1'
    >>> v2_path_of("4:memory:/a\\n") is None
    True
    """
    for line in proc_cgroup_text.splitlines():
        if line.startswith("0::"):
            return line[3:].strip() or "/"
    return None


def level(path: str) -> int:
    """Depth of a cgroup path in its hierarchy (the root "/" is level 0), the
    ``ancestor_level`` of ``bpf_get_current_ancestor_cgroup_id()``.

    >>> level("/"), level("/kubepods"), level("/kubepods/burstable/pod1/")
    (0, 1, 3)
    """
    return len([s for s in path.split("/") if s])


def parent(path: str) -> str | None:
    """The parent of a cgroup path (None for the root).

    >>> parent("/kubepods/pod1/c1"), parent("/a"), parent("/")
    ('/kubepods/pod1', '/', None)
    """
    segs = [s for s in path.split("/") if s]
    if not segs:
        return None
    return "/" + "/".join(segs[:-1])


def find_dir(root: str, match, max_entries: int = 20_000) -> str | None:
    """The first directory under ``root`` (breadth first, bounded) whose name satisfies
    ``match(name)``, as a path relative to ``root``; None when not found."""
    queue = [""]
    seen = 0
    while queue and seen < max_entries:
        rel = queue.pop(0)
        try:
            entries = list(os.scandir(root + rel if rel else root))
        except OSError:
            continue
        for e in entries:
            if not e.is_dir(follow_symlinks=False):
                continue
            seen += 1
            if match(e.name):
                return f"{rel}/{e.name}"
            queue.append(f"{rel}/{e.name}")
    return None
