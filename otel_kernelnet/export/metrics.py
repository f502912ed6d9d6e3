"""The collector's own metrics: what it saw, exported, and lost (nothing silently).

Observable counters read the collector's counters at each export:

- ``kernelnet.collector.events`` {probe}: kernel records turned into spans
- ``kernelnet.collector.spans.exported``: spans the sink accepted
- ``kernelnet.collector.lost`` {stage, probe}: ring_buffer_full, rate_capped,
  undecodable (per probe), export_queue_full, export_failed (pipeline)

They go where the spans go: to the OTLP endpoint (OTLP metrics exporter, same
protocol and endpoint resolution), or to the embedded store as OTLP JSON Lines
(``metrics-*.jsonl``, one MetricsData per line), every ``status.interval_s`` and once
more at shutdown.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricExportResult,
    MetricsData,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource

from .. import __version__, semconv
from .sinks import ENV_ENDPOINT, OtlpTarget

LOSS_STATS = {"ringbuf_full": "ring_buffer_full", "rate_capped": "rate_capped", "decode_errors": "undecodable"}


class JsonLinesMetricExporter(MetricExporter):
    """OTLP JSON Lines metrics files beside the trace files."""

    def __init__(self, directory: str | os.PathLike):
        super().__init__()
        self.path = Path(directory) / f"metrics-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{os.getpid()}.jsonl"

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
        from google.protobuf.json_format import MessageToDict
        from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
        msg = MessageToDict(encode_metrics(metrics_data), use_integers_for_enums=True)
        body = {"resourceMetrics": msg.get("resourceMetrics", [])}
        with open(self.path, "a") as f:
            f.write(json.dumps(body, separators=(",", ":")) + "\n")
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        pass


def _otlp_metric_exporter(target: OtlpTarget, timeout_s: float) -> MetricExporter:
    explicit = target.endpoint and target.why not in ENV_ENDPOINT
    if target.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        if explicit:
            return OTLPMetricExporter(endpoint=target.endpoint, timeout=timeout_s,
                                      insecure=target.endpoint.startswith("http://") or "://" not in target.endpoint)
        return OTLPMetricExporter(timeout=timeout_s)
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpExporter
    if explicit:
        base = target.endpoint.rstrip("/")
        base = base.rsplit("/v1/", 1)[0] if "/v1/" in base else base
        return HttpExporter(endpoint=base + "/v1/metrics", timeout=timeout_s)
    return HttpExporter(timeout=timeout_s)


class SelfMetrics:
    """Registers the observable counters; ``shutdown()`` exports one last time."""

    def __init__(self, resource: Mapping[str, Any], exporter: MetricExporter, interval_s: float,
                 probe_stats: Callable[[], dict[str, dict[str, int]]], pipeline_stats: Callable[[], dict[str, int]]):
        interval_ms = max(1000.0, interval_s * 1000) if interval_s else 60_000.0
        self._reader = PeriodicExportingMetricReader(exporter, export_interval_millis=interval_ms)
        self._provider = MeterProvider(resource=Resource(dict(resource)), metric_readers=[self._reader])
        meter = self._provider.get_meter(semconv.SCOPE_NAME, __version__)
        self._probe_stats = probe_stats
        self._pipeline_stats = pipeline_stats
        meter.create_observable_counter("kernelnet.collector.events", [self._events], unit="{event}",
                                        description="Kernel records turned into spans, by probe")
        meter.create_observable_counter("kernelnet.collector.spans.exported", [self._exported], unit="{span}",
                                        description="Spans the exporter delivered")
        meter.create_observable_counter("kernelnet.collector.lost", [self._lost], unit="{event}",
                                        description="Events or spans lost, by stage (nothing is lost uncounted)")

    def _events(self, _o: CallbackOptions):
        return [Observation(st.get("emitted", 0), {"probe": p}) for p, st in self._probe_stats().items()]

    def _exported(self, _o: CallbackOptions):
        return [Observation(self._pipeline_stats().get("exported", 0))]

    def _lost(self, _o: CallbackOptions):
        out = []
        for probe, st in self._probe_stats().items():
            for key, stage in LOSS_STATS.items():
                if key in st:
                    out.append(Observation(st[key], {"stage": stage, "probe": probe}))
        ps = self._pipeline_stats()
        out.append(Observation(ps.get("dropped_queue_full", 0), {"stage": "export_queue_full"}))
        out.append(Observation(ps.get("failed", 0), {"stage": "export_failed"}))
        return out

    def shutdown(self) -> None:
        self._provider.shutdown()


def build(resource: Mapping[str, Any], target: OtlpTarget | None, directory: str, interval_s: float,
          probe_stats, pipeline_stats, timeout_s: float = 10) -> SelfMetrics:
    exporter = JsonLinesMetricExporter(directory) if target is None else _otlp_metric_exporter(target, timeout_s)
    return SelfMetrics(resource, exporter, interval_s, probe_stats, pipeline_stats)
