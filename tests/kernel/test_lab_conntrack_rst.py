"""`otel-kernelnet lab conntrack-rst` end to end, as a user runs it (CASES.md #3)."""

from __future__ import annotations

from tests.kernel.lab_util import cross_check_rows, interrupt_lab, run_lab, top_cause


def test_conntrack_rst_is_diagnosed_as_conntrack_invalid_rst(tmp_path):
    out = tmp_path / "run"
    rc, text = run_lab("conntrack-rst", out)
    assert rc == 0, text
    assert "PASS: conntrack_invalid_rst came first" in text
    kind, cause = top_cause(out, "conntrack-rst")
    assert kind == "conntrack_invalid_rst"
    ev = cause["evidence"]
    assert ev["resets_sent"] >= 1, ev         # the client's RST to the un-NATed server address
    assert ev["resets_received"] >= 1, ev     # the server's socket took it as genuine
    assert ev["reset_reason"] == "NO_SOCKET", ev
    assert ev["reset_peer"] == "10.89.2.2", ev  # the server's real address, not the VIP
    assert ev["conntrack_invalid"] > 0 or ev["rst_to_unnated_address"], ev
    rows = cross_check_rows(text)
    assert len(rows) == 2 and all(r.endswith("ok") for r in rows), rows
    # the stray segment and the client's RST: both INVALID in the router's conntrack, both exported
    ct = next(r for r in rows if "conntrack invalid" in r).split()
    assert int(ct[-3]) == int(ct[-2]) >= 2, rows
    # the one RST the client sent (NO_SOCKET) is exported, nothing lost
    rst = next(r for r in rows if "TcpOutRsts" in r).split()
    assert int(rst[-3]) == int(rst[-2]) >= 1, rows


def test_ctrl_c_mid_run_removes_everything(tmp_path):
    """SIGINT while the injector waits: exit 130, no namespace or process of the run is left."""
    interrupt_lab("conntrack-rst", tmp_path / "run", marker="keep-alive requests to")
