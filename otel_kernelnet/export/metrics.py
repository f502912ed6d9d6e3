"""The collector's own metrics: what it saw, exported, and lost (nothing silently).

Observable counters read the collector's counters at each export:

- ``kernelnet.collector.events`` {probe}: kernel records turned into spans
- ``kernelnet.collector.spans.exported``: spans the sink accepted
- ``kernelnet.collector.lost`` {stage, probe}: ring_buffer_full, rate_capped,
  undecodable, slot_evicted (lifecycle: an arrival overwrote an unfinished lifecycle in
  the kernel's slot table), arrival_unseen (lifecycle: a packet reached the protocol
  stage with no recorded arrival), kernel_nested_bpf (tracepoint hits the kernel skipped because another
  tracing BPF program was running on that CPU) per probe; export_queue_full,
  export_failed (pipeline)

Beside them, what the probes measure for every event (not only the ones that become
spans):

- ``kernelnet.skb.stage.duration`` {kernelnet.skb.stage}: cumulative histograms of
  the receive-path stages (probes/lifecycle.py), log2 ns buckets as explicit bounds;
  min/max are the bounds of the lowest/highest non-empty bucket, not exact values;
- ``kernelnet.netns.counter`` {kernelnet.netns, kernelnet.counter.name}: the latest
  value of each sampled SNMP/netstat counter per network namespace;
- ``kernelnet.softirq.{wait,run}.duration`` {kernelnet.softirq.vector, kernelnet.cpu}:
  histograms of every NET_RX/NET_TX softirq (probes/softirq.py);
- ``kernelnet.collector.app`` {component, counter}: the OTLP receiver (ingest), the
  forwarding of application spans (forward) and the cookie join (join), every counter
  of each (received, refused, failed, joined, shed, ...);
- ``kernelnet.zone.pages`` {kernelnet.zone.node, .name, .pages.kind}: free pages and the
  min/low/high watermarks of each memory zone (probes/reclaim.py).

They go where the spans go: to the OTLP endpoint (OTLP metrics exporter, same
protocol and endpoint resolution), or to the embedded store as OTLP JSON Lines
(``metrics-*.jsonl``, one MetricsData per line), every ``metrics.interval_s`` and once
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
    AggregationTemporality,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricExporter,
    MetricExportResult,
    MetricsData,
    PeriodicExportingMetricReader,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.sdk.resources import Resource

from .. import __version__, semconv
from .metrics_model import HistogramPoint
from .sinks import ENV_ENDPOINT, OtlpTarget

LOSS_STATS = {"ringbuf_full": "ring_buffer_full", "rate_capped": "rate_capped", "decode_errors": "undecodable",
              "kernel_missed": "kernel_nested_bpf", "evicted": "slot_evicted",
              "unseen": "arrival_unseen"}


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


class WithHistograms(MetricExporter):
    """Adds the probes' own histograms (computed in the kernel, so no SDK instrument can
    hold them) to every export of the SDK's metrics, under the collector's scope."""

    def __init__(self, inner: MetricExporter, histograms: Callable[[], list[HistogramPoint]],
                 resource: Resource, start_ns: int):
        super().__init__(preferred_temporality=getattr(inner, "_preferred_temporality", None),
                         preferred_aggregation=getattr(inner, "_preferred_aggregation", None))
        self.inner = inner
        self.histograms = histograms
        self.resource = resource
        self.start_ns = start_ns

    def _metrics(self) -> list[Metric]:
        now = time.time_ns()
        by_name: dict[str, list[HistogramPoint]] = {}
        for p in self.histograms():
            by_name.setdefault(p.name, []).append(p)
        out = []
        for name, points in by_name.items():
            dps = []
            for p in points:
                lo, hi = p.min_max()
                dps.append(HistogramDataPoint(attributes=dict(p.attributes), start_time_unix_nano=self.start_ns,
                                              time_unix_nano=now, count=p.count, sum=p.sum,
                                              bucket_counts=list(p.counts), explicit_bounds=list(p.bounds),
                                              min=lo, max=hi))
            out.append(Metric(name=name, description=points[0].description, unit=points[0].unit,
                              data=Histogram(data_points=dps,
                                             aggregation_temporality=AggregationTemporality.CUMULATIVE)))
        return out

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
        try:
            extra = self._metrics()
        except Exception:  # the probes may be detached already (shutdown): export the rest
            extra = []
        if extra:
            scope = InstrumentationScope(semconv.SCOPE_NAME, __version__)
            rms = list(metrics_data.resource_metrics)
            if rms:
                first = rms[0]
                sms = list(first.scope_metrics)
                if sms:
                    sms[0] = ScopeMetrics(scope=sms[0].scope, metrics=list(sms[0].metrics) + extra,
                                          schema_url=sms[0].schema_url)
                else:
                    sms = [ScopeMetrics(scope=scope, metrics=extra, schema_url="")]
                rms[0] = ResourceMetrics(resource=first.resource, scope_metrics=sms, schema_url=first.schema_url)
            else:
                rms = [ResourceMetrics(resource=self.resource,
                                       scope_metrics=[ScopeMetrics(scope=scope, metrics=extra, schema_url="")],
                                       schema_url="")]
            metrics_data = MetricsData(resource_metrics=rms)
        return self.inner.export(metrics_data, timeout_millis=timeout_millis, **kwargs)

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self.inner.force_flush(timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self.inner.shutdown(timeout_millis=timeout_millis, **kwargs)


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
                 probe_stats: Callable[[], dict[str, dict[str, int]]], pipeline_stats: Callable[[], dict[str, int]],
                 histograms: Callable[[], list[HistogramPoint]] = list,
                 netns_counters: Callable[[], Mapping[tuple[int, str], int]] = dict,
                 zones: Callable[[], list[dict]] = list,
                 app_stats: Callable[[], dict[str, dict[str, int]]] = dict):
        interval_ms = max(1000.0, interval_s * 1000) if interval_s else 60_000.0
        res = Resource(dict(resource))
        exporter = WithHistograms(exporter, histograms, res, time.time_ns())
        self._reader = PeriodicExportingMetricReader(exporter, export_interval_millis=interval_ms)
        self._provider = MeterProvider(resource=res, metric_readers=[self._reader])
        self._netns_counters = netns_counters
        self._zones = zones
        self._app_stats = app_stats
        meter = self._provider.get_meter(semconv.SCOPE_NAME, __version__)
        self._probe_stats = probe_stats
        self._pipeline_stats = pipeline_stats
        meter.create_observable_counter("kernelnet.collector.events", [self._events], unit="{event}",
                                        description="Kernel records turned into spans, by probe")
        meter.create_observable_counter("kernelnet.collector.spans.exported", [self._exported], unit="{span}",
                                        description="Spans the exporter delivered")
        meter.create_observable_counter("kernelnet.collector.lost", [self._lost], unit="{event}",
                                        description="Events or spans lost, by stage (nothing is lost uncounted)")
        meter.create_observable_counter("kernelnet.netns.counter", [self._netns], unit="{event}",
                                        description="Latest value of a sampled SNMP/netstat counter, per network namespace")
        meter.create_observable_counter("kernelnet.collector.app", [self._app], unit="{span}",
                                        description="Application spans received, forwarded, refused, failed, and kernel spans joined or shed, by component (ingest, forward, join) and counter")
        meter.create_observable_gauge("kernelnet.zone.pages", [self._zone_pages], unit="{page}",
                                      description="Free pages of a memory zone and its min/low/high watermarks (/proc/zoneinfo)")

    def _events(self, _o: CallbackOptions):
        return [Observation(st.get("emitted", 0), {"probe": p}) for p, st in self._probe_stats().items()]

    def _netns(self, _o: CallbackOptions):
        return [Observation(v, {"kernelnet.netns": inode, "kernelnet.counter.name": name})
                for (inode, name), v in self._netns_counters().items()]

    def _app(self, _o: CallbackOptions):
        return [Observation(v, {"component": comp, "counter": k})
                for comp, st in self._app_stats().items() for k, v in st.items()]

    def _zone_pages(self, _o: CallbackOptions):
        out = []
        for z in self._zones():
            for kind in ("free", "min", "low", "high"):
                out.append(Observation(z[f"{kind}_pages"], {"kernelnet.zone.node": z["node"],
                                                            "kernelnet.zone.name": z["zone"], "kernelnet.zone.pages.kind": kind}))
        return out

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
          probe_stats, pipeline_stats, timeout_s: float = 10, histograms=list, netns_counters=dict,
          zones=list, app_stats=dict) -> SelfMetrics:
    exporter = JsonLinesMetricExporter(directory) if target is None else _otlp_metric_exporter(target, timeout_s)
    return SelfMetrics(resource, exporter, interval_s, probe_stats, pipeline_stats, histograms, netns_counters, zones,
                       app_stats)
