"""diagnose.run() output and exit codes; pictures and the HTML report."""

import io
import json

import polars as pl

from kernelnet_analysis import load, run
from kernelnet_analysis import plots


def test_run_json(datasets):
    buf = io.StringIO()
    assert run(str(datasets["softirq_delay"]), as_json=True, out=buf) == 0
    obj = json.loads(buf.getvalue())
    assert list(obj) == ["spikes"]
    s = obj["spikes"][0]
    assert set(s) == {"trace_id", "span_id", "service", "name", "duration_ms", "causes"}
    assert set(s["causes"][0]) == {"kind", "confidence", "evidence", "remedy"}
    confs = [c["confidence"] for c in s["causes"]]
    assert confs == sorted(confs, reverse=True)
    assert s["causes"][0]["evidence"]["culprit"] == "kubelet"


def test_run_human_and_service_filter(datasets):
    buf = io.StringIO()
    assert run(str(datasets["softirq_delay"]), service="frontend", out=buf) == 0
    text = buf.getvalue()
    assert "softirq_delay" in text and "fix:" in text and "checkout" not in text


def test_run_bad_sources(tmp_path, capsys):
    assert run(str(tmp_path / "missing"), out=io.StringIO()) == 2
    (tmp_path / "traces-1.jsonl").write_text("garbage\n")
    assert run(str(tmp_path), out=io.StringIO()) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("otel-kernelnet diagnose: ") for line in err)
    assert "Traceback" not in "".join(err)


def test_run_empty_store(tmp_path):
    (tmp_path / "traces-1.jsonl").write_text("")
    buf = io.StringIO()
    assert run(str(tmp_path), out=buf) == 0
    assert "no latency spikes" in buf.getvalue()


def test_pictures_and_report(datasets, tmp_path):
    t = load(datasets["pfmemalloc"])
    grid = plots.softirq_grid(t.spans)
    assert grid["cpu"].unique().sort().to_list() == [0, 1] and grid["max_wait_ms"].max() > 1
    drops = plots.drop_counts(t.spans)
    assert drops.filter(pl.col("reason") == "PFMEMALLOC")["drops"].sum() > 12
    fig = plots.timeline(t)
    assert {"checkout", "frontend", "drop", "reclaim"} <= {tr.name for tr in fig.data}
    assert plots.softirq_heatmap(t).data[0].type == "heatmap"
    assert {tr.name for tr in plots.drops_over_time(t).data} >= {"PFMEMALLOC", "NO_SOCKET"}
    out = plots.html_report(t, tmp_path / "report.html")
    html = out.read_text()
    assert "pfmemalloc_drop" in html and "vm.min_free_kbytes" in html
    assert "src=\"https://cdn.plot.ly" not in html and len(html) > 1_000_000  # plotly.js embedded: offline
