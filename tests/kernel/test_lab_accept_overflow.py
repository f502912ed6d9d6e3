"""`otel-kernelnet lab accept-overflow` end to end, as a user runs it (CASES.md #5)."""

from __future__ import annotations

from tests.kernel.lab_util import cross_check_rows, interrupt_lab, run_lab, top_cause


def test_accept_overflow_is_diagnosed_as_listen_overflow(tmp_path):
    out = tmp_path / "run"
    rc, text = run_lab("accept-overflow", out)
    assert rc == 0, text
    assert "PASS: listen_overflow came first" in text
    kind, cause = top_cause(out, "accept-overflow")
    assert kind == "listen_overflow"
    ev = cause["evidence"]
    assert ev["listen_address"] == "10.88.0.1:8080"
    assert ev["queue_limit"] == 4          # the server's backlog
    assert ev["netns_somaxconn"] > 0        # the namespace's own somaxconn, read from it
    assert ev["overflows"] > 0
    assert ev["match"] == "listener"
    rows = cross_check_rows(text)
    assert len(rows) == 2 and all(r.endswith("ok") for r in rows), rows
    # the exported SYN retransmits match the kernel's count exactly: nothing lost
    syn = next(r for r in rows if "TCPSynRetrans" in r).split()
    assert int(syn[-3]) == int(syn[-2]) > 0


def test_ctrl_c_mid_run_removes_everything(tmp_path):
    """SIGINT while the app runs: exit 130, and no namespace or process of the run is left."""
    interrupt_lab("accept-overflow", tmp_path / "run", marker="baseline:")
