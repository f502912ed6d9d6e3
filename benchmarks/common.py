"""Shared helpers of the benchmarks: conditions, paired statistics, processes, result line.

Every benchmark prints exactly one machine-readable line on stdout,
``BENCH {json}``, whose object holds ``bench``, ``date``, ``conditions`` (kernel,
CPU, versions, load average at start and end, steal since the start) and the figures; progress goes to stderr. Processes a
benchmark starts are stopped by pid on every exit path.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def _version(mod: str) -> str | None:
    try:
        from importlib.metadata import version
        return version(mod)
    except Exception:
        return None


def _cpu_jiffies() -> list[int]:
    """The node's aggregate CPU times from /proc/stat (user nice system idle iowait irq
    softirq steal ...), empty when unreadable."""
    line = _read("/proc/stat").split("\n", 1)[0].split()
    return [int(x) for x in line[1:]] if line[:1] == ["cpu"] else []


# taken when a benchmark starts (its first import of this module)
_START_LOADAVG, _START_JIFFIES = _read("/proc/loadavg"), _cpu_jiffies()


def steal_pct_since_start() -> float | None:
    """Share of the node's CPU time the hypervisor ran something else since the start
    (steal, /proc/stat): a VM's neighbours slow every figure without showing in load."""
    now = _cpu_jiffies()
    if len(now) < 8 or len(_START_JIFFIES) < 8:
        return None
    d = [b - a for a, b in zip(_START_JIFFIES, now)]
    total = sum(d[:8])  # guest time is already inside user and nice
    return round(100 * d[7] / total, 2) if total > 0 else None


def conditions() -> dict[str, Any]:
    """What a figure depends on: kernel, CPU, mitigations, clocksource, versions, load
    and the hypervisor's steal over the run."""
    cpu = next((ln.split(":", 1)[1].strip() for ln in _read("/proc/cpuinfo").splitlines()
                if ln.startswith("model name")), platform.processor())
    vulns = {p.name: p.read_text().strip() for p in sorted(Path("/sys/devices/system/cpu/vulnerabilities").glob("*"))
             if p.is_file()} if Path("/sys/devices/system/cpu/vulnerabilities").is_dir() else {}
    return {
        "kernel": platform.release(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "clocksource": _read("/sys/devices/system/clocksource/clocksource0/current_clocksource"),
        "bpf_jit_enable": _read("/proc/sys/net/core/bpf_jit_enable"),
        "spectre_v2": vulns.get("spectre_v2", ""),
        "python": platform.python_version(),
        "versions": {m: _version(m) for m in ("opentelemetry-sdk", "protobuf", "grpcio", "rotel")},
        "loadavg_at_start": _START_LOADAVG,
        "loadavg_at_end": _read("/proc/loadavg"),
        "steal_pct_since_start": steal_pct_since_start(),
    }


def result(bench: str, **figures: Any) -> dict[str, Any]:
    """Print the one result line and return it."""
    out = {"bench": bench, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "conditions": conditions(), **figures}
    print("BENCH " + json.dumps(out, sort_keys=False), flush=True)
    return out


def paired(ratios: Iterable[float]) -> dict[str, float]:
    """Median and inter-quartile range of paired ratios."""
    r = sorted(ratios)
    if not r:
        return {"n": 0}
    q = statistics.quantiles(r, n=4) if len(r) >= 2 else [r[0], r[0], r[0]]
    return {"n": len(r), "median": round(statistics.median(r), 4), "q1": round(q[0], 4), "q3": round(q[2], 4)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process {proc.pid} exited {proc.returncode} before listening on {port}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def stop(proc: subprocess.Popen | None, sig: int = signal.SIGTERM, timeout: float = 10) -> None:
    """Stop one process we started, by its pid (SIGKILL after ``timeout``)."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


class Rotel:
    """The real rotel OTLP receiver (Rust, from the [test] extra) with its blackhole
    exporter: it accepts and decodes OTLP gRPC and HTTP and discards."""

    def __init__(self) -> None:
        from tests.support.rotel import rotel_binary
        self.grpc_port, self.http_port = free_port(), free_port()
        self.log = open(os.devnull, "w")
        self.proc = subprocess.Popen(
            [str(rotel_binary()), "start", "--otlp-grpc-endpoint", f"127.0.0.1:{self.grpc_port}",
             "--otlp-http-endpoint", f"127.0.0.1:{self.http_port}", "--exporter", "blackhole",
             "--log-format", "text"], stdout=self.log, stderr=self.log)
        try:
            wait_port(self.grpc_port, self.proc)
            wait_port(self.http_port, self.proc)
        except BaseException:
            self.close()
            raise

    @property
    def grpc_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.grpc_port}"

    @property
    def http_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/v1/traces"

    def cpu_s(self) -> float:
        """CPU seconds rotel used so far (utime + stime)."""
        f = _read(f"/proc/{self.proc.pid}/stat").rsplit(")", 1)[-1].split()
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK") if len(f) > 12 else 0.0

    def close(self) -> None:
        stop(self.proc)
        self.log.close()

    def __enter__(self) -> "Rotel":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class VethPair:
    """Two network namespaces joined by a veth pair (10.99.0.1 <-> 10.99.0.2), removed on close."""

    def __init__(self, tag: str):
        self.a, self.b = f"knb-{tag}-a", f"knb-{tag}-b"
        run = lambda *c: subprocess.run(c, check=True, capture_output=True, timeout=30)  # noqa: E731
        try:
            run("ip", "netns", "add", self.a)
            run("ip", "netns", "add", self.b)
            run("ip", "link", "add", "knbA", "netns", self.a, "type", "veth", "peer", "name", "knbB", "netns", self.b)
            for ns, dev, ip in ((self.a, "knbA", "10.99.0.1/24"), (self.b, "knbB", "10.99.0.2/24")):
                run("ip", "-n", ns, "addr", "add", ip, "dev", dev)
                run("ip", "-n", ns, "link", "set", dev, "up")
                run("ip", "-n", ns, "link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise

    def popen(self, ns: str, *cmd: str, **kw) -> subprocess.Popen:
        return subprocess.Popen(["ip", "netns", "exec", ns, *cmd], **kw)

    def close(self) -> None:
        for ns in (self.a, self.b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)

    def __enter__(self) -> "VethPair":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# A bounded UDP blaster: sends COUNT datagrams of SIZE bytes (or for SECONDS), pinned to a CPU.
UDP_SENDER = r"""
import os, socket, sys, time
size, seconds, port = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
os.sched_setaffinity(0, {int(sys.argv[4])})
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
payload = b"x" * size
end = time.monotonic() + seconds
n = 0
while True:
    for _ in range(256):
        s.sendto(payload, ("10.99.0.2", port))
    n += 256
    if time.monotonic() >= end:
        break
print(n)
"""

UDP_SINK = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.settimeout(float(sys.argv[2]))
n = 0
try:
    while True:
        s.recv(65536)
        n += 1
except OSError:
    pass
print(n)
"""


class CollectorRun:
    """``otel-kernelnet run`` with the default config, ready by --ready-file; stopped by pid."""

    def __init__(self, tmp: Path, *extra: str):
        self.ready = tmp / "ready"
        self.ready.unlink(missing_ok=True)
        self.logf = open(tmp / "collector.log", "w")
        self.t_exec = time.monotonic()
        self.proc = subprocess.Popen([sys.executable, "-m", "otel_kernelnet.cli", "run", "--ready-file", str(self.ready),
                                      "--output", str(tmp / "data"), *extra],
                                     cwd=ROOT, stdout=self.logf, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while not self.ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"collector not ready: {(tmp / 'collector.log').read_text()[-2000:]}")
            time.sleep(0.005)
        self.ready_s = time.monotonic() - self.t_exec
        self.log_path = tmp / "collector.log"

    def stop(self) -> float:
        """SIGTERM -> exit, seconds."""
        t = time.monotonic()
        stop(self.proc, timeout=30)
        self.logf.close()
        return time.monotonic() - t

    def status(self) -> dict[str, int]:
        out = {}
        for ln in _read(f"/proc/{self.proc.pid}/status").splitlines():
            k, _, v = ln.partition(":")
            if k in ("VmRSS", "VmHWM"):
                out[k] = int(v.split()[0])
        return out

    def cpu_s(self) -> float:
        f = _read(f"/proc/{self.proc.pid}/stat").rsplit(")", 1)[-1].split()
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK") if len(f) > 12 else 0.0

    def prog_stats(self) -> dict[int, dict[str, int]]:
        """run_time_ns / run_cnt of every BPF program this process holds (fdinfo)."""
        out: dict[int, dict[str, int]] = {}
        for fd in Path(f"/proc/{self.proc.pid}/fdinfo").iterdir():
            info = dict(ln.split(":", 1) for ln in _read(str(fd)).splitlines() if ":" in ln)
            if "prog_id" in info and "run_cnt" in info:
                pid = int(info["prog_id"])
                out[pid] = {"run_time_ns": int(info["run_time_ns"]), "run_cnt": int(info["run_cnt"])}
        return out
