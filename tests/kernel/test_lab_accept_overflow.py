"""`otel-kernelnet lab accept-overflow` end to end, as a user runs it (CASES.md #5)."""

from __future__ import annotations

from tests.kernel.lab_util import cross_check_rows, run_lab, top_cause


def test_accept_overflow_is_diagnosed_as_listen_overflow(tmp_path):
    out = tmp_path / "run"
    rc, text = run_lab("accept-overflow", out)
    assert rc == 0, text
    assert "PASS: listen_overflow came first" in text
    kind, cause = top_cause(out)
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
    """SIGINT while the app runs: exit 130, and no namespace, process or BPF program of the run is left."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.kernel.lab_util import ROOT, lab_leftovers

    out = tmp_path / "run"
    before = set(lab_leftovers())
    p = subprocess.Popen([sys.executable, "-m", "otel_kernelnet.cli", "lab", "accept-overflow", "--output", str(out)],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         stdin=subprocess.DEVNULL)
    seen = []
    try:
        deadline = time.monotonic() + 90
        for line in p.stdout:
            seen.append(line)
            if "baseline:" in line or time.monotonic() > deadline:
                break
        assert any("baseline:" in x for x in seen), "".join(seen)
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
    assert set(lab_leftovers()) - before == set()
    # a helper the lab was waiting on when the signal came (e.g. `ip netns exec ... cat`)
    # is killed but may be reaped by init only after the lab exits: allow a moment
    deadline = time.monotonic() + 5
    while (alive := [pid for pid in children if _running(pid)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive, f"processes of the run still alive: {[(pid, _cmdline(pid)) for pid in alive]}"


def _running(pid: int) -> bool:
    """pid exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "?"


def _children(pid: int) -> list[int]:
    """Direct children of pid (from /proc/PID/task/*/children)."""
    import glob
    out = []
    for f in glob.glob(f"/proc/{pid}/task/*/children"):
        try:
            out += [int(x) for x in open(f).read().split()]
        except OSError:
            pass
    return out
