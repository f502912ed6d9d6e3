"""Kernel-tier fixtures: root, fresh network namespaces, a running collector.

Everything created here is removed on every exit path: namespaces by name (unique per
test), collector processes by pid. Waits are bounded; readiness comes from the
collector's --ready-file, not from sleeping.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "otel_kernelnet.cli"]


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/kernel/" in str(item.fspath):
            item.add_marker(pytest.mark.kernel)


@pytest.fixture(autouse=True)
def _need_root():
    if os.geteuid() != 0:
        pytest.fail("kernel tests need root (run scripts/test.sh as root); they are never skipped")


@pytest.fixture(scope="session", autouse=True)
def _object_cache_as_found():
    """The collectors of this session use the default BPF object cache (the first one
    compiles, the others load: the product's own path). A cache directory that did not
    exist before the session is removed after it, so the machine is left as found."""
    from otel_kernelnet.bpfobj import DEFAULT_CACHE_DIR
    top = Path(DEFAULT_CACHE_DIR).parent  # /var/cache/otel-kernelnet
    existed = top.exists()
    yield
    if not existed and top.exists():
        import shutil
        shutil.rmtree(top, ignore_errors=True)


def sh(*cmd: str, check: bool = True, timeout: float = 30, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=timeout, **kw)


class Netns:
    def __init__(self, name: str):
        self.name = name
        sh("ip", "netns", "add", name)
        self.exec("ip", "link", "set", "lo", "up")
        self.inode = os.stat(f"/run/netns/{name}").st_ino

    def exec(self, *cmd: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        return sh("ip", "netns", "exec", self.name, *cmd, check=check, timeout=timeout)

    def python(self, code: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return self.exec(sys.executable, "-c", code, timeout=timeout)

    def delete(self) -> None:
        sh("ip", "netns", "del", self.name, check=False)


class VethPair:
    """Two fresh namespaces joined by a veth pair: ``a`` (10.77.0.1) and ``b`` (10.77.0.2),
    IPv6 off so that no stray neighbour discovery traffic crosses the link."""

    def __init__(self):
        tag = uuid.uuid4().hex[:8]
        self.a = Netns(f"kn-a-{tag}")
        try:
            self.b = Netns(f"kn-b-{tag}")
        except BaseException:
            self.a.delete()
            raise
        self.dev_a, self.dev_b = f"kna{tag[:6]}", f"knb{tag[:6]}"
        self.addr_a, self.addr_b = "10.77.0.1", "10.77.0.2"
        try:
            for ns in (self.a, self.b):
                ns.exec("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
            sh("ip", "link", "add", self.dev_a, "netns", self.a.name, "type", "veth",
               "peer", "name", self.dev_b, "netns", self.b.name)
            for ns, dev, addr in ((self.a, self.dev_a, self.addr_a), (self.b, self.dev_b, self.addr_b)):
                ns.exec("ip", "addr", "add", f"{addr}/24", "dev", dev)
                ns.exec("ip", "link", "set", dev, "up")
        except BaseException:
            self.delete()
            raise

    def rx_packets(self, ns: "Netns", dev: str) -> int:
        return int(ns.exec("cat", f"/sys/class/net/{dev}/statistics/rx_packets").stdout)

    def delete(self) -> None:
        self.a.delete()  # deleting a namespace deletes its end of the pair, and so the pair
        self.b.delete()


@pytest.fixture
def veth():
    pair = None
    try:
        pair = VethPair()
        yield pair
    finally:
        if pair is not None:
            pair.delete()


@pytest.fixture
def netns():
    ns = Netns(f"kn-{uuid.uuid4().hex[:10]}")
    try:
        yield ns
    finally:
        ns.delete()


class CollectorProcess:
    """``otel-kernelnet run`` as a subprocess, ready once its ready-file exists."""

    def __init__(self, tmp: Path, *args: str, env: dict | None = None, config: dict | None = None,
                 prefix: tuple[str, ...] = ()):
        self.ready = tmp / "ready"
        self.output = tmp / "data"
        self.log = tmp / "collector.log"
        # prefix: e.g. ("ip", "netns", "exec", NAME) to run it inside a namespace (sidecar)
        cmd = [*prefix, *CLI, "run", "--ready-file", str(self.ready), "--output", str(self.output), *args]
        if config is not None:
            cfg = tmp / "config.yaml"
            cfg.write_text(json.dumps(config))  # JSON is YAML
            cmd += ["--config", str(cfg)]
        self._logf = open(self.log, "w")
        self.proc = subprocess.Popen(cmd, stdout=self._logf, stderr=subprocess.STDOUT, cwd=ROOT,
                                     env={**os.environ, **(env or {})})
        deadline = time.monotonic() + 60
        while not self.ready.exists():
            if self.proc.poll() is not None:
                raise AssertionError(f"collector exited {self.proc.returncode} before ready:\n{self.text()}")
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"collector not ready within 60 s:\n{self.text()}")
            time.sleep(0.05)

    def text(self) -> str:
        if not self._logf.closed:
            self._logf.flush()
        return self.log.read_text()

    def stop(self, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._logf.close()
        return self.proc.returncode


@pytest.fixture
def collector(tmp_path):
    started: list[CollectorProcess] = []

    def start(*args: str, **kw) -> CollectorProcess:
        d = tmp_path / f"c{len(started)}"
        d.mkdir()
        c = CollectorProcess(d, *args, **kw)
        started.append(c)
        return c
    try:
        yield start
    finally:
        for c in started:
            c.stop()


def read_store(directory: Path) -> list[dict]:
    """Flattened spans of an embedded store: {name, attributes, status, start, end, resource}."""
    out = []
    for f in sorted(Path(directory).glob("traces-*.jsonl")):
        for line in f.read_text().splitlines():
            for rs in json.loads(line)["resourceSpans"]:
                res = {kv["key"]: _val(kv["value"]) for kv in rs["resource"]["attributes"]}
                for ss in rs["scopeSpans"]:
                    for s in ss["spans"]:
                        out.append({"name": s["name"], "trace_id": s["traceId"], "span_id": s["spanId"],
                                    "parent_span_id": s.get("parentSpanId", ""),
                                    "attributes": {kv["key"]: _val(kv["value"]) for kv in s.get("attributes", [])},
                                    "status": s.get("status", {}), "start": int(s["startTimeUnixNano"]),
                                    "end": int(s["endTimeUnixNano"]), "resource": res,
                                    "events": [{"name": e["name"], "time": int(e["timeUnixNano"]),
                                                "attributes": {kv["key"]: _val(kv["value"])
                                                               for kv in e.get("attributes", [])}}
                                               for e in s.get("events", [])]})
    return out


def wait_for_store(directory: Path, predicate, timeout: float = 20, every: float = 0.1) -> list[dict]:
    """Poll the embedded store (bounded) until ``predicate(spans)`` holds; the last read.

    A line the collector is still writing is simply read again at the next poll.
    """
    deadline = time.monotonic() + timeout
    spans: list[dict] = []
    while True:
        try:
            spans = read_store(directory)
        except json.JSONDecodeError:
            pass
        else:
            if predicate(spans):
                return spans
        if time.monotonic() >= deadline:
            return spans
        time.sleep(every)


def stop_by_stdin(proc: subprocess.Popen, timeout: float = 10) -> None:
    """Stop a helper that exits when its stdin closes; kill it (by pid) if it does not."""
    if proc.stdin:
        proc.stdin.close()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


def _val(v: dict):
    (k, x), = v.items()
    return int(x) if k == "intValue" else x


# Writes MB of file data and reads it back (refaults): direct/memcg reclaim under a
# memory limit. Arguments: PATH MB; prints its pid when done.
RECLAIM_WRITER = r"""
import os, sys
path, mb = sys.argv[1], int(sys.argv[2])
block = os.urandom(1 << 20)
with open(path, "wb") as f:
    for _ in range(mb):
        f.write(block)
    f.flush(); os.fsync(f.fileno())
with open(path, "rb") as f:  # read back: refaults under the limit
    while f.read(1 << 20):
        pass
print(os.getpid(), flush=True)
"""
