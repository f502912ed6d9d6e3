"""Run the real Rotel OTLP relay (a Rust binary shipped in the ``rotel`` wheel) for tests.

``RotelRelay(downstream_grpc_endpoint)`` starts ``rotel-agent start`` in the
foreground, listening for OTLP/gRPC and OTLP/HTTP on free 127.0.0.1 ports and
exporting traces over OTLP/gRPC to ``downstream_grpc_endpoint`` (typically an
``OtlpSink``'s ``grpc_endpoint``)::

    with OtlpSink() as sink, RotelRelay(sink.grpc_endpoint) as relay:
        exporter = OTLPSpanExporter(endpoint=relay.grpc_endpoint)   # or relay.http_endpoint
        ...
        sink.wait_for(lambda spans: len(spans) == 3, timeout=5)

Flags used (checked against ``rotel-agent start --help`` of rotel 0.0.1a15,
whose binary reports ``rotel 0.0.1-alpha10``)::

    rotel-agent start
      --otlp-grpc-endpoint 127.0.0.1:<free> --otlp-http-endpoint 127.0.0.1:<free>
      --exporter otlp --otlp-exporter-endpoint <downstream> --otlp-exporter-protocol grpc
      --batch-timeout <batch_timeout>            (rotel's default is 200ms)
      --otlp-exporter-request-timeout 2s --otlp-exporter-retry-max-elapsed-time 5s
      --pid-file <tmp>/rotel.pid --log-file <tmp>/rotel.log   (unused in the foreground,
                                                              set so nothing lands in /tmp)
      --log-format text

Readiness: both ports accept a TCP connection *and* (on Linux) the listening
sockets belong to the rotel process, which rules out a stranger that grabbed a
port between our pick and rotel's bind. Bounded to ``start_timeout`` (10 s); no
fixed sleeps. If rotel exits before it is ready because a port was taken, the
start is retried with new ports (3 attempts). Other failures raise
``RotelStartError`` with the tail of rotel's log.

Stopping: SIGTERM to the pid, wait, SIGKILL after
``stop_timeout``; done on every exit path, including a failed start.

Requirements: the binary dynamically links the system ``libpython3.11.so.1.0``
(Debian package ``libpython3.11``) plus libz and libexpat; a missing library
shows up in the raised log tail as a loader error.

Observed behaviour (tests/unit/test_otlp_sink.py checks the first two points):

* ids, parent ids, trace_state, flags, nanosecond timestamps, kind, status,
  attributes, events, links, resource and scope pass through unchanged
  (gRPC, HTTP/protobuf and HTTP/JSON in; gRPC out).
* OTLP/JSON in: a 64-bit time given as a JSON *number* is rejected with 400 and
  an empty body (the spec says receivers must accept numbers and strings);
  decimal strings, the usual encoding, are accepted.
* Rotel re-batches: five exports sent back to back reached the downstream as
  one request holding five ResourceSpans (resources are not merged). Assert on
  spans, not on request counts, behind the relay.
* Shutdown on SIGTERM takes ~0.1 s with a live downstream, ~1 s without one.
"""

from __future__ import annotations

import errno
import importlib.util
import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path

__all__ = ["RotelRelay", "RotelStartError", "rotel_binary"]

LOOPBACK = "127.0.0.1"
START_ATTEMPTS = 3


class RotelStartError(RuntimeError):
    """Rotel did not become ready; the message ends with the tail of its log."""


def rotel_binary() -> Path:
    """Path of ``rotel-agent`` inside the installed ``rotel`` package (not imported)."""
    spec = importlib.util.find_spec("rotel")
    if spec is None or not spec.submodule_search_locations:
        raise RotelStartError(
            "the 'rotel' package is not installed (pip install --pre rotel, or the 'test' extra)"
        )
    binary = Path(next(iter(spec.submodule_search_locations))) / "rotel-agent"
    if not binary.is_file():
        raise RotelStartError(f"rotel package has no binary at {binary}")
    if not os.access(binary, os.X_OK):
        raise RotelStartError(f"{binary} is not executable")
    return binary


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=0.5):
            return True
    except OSError:
        return False


def _listen_inodes(port: int) -> set[str] | None:
    """Inodes of sockets listening on 127.0.0.1:port, from /proc/net/tcp (None off Linux)."""
    try:
        with open("/proc/net/tcp") as f:
            lines = f.readlines()[1:]
    except OSError:
        return None
    want = f"0100007F:{port:04X}"
    inodes = set()
    for line in lines:
        fields = line.split()
        # sl local_address rem_address st ... inode is field 9; st 0A = LISTEN
        if len(fields) > 9 and fields[1] == want and fields[3] == "0A":
            inodes.add(fields[9])
    return inodes


def _owned_by(pid: int, port: int) -> bool:
    inodes = _listen_inodes(port)
    if inodes is None:
        return True  # cannot tell off Linux; a successful connect has to do
    fd_dir = f"/proc/{pid}/fd"
    try:
        fds = os.listdir(fd_dir)
    except OSError:
        return False
    wanted = {f"socket:[{inode}]" for inode in inodes}
    for fd in fds:
        try:
            if os.readlink(os.path.join(fd_dir, fd)) in wanted:
                return True
        except OSError:
            continue  # fd closed meanwhile (e.g. the one listdir itself used)
    return False


class RotelRelay:
    """The real Rotel relay between a client and a downstream OTLP/gRPC receiver.

    Attributes after ``start()``: ``grpc_port``, ``http_port``, ``grpc_endpoint``
    (``http://127.0.0.1:PORT``), ``http_endpoint``
    (``http://127.0.0.1:PORT/v1/traces``), ``pid``, ``log_path``; ``log_text()``
    returns rotel's output so far.
    """

    def __init__(
        self,
        downstream_grpc_endpoint: str,
        *,
        batch_timeout: str = "50ms",
        extra_args: tuple[str, ...] | list[str] = (),
        start_timeout: float = 10.0,
        stop_timeout: float = 5.0,
    ) -> None:
        self.downstream_grpc_endpoint = downstream_grpc_endpoint
        self.batch_timeout = batch_timeout
        self.extra_args = list(extra_args)
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.grpc_port = 0
        self.http_port = 0
        self.command: list[str] = []
        self._proc: subprocess.Popen | None = None
        self._tmp: tempfile.TemporaryDirectory | None = None
        self.log_path: Path | None = None
        self._last_log = ""

    # ------------------------------------------------------------------ endpoints

    @property
    def grpc_endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self.grpc_port}"

    @property
    def http_endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self.http_port}/v1/traces"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def log_text(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    def _log_tail(self, lines: int = 30) -> str:
        tail = self.log_text().splitlines()[-lines:]
        return "\n".join(tail) if tail else "(rotel wrote nothing)"

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> "RotelRelay":
        if self._proc is not None:
            raise RuntimeError("RotelRelay already started")
        binary = rotel_binary()
        self._tmp = tempfile.TemporaryDirectory(prefix="rotel-")
        tmp = Path(self._tmp.name)
        try:
            for attempt in range(1, START_ATTEMPTS + 1):
                self.log_path = tmp / f"rotel-{attempt}.out"
                if self._start_once(binary, tmp):
                    return self
            raise RotelStartError(
                f"rotel could not bind free ports after {START_ATTEMPTS} attempts; "
                f"last log:\n{self._log_tail()}"
            )
        except BaseException:
            self.stop()
            raise

    def _start_once(self, binary: Path, tmp: Path) -> bool:
        """Start rotel and wait until ready. False: lost a port race, try again."""
        self.grpc_port = _free_port()
        self.http_port = _free_port()
        while self.http_port == self.grpc_port:
            self.http_port = _free_port()
        self.command = [
            str(binary), "start",
            "--otlp-grpc-endpoint", f"{LOOPBACK}:{self.grpc_port}",
            "--otlp-http-endpoint", f"{LOOPBACK}:{self.http_port}",
            "--exporter", "otlp",
            "--otlp-exporter-endpoint", self.downstream_grpc_endpoint,
            "--otlp-exporter-protocol", "grpc",
            "--batch-timeout", self.batch_timeout,
            "--otlp-exporter-request-timeout", "2s",
            "--otlp-exporter-retry-max-elapsed-time", "5s",
            "--pid-file", str(tmp / "rotel.pid"),
            "--log-file", str(tmp / "rotel.log"),
            "--log-format", "text",
            *self.extra_args,
        ]  # fmt: skip
        # ROTEL_* variables would silently add configuration; NO_COLOR keeps the log plain.
        env = {k: v for k, v in os.environ.items() if not k.startswith("ROTEL_")}
        env["NO_COLOR"] = "1"
        with open(self.log_path, "wb") as log:
            self._proc = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=tmp,
            )
        deadline = time.monotonic() + self.start_timeout
        pending = {self.grpc_port, self.http_port}
        while pending:
            for port in sorted(pending):
                if _accepts(port) and _owned_by(self._proc.pid, port):
                    pending.discard(port)
            if not pending:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RotelStartError(
                    f"rotel (pid {self._proc.pid}) not listening on 127.0.0.1 port(s) "
                    f"{sorted(pending)} after {self.start_timeout} s; log tail:\n{self._log_tail()}"
                )
            try:
                # Waits on the process itself: returns early if rotel dies.
                code = self._proc.wait(timeout=min(0.02, remaining))
            except subprocess.TimeoutExpired:
                continue
            log = self.log_text()
            self._proc = None
            if "address already in use" in log.lower() or os.strerror(errno.EADDRINUSE) in log:
                return False
            raise RotelStartError(
                f"rotel exited with status {code} before it was ready; "
                f"command: {' '.join(self.command)}\nlog tail:\n{self._log_tail()}"
            )
        return True

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=self.stop_timeout)
        if self._tmp is not None:
            self._last_log = self.log_text()
            self._tmp.cleanup()
            self._tmp = None
            self.log_path = None

    @property
    def last_log(self) -> str:
        """rotel's output so far, or as captured at ``stop()`` (its temp dir is gone then)."""
        return self.log_text() if self.log_path is not None else self._last_log

    def __enter__(self) -> "RotelRelay":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
