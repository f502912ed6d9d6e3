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


def top_cause(output: Path) -> tuple[str, dict]:
    """(kind, winning cause) the way the lab judged it, from `diagnose` on the run's data."""
    from kernelnet_analysis.diagnose import diagnose

    from otel_kernelnet.lab.runner import first_kind, lead_cause
    rep = diagnose(str(output))
    kind, _, _ = first_kind(rep)
    return kind, lead_cause(rep, kind) if kind else {}


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
