"""OTLP receiver of the collector: applications send their traces here (sidecar join).

OTLP/gRPC (default ``127.0.0.1:4317``) and OTLP/HTTP (default ``127.0.0.1:4318``,
``POST /v1/traces``, protobuf or JSON, gzip) share one ``Ingest``: decode, validate,
index the spans carrying ``kernelnet.socket.cookie`` (or a 4-tuple), or sent with a
``process.pid`` resource (reclaim stalls join by task), for the join,
and queue the request to be forwarded unchanged (``export/forward.py``).
Bad input gets a clean error (400 / INVALID_ARGUMENT, 413 / RESOURCE_EXHAUSTED,
415), a full forward queue a retryable one (503 / UNAVAILABLE); nothing crashes the
collector. See docs/join.md.
"""

from __future__ import annotations

from .grpc_server import GrpcReceiver
from .http_server import HttpReceiver
from .ingest import Backpressure, BadRequest, Ingest, IngestStats, TooLarge, app_span_of

__all__ = ["OtlpReceiver", "GrpcReceiver", "HttpReceiver", "Ingest", "IngestStats", "BadRequest", "TooLarge",
           "Backpressure", "app_span_of", "parse_listen"]


def parse_listen(value: str) -> tuple[str, int]:
    """``host:port`` (IPv6 as ``[::1]:4317``) -> (host, port).

    >>> parse_listen("127.0.0.1:4317"), parse_listen("[::1]:0")
    (('127.0.0.1', 4317), ('::1', 0))
    """
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535 or not host:
        raise ValueError(f"{value!r} is not host:port")
    return host.strip("[]"), int(port)


class OtlpReceiver:
    """Both transports; ``start()`` returns one warning per transport that could not bind."""

    def __init__(self, ingest: Ingest, grpc_listen: str | None, http_listen: str | None):
        self.ingest = ingest
        self.grpc = GrpcReceiver(ingest, *parse_listen(grpc_listen)) if grpc_listen else None
        self.http = HttpReceiver(ingest, *parse_listen(http_listen)) if http_listen else None
        self.running: list[str] = []

    def start(self) -> list[str]:
        problems = []
        for name, srv in (("gRPC", self.grpc), ("HTTP", self.http)):
            if srv is None:
                continue
            try:
                srv.start()
            except OSError as e:
                problems.append(f"OTLP/{name} receiver cannot listen on {srv.host}:{srv.port}: "
                                f"{e.strerror or e} (application spans sent there are not received)")
                if name == "gRPC":
                    self.grpc = None
                else:
                    self.http = None
            else:
                self.running.append(f"OTLP/{name} on {srv.host}:{srv.port}")
        return problems

    def stop(self) -> None:
        for srv in (self.grpc, self.http):
            if srv is not None:
                try:
                    srv.stop()
                except Exception:  # stopping must not stop the shutdown
                    pass
