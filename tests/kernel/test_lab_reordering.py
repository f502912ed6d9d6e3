"""`otel-kernelnet lab reordering` and its control `lab loss` end to end, as a user runs them
(CASES.md #4): reordered packets give spurious fast retransmits that DSACKs prove spurious,
real loss gives retransmits that nothing proves spurious."""

from __future__ import annotations

from tests.kernel.lab_util import cross_check_rows, run_lab, top_cause


def _rows(text: str) -> dict[str, tuple[int, int]]:
    """Cross-check rows -> {what: (kernel, exported)}, every row ok."""
    rows = cross_check_rows(text)
    assert rows and all(" ok" in r and "MISMATCH" not in r for r in rows), rows
    out = {}
    for r in rows:
        head = r.split("  (")[0].split()  # drop the note
        out[" ".join(head[:-3])] = (int(head[-3]), int(head[-2]))
    return out


def _retransmit_rows(rows: dict[str, tuple[int, int]]) -> tuple[tuple[int, int], tuple[int, int]]:
    fast = next(v for k, v in rows.items() if k.startswith("server netns TcpExtTCPFastRetrans vs"))
    segs = next(v for k, v in rows.items() if k.startswith("server netns TcpRetransSegs vs"))
    return fast, segs


def test_reordering_is_diagnosed_as_reordering_retransmit(tmp_path):
    out = tmp_path / "run"
    rc, text = run_lab("reordering", out)
    assert rc == 0, text
    assert "PASS: reordering_retransmit came first" in text
    kind, cause = top_cause(out, "reordering")
    assert kind == "reordering_retransmit"
    ev = cause["evidence"]
    assert ev["fast"] > 0                                   # fast retransmits on the span's own socket
    assert ev["dsack_recv"] + ev["sack_reorder"] > 0        # ... that DSACKs proved spurious
    assert ev["reorder_ratio"] >= 0.5
    assert ev["timeout"] == 0
    rows = _rows(text)
    (k_fast, e_fast), (k_segs, e_segs) = _retransmit_rows(rows)
    # segments (kernel) vs skbs (spans): never more spans than segments, and both seen
    assert 0 < e_fast <= k_fast and 0 < e_segs <= k_segs
    dsack = rows["server netns TcpExtTCPDSACKRecv delta vs counter spans"]
    assert dsack[0] == dsack[1] > 0


def test_loss_is_diagnosed_as_loss_retransmit(tmp_path):
    out = tmp_path / "run"
    rc, text = run_lab("loss", out)
    assert rc == 0, text
    assert "PASS: loss_retransmit came first" in text
    kind, cause = top_cause(out, "loss")
    assert kind == "loss_retransmit"
    ev = cause["evidence"]
    assert ev["timeout"] + ev["fast"] + ev["loss_probe"] > 0  # RTO, SACK hole or tail loss probe (TLP)
    assert ev["reorder_ratio"] < 0.5                        # nothing shows the originals arrived
    assert ev["dsack_recv"] == 0
    rows = _rows(text)
    (k_fast, e_fast), (k_segs, e_segs) = _retransmit_rows(rows)
    assert e_fast <= k_fast and 0 < e_segs <= k_segs
    fast = rows["server netns TcpExtTCPFastRetrans delta vs counter spans"]
    assert fast[0] == fast[1]
