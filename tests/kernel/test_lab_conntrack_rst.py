"""`otel-kernelnet lab conntrack-rst` end to end, as a user runs it (CASES.md #3)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from tests.kernel.lab_util import ROOT, cross_check_rows, lab_leftovers, run_lab, top_cause


def test_conntrack_rst_is_diagnosed_as_conntrack_invalid_rst(tmp_path):
    out = tmp_path / "run"
    rc, text = run_lab("conntrack-rst", out)
    assert rc == 0, text
    assert "PASS: conntrack_invalid_rst came first" in text
    kind, cause = top_cause(out)
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
    out = tmp_path / "run"
    p = subprocess.Popen([sys.executable, "-m", "otel_kernelnet.cli", "lab", "conntrack-rst", "--output", str(out)],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         stdin=subprocess.DEVNULL)
    seen = []
    try:
        deadline = time.monotonic() + 90
        for line in p.stdout:
            seen.append(line)
            if "keep-alive requests to" in line or time.monotonic() > deadline:
                break
        assert any("keep-alive requests to" in x for x in seen), "".join(seen)
        children = _children(p.pid)
        assert children, "the lab started no processes?"
        p.send_signal(signal.SIGINT)
        rest, _ = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(10)
    text = "".join(seen) + rest
    assert p.returncode == 130, text
    assert "everything the run created was removed" in text
    # this run's own names (other lab runs may be going on at the same time on a shared machine)
    tag = _run_tag(out)
    assert [x for x in lab_leftovers() if f"kn-lab-{tag}-" in x] == []
    alive = [pid for pid in children if os.path.exists(f"/proc/{pid}")]
    assert not alive, f"processes of the run still alive: {alive}"


def _run_tag(out) -> str:
    """The run's tag (``kn-lab-<tag>-<role>``), from the namespaces the collector was scoped to."""
    import json
    cfg = json.loads((out / "logs" / "collector.yaml").read_text())  # written as JSON
    names = {os.path.basename(p) for p in cfg["scope"]["netns"]}
    tags = {n.split("-")[2] for n in names}
    assert len(tags) == 1 and {n.rsplit("-", 1)[1] for n in names} == {"client", "router", "server"}, names
    return tags.pop()


def _children(pid: int) -> list[int]:
    import glob
    out = []
    for f in glob.glob(f"/proc/{pid}/task/*/children"):
        try:
            out += [int(x) for x in open(f).read().split()]
        except OSError:
            pass
    return out
