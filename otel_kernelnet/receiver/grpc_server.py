"""OTLP/gRPC receiver: ``opentelemetry.proto.collector.trace.v1.TraceService/Export``.

The method is registered with raw bytes in (no generated deserializer), so a body
that is not a valid request gets ``INVALID_ARGUMENT`` with a message instead of
grpc's generic ``INTERNAL``. grpc itself enforces the size limit
(``grpc.max_receive_message_length``: ``RESOURCE_EXHAUSTED``) and handles gzip.
A full forward queue gives ``UNAVAILABLE`` (retryable, as OTLP says). Port reuse
(``SO_REUSEPORT``) is off, so a second collector on the same port fails to bind
instead of silently sharing it.
"""

from __future__ import annotations

from concurrent import futures

import grpc

from .ingest import Backpressure, BadRequest, Ingest, TooLarge

SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"


class GrpcReceiver:
    """OTLP/gRPC on ``host:port`` (port 0: any free one; see ``port`` after ``start``)."""

    def __init__(self, ingest: Ingest, host: str, port: int, workers: int = 4):
        self.ingest = ingest
        self.host, self.port = host, port
        self.workers = workers
        self._server: grpc.Server | None = None

    def _export(self, raw: bytes, context: grpc.ServicerContext):
        try:
            req = self.ingest.decode(raw, "protobuf")
            return self.ingest.accept(req)
        except BadRequest as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except TooLarge as e:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e))
        except Backpressure as e:
            context.abort(grpc.StatusCode.UNAVAILABLE, str(e))

    def start(self) -> None:
        """Bind and serve; OSError when the address cannot be bound."""
        opts = [("grpc.max_receive_message_length", self.ingest.max_bytes),
                ("grpc.so_reuseport", 0)]
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="kernelnet-otlp-grpc"),
                             options=opts, maximum_concurrent_rpcs=self.workers * 16)
        handler = grpc.method_handlers_generic_handler(SERVICE, {
            "Export": grpc.unary_unary_rpc_method_handler(
                self._export, request_deserializer=None, response_serializer=lambda r: r.SerializeToString()),
        })
        server.add_generic_rpc_handlers((handler,))
        host = f"[{self.host}]" if ":" in self.host else self.host
        try:
            port = server.add_insecure_port(f"{host}:{self.port}")
        except RuntimeError as e:  # newer grpc raises; older returns 0
            port, why = 0, str(e)
        else:
            why = "failed to bind"
        if not port:
            server.stop(None)
            raise OSError(f"cannot listen on {self.host}:{self.port} for OTLP/gRPC ({why}; is the port in use?)")
        self.port = port
        server.start()
        self._server = server

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self, grace_s: float = 2.0) -> None:
        srv, self._server = self._server, None
        if srv is not None:
            srv.stop(grace_s).wait(grace_s + 1)
