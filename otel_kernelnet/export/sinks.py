"""Where spans go: the embedded JSON Lines store, or an OTLP endpoint.

Both sit behind ``ExportPipeline``: the collector's event loop only appends spans to a
bounded queue (never blocks on I/O); one background thread takes batches (by size or
age) and hands them to the sink. What does not fit in the queue is dropped *and
counted*; what a sink fails to deliver is counted too. The counters are part of the
collector's status line and final summary.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Protocol
from urllib.parse import urlparse

from ..spans import KernelSpan
from . import otlp_json


class Sink(Protocol):
    description: str

    def write(self, batch: list[KernelSpan]) -> bool:
        """Deliver one batch; True on success."""

    def close(self) -> None: ...


# --- embedded store ----------------------------------------------------------------
class JsonLinesSink:
    """OTLP JSON Lines files (one TracesData per line) rotated by size.

    Files are ``traces-<UTC start>-<seq>.jsonl`` in ``directory``; names sort by time.
    When ``max_files`` is exceeded the oldest file is deleted (counted in
    ``files_deleted``). Each batch is written with one ``write`` and flushed, so a
    reader never sees half a line.
    """

    def __init__(self, directory: str | os.PathLike, resource: Mapping[str, Any], scope: tuple[str, str],
                 max_file_bytes: int = 64 << 20, max_files: int = 20):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.resource = dict(resource)
        self.scope = scope
        self.max_file_bytes = max_file_bytes
        self.max_files = max_files
        self.files_deleted = 0
        self._seq = 0
        self._f = None
        self._size = 0
        self.description = f"OTLP JSON Lines in {self.directory}/"

    @property
    def current_file(self) -> Path | None:
        return Path(self._f.name) if self._f else None

    def _open_new(self) -> None:
        if self._f:
            self._f.close()
        self._seq += 1
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        path = self.directory / f"traces-{stamp}-{os.getpid()}-{self._seq:04d}.jsonl"
        self._f = open(path, "ab")
        self._size = path.stat().st_size
        files = sorted(self.directory.glob("traces-*.jsonl"))
        while len(files) > self.max_files:
            old = files.pop(0)
            if old != path:
                old.unlink(missing_ok=True)
                self.files_deleted += 1

    def write(self, batch: list[KernelSpan]) -> bool:
        line = otlp_json.encode_line(batch, self.resource, *self.scope)
        if self._f is None or (self._size and self._size + len(line) > self.max_file_bytes):
            self._open_new()
        assert self._f is not None
        self._f.write(line)
        self._f.flush()
        self._size += len(line)
        return True

    def close(self) -> None:
        if self._f:
            self._f.close()
            self._f = None


# --- OTLP ----------------------------------------------------------------------------
ENV_PROTOCOL = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
ENV_ENDPOINT = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
PROTOCOLS = ("grpc", "http/protobuf")


@dataclass
class OtlpTarget:
    endpoint: str | None  # None: the exporter reads OTEL_EXPORTER_OTLP_* itself
    protocol: str
    why: str


def resolve_otlp(cli_endpoint: str | None, cfg_endpoint: str | None, cfg_protocol: str | None,
                 environ: Mapping[str, str] = os.environ) -> OtlpTarget | None:
    """Where to export, or None for the embedded store.

    Precedence: ``--otlp-endpoint`` > config ``export.otlp.endpoint`` > the standard
    ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_ENDPOINT``. The protocol
    comes from config ``export.otlp.protocol``, then ``OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL``;
    when neither says, port 4317 means gRPC and anything else OTLP/HTTP protobuf.

    >>> resolve_otlp("http://127.0.0.1:4317", None, None, {}).protocol
    'grpc'
    >>> resolve_otlp(None, None, None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}).protocol
    'http/protobuf'
    >>> resolve_otlp(None, None, None, {}) is None
    True
    """
    endpoint, why = None, ""
    if cli_endpoint:
        endpoint, why = cli_endpoint, "--otlp-endpoint"
    elif cfg_endpoint:
        endpoint, why = cfg_endpoint, "config export.otlp.endpoint"
    else:
        for var in ENV_ENDPOINT:
            if environ.get(var):
                endpoint, why = environ[var], var
                break
    if endpoint is None:
        return None
    protocol = cfg_protocol
    if not protocol:
        protocol = next((environ[v] for v in ENV_PROTOCOL if environ.get(v)), None)
    if not protocol:
        protocol = "grpc" if urlparse(endpoint if "://" in endpoint else "//" + endpoint).port == 4317 else "http/protobuf"
    if protocol not in PROTOCOLS:
        raise ValueError(f"OTLP protocol {protocol!r} is not supported (use one of: {', '.join(PROTOCOLS)})")
    return OtlpTarget(endpoint, protocol, why)


_KIND_TO_SDK = {1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}


class OtlpSink:
    """Exports through opentelemetry-exporter-otlp (gRPC or HTTP/protobuf).

    Honours the standard ``OTEL_EXPORTER_OTLP_*`` variables (headers, timeout,
    compression, certificates) through the exporter itself.
    """

    def __init__(self, target: OtlpTarget, resource: Mapping[str, Any], scope: tuple[str, str],
                 timeout_s: float | None = None):
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        endpoint = target.endpoint
        if target.protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
            kwargs: dict[str, Any] = {}
            if endpoint and target.why not in ENV_ENDPOINT:
                kwargs["endpoint"] = endpoint
                kwargs["insecure"] = endpoint.startswith("http://") or "://" not in endpoint
            if timeout_s:
                kwargs["timeout"] = timeout_s
            self._exporter = OTLPSpanExporter(**kwargs)
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            kwargs = {}
            if endpoint and target.why not in ENV_ENDPOINT:
                u = urlparse(endpoint)
                kwargs["endpoint"] = endpoint if u.path not in ("", "/") else endpoint.rstrip("/") + "/v1/traces"
            if timeout_s:
                kwargs["timeout"] = timeout_s
            self._exporter = OTLPSpanExporter(**kwargs)
        self._resource = Resource(dict(resource))
        self._scope = InstrumentationScope(scope[0], scope[1])
        self.description = f"OTLP {target.protocol} to {endpoint} (from {target.why})"

    def _to_sdk(self, s: KernelSpan):
        from opentelemetry import trace as api
        from opentelemetry.sdk.trace import Event, ReadableSpan
        from opentelemetry.trace.status import Status, StatusCode

        flags = api.TraceFlags(api.TraceFlags.SAMPLED)
        tid = int.from_bytes(s.trace_id, "big")
        ctx = api.SpanContext(tid, int.from_bytes(s.span_id, "big"), False, flags)
        parent = (api.SpanContext(tid, int.from_bytes(s.parent_span_id, "big"), True, flags)
                  if s.parent_span_id else None)
        code = {0: StatusCode.UNSET, 1: StatusCode.OK, 2: StatusCode.ERROR}[s.status_code]
        # the SDK accepts a description only with ERROR
        status = Status(code, s.status_message or None) if code is StatusCode.ERROR else Status(code)
        links = [api.Link(api.SpanContext(int.from_bytes(lk.trace_id, "big"), int.from_bytes(lk.span_id, "big"),
                                          True, flags), lk.attributes) for lk in s.links]
        return ReadableSpan(
            name=s.name, context=ctx, parent=parent, resource=self._resource, attributes=s.attributes,
            events=[Event(e.name, e.attributes, e.time_ns) for e in s.events], links=links,
            kind=getattr(api.SpanKind, _KIND_TO_SDK.get(s.kind, "INTERNAL")), status=status,
            start_time=s.start_ns, end_time=s.end_ns, instrumentation_scope=self._scope)

    def write(self, batch: list[KernelSpan]) -> bool:
        from opentelemetry.sdk.trace.export import SpanExportResult
        return self._exporter.export([self._to_sdk(s) for s in batch]) == SpanExportResult.SUCCESS

    def close(self) -> None:
        self._exporter.shutdown()


# --- the pipeline -----------------------------------------------------------------------
class ExportPipeline:
    """Bounded queue + one exporting thread. ``submit`` never blocks."""

    def __init__(self, sink: Sink, max_queue: int = 65536, max_batch: int = 2048, max_delay_s: float = 0.2):
        self.sink = sink
        self.max_queue = max_queue
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self._q: deque[KernelSpan] = deque()
        self._cv = threading.Condition()
        self._stop = False
        self.exported = 0
        self.dropped_queue_full = 0
        self.failed = 0
        self.batches = 0
        self.last_error = ""
        self._thread = threading.Thread(target=self._run, name="kernelnet-export", daemon=True)
        self._thread.start()

    def submit(self, span: KernelSpan) -> None:
        with self._cv:
            if len(self._q) >= self.max_queue:
                self.dropped_queue_full += 1
                return
            self._q.append(span)
            if len(self._q) >= self.max_batch:
                self._cv.notify()

    @property
    def queued(self) -> int:
        return len(self._q)

    def _take(self) -> list[KernelSpan]:
        with self._cv:
            deadline = time.monotonic() + self.max_delay_s
            while not self._stop and len(self._q) < self.max_batch:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cv.wait(left)
            n = min(len(self._q), self.max_batch)
            return [self._q.popleft() for _ in range(n)]

    def _deliver(self, batch: list[KernelSpan]) -> None:
        try:
            ok = self.sink.write(batch)
        except Exception as e:  # a sink error must never kill the collector
            ok = False
            self.last_error = f"{type(e).__name__}: {e}"
        self.batches += 1
        if ok:
            self.exported += len(batch)
        else:
            self.failed += len(batch)
            self.last_error = self.last_error or "export failed"

    def _run(self) -> None:
        while True:
            batch = self._take()
            if batch:
                self._deliver(batch)
            elif self._stop:
                return

    def close(self, timeout_s: float = 10.0) -> None:
        """Flush what is queued (bounded by timeout), then close the sink."""
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        self._thread.join(timeout_s)
        lost = len(self._q)
        if lost:
            self.failed += lost
            self._q.clear()
        self.sink.close()
