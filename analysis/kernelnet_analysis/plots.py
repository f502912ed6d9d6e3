"""Pictures (plotly figures, inline in notebooks) and a self-contained HTML report.

* :func:`timeline`: app latency and kernel events on one time axis;
* :func:`softirq_heatmap`: per-CPU softirq wait over time;
* :func:`drops_over_time`: kernel drops by reason over time;
* :func:`html_report`: the three plus the diagnosis table in one HTML file
  (plotly.js embedded, so it opens offline).

The data behind each picture is a polars frame you can get without plotting
(:func:`softirq_grid`, :func:`drop_counts`).

>>> import polars as pl
>>> from kernelnet_analysis.schema import empty_traces
>>> drop_counts(empty_traces().spans).columns
['time', 'reason', 'drops']
"""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any

import polars as pl

from otel_kernelnet import semconv as sc

from .schema import Traces, app_spans, kernel_spans

_KERNEL_MARKS = {  # kernelnet.kind -> (label, symbol)
    sc.KIND_DROP: ("drop", "x"), sc.KIND_TCP_RETRANSMIT: ("retransmit", "triangle-up"),
    sc.KIND_TCP_RESET_SENT: ("reset sent", "square"), sc.KIND_TCP_RESET_RECEIVED: ("reset received", "square-open"),
    sc.KIND_LISTEN_OVERFLOW: ("listen overflow", "star"), sc.KIND_RECLAIM: ("reclaim", "diamond"),
    sc.KIND_SOFTIRQ: ("softirq", "circle"), sc.KIND_COUNTER: ("counter", "cross"),
    sc.KIND_TCP_CONG_STATE: ("cong state", "triangle-down"),
}


def _time(col: str = "start_ns") -> pl.Expr:
    return pl.from_epoch(pl.col(col), time_unit="ns")


def softirq_grid(spans: pl.DataFrame, every: str = "1s") -> pl.DataFrame:
    """Max softirq wait (ms) per CPU and time bin: ``time, cpu, max_wait_ms, n``.

    >>> from kernelnet_analysis.schema import empty_traces
    >>> softirq_grid(empty_traces().spans).columns
    ['time', 'cpu', 'max_wait_ms', 'n']
    """
    s = kernel_spans(spans).filter(pl.col(sc.KIND) == sc.KIND_SOFTIRQ)
    return (s.select(time=_time().dt.truncate(every), cpu=pl.col("kernelnet.cpu"),
                     wait=pl.col("kernelnet.softirq.wait_ns").fill_null(0))
            .group_by("time", "cpu").agg(max_wait_ms=pl.col("wait").max() / 1e6, n=pl.len())
            .sort("time", "cpu"))


def drop_counts(spans: pl.DataFrame, every: str = "1s") -> pl.DataFrame:
    """Kernel drops per reason and time bin: ``time, reason, drops``."""
    s = kernel_spans(spans).filter(pl.col(sc.KIND) == sc.KIND_DROP)
    return (s.select(time=_time().dt.truncate(every), reason=pl.col("kernelnet.drop.reason").fill_null("unknown"))
            .group_by("time", "reason").agg(drops=pl.len().cast(pl.Int64)).sort("time", "reason"))


def timeline(traces: Traces, spikes: pl.DataFrame | None = None, service: str | None = None):
    """App span latency (top) and kernel events (bottom, one row per family) on one time axis.

    Spikes, if given, are circled in red.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    app = app_spans(traces.spans)
    if service:
        app = app.filter(pl.col("service") == service)
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.65, 0.35], vertical_spacing=0.04)
    for (svc,), g in app.group_by("service", maintain_order=True):
        g = g.select(t=_time(), ms=pl.col("duration_ns") / 1e6, name="name")
        fig.add_trace(go.Scattergl(x=g["t"].to_list(), y=g["ms"].to_list(), mode="markers", name=str(svc),
                                   text=g["name"].to_list(), marker={"size": 4}), row=1, col=1)
    if spikes is not None and spikes.height:
        g = spikes.select(t=_time(), ms=pl.col("duration_ns") / 1e6, name="name")
        fig.add_trace(go.Scatter(x=g["t"].to_list(), y=g["ms"].to_list(), mode="markers", name="spike",
                                 text=g["name"].to_list(),
                                 marker={"size": 11, "color": "rgba(0,0,0,0)", "line": {"color": "red", "width": 2}}),
                      row=1, col=1)
    k = kernel_spans(traces.spans)
    for kind, (label, symbol) in _KERNEL_MARKS.items():
        g = k.filter(pl.col(sc.KIND) == kind)
        if not g.height:
            continue
        detail = pl.coalesce(pl.col("kernelnet.drop.reason"), pl.col("kernelnet.tcp.retransmit.type"),
                             pl.col("kernelnet.counter.name"), pl.col("kernelnet.culprit.comm"),
                             pl.col("kernelnet.reclaim.type"), pl.col("kernelnet.tcp.reset.reason"), pl.lit(""))
        g = g.select(t=_time(), ms=pl.col("duration_ns") / 1e6, d=detail)
        fig.add_trace(go.Scattergl(x=g["t"].to_list(), y=[label] * g.height, mode="markers", name=label,
                                   text=[f"{d} ({ms:.1f} ms)" for d, ms in zip(g["d"], g["ms"])],
                                   marker={"symbol": symbol, "size": 7}), row=2, col=1)
    fig.update_yaxes(title_text="latency (ms)", type="log", row=1, col=1)
    fig.update_layout(title="Application latency and kernel events", height=560, legend={"itemsizing": "constant"})
    return fig


def softirq_heatmap(traces: Traces, every: str = "1s"):
    """Heatmap of the max NET_RX softirq wait per CPU and time bin."""
    import plotly.graph_objects as go

    g = softirq_grid(traces.spans, every)
    if not g.height:
        return go.Figure(layout={"title": "Softirq wait per CPU: no softirq spans"})
    wide = g.pivot(on="cpu", index="time", values="max_wait_ms").sort("time")
    cpus = [c for c in wide.columns if c != "time"]
    z = [[row[c] for row in wide.iter_rows(named=True)] for c in cpus]
    fig = go.Figure(go.Heatmap(x=wide["time"].to_list(), y=[f"cpu {c}" for c in cpus], z=z,
                               colorscale="Reds", colorbar={"title": "max wait (ms)"}))
    fig.update_layout(title="Softirq wait per CPU (max per bin)", height=320)
    return fig


def drops_over_time(traces: Traces, every: str = "1s"):
    """Stacked bars of kernel drops per reason over time."""
    import plotly.graph_objects as go

    g = drop_counts(traces.spans, every)
    fig = go.Figure()
    for (reason,), r in g.group_by("reason", maintain_order=True):
        fig.add_trace(go.Bar(x=r["time"].to_list(), y=r["drops"].to_list(), name=str(reason)))
    fig.update_layout(barmode="stack", title="Kernel drops by reason", height=320, yaxis_title="drops")
    return fig


def _table(report: dict[str, Any]) -> str:
    rows = []
    for s in report["spikes"]:
        top = s["causes"][0] if s["causes"] else None
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in (
            s["service"], s["name"], f"{s['duration_ms']:.1f}", top["kind"] if top else "-",
            f"{top['confidence']:.2f}" if top else "-",
            " ".join(f"{k}={v}" for k, v in (top["evidence"] if top else {}).items() if v not in (None, 0, False, "")),
            top["remedy"] if top else "no kernel cause found", s["trace_id"])) + "</tr>")
    head = "".join(f"<th>{h}</th>" for h in ("service", "span", "ms", "cause", "conf", "evidence", "remedy", "trace"))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def html_report(traces: Traces, path: str | os.PathLike, report: dict[str, Any] | None = None,
                spikes: pl.DataFrame | None = None, title: str = "otel-kernelnet diagnosis") -> Path:
    """Write a self-contained HTML report (plotly.js inline, no network needed to view it)."""
    from .diagnose import analyse, to_report

    if report is None or spikes is None:
        spikes, causes = analyse(traces)
        report = report or to_report(spikes, causes)
    figs = [timeline(traces, spikes), softirq_heatmap(traces), drops_over_time(traces)]
    parts = [f.to_html(full_html=False, include_plotlyjs=(i == 0)) for i, f in enumerate(figs)]
    doc = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:1.5em}} table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:3px 6px;vertical-align:top}} th{{background:#eee}}</style></head><body>
<h1>{html.escape(title)}</h1><p>{len(report['spikes'])} latency spike(s); best cause first.</p>
{_table(report)}{''.join(parts)}</body></html>"""
    p = Path(path)
    p.write_text(doc, encoding="utf-8")
    return p
