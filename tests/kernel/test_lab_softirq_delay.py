"""`otel-kernelnet lab softirq-delay` end to end, as a user runs it (CASES.md #2)."""

from __future__ import annotations

import re

from tests.kernel.lab_util import cross_check_rows, run_lab, top_cause


def test_softirq_delay_names_the_interrupts_off_reader(tmp_path):
    out = tmp_path / "run"
    rc, text = run_lab("softirq-delay", out)
    assert rc == 0, text
    assert "PASS: softirq_delay came first" in text
    m = re.search(r"culprit to expect: (\S+) pid (\d+) on CPU (\d+)", text)
    assert m, text
    comm, pid, cpu = m.group(1), int(m.group(2)), int(m.group(3))
    kind, cause = top_cause(out, "softirq-delay")
    assert kind == "softirq_delay"
    ev = cause["evidence"]
    # the winning softirq span names the reader that held CPU 1 with interrupts off
    assert ev["culprit"] == comm == "pagetypeinfo-rd"
    assert ev["culprit_pid"] == pid
    assert ev["cpu"] == cpu == 1
    assert ev["vector"] == "NET_RX"
    assert ev["wait_ms"] >= 1.0 and ev["culprit_ms"] > 0
    # reached from the app's own packets (skb lifecycle by cookie -> link), not by time window only
    assert ev["match"] == "linked"
    rows = cross_check_rows(text)
    assert len(rows) == 3 and all(r.endswith(")") and " ok  (" in r for r in rows), rows
    # every slow NET_RX wait the BPF histogram counted on CPU 1 was exported as a span, and there were some
    tail = next(r for r in rows if "waits >=" in r)
    k, e = (int(x) for x in re.findall(r"\s(\d+)\s+(\d+)\s+ok", tail)[0])
    assert k == e > 0, tail
