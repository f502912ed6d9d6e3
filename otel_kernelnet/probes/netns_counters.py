"""Per-network-namespace counters: SNMP/netstat/conntrack jumps -> ``kernel.counter`` spans,
and accept-queue overflows -> ``kernel.tcp`` spans naming the listener.

No BPF: an accept-queue overflow does not reach ``kfree_skb`` on 6.18 (the SYN is
consumed), so only the namespace's ``TcpExtListenOverflows``/``ListenDrops`` show it.
See docs/probes/netns_counters.md.

Threads. ``start()`` discovers the namespaces and takes the first sample (the
baseline) synchronously, so everything after the collector's ready file counts; then a
daemon worker thread rescans every ``rescan_s`` and samples every ``interval_ms``.
The worker only queues spans and then wakes the collector loop (``loader.interrupt``);
``poll()`` (the collector loop) drains the queue and emits, so ``emit`` is only ever
called from the collector's thread and ``poll()`` never touches /proc. ``close()`` stops
the worker (one last sample so the tail is not lost), joins it with a timeout and emits
what is left.

Namespaces. Every distinct inode among ``/proc/[pid]/ns/net`` (one live pid kept per
namespace) and the bind mounts ``/run/netns/*``. A namespace with a pid is read
through ``/proc/<pid>/net/...`` (checked against the pid's ns link after reading, so
a recycled pid is never misattributed); one with only a bind mount is read from a
short-lived thread that ``setns()``-es into it and reads ``/proc/thread-self/net/...``.
Listener queries (inet_diag) and ``net.core.somaxconn`` are always read from such a
thread: ``/proc/sys/net`` and netlink sockets follow the *calling thread's* netns
(verified on 6.18), while ``/proc/self/net`` follows the thread-group leader's.
"""

from __future__ import annotations

import ctypes
import os
import queue
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from .. import semconv as sc
from ..kernel import netstat
from ..kernel.netstat import Jump, Listener
from ..spans import STATUS_ERROR, IdSource, KernelSpan
from .base import Emit, KernelContext, OnError, ProbeFamily, ProbeUnavailable

CLONE_NEWNET = 0x40000000
LISTEN_COUNTERS = ("TcpExtListenOverflows", "TcpExtListenDrops")
NET_FILES = ("netstat", "snmp", "stat/nf_conntrack")
HELPER_TIMEOUT_S = 2.0
JOIN_TIMEOUT_S = 3.0
QUEUE_MAX = 65536

# --- pure span mapping ---------------------------------------------------------------


def counter_span(j: Jump, ids: IdSource) -> KernelSpan:
    """A jump -> one ``kernel.counter`` span covering the sample window (previous -> this sample)."""
    return KernelSpan(
        name=sc.SPAN_COUNTER, trace_id=ids.trace_id(), span_id=ids.span_id(),
        start_ns=j.start_ns, end_ns=j.end_ns,
        attributes={sc.KIND: sc.KIND_COUNTER, "kernelnet.counter.name": j.name,
                    "kernelnet.counter.delta": j.delta, "kernelnet.netns": j.netns})


def listen_overflow_span(j: Jump, li: Listener, somaxconn: int | None, ids: IdSource) -> KernelSpan:
    """An overflow jump blamed on listener ``li`` -> one ``kernel.tcp`` span (status ERROR).

    The delta is the namespace's (the counter does not say which listener); the queue
    state is the listener's at the end of the window."""
    attrs: dict[str, Any] = {
        sc.KIND: sc.KIND_LISTEN_OVERFLOW,
        "kernelnet.listen.address": li.endpoint,
        "kernelnet.listen.queue_len": li.rqueue,
        "kernelnet.listen.queue_limit": li.wqueue,
        "kernelnet.counter.name": j.name,
        "kernelnet.counter.delta": j.delta,
        "kernelnet.netns": j.netns,
    }
    if somaxconn is not None:
        attrs["kernelnet.netns.somaxconn"] = somaxconn
    return KernelSpan(
        name=sc.SPAN_TCP_EVENT, trace_id=ids.trace_id(), span_id=ids.span_id(),
        start_ns=j.start_ns, end_ns=j.end_ns, attributes=attrs, status_code=STATUS_ERROR,
        status_message=f"accept queue overflow on {li.endpoint}: {j.name} +{j.delta}, queue {li.rqueue}/{li.wqueue}")


def overflow_jump(jumps: list[Jump]) -> Jump | None:
    """The jump an overflow span reports: ListenOverflows if it rose, else ListenDrops."""
    by = {j.name: j for j in jumps}
    return next((by[n] for n in LISTEN_COUNTERS if n in by), None)


# --- namespaces ------------------------------------------------------------------------


@dataclass
class Namespace:
    inode: int
    pid: int | None = None
    path: str | None = None  # a bind mount (/run/netns/NAME)

    def ns_path(self, proc: str) -> str:
        return self.path if self.path else f"{proc}/{self.pid}/ns/net"


@dataclass
class Scan:
    namespaces: dict[int, Namespace] = field(default_factory=dict)
    skipped: int = 0  # distinct namespaces beyond max_namespaces
    truncated: bool = False  # the time budget ran out


def discover(proc: str = "/proc", run_netns: str = "/run/netns", limit: int = 256,
             budget_s: float = 1.0, keep: dict[int, Namespace] | None = None) -> Scan:
    """Distinct network namespaces: bind mounts first, then /proc/[pid]/ns/net.

    ``keep``: the previous result; a namespace keeps its pid while that pid is still
    in it (stable reads). Bounded by ``limit`` namespaces and ``budget_s`` seconds."""
    scan = Scan()
    seen_extra: set[int] = set()
    ns = scan.namespaces

    def add(inode: int, pid: int | None = None, path: str | None = None) -> None:
        if inode in ns:
            n = ns[inode]
            n.pid = n.pid or pid
            n.path = n.path or path
        elif len(ns) < limit:
            ns[inode] = Namespace(inode, pid, path)
        elif inode not in seen_extra:
            seen_extra.add(inode)
            scan.skipped += 1

    try:
        names = sorted(os.listdir(run_netns))
    except OSError:
        names = []
    for name in names:
        p = os.path.join(run_netns, name)
        try:
            add(os.stat(p).st_ino, path=p)
        except OSError:
            continue
    for old in (keep or {}).values():  # previous pids first, if still in the same namespace
        if old.pid is not None and _pid_netns(proc, old.pid) == old.inode:
            add(old.inode, pid=old.pid)
    deadline = time.monotonic() + budget_s
    try:  # numeric order: low pids (init, system daemons: the host's namespace) first
        pids = sorted(int(n) for n in os.listdir(proc) if n.isdigit())
    except OSError:
        return scan
    for n, pid in enumerate(pids):
        if n % 64 == 0 and time.monotonic() > deadline:
            scan.truncated = True
            break
        inode = _pid_netns(proc, pid)
        if inode is not None:
            add(inode, pid=pid)
    return scan


def _pid_netns(proc: str, pid: int) -> int | None:
    try:
        return netstat.netns_inode(os.readlink(f"{proc}/{pid}/ns/net"))
    except OSError:
        return None


def read_net_files(net_dir: str) -> dict[str, int]:
    """All counters under a ``.../net`` directory (netstat, snmp, conntrack stats if present)."""
    values: dict[str, int] = {}
    for name in NET_FILES:
        try:
            with open(os.path.join(net_dir, name)) as f:
                text = f.read()
        except FileNotFoundError:
            continue
        values.update(netstat.parse_conntrack_stat(text) if name.startswith("stat/") else netstat.parse_pairs(text))
    return values


# --- inside a namespace ----------------------------------------------------------------

_libc: Any = None


def _setns(path: str) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            e = ctypes.get_errno()
            raise OSError(e, f"setns({path}): {os.strerror(e)}")
    finally:
        os.close(fd)


def in_netns(path: str, fn: Callable[[], Any], timeout: float = HELPER_TIMEOUT_S) -> Any:
    """Run ``fn`` in a short-lived thread that first setns()-es into ``path``.

    setns(CLONE_NEWNET) changes only the calling thread, and the thread ends right
    after, so no other thread ever runs in the target namespace."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            _setns(path)
            box["value"] = fn()
        except BaseException as e:  # handed to the caller
            box["error"] = e
    t = threading.Thread(target=run, name="kn-netns-helper", daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise TimeoutError(f"reading inside {path} took more than {timeout}s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def query_listeners(timeout: float = 1.0) -> list[Listener]:
    """TCP listeners (IPv4 and IPv6) of the calling thread's netns via NETLINK_SOCK_DIAG."""
    out: list[Listener] = []
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, netstat.NETLINK_SOCK_DIAG) as s:
        s.settimeout(timeout)
        for seq, fam in enumerate((netstat.AF_INET, netstat.AF_INET6), 1):
            s.send(netstat.diag_request(fam, seq))
            done = False
            while not done:
                got, done = netstat.parse_diag(s.recv(65536))
                out.extend(got)
    return out


def read_somaxconn() -> int | None:
    """net.core.somaxconn of the calling thread's netns (/proc/sys follows the thread)."""
    try:
        with open("/proc/sys/net/core/somaxconn") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def _listeners_and_somaxconn() -> tuple[list[Listener], int | None]:
    return query_listeners(), read_somaxconn()


# --- the family --------------------------------------------------------------------------


@dataclass
class Plan:
    interval_s: float
    rescan_s: float
    max_namespaces: int
    counters: tuple[str, ...]
    conntrack: bool
    degraded: list[str] = field(default_factory=list)

    def describe(self) -> str:
        ct = "with" if self.conntrack else "without (nf_conntrack not loaded)"
        return (f"{len(self.counters)} counters every {self.interval_s:g}s per namespace, "
                f"{ct} conntrack stats; listeners via inet_diag")


class NetnsCountersFamily(ProbeFamily):
    name = "netns_counters"
    summary = "netns_counters: /proc/<pid>/net/{netstat,snmp,stat/nf_conntrack} per netns + inet_diag"

    def __init__(self, proc: str = "/proc", run_netns: str = "/run/netns",
                 clock_ns: Callable[[], int] = time.time_ns,
                 listeners: Callable[[str], tuple[list[Listener], int | None]] | None = None):
        self.proc = proc
        self.run_netns = run_netns
        self.clock_ns = clock_ns
        # listener query for one namespace path (replaceable in unit tests)
        self._listeners = listeners or (lambda path: in_netns(path, _listeners_and_somaxconn))
        self.plan_: Plan | None = None
        self.deltas: netstat.CounterDeltas | None = None
        self.ids: IdSource | None = None
        self.spans: queue.Queue[KernelSpan] = queue.Queue(QUEUE_MAX)
        self._lock = threading.Lock()  # sample()/rescan() vs. close()'s last sample
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._wake: Callable[[], None] | None = None
        self._emit: Emit | None = None
        self._on_error: OnError | None = None
        self.namespaces: dict[int, Namespace] = {}
        self.scope: frozenset[int] | None = None
        self._next_scan = 0.0
        self._stats = dict(namespaces=0, namespaces_skipped=0, scans_truncated=0, samples=0,
                           read_errors=0, counter_spans=0, overflow_spans=0,
                           overflow_unattributed=0, counter_resets=0, span_queue_full=0)

    # -- ProbeFamily ------------------------------------------------------------------------
    def plan(self, ctx: KernelContext) -> Plan:
        cfg = ctx.cfg
        if not os.path.exists(f"{self.proc}/self/net/netstat"):
            raise ProbeUnavailable(f"{self.proc}/self/net/netstat is missing: mount procfs at {self.proc}")
        p = Plan(interval_s=cfg["probes.netns_counters.interval_ms"] / 1000,
                 rescan_s=float(cfg["probes.netns_counters.rescan_s"]),
                 max_namespaces=cfg["probes.netns_counters.max_namespaces"],
                 counters=tuple(cfg["probes.netns_counters.counters"]),
                 conntrack=os.path.exists(f"{self.proc}/self/net/stat/nf_conntrack"))
        if os.geteuid() != 0:
            p.degraded.append("not root: other namespaces' counters may be unreadable and listen overflows "
                              "cannot name the listener (setns needs CAP_SYS_ADMIN)")
        return p

    def start(self, loader: Any, plan_: Plan, ctx: KernelContext, emit: Emit, on_error: OnError) -> None:
        self.plan_ = plan_
        self.ids = ctx.ids
        self.scope = ctx.scope_netns  # None: every namespace
        self._emit, self._on_error = emit, on_error
        # ends the collector loop's sleep when spans were queued (it may sleep up to
        # ringbuf.max_wait_ms when idle); None without a loader (tests)
        self._wake = getattr(loader, "interrupt", None)
        self.deltas = netstat.CounterDeltas(plan_.counters)
        self.rescan()
        self.sample()  # the baseline, before the collector says it is ready
        self._thread = threading.Thread(target=self._run, name="kn-netns-counters", daemon=True)
        self._thread.start()

    def stats(self) -> dict[str, int]:
        out = dict(self._stats)
        if self.deltas:
            out["counter_resets"] = self.deltas.resets
        return out

    def poll(self) -> None:
        """Emit what the worker sampled (cheap: never reads /proc)."""
        if self._emit is None:
            return
        while True:
            try:
                span = self.spans.get_nowait()
            except queue.Empty:
                return
            self._emit(span)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(JOIN_TIMEOUT_S)
            self._thread = None
        self.poll()

    # -- exposed values -----------------------------------------------------------------------
    def latest(self) -> dict[tuple[int, str], int]:
        """Latest sampled value per (netns inode, counter name), for metrics export."""
        with self._lock:
            return self.deltas.latest() if self.deltas else {}

    # -- the work ----------------------------------------------------------------------------
    def _run(self) -> None:
        assert self.plan_ is not None
        next_sample = time.monotonic() + self.plan_.interval_s
        while not self._stop.wait(max(0.0, next_sample - time.monotonic())):
            next_sample += self.plan_.interval_s
            if next_sample < time.monotonic():  # fell behind (slow scan): do not burst
                next_sample = time.monotonic() + self.plan_.interval_s
            self._step()
        self._step()  # last sample: deltas up to shutdown are not lost

    def _step(self) -> None:
        try:
            if time.monotonic() >= self._next_scan:
                self.rescan()
            self.sample()
        except Exception as e:  # a bad read must not stop sampling; say it
            self._stats["read_errors"] += 1
            if self._on_error:
                self._on_error(e)
        if self._wake is not None and not self.spans.empty():
            self._wake()  # emitted by poll() now, not at the loop's next housekeeping round

    def rescan(self) -> None:
        assert self.plan_ is not None
        with self._lock:
            scan = discover(self.proc, self.run_netns, self.plan_.max_namespaces,
                            budget_s=max(0.2, min(1.0, self.plan_.interval_s)), keep=self.namespaces)
            if self.scope is not None:  # sidecar / scope.netns: only these namespaces
                scan.namespaces = {i: n for i, n in scan.namespaces.items() if i in self.scope}
            if scan.truncated:
                self._stats["scans_truncated"] += 1
                for inode, ns in self.namespaces.items():  # an incomplete scan forgets nothing
                    if inode not in scan.namespaces and len(scan.namespaces) < self.plan_.max_namespaces:
                        scan.namespaces[inode] = ns
            for gone in set(self.namespaces) - set(scan.namespaces):
                if self.deltas:
                    self.deltas.forget(gone)
            self.namespaces = scan.namespaces
            self._stats["namespaces"] = len(scan.namespaces)
            self._stats["namespaces_skipped"] = scan.skipped
            self._next_scan = time.monotonic() + self.plan_.rescan_s

    def _read(self, ns: Namespace) -> dict[str, int] | None:
        """Counters of one namespace, or None when it cannot be read right now."""
        if ns.pid is not None:
            try:
                values = read_net_files(f"{self.proc}/{ns.pid}/net")
            except OSError:
                values = None
            if values is not None and _pid_netns(self.proc, ns.pid) == ns.inode:
                return values
            ns.pid = None  # exited or recycled: the reading may be another namespace's
            self._next_scan = 0.0
        if ns.path is not None:
            return in_netns(ns.path, lambda: read_net_files(f"{self.proc}/thread-self/net"))
        return None

    def sample(self) -> None:
        """Read every tracked namespace once; queue the spans of what jumped."""
        assert self.deltas is not None and self.ids is not None
        with self._lock:
            for ns in list(self.namespaces.values()):
                try:
                    values = self._read(ns)
                except (OSError, TimeoutError, netstat.ParseError):
                    values = None
                if values is None:
                    self._stats["read_errors"] += 1
                    continue
                t = self.clock_ns()
                self._stats["samples"] += 1
                jumps = self.deltas.update(ns.inode, values, t)
                for j in jumps:
                    self._queue(counter_span(j, self.ids))
                    self._stats["counter_spans"] += 1
                oj = overflow_jump(jumps)
                if oj is not None:
                    self._overflow(ns, oj)

    def _overflow(self, ns: Namespace, j: Jump) -> None:
        assert self.ids is not None
        try:
            listeners, somaxconn = self._listeners(ns.ns_path(self.proc))
        except (OSError, TimeoutError, netstat.ParseError):
            listeners, somaxconn = [], None
        picked = netstat.pick_listeners(listeners)
        if not picked:
            self._stats["overflow_unattributed"] += 1
        for li in picked:
            self._queue(listen_overflow_span(j, li, somaxconn, self.ids))
            self._stats["overflow_spans"] += 1

    def _queue(self, span: KernelSpan) -> None:
        try:
            self.spans.put_nowait(span)
        except queue.Full:
            self._stats["span_queue_full"] += 1
