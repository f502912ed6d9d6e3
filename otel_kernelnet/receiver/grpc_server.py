"""OTLP/gRPC receiver: ``opentelemetry.proto.collector.trace.v1.TraceService/Export``.

The method is registered with raw bytes in (no generated deserializer), so a body
that is not a valid request gets ``INVALID_ARGUMENT`` with a message instead of
grpc's generic ``INTERNAL``. grpc itself enforces the size limit
(``grpc.max_receive_message_length``: ``RESOURCE_EXHAUSTED``) and handles gzip.
A full forward queue gives ``UNAVAILABLE`` (retryable, as OTLP says). Port reuse
(``SO_REUSEPORT``) is off, so a second collector on the same port fails to bind
instead of silently sharing it.

The server is grpc's asyncio one (``grpc.aio``) on its own thread and event loop, not
the thread-pool one: the latter's serving thread wakes every 200 ms while idle (grpc's
completion-queue poll checks for signals that often, a constant of grpcio), the
asyncio server's poller blocks until there is work. The handler runs on the loop
thread (decode and queue: short, and the GIL serialised the pool's threads anyway).
grpc's own C-core threads (event engine, timers) are the same either way.
"""

from __future__ import annotations

import asyncio
import threading

import grpc

from .ingest import Backpressure, BadRequest, Ingest, TooLarge

SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"


class GrpcReceiver:
    """OTLP/gRPC on ``host:port`` (port 0: any free one; see ``port`` after ``start``)."""

    def __init__(self, ingest: Ingest, host: str, port: int, workers: int = 4):
        self.ingest = ingest
        self.host, self.port = host, port
        self.workers = workers  # bounds the RPCs in progress (``workers * 16``)
        self._server: grpc.aio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self.grace_s = 2.0

    async def _export(self, raw: bytes, context: grpc.aio.ServicerContext):
        try:
            req = self.ingest.decode(raw, "protobuf")
            return self.ingest.accept(req)
        except BadRequest as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except TooLarge as e:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e))
        except Backpressure as e:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(e))

    async def _bind(self) -> grpc.aio.Server:
        opts = [("grpc.max_receive_message_length", self.ingest.max_bytes),
                ("grpc.so_reuseport", 0)]
        server = grpc.aio.server(options=opts, maximum_concurrent_rpcs=self.workers * 16)
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
            await server.stop(None)
            raise OSError(f"cannot listen on {self.host}:{self.port} for OTLP/gRPC ({why}; is the port in use?)")
        self.port = port
        await server.start()
        return server

    def _run(self, loop: asyncio.AbstractEventLoop, started: threading.Event, box: dict) -> None:
        asyncio.set_event_loop(loop)
        try:
            try:
                self._server = server = loop.run_until_complete(self._bind())
                self._stopping = stopping = asyncio.Event()
            except BaseException as e:  # handed to start()
                box["error"] = e
                return
            finally:
                started.set()
            loop.run_until_complete(stopping.wait())
            loop.run_until_complete(server.stop(self.grace_s))  # in-flight RPCs get the grace
        finally:
            loop.close()

    def start(self) -> None:
        """Bind and serve on a thread of its own; OSError when the address cannot be bound."""
        loop = asyncio.new_event_loop()
        started, box = threading.Event(), {}
        t = threading.Thread(target=self._run, args=(loop, started, box), name="kernelnet-otlp-grpc", daemon=True)
        t.start()
        started.wait()
        if "error" in box:
            t.join(5)
            raise box["error"]
        self._loop, self._thread = loop, t

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self, grace_s: float = 2.0) -> None:
        loop, self._loop = self._loop, None
        t, self._thread = self._thread, None
        if loop is None or t is None:
            return
        self.grace_s = grace_s
        stopping = self._stopping
        if stopping is not None:
            try:
                loop.call_soon_threadsafe(stopping.set)
            except RuntimeError:  # the loop already ended
                pass
        t.join(grace_s + 1)
        self._server = None
