"""Typed polars schemas of the four frames every loader returns.

All loaders (embedded store, OTel collector file exporter, Jaeger v1/v3, Tempo)
produce the same :class:`Traces` bundle, so the rest of the package never sees
where the data came from:

``spans``
    one row per span. Ids are lowercase hex (trace 32 chars, span 16 chars, left
    padded with zeros whatever the source did), times are epoch nanoseconds,
    ``kind`` and ``status_code`` are the OTLP enum integers. Every attribute of
    the kernelnet contract (:mod:`otel_kernelnet.semconv`) and the usual network
    attributes of application spans get their own typed column, named by the
    attribute key itself (``pl.col("kernelnet.socket.cookie")``). All attributes,
    known or not, are also kept as strings in ``attributes``.
``events``
    span events (Jaeger logs): ``trace_id, span_id, time_ns, name, attributes``.
``links``
    span links (Jaeger ``FOLLOWS_FROM`` references): ``trace_id, span_id`` of the
    span holding the link and ``linked_trace_id, linked_span_id`` it points to.
``resources``
    ``resource_id, service, attributes``; ``spans.resource_id`` refers to it.

>>> from kernelnet_analysis.schema import SPAN_SCHEMA, empty_traces
>>> SPAN_SCHEMA["start_ns"], SPAN_SCHEMA["kernelnet.socket.cookie"]
(Int64, Int64)
>>> empty_traces().spans.height
0
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from otel_kernelnet import semconv as sc

#: generic attribute list: every attribute as (key, value rendered as a string)
ATTRS_DTYPE = pl.List(pl.Struct({"key": pl.String, "value": pl.String}))

_TYPES = {"string": pl.String, "int": pl.Int64, "bool": pl.Boolean, "double": pl.Float64}

#: attributes of application spans the join uses (OTel semantic conventions)
APP_ATTRIBUTES: dict[str, pl.DataType] = {
    "server.address": pl.String,
    "server.port": pl.Int64,
    "client.address": pl.String,
    "client.port": pl.Int64,
    "http.route": pl.String,
    "http.response.status_code": pl.Int64,
    "rpc.method": pl.String,
}

#: typed attribute columns, contract attributes first, in a fixed order
ATTRIBUTE_COLUMNS: dict[str, pl.DataType] = {a.key: _TYPES[a.type] for a in sc.ATTRIBUTES}
for _k, _t in APP_ATTRIBUTES.items():
    ATTRIBUTE_COLUMNS.setdefault(_k, _t)

SPAN_BASE: dict[str, pl.DataType] = {
    "trace_id": pl.String,
    "span_id": pl.String,
    "parent_span_id": pl.String,  # null for a root span
    "name": pl.String,
    "kind": pl.Int8,  # 0 unspecified, 1 internal, 2 server, 3 client, 4 producer, 5 consumer
    "start_ns": pl.Int64,
    "end_ns": pl.Int64,
    "duration_ns": pl.Int64,
    "status_code": pl.Int8,  # 0 unset, 1 ok, 2 error
    "status_message": pl.String,
    "service": pl.String,  # resource service.name
    "scope": pl.String,  # instrumentation scope name
    "resource_id": pl.UInt32,
}

SPAN_SCHEMA = pl.Schema({**SPAN_BASE, **ATTRIBUTE_COLUMNS, "attributes": ATTRS_DTYPE})
EVENT_SCHEMA = pl.Schema({
    "trace_id": pl.String, "span_id": pl.String, "time_ns": pl.Int64,
    "name": pl.String, "attributes": ATTRS_DTYPE,
})
LINK_SCHEMA = pl.Schema({
    "trace_id": pl.String, "span_id": pl.String,
    "linked_trace_id": pl.String, "linked_span_id": pl.String, "attributes": ATTRS_DTYPE,
})
RESOURCE_SCHEMA = pl.Schema({"resource_id": pl.UInt32, "service": pl.String, "attributes": ATTRS_DTYPE})

SPAN_KIND = {"internal": 1, "server": 2, "client": 3, "producer": 4, "consumer": 5}
STATUS_CODE = {"unset": 0, "ok": 1, "error": 2}


@dataclass
class Traces:
    """The four frames of a trace source (see the module docs for their schemas)."""

    spans: pl.DataFrame
    events: pl.DataFrame
    links: pl.DataFrame
    resources: pl.DataFrame

    def __repr__(self) -> str:
        return (f"Traces(spans={self.spans.height}, events={self.events.height}, "
                f"links={self.links.height}, resources={self.resources.height})")


def empty_traces() -> Traces:
    """A :class:`Traces` with no rows and the documented schemas."""
    return Traces(pl.DataFrame(schema=SPAN_SCHEMA), pl.DataFrame(schema=EVENT_SCHEMA),
                  pl.DataFrame(schema=LINK_SCHEMA), pl.DataFrame(schema=RESOURCE_SCHEMA))


def concat_traces(parts: list[Traces]) -> Traces:
    """Concatenate bundles, renumbering ``resource_id`` so they stay unique.

    >>> t = concat_traces([empty_traces(), empty_traces()])
    >>> t.spans.schema == SPAN_SCHEMA
    True
    """
    parts = [p for p in parts if p.spans.height or p.resources.height]
    if not parts:
        return empty_traces()
    spans, res, offset = [], [], 0
    for p in parts:
        spans.append(p.spans.with_columns((pl.col("resource_id") + offset).cast(pl.UInt32)))
        res.append(p.resources.with_columns((pl.col("resource_id") + offset).cast(pl.UInt32)))
        offset += max(p.resources.height, 1)
    return Traces(pl.concat(spans), pl.concat([p.events for p in parts]),
                  pl.concat([p.links for p in parts]), pl.concat(res))


def kernel_spans(spans: pl.DataFrame | pl.LazyFrame):
    """Kernel spans: resource ``service.name`` or scope ``otel-kernelnet``.

    >>> kernel_spans(empty_traces().spans).height
    0
    """
    return spans.filter((pl.col("service") == sc.SERVICE_NAME) | (pl.col("scope") == sc.SCOPE_NAME))


def app_spans(spans: pl.DataFrame | pl.LazyFrame):
    """Application spans: everything that is not a kernel span."""
    return spans.filter(~((pl.col("service") == sc.SERVICE_NAME) | (pl.col("scope") == sc.SCOPE_NAME)).fill_null(False))
