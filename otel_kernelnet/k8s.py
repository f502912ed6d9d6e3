"""Kubernetes pod attribution: network namespace / cgroup -> ``k8s.*`` attributes.

In ``scope.mode: daemonset`` one collector sees every pod on its node; this module
says which pod (and container) a kernel event belongs to, from what the node itself
shows, without the Kubernetes API (so no RBAC is needed):

- the cgroup of a task: the kubelet puts every container under its pod's cgroup, and
  the pod's UID is in the path for every cgroup driver and runtime::

      /kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_with_underscores>.slice/cri-containerd-<id>.scope
      /kubepods.slice/kubepods-pod<uid>.slice/crio-<id>.scope                 (Guaranteed QoS: no QoS level)
      /kubepods.slice/kubepods-besteffort.slice/.../docker-<id>.scope         (cri-dockerd)
      /kubepods/besteffort/pod<uid-with-dashes>/<id>                           (cgroupfs driver, v1 or v2)
      /kubelet.slice/kubelet-kubepods.slice/...                                (kind, nested)
      /../../kubepods.slice/...                                                (seen from inside a cgroup namespace)

  A cgroup *id* (what ``bpf_get_current_cgroup_id()`` returns on cgroup v2) is the
  inode number of that cgroup's directory under the cgroup2 mount, so ids are mapped
  to paths by walking the ``kubepods`` subtrees once (bounded) and again on a miss.
- a network namespace inode (``kernelnet.netns``): the pods' processes are found in
  ``/proc/[pid]/ns/net`` (needs the host's PID namespace: ``hostPID: true``), and
  their ``/proc/[pid]/cgroup`` gives the pod as above. All containers of a pod share
  its network namespace, so the container is named only when exactly one resolvable
  container has processes in it (the pause/sandbox container never resolves).
- the pod's name and namespace: the kubelet's log directory
  ``/var/log/pods/<namespace>_<name>_<uid>/<container>/`` (names cannot contain
  ``_``, so the split is exact), then, as a fallback, the kubelet's pod directory
  ``/var/lib/kubelet/pods/<uid>/``: the name from ``etc-hosts`` (the pod's hostname,
  which is its name unless ``spec.hostname`` is set) and the namespace from the
  service-account volume (``volumes/kubernetes.io~projected/*/namespace``).
- the container's name: ``/var/log/containers/<pod>_<namespace>_<container>-<id>.log``
  (the kubelet's links, one per container id), or, when the kubelet pod directory
  lists exactly one container (``containers/<name>/``), that one.

Interface (the collector calls this per event; the lead wires it in)::

    from otel_kernelnet.k8s import PodResolver
    resolver = PodResolver()                       # roots default to the host paths below
    attrs = resolver.attributes_for(netns_inode=4026532512, cgroup_id=None)
    # {"k8s.pod.name": "web-0", "k8s.pod.uid": "...", "k8s.namespace.name": "shop",
    #  "k8s.container.name": "nginx", "container.id": "...", "k8s.node.name": "node-1"}
    resolver.stats()                               # hits, misses by reason, rescans, evictions

``attributes_for`` never raises for a bad or unknown key and never blocks for long:
a hit is one dict lookup; a miss rescans the node at most once per
``rescan_interval_s`` (each rescan is bounded by ``max_pids`` and ``max_cgroups``)
and is cached (negatively) for that long, so a flood of events from a non-pod
namespace costs one scan. Results are kept in a bounded LRU (``max_entries``) for
``ttl_s``. Every miss is counted by reason: ``not_a_pod`` (host namespace or a
cgroup outside ``kubepods``), ``unknown_netns``/``unknown_cgroup`` (not found on the
node), ``no_metadata`` (pod UID found but no name/namespace on disk). An empty dict
means "no pod"; a partial one carries what is known (at least ``k8s.pod.uid``).

The attributes are OpenTelemetry resource attributes (semconv ``k8s.*`` and
``container.id``): spans of one pod belong under one Resource. ``k8s.node.name``
comes from the environment (``K8S_NODE_NAME`` or ``NODE_NAME``, the downward API), as
in ``resource.py``, and is added to every non-empty result.

Paths (``PodResolver`` arguments; the DaemonSet manifest mounts the host's at these
places): ``proc_root=/proc`` (with ``hostPID: true``), ``cgroup_root=/sys/fs/cgroup``
(the host's cgroup2 mount, not a namespaced one), ``kubelet_root=/var/lib/kubelet``,
``log_root=/var/log``.

Also here: ``own_scope()``, what this process is (its netns inode, cgroup path, pod
UID), used by ``check`` to say what ``scope.mode`` will see.
"""

from __future__ import annotations

import os
import re
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Iterator, Mapping

from .kernel.netstat import netns_inode as _parse_ns_link

# OpenTelemetry resource attribute names (semantic conventions, k8s.* and container.*).
POD_NAME = "k8s.pod.name"
POD_UID = "k8s.pod.uid"
NAMESPACE = "k8s.namespace.name"
CONTAINER_NAME = "k8s.container.name"
NODE_NAME = "k8s.node.name"
CONTAINER_ID = "container.id"

NODE_ENV = ("K8S_NODE_NAME", "NODE_NAME")

MISS_REASONS = ("not_a_pod", "unknown_netns", "unknown_cgroup", "no_metadata")

_UID = r"[0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12}"
# a pod-level cgroup segment: pod<uid>, kubepods-...-pod<uid>.slice, kubelet-kubepods-pod<uid>.slice
_POD_SEG = re.compile(rf"^(?:.*-)?pod({_UID})(?:\.slice)?$")
# a container-level segment: <id>, cri-containerd-<id>.scope, crio-<id>.scope, docker-<id>.scope, ...
_CTR_SEG = re.compile(r"^(?:(cri-containerd|crio|docker|cri-dockerd|containerd)-)?([0-9a-f]{64})(?:\.scope)?$")
_RUNTIME = {"cri-containerd": "containerd", "containerd": "containerd", "crio": "cri-o",
            "docker": "docker", "cri-dockerd": "docker", None: None}
# /var/log/pods/<namespace>_<name>_<uid>
_LOG_POD_DIR = re.compile(rf"^([a-z0-9.-]+)_([a-z0-9.-]+)_({_UID})$")
# /var/log/containers/<pod>_<namespace>_<container>-<id>.log
_LOG_CTR_FILE = re.compile(r"^([a-z0-9.-]+)_([a-z0-9.-]+)_([a-z0-9-]+)-([0-9a-f]{64})\.log$")


@dataclass(frozen=True)
class CgroupRef:
    """What a cgroup path says about a pod: its UID and, below it, the container."""
    pod_uid: str
    container_id: str | None = None
    runtime: str | None = None  # containerd, cri-o, docker (from the scope prefix), None for cgroupfs


def parse_cgroup_path(path: str) -> CgroupRef | None:
    """The pod (and container) a cgroup path belongs to, or None outside ``kubepods``.

    >>> parse_cgroup_path("/kubepods.slice/kubepods-burstable.slice/"
    ...     "kubepods-burstable-pod2f0e8c1a_6b0d_4e4f_9d39_0c5f1b7a3e21.slice/"
    ...     "cri-containerd-" + "ab" * 32 + ".scope")  # doctest: +ELLIPSIS
    CgroupRef(pod_uid='2f0e8c1a-6b0d-4e4f-9d39-0c5f1b7a3e21', container_id='abab...', runtime='containerd')
    >>> parse_cgroup_path("/kubepods/besteffort/pod2f0e8c1a-6b0d-4e4f-9d39-0c5f1b7a3e21")
    CgroupRef(pod_uid='2f0e8c1a-6b0d-4e4f-9d39-0c5f1b7a3e21', container_id=None, runtime=None)
    >>> parse_cgroup_path("/system.slice/containerd.service") is None
    True
    """
    segs = [s for s in path.strip().split("/") if s and s != ".."]
    if not any("kubepods" in s for s in segs):
        return None
    for i, seg in enumerate(segs):
        m = _POD_SEG.match(seg)
        if not m:
            continue
        uid = m.group(1).replace("_", "-")
        if i + 1 < len(segs):
            c = _CTR_SEG.match(segs[i + 1])
            if c:
                return CgroupRef(uid, c.group(2), _RUNTIME[c.group(1)])
        return CgroupRef(uid)
    return None


def parse_proc_cgroup(text: str) -> str | None:
    """The most useful path of a ``/proc/<pid>/cgroup`` file: the cgroup v2 line
    (``0::/path``), else the v1 line of a controller every runtime uses.

    >>> parse_proc_cgroup("0::/kubepods/pod1/x\\n")
    '/kubepods/pod1/x'
    >>> parse_proc_cgroup("12:memory:/kubepods/burstable/podX/abc\\n1:name=systemd:/init.scope\\n")
    '/kubepods/burstable/podX/abc'
    """
    v1: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hid, controllers, path = parts
        if hid == "0" and controllers == "":
            return path
        for c in controllers.split(","):
            v1[c] = path
    for c in ("memory", "cpu", "pids", "name=systemd"):
        if c in v1:
            return v1[c]
    return next(iter(v1.values()), None)


@dataclass
class PodMeta:
    uid: str
    name: str | None = None
    namespace: str | None = None
    containers: dict[str, str] = field(default_factory=dict)  # container id -> name
    container_names: tuple[str, ...] = ()  # from the kubelet pod directory


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def _read(path: str, limit: int = 65536) -> str | None:
    try:
        with open(path, errors="replace") as f:
            return f.read(limit)
    except OSError:
        return None


def hostname_from_etc_hosts(text: str) -> str | None:
    """The pod's own line in a kubelet-managed hosts file: its last non-loopback entry.

    >>> hostname_from_etc_hosts("# Kubernetes-managed hosts file.\\n127.0.0.1\\tlocalhost\\n"
    ...     "::1\\tlocalhost ip6-localhost\\n10.244.1.7\\tweb-0.web.shop.svc.cluster.local\\tweb-0\\n")
    'web-0'
    """
    name = None
    for line in text.splitlines():
        parts = line.split("#", 1)[0].split()
        if len(parts) < 2 or parts[0].startswith("127.") or parts[0] in ("::1", "fe00::0", "fe00::1", "fe00::2", "ff00::0", "ff02::1", "ff02::2"):
            continue
        if "localhost" in parts[1:]:
            continue
        name = parts[-1]
    return name


class PodDirectory:
    """Pod metadata read from the node's kubelet directories (log dir first)."""

    def __init__(self, kubelet_root: str = "/var/lib/kubelet", log_root: str = "/var/log"):
        self.kubelet_root = kubelet_root
        self.log_root = log_root

    def scan(self) -> dict[str, PodMeta]:
        pods: dict[str, PodMeta] = {}
        for d in _listdir(os.path.join(self.log_root, "pods")):
            m = _LOG_POD_DIR.match(d)
            if m:
                pods[m.group(3)] = PodMeta(m.group(3), name=m.group(2), namespace=m.group(1))
        by_name = {(p.namespace, p.name): p for p in pods.values()}
        for f in _listdir(os.path.join(self.log_root, "containers")):
            m = _LOG_CTR_FILE.match(f)
            if m and (m.group(2), m.group(1)) in by_name:
                by_name[(m.group(2), m.group(1))].containers[m.group(4)] = m.group(3)
        pods_dir = os.path.join(self.kubelet_root, "pods")
        for uid in _listdir(pods_dir):
            if not re.fullmatch(_UID, uid):
                continue
            meta = pods.setdefault(uid, PodMeta(uid))
            base = os.path.join(pods_dir, uid)
            meta.container_names = tuple(sorted(_listdir(os.path.join(base, "containers"))))
            if meta.name is None:
                text = _read(os.path.join(base, "etc-hosts"))
                meta.name = hostname_from_etc_hosts(text) if text else None
            if meta.namespace is None:
                proj = os.path.join(base, "volumes", "kubernetes.io~projected")
                for vol in sorted(_listdir(proj)):
                    ns = _read(os.path.join(proj, vol, "namespace"), 256)
                    if ns and ns.strip():
                        meta.namespace = ns.strip()
                        break
        return pods


def node_name(environ: Mapping[str, str] = os.environ) -> str | None:
    for n in NODE_ENV:
        if environ.get(n):
            return environ[n]
    return None


class PodResolver:
    """``attributes_for(netns_inode=..., cgroup_id=...)`` -> ``k8s.*`` attributes (see module doc)."""

    def __init__(self, *, proc_root: str = "/proc", cgroup_root: str = "/sys/fs/cgroup",
                 kubelet_root: str = "/var/lib/kubelet", log_root: str = "/var/log",
                 environ: Mapping[str, str] = os.environ, max_entries: int = 4096, ttl_s: float = 60.0,
                 rescan_interval_s: float = 5.0, max_pids: int = 65536, max_cgroups: int = 65536,
                 clock: Callable[[], float] = time.monotonic):
        self.proc_root = proc_root
        self.cgroup_root = cgroup_root
        self.pods_dir = PodDirectory(kubelet_root, log_root)
        self.node = node_name(environ)
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self.rescan_interval_s = rescan_interval_s
        self.max_pids = max_pids
        self.max_cgroups = max_cgroups
        self.clock = clock
        # (kind, key) -> (expiry, attributes, miss reason or None)
        self._cache: OrderedDict[tuple[str, int], tuple[float, dict[str, str], str | None]] = OrderedDict()
        self._netns: dict[int, list[CgroupRef]] = {}  # netns inode -> the pod cgroups of its processes
        self._host_netns: set[int] = set()  # namespaces with processes outside any pod
        self._cgroups: dict[int, str] = {}  # cgroup id -> path (kubepods subtrees only)
        self._pods: dict[str, PodMeta] = {}
        self._scanned_at: dict[str, float] = {}
        self._stats = {"hits": 0, "misses": 0, "cache_hits": 0, "evictions": 0, "rescans": 0, "truncated_scans": 0,
                       **{f"miss_{r}": 0 for r in MISS_REASONS}}

    # -- the per-event call ------------------------------------------------------------
    def attributes_for(self, netns_inode: int | None = None, cgroup_id: int | None = None) -> dict[str, str]:
        """The pod attributes of an event (cgroup first: it names the container too)."""
        out: dict[str, str] = {}
        if cgroup_id:
            out = self._cached(("c", int(cgroup_id)), self._resolve_cgroup)
        if netns_inode and (not out or CONTAINER_NAME not in out):
            by_ns = self._cached(("n", int(netns_inode)), self._resolve_netns)
            out = {**by_ns, **out} if (not out or by_ns.get(POD_UID) == out.get(POD_UID)) else out
        return dict(out)

    def stats(self) -> dict[str, int]:
        """Counters. Per lookup (one per key given): ``hits`` (pod named: name and namespace),
        ``misses`` and ``miss_<reason>`` (no_metadata: only the UID). Of the cache: ``cache_hits``, ``evictions``. Of the
        node: ``rescans`` (of /proc, the cgroup tree, the pod directories),
        ``truncated_scans`` (a scan stopped at max_pids/max_cgroups)."""
        return dict(self._stats)

    # -- cache ---------------------------------------------------------------------------
    def _cached(self, key: tuple[str, int], resolve: Callable[[int, bool], tuple[dict[str, str], str | None]]) -> dict[str, str]:
        now = self.clock()
        entry = self._cache.get(key)
        if entry is not None and entry[0] > now:
            self._cache.move_to_end(key)
            self._stats["cache_hits"] += 1
        else:
            attrs, miss = resolve(key[1], entry is not None)  # expired: look at the node again
            ttl = self.ttl_s if attrs else self.rescan_interval_s
            entry = self._cache[key] = (now + ttl, attrs, miss)
            self._cache.move_to_end(key)
            while len(self._cache) > self.max_entries:
                self._cache.popitem(last=False)
                self._stats["evictions"] += 1
        _, attrs, miss = entry
        if miss:
            self._stats["misses"] += 1
            self._stats[f"miss_{miss}"] += 1
        else:
            self._stats["hits"] += 1
        return attrs

    def _due(self, what: str) -> bool:
        """Rescan ``what`` now? At most once per rescan interval."""
        now = self.clock()
        last = self._scanned_at.get(what)
        if last is not None and now - last < self.rescan_interval_s:
            return False
        self._scanned_at[what] = now
        self._stats["rescans"] += 1
        return True

    # -- resolution ----------------------------------------------------------------------
    def _attrs(self, ref: CgroupRef, ambiguous_container: bool = False, stale: bool = False) -> tuple[dict[str, str], str | None]:
        meta = self._pods.get(ref.pod_uid)
        if (meta is None or stale) and self._due("pods"):
            self._pods = self.pods_dir.scan()
            meta = self._pods.get(ref.pod_uid)
        out = {POD_UID: ref.pod_uid}
        if meta and meta.name:
            out[POD_NAME] = meta.name
        if meta and meta.namespace:
            out[NAMESPACE] = meta.namespace
        cname = None
        if not ambiguous_container and ref.container_id:
            out[CONTAINER_ID] = ref.container_id
            if meta and ref.container_id not in meta.containers and self._due("pods"):
                self._pods = self.pods_dir.scan()
                meta = self._pods.get(ref.pod_uid, meta)
            cname = meta.containers.get(ref.container_id) if meta else None
        if cname is None and meta and len(meta.container_names) == 1 and (ref.container_id or ambiguous_container):
            cname = meta.container_names[0]  # the pod has one container (ever): it is that one
        if cname:
            out[CONTAINER_NAME] = cname
        if self.node:
            out[NODE_NAME] = self.node
        return out, (None if POD_NAME in out and NAMESPACE in out else "no_metadata")

    def _resolve_cgroup(self, cgroup_id: int, stale: bool) -> tuple[dict[str, str], str | None]:
        path = self._cgroups.get(cgroup_id)
        if (path is None or stale) and self._due("cgroups"):
            self._cgroups = self._walk_cgroups()
            path = self._cgroups.get(cgroup_id)
        if path is None:
            return {}, "unknown_cgroup"
        ref = parse_cgroup_path(path)
        if ref is None:
            return {}, "not_a_pod"
        return self._attrs(ref, stale=stale)

    def _resolve_netns(self, inode: int, stale: bool) -> tuple[dict[str, str], str | None]:
        if (stale or (inode not in self._netns and inode not in self._host_netns)) and self._due("proc"):
            self._netns, self._host_netns = self._scan_proc()
        if inode in self._host_netns:  # the host's (hostNetwork pods share it): no one pod to name
            return {}, "not_a_pod"
        refs = self._netns.get(inode)
        if not refs:
            return {}, "unknown_netns"
        if len({r.pod_uid for r in refs}) != 1:  # pods never share a netns unless on the host's: do not guess
            return {}, "not_a_pod"
        ref = refs[0]
        if (stale or self._pods.get(ref.pod_uid) is None) and self._due("pods"):
            self._pods = self.pods_dir.scan()
        meta = self._pods.get(ref.pod_uid)
        known = {r.container_id for r in refs if r.container_id and meta and r.container_id in meta.containers}
        if len(known) == 1:
            return self._attrs(next(r for r in refs if r.container_id in known))
        return self._attrs(CgroupRef(ref.pod_uid), ambiguous_container=True)

    # -- scans (bounded) -------------------------------------------------------------------
    def _scan_proc(self) -> tuple[dict[int, list[CgroupRef]], set[int]]:
        pods: dict[int, dict[CgroupRef, None]] = {}
        other: set[int] = set()
        n = 0
        for entry in _listdir(self.proc_root):
            if not entry.isdigit():
                continue
            n += 1
            if n > self.max_pids:
                self._stats["truncated_scans"] += 1
                break
            try:
                ino = _parse_ns_link(os.readlink(os.path.join(self.proc_root, entry, "ns", "net")))
            except OSError:
                continue  # gone, or not ours to read (CAP_SYS_PTRACE: see docs/deploy-daemonset.md)
            if ino is None:
                continue
            text = _read(os.path.join(self.proc_root, entry, "cgroup"), 8192)
            path = parse_proc_cgroup(text) if text else None
            ref = parse_cgroup_path(path) if path else None
            if ref is None:
                other.add(ino)
            else:
                pods.setdefault(ino, {})[ref] = None
        return {k: list(v) for k, v in pods.items() if k not in other}, other

    def _walk_cgroups(self) -> dict[int, str]:
        """cgroup id (directory inode) -> path, for the kubepods subtrees only."""
        out: dict[int, str] = {}
        for rel in self._kubepods_tops():
            for path, ino in self._walk(rel):
                if len(out) >= self.max_cgroups:
                    self._stats["truncated_scans"] += 1
                    return out
                out[ino] = path
        return out

    def _kubepods_tops(self) -> Iterator[str]:
        for top in _listdir(self.cgroup_root):
            if top.startswith("kubepods"):
                yield "/" + top
            elif top == "kubelet.slice":  # kind and other nested set-ups
                for sub in _listdir(os.path.join(self.cgroup_root, top)):
                    if "kubepods" in sub:
                        yield f"/{top}/{sub}"

    def _walk(self, rel: str) -> Iterator[tuple[str, int]]:
        stack = [rel]
        while stack:
            r = stack.pop()
            full = self.cgroup_root + r
            try:
                st = os.stat(full)
                entries = list(os.scandir(full))
            except OSError:
                continue
            yield r, st.st_ino
            for e in entries:
                if e.is_dir(follow_symlinks=False):
                    stack.append(f"{r}/{e.name}")


# --- what this process is, for `check` ---------------------------------------------------


@dataclass(frozen=True)
class OwnScope:
    netns: int | None
    cgroup_path: str | None
    pod_uid: str | None
    host_netns: bool | None  # same network namespace as pid 1 (None: cannot tell)


def own_scope(proc_root: str = "/proc") -> OwnScope:
    def ns(pid: str) -> int | None:
        try:
            return _parse_ns_link(os.readlink(f"{proc_root}/{pid}/ns/net"))
        except OSError:
            return None
    mine, init = ns("self"), ns("1")
    text = _read(f"{proc_root}/self/cgroup", 8192)
    path = parse_proc_cgroup(text) if text else None
    ref = parse_cgroup_path(path) if path else None
    return OwnScope(mine, path, ref.pod_uid if ref else None,
                    None if mine is None or init is None else mine == init)


def describe_scope(mode: str, own: OwnScope, pods_found: int | None = None,
                   node: str | None = None) -> tuple[bool, str, str]:
    """One line for ``check``: (fully ok?, what the collector will see, the fix when not ok).

    >>> print(describe_scope("sidecar", OwnScope(4026532512, "/", None, False))[1])
    sidecar: only network namespace 4026532512 (this process's) (own cgroup /)
    """
    if mode == "sidecar":  # the per-family scope (reclaim by cgroup, softirq by packets): scope.describe_families
        where = f"network namespace {own.netns}" if own.netns else "this process's network namespace"
        detail = f"sidecar: only {where} (this process's) (own cgroup {own.cgroup_path or '?'})"
        if own.pod_uid:
            detail += f" (pod {own.pod_uid})"
        if own.host_netns:
            return (False, detail + "; this is the host's network namespace, so it is the host's traffic only",
                    "run the sidecar in the application's pod (hostNetwork: false), see docs/deploy-sidecar.md")
        return True, detail, ""
    if mode == "daemonset":
        detail = "daemonset: every network namespace and cgroup on the node, attributed to pods"
        if node:
            detail += f" of node {node}"
        if not pods_found:
            return (False, detail + "; no pod found under /var/lib/kubelet/pods or /var/log/pods, so no k8s.* attribution",
                    "mount the host's /var/lib/kubelet/pods and /var/log (read-only) and set hostPID: true, see config/k8s/daemonset.yaml")
        return True, detail + f" ({pods_found} pods on disk now)", ""
    detail = "node: every network namespace and cgroup on this machine, no pod attribution"
    if own.host_netns is False:
        detail += " (this process is not in the host's network namespace: the kernel events are still the whole node's)"
    return True, detail, ""
