"""What a lab scenario builds, and how every piece of it is taken down again.

:class:`Lab` is a context manager holding an undo stack: each namespace, veth pair,
cgroup, sysctl, iptables rule and process it creates pushes the action that removes
it, and leaving the ``with`` block (normally, on an error, on Ctrl-C or SIGTERM) runs
them newest first. Processes are stopped by pid, namespaces and cgroups by the unique
names this run gave them: nothing that existed before is touched.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Callable, Iterable, Iterator

ROOT_NETNS = "/proc/1/ns/net"


class LabError(Exception):
    """A scenario could not be built or run; the message says what and why."""


def _run(cmd: Iterable[str], timeout: float = 30, check: bool = True, **kw) -> subprocess.CompletedProcess:
    cmd = list(cmd)
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    except FileNotFoundError:
        raise LabError(f"{cmd[0]} is not installed (it comes with the README's set-up command)") from None
    except subprocess.TimeoutExpired:
        raise LabError(f"{' '.join(cmd)} did not finish within {timeout} s") from None
    if check and r.returncode != 0:
        raise LabError(f"{' '.join(cmd)} failed ({r.returncode}): {(r.stderr or r.stdout).strip()[:400]}")
    return r


def parse_snmp(text: str) -> dict[str, int]:
    """/proc/net/netstat + /proc/net/snmp text -> {"TcpExtListenOverflows": n, "TcpRetransSegs": n, ...}.

    >>> parse_snmp("TcpExt: ListenOverflows ListenDrops\\nTcpExt: 3 4\\nTcp: RetransSegs\\nTcp: 7\\n")
    {'TcpExtListenOverflows': 3, 'TcpExtListenDrops': 4, 'TcpRetransSegs': 7}
    """
    out: dict[str, int] = {}
    lines = text.splitlines()
    for head, vals in zip(lines[::2], lines[1::2]):
        hp, vp = head.split(), vals.split()
        if not hp or hp[0] != vp[0]:
            continue
        prefix = hp[0].rstrip(":")
        for k, v in zip(hp[1:], vp[1:]):
            try:
                out[prefix + k] = int(v)
            except ValueError:
                pass
    return out


class Netns:
    def __init__(self, lab: "Lab", name: str):
        self.lab, self.name = lab, name
        self.path = f"/run/netns/{name}"

    def cmd(self, *cmd: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *cmd]

    def run(self, *cmd: str, timeout: float = 30, check: bool = True) -> subprocess.CompletedProcess:
        return _run(self.cmd(*cmd), timeout=timeout, check=check)

    def sysctl(self, key: str, value) -> None:
        self.run("sysctl", "-qw", f"{key}={value}")

    def counters(self) -> dict[str, int]:
        """The namespace's netstat + snmp MIB counters."""
        return parse_snmp(self.run("cat", "/proc/net/netstat", "/proc/net/snmp").stdout)

    @property
    def inode(self) -> int:
        return os.stat(self.path).st_ino


class Proc:
    """A child process started by the lab; stopped by pid on cleanup."""

    def __init__(self, name: str, popen: subprocess.Popen, log: Path):
        self.name, self.popen, self.log = name, popen, log

    @property
    def pid(self) -> int:
        return self.popen.pid

    def readline(self, timeout: float) -> str:
        """Next stdout line (the lab's apps print JSON lines), bounded in time."""
        import select
        deadline = time.monotonic() + timeout
        buf = b""
        fd = self.popen.stdout.fileno()
        while not buf.endswith(b"\n"):
            left = deadline - time.monotonic()
            r, _, _ = select.select([fd], [], [], max(0.0, left))
            if not r:
                raise LabError(f"{self.name} (pid {self.pid}) said nothing within {timeout:.0f} s; log: {self.tail()}")
            ch = os.read(fd, 1)
            if not ch:
                self.popen.wait(5)
                raise LabError(f"{self.name} (pid {self.pid}) exited {self.popen.returncode}: {self.tail()}")
            buf += ch
        return buf.decode().strip()

    def json(self, timeout: float) -> dict:
        line = self.readline(timeout)
        try:
            return json.loads(line)
        except ValueError:
            raise LabError(f"{self.name}: unexpected output {line!r}") from None

    def wait(self, timeout: float) -> int:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise LabError(f"{self.name} (pid {self.pid}) still running after {timeout:.0f} s") from None

    def tail(self, n: int = 600) -> str:
        try:
            return self.log.read_text()[-n:].strip() or "(empty)"
        except OSError:
            return "(no log)"

    def stop(self, grace: float = 5.0) -> None:
        p = self.popen
        if p.poll() is None:
            if p.stdin is not None:
                try:
                    p.stdin.close()  # the lab's apps stop when stdin closes
                except OSError:
                    pass
                try:
                    p.wait(grace)
                except subprocess.TimeoutExpired:
                    pass
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(grace)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)
        for f in (p.stdout, p.stdin):
            if f is not None:
                try:
                    f.close()
                except OSError:
                    pass


class Lab:
    """Undo stack + builders for one scenario run. Use as ``with Lab(...) as lab:``."""

    def __init__(self, scenario: str, workdir: Path, say: Callable[[str], None] | None = None):
        self.scenario = scenario
        self.tag = uuid.uuid4().hex[:6]
        self.workdir = Path(workdir)
        self.logdir = self.workdir / "logs"
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.say = say or (lambda m: print(m, flush=True))
        self._undo: list[tuple[str, Callable[[], None]]] = []
        self._old_handlers: dict[int, object] = {}
        self.cleanup_errors: list[str] = []

    # --- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> "Lab":
        self._atomic_depth, self._deferred_signal = 0, False

        def interrupted(signum, frame):
            if self._atomic_depth:  # creating something and registering its undo: finish first
                self._deferred_signal = True
                return
            raise KeyboardInterrupt
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            self._old_handlers[sig] = signal.signal(sig, interrupted)
        return self

    @contextlib.contextmanager
    def atomic(self) -> Iterator[None]:
        """Create a resource and register its undo without a signal in between: Ctrl-C or
        SIGTERM arriving meanwhile is acted on right after the block (never lost)."""
        self._atomic_depth = getattr(self, "_atomic_depth", 0) + 1
        try:
            yield
        finally:
            self._atomic_depth -= 1
        if self._atomic_depth == 0 and getattr(self, "_deferred_signal", False):
            self._deferred_signal = False
            raise KeyboardInterrupt

    def __exit__(self, *exc) -> None:
        # a second Ctrl-C (or SIGTERM) during clean-up must not leave half the topology behind
        for sig in self._old_handlers:
            signal.signal(sig, signal.SIG_IGN)
        try:
            self.cleanup()
        finally:
            for sig, h in self._old_handlers.items():
                signal.signal(sig, h)

    def defer(self, what: str, fn: Callable[[], None]) -> None:
        self._undo.append((what, fn))

    def cleanup(self) -> None:
        while self._undo:
            what, fn = self._undo.pop()
            try:
                fn()
            except Exception as e:  # keep going: the rest must still be removed
                self.cleanup_errors.append(f"{what}: {e}")
        for err in self.cleanup_errors:
            print(f"lab: clean-up: could not remove {err}", file=sys.stderr)

    # --- builders --------------------------------------------------------------------------
    def netns(self, role: str) -> Netns:
        name = f"kn-lab-{self.tag}-{role}"
        with self.atomic():
            _run(["ip", "netns", "add", name])
            self.defer(f"network namespace {name}", lambda: _run(["ip", "netns", "del", name]))
        ns = Netns(self, name)
        ns.run("ip", "link", "set", "lo", "up")
        # no IPv6: no neighbour discovery or router solicitations mixed into the run
        ns.sysctl("net.ipv6.conf.all.disable_ipv6", 1)
        ns.sysctl("net.ipv6.conf.default.disable_ipv6", 1)
        return ns

    def veth(self, a: Netns, addr_a: str, b: Netns, addr_b: str, prefix: int = 24) -> tuple[str, str]:
        """A veth pair between two of this lab's namespaces (removed with them)."""
        n = len([u for u in self._undo if u[0].startswith("veth")])
        dev_a, dev_b = f"kl{self.tag}{n}a", f"kl{self.tag}{n}b"
        _run(["ip", "link", "add", dev_a, "netns", a.name, "type", "veth", "peer", "name", dev_b, "netns", b.name])
        self.defer(f"veth {dev_a}", lambda: None)  # goes with its namespaces
        for ns, dev, addr in ((a, dev_a, addr_a), (b, dev_b, addr_b)):
            ns.run("ip", "addr", "add", f"{addr}/{prefix}", "dev", dev)
            ns.run("ip", "link", "set", dev, "up")
        return dev_a, dev_b

    def spawn(self, name: str, cmd: list[str], netns: Netns | None = None, env: dict | None = None,
              stdin: bool = True) -> Proc:
        log = self.logdir / f"{name}.log"
        logf = open(log, "w")
        full = netns.cmd(*cmd) if netns is not None else cmd
        with self.atomic():
            try:
                p = subprocess.Popen(full, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=logf, env={**os.environ, **(env or {})})
            finally:
                logf.close()
            proc = Proc(name, p, log)
            self.defer(f"process {name} (pid {p.pid})", proc.stop)
        return proc

    def sysctl(self, key: str, value) -> None:
        """Set a node-wide sysctl for the run; the old value comes back on clean-up."""
        path = Path("/proc/sys") / key.replace(".", "/")
        old = path.read_text().strip()
        with self.atomic():
            path.write_text(str(value))
            self.defer(f"sysctl {key}={old}", lambda: path.write_text(old))

    #: cgroup v2 memory files -> their cgroup v1 names (hybrid machines)
    V1_FILES = {"memory.max": "memory.limit_in_bytes"}

    def cgroup(self, name: str, **limits: str) -> Path:
        """A memory cgroup child of the root for this run (e.g. memory_max="64M"): in the
        cgroup v2 hierarchy when it has the memory controller, else (hybrid machines) in the
        v1 memory hierarchy, where memory_max is written to memory.limit_in_bytes."""
        from ..kernel import cgroups
        setup = cgroups.detect()
        if setup.root is None:
            raise LabError(f"no cgroup hierarchy with the memory controller: {setup.note}")
        base = Path(setup.root)
        v1 = setup.mode == 1
        if not v1:
            ctl = set((base / "cgroup.subtree_control").read_text().split())
            if "memory" not in ctl:
                (base / "cgroup.subtree_control").write_text("+memory")
        cg = base / f"kn-lab-{self.tag}-{name}"

        def remove() -> None:
            for pid in (cg / "cgroup.procs").read_text().split():
                (base / "cgroup.procs").write_text(pid)  # a straggler goes back to the root
            for _ in range(30):  # an exited task can take a moment to leave
                try:
                    cg.rmdir()
                    return
                except OSError:
                    time.sleep(0.1)
            cg.rmdir()
        with self.atomic():
            cg.mkdir()
            self.defer(f"cgroup {cg}", remove)
        for k, v in limits.items():
            f = k.replace("_", ".")
            (cg / (self.V1_FILES.get(f, f) if v1 else f)).write_text(str(v))
        return cg


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
