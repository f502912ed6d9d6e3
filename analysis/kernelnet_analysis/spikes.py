"""Latency spike detection per service and operation.

A span is a spike when its duration exceeds a threshold computed over its group
(by default ``service`` and span ``name``):

* ``method="mad"`` (default, robust): ``median + k * 1.4826 * MAD``;
* ``method="quantile"``: the group's ``quantile`` (e.g. 0.99);
* ``slo_ms=...``: an explicit objective, the same for every group (overrides the method).

With a statistical method the threshold is also at least ``min_ratio`` times the
median and ``min_ms`` above it, so a very tight group does not flag noise. Groups
with fewer than ``min_samples`` spans borrow the threshold of their whole service.

>>> import polars as pl
>>> df = pl.DataFrame({"service": ["a"] * 12, "name": ["GET"] * 12,
...                    "duration_ns": [10_000_000] * 11 + [400_000_000]})
>>> df.with_columns(thr=spike_threshold()).filter(pl.col("duration_ns") > pl.col("thr")).height
1
"""

from __future__ import annotations

from typing import Sequence

import polars as pl

from .schema import app_spans

MAD_SCALE = 1.4826  # MAD -> standard deviation for normally distributed data


def spike_threshold(method: str = "mad", k: float = 5.0, quantile: float = 0.99,
                    min_ratio: float = 2.0, min_ms: float = 1.0,
                    by: Sequence[str] = ("service", "name"), col: str = "duration_ns") -> pl.Expr:
    """Expression: the spike threshold (ns) of each row's group.

    >>> df = pl.DataFrame({"service": ["a"] * 4, "name": ["x"] * 4, "duration_ns": [1, 2, 3, 100]})
    >>> df.select(spike_threshold(method="quantile", quantile=0.5, min_ms=0)).to_series().to_list()
    [5.0, 5.0, 5.0, 5.0]
    """
    d = pl.col(col)
    med = d.median()
    if method == "mad":
        base = med + k * MAD_SCALE * (d - med).abs().median()
    elif method == "quantile":
        base = d.quantile(quantile, interpolation="linear")
    else:
        raise ValueError(f"unknown spike method {method!r} (mad or quantile)")
    thr = pl.max_horizontal(base, med * min_ratio, med + min_ms * 1e6)
    return thr.over(list(by)) if by else thr


def detect_spikes(spans: pl.DataFrame, method: str = "mad", k: float = 5.0, quantile: float = 0.99,
                  slo_ms: float | None = None, min_samples: int = 10, min_ratio: float = 2.0,
                  min_ms: float = 1.0, by: Sequence[str] = ("service", "name"),
                  service: str | None = None) -> pl.DataFrame:
    """The slow application spans, slowest first, with ``baseline_ns`` (group median),
    ``threshold_ns`` and ``excess_ns`` (duration - baseline) added.

    Kernel spans are ignored; ``service`` restricts to one application service.

    >>> df = pl.DataFrame({"service": ["a"] * 12, "name": ["GET"] * 12, "scope": [None] * 12,
    ...                    "duration_ns": [10_000_000] * 11 + [400_000_000]})
    >>> detect_spikes(df).select("duration_ns", "baseline_ns", "excess_ns").row(0)
    (400000000, 10000000, 390000000)
    >>> detect_spikes(df, slo_ms=5).height
    12
    """
    app = app_spans(spans)
    if service is not None:
        app = app.filter(pl.col("service") == service)
    by = list(by)
    d = pl.col("duration_ns")
    if slo_ms is not None:
        thr = pl.lit(int(slo_ms * 1e6), dtype=pl.Int64)
    else:
        grp = spike_threshold(method, k, quantile, min_ratio, min_ms, by=by)
        svc = spike_threshold(method, k, quantile, min_ratio, min_ms, by=["service"])
        n_grp, n_svc = pl.len().over(by), pl.len().over("service")
        thr = (pl.when(n_grp >= min_samples).then(grp)
               .when(n_svc >= min_samples).then(svc)
               .otherwise(None))
    baseline = pl.when(pl.len().over(by) >= min_samples).then(d.median().over(by)).otherwise(d.median().over("service"))
    return (app.with_columns(threshold_ns=thr.cast(pl.Int64), baseline_ns=baseline.cast(pl.Int64))
            .filter(d > pl.col("threshold_ns"))
            .with_columns(excess_ns=(d - pl.col("baseline_ns")).clip(lower_bound=0))
            .sort("duration_ns", descending=True))
