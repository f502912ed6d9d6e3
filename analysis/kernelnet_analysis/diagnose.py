"""``otel-kernelnet diagnose``: spikes, their kernel spans, their causes, printed.

The CLI (``otel_kernelnet/cli.py``) calls :func:`run`; notebooks call :func:`diagnose`.

>>> import tempfile, io
>>> from kernelnet_analysis import synth
>>> d = synth.generate("listen_overflow", tempfile.mkdtemp(), seed=0)
>>> result = diagnose(str(d))
>>> result["spikes"][0]["causes"][0]["kind"]
'listen_overflow'
>>> run("/nonexistent/kernelnet-data", out=io.StringIO())
2
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, TextIO

import polars as pl

from .causes import KERNEL_COLUMNS, rank_causes
from .errors import SourceError
from .join import join_kernel
from .schema import Traces
from .spikes import detect_spikes

#: the diagnose kinds of the contract (plus ``drop:<REASON>`` for any other drop reason)
KINDS = ("pfmemalloc_drop", "memory_reclaim", "softirq_delay", "softirq_long_run", "conntrack_invalid_rst",
         "reordering_retransmit", "loss_retransmit", "listen_overflow", "rcvbuf_drop", "netfilter_drop",
         "no_socket_rst", "vcpu_stall")

#: a cause at or above this confidence is called "likely" in the human output
HIGH_CONFIDENCE = 0.7


def is_url(source: str) -> bool:
    """True for http(s) URLs, with or without a ``jaeger+`` / ``tempo+`` prefix.

    >>> is_url("tempo+http://tempo:3200"), is_url("./kernelnet-data")
    (True, False)
    """
    s = source.lower()
    return s.startswith(("http://", "https://", "jaeger+http", "tempo+http"))


def load(source: str | os.PathLike, service: str | None = None, limit: int = 200,
         lookback_s: float = 3600.0, notes: list[str] | None = None) -> Traces:
    """Load any SOURCE: a store directory/file, or a Jaeger or Tempo base URL.

    For a URL, at most ``limit`` traces per service are fetched from the last
    ``lookback_s`` seconds (a note is appended to ``notes`` saying so).
    """
    if isinstance(source, str) and is_url(source):
        from .remote import load_remote
        return load_remote(source, service=service, limit=limit, lookback_s=lookback_s, notes=notes)
    from .store import load_store
    return load_store(source)


def analyse(traces: Traces, service: str | None = None, method: str = "mad", k: float = 5.0,
            slo_ms: float | None = None, min_confidence: float = 0.05) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(spikes, causes) of a loaded source; see :func:`diagnose`."""
    spikes = detect_spikes(traces.spans, method=method, k=k, slo_ms=slo_ms, service=service)
    if spikes.height == 0:
        return spikes, pl.DataFrame(schema={"app_trace_id": pl.String, "app_span_id": pl.String, "kind": pl.String,
                                            "confidence": pl.Float64, "evidence": pl.String, "remedy": pl.String})
    joined = join_kernel(spikes, traces.spans, traces.links, columns=KERNEL_COLUMNS)
    causes = rank_causes(joined, spikes).filter(pl.col("confidence") >= min_confidence)
    return spikes, causes


def to_report(spikes: pl.DataFrame, causes: pl.DataFrame) -> dict[str, Any]:
    """The contract's JSON object from (spikes, causes)."""
    by_span: dict[tuple[str, str], list[dict]] = {}
    for row in causes.iter_rows(named=True):  # one row per cause: output formatting only
        by_span.setdefault((row["app_trace_id"], row["app_span_id"]), []).append({
            "kind": row["kind"], "confidence": row["confidence"],
            "evidence": json.loads(row["evidence"]), "remedy": row["remedy"]})
    out = []
    for row in spikes.select("trace_id", "span_id", "service", "name", "duration_ns", "baseline_ns").iter_rows(named=True):
        out.append({"trace_id": row["trace_id"], "span_id": row["span_id"], "service": row["service"],
                    "name": row["name"], "duration_ms": round(row["duration_ns"] / 1e6, 3),
                    "causes": by_span.get((row["trace_id"], row["span_id"]), [])})
    return {"spikes": out}


def diagnose(source: str | os.PathLike, service: str | None = None, **kwargs: Any) -> dict[str, Any]:
    """The ``diagnose --json`` object for SOURCE: ``{"spikes": [{"trace_id", "span_id",
    "service", "name", "duration_ms", "causes": [{"kind", "confidence", "evidence",
    "remedy"}]}]}``, spikes slowest first, causes best first.

    Keyword arguments go to :func:`load` (``limit``, ``lookback_s``) and
    :func:`analyse` (``method``, ``k``, ``slo_ms``, ``min_confidence``).
    Raises :class:`~kernelnet_analysis.errors.SourceError` for a bad source.
    """
    load_kw = {k: kwargs.pop(k) for k in ("limit", "lookback_s", "notes") if k in kwargs}
    traces = load(source, service=service, **load_kw)
    return to_report(*analyse(traces, service=service, **kwargs))


def _fmt_evidence(ev: dict) -> str:
    parts = []
    for k, v in ev.items():
        if v is None or v is False or v == 0 or v == "":
            continue
        parts.append(f"{k}={'yes' if v is True else v}")
    return " ".join(parts)


def render(report: dict[str, Any], out: TextIO, max_spikes: int = 20) -> None:
    """The human output: a short table per spike, best cause first."""
    spikes = report["spikes"]
    if not spikes:
        print("no latency spikes found", file=out)
        return
    n_svc = len({s["service"] for s in spikes})
    print(f"{len(spikes)} latency spike(s) in {n_svc} service(s)", file=out)
    for s in spikes[:max_spikes]:
        print(f"\n{s['service']}  {s['name']}  {s['duration_ms']:.1f} ms   trace {s['trace_id']} span {s['span_id']}",
              file=out)
        if not s["causes"]:
            print("  no kernel cause found (the time was spent elsewhere: application, peer, or unobserved)", file=out)
            continue
        print(f"  {'cause':<24} {'conf':>5}  evidence", file=out)
        for c in s["causes"][:5]:
            print(f"  {c['kind']:<24} {c['confidence']:>5.2f}  {_fmt_evidence(c['evidence'])}", file=out)
        top = s["causes"][0]
        label = "fix" if top["confidence"] >= HIGH_CONFIDENCE else "if so, fix"
        print(f"  {label}: {top['remedy']}", file=out)
    if len(spikes) > max_spikes:
        print(f"\n... and {len(spikes) - max_spikes} more spike(s); use --json for all", file=out)


def run(source: str, service: str | None = None, as_json: bool = False, out: TextIO | None = None) -> int:
    """Entry point of ``otel-kernelnet diagnose SOURCE [--service NAME] [--json]``.

    Prints to ``out`` (default stdout). Returns 0 when the analysis ran (spikes or
    not), 2 for a bad source with one error line on stderr (never a traceback).
    """
    out = out if out is not None else sys.stdout
    notes: list[str] = []
    try:
        report = diagnose(source, service=service, notes=notes)
    except SourceError as exc:
        print(f"otel-kernelnet diagnose: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("otel-kernelnet diagnose: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: one line unless asked for the traceback
        if os.environ.get("KERNELNET_DEBUG"):
            raise
        print(f"otel-kernelnet diagnose: internal error: {type(exc).__name__}: {exc} "
              "(set KERNELNET_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1
    for n in notes:
        print(f"note: {n}", file=sys.stderr)
    if as_json:
        json.dump(report, out)
        out.write("\n")
    else:
        render(report, out)
    return 0
