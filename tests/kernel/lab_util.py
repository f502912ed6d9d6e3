"""Running a lab scenario as a user would, and checking what it left behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def lab_leftovers() -> list[str]:
    """Namespaces and cgroups named by a lab run that still exist."""
    out = [f"netns {n}" for n in (os.listdir("/run/netns") if os.path.isdir("/run/netns") else [])
           if n.startswith("kn-lab-")]
    # cgroup v2 at the mount, or a v1 hierarchy (memory on hybrid machines) one level down
    out += [f"cgroup {p.relative_to('/sys/fs/cgroup')}" for pattern in ("kn-lab-*", "*/kn-lab-*")
            for p in Path("/sys/fs/cgroup").glob(pattern)]
    return out


def _run_tags(output: Path) -> set[str]:
    """The tags (``kn-lab-TAG-role``) of the namespaces a run's collector was scoped to."""
    import json
    import re
    try:
        cfg = json.loads((Path(output) / "logs" / "collector.yaml").read_text())
    except (OSError, ValueError):
        return set()
    return {m.group(1) for p in cfg.get("scope", {}).get("netns", [])
            if (m := re.search(r"kn-lab-([0-9a-f]+)-", str(p)))}


def run_lab(name: str, output: Path, timeout: float = 120) -> tuple[int, str]:
    """``otel-kernelnet lab NAME --output DIR`` as a subprocess: (exit code, output)."""
    before = set(lab_leftovers())
    r = subprocess.run([sys.executable, "-m", "otel_kernelnet.cli", "lab", name, "--output", str(output)],
                       cwd=ROOT, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    left = set(lab_leftovers()) - before
    tags = _run_tags(output)  # other lab runs may be starting meanwhile: judge this run's names only
    if tags:
        left = {x for x in left if any(f"kn-lab-{t}-" in x for t in tags)}
    assert not left, f"lab {name} left behind: {sorted(left)}"
    return r.returncode, r.stdout + r.stderr


def top_cause(output: Path, name: str) -> tuple[str, dict]:
    """(kind, winning cause) the way lab ``name`` judged it, from `diagnose` on the run's data."""
    from kernelnet_analysis.diagnose import diagnose

    from otel_kernelnet.lab import scenario
    from otel_kernelnet.lab.runner import first_kind
    rep = diagnose(str(output))
    kind, _, _ = first_kind(rep)
    return kind, scenario(name).lead(rep, kind) if kind else {}


def cross_check_rows(text: str) -> list[str]:
    """The cross-check table rows of the lab's output."""
    lines = text.splitlines()
    try:
        i = next(n for n, line in enumerate(lines) if line.startswith("Counter cross-check"))
    except StopIteration:
        return []
    rows = []
    for line in lines[i + 2:]:
        if not line.startswith("  ") or not line.strip():
            break
        rows.append(line.strip())
    return rows


def interrupt_lab(name: str, output: Path, marker: str, timeout: float = 90) -> str:
    """Run ``lab NAME``, send SIGINT once a line containing ``marker`` is printed, and
    assert the run exits 130 with none of its namespaces, cgroups or processes left. Its output."""
    import signal
    import time
    p = subprocess.Popen([sys.executable, "-m", "otel_kernelnet.cli", "lab", name, "--output", str(output)],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         stdin=subprocess.DEVNULL)
    seen: list[str] = []
    try:
        deadline = time.monotonic() + timeout
        for line in p.stdout:
            seen.append(line)
            if marker in line or time.monotonic() > deadline:
                break
        assert any(marker in x for x in seen), "".join(seen)
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
    tags = _run_tags(output)
    assert tags, "the run wrote no collector config: cannot tell its names"
    assert [x for x in lab_leftovers() if any(f"kn-lab-{t}-" in x for t in tags)] == []
    # a helper the lab was waiting on when the signal came (e.g. `ip netns exec ... cat`)
    # is killed but may be reaped by init only after the lab exits: allow a moment
    deadline = time.monotonic() + 5
    while (alive := [pid for pid in children if _running(pid)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive, f"processes of the run still alive: {[(pid, _cmdline(pid)) for pid in alive]}"
    return text


def _children(pid: int) -> list[int]:
    """Direct children of pid (from /proc/PID/task/*/children)."""
    out = []
    for f in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            out += [int(x) for x in f.read_text().split()]
        except OSError:
            pass
    return out


def _running(pid: int) -> bool:
    """pid exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "?"
