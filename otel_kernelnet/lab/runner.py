"""Run one lab scenario end to end and report it.

Steps (each printed with its elapsed time): build the topology, start the collector
(only the probe families the scenario needs, scoped to the lab's namespaces), run the
instrumented app and inject the cause, stop the collector (it flushes), remove
everything, then cross-check what was exported against the kernel's own counters,
run ``diagnose`` on the data and judge: exit 0 only when the expected kind comes
first.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from .env import Lab, LabError, Netns, Proc, free_port

CLI = [sys.executable, "-m", "otel_kernelnet.cli"]
APP = [sys.executable, "-m", "otel_kernelnet.lab.app"]
FAMILIES = ("drop", "tcp", "netns_counters", "lifecycle", "softirq", "reclaim")


@dataclass
class Check:
    """One counter cross-check row: what the kernel counted vs what the collector exported."""
    what: str
    kernel: int
    exported: int
    rule: str = "equal"   # equal | exported>=kernel | exported<=kernel | info
    note: str = ""
    slack: int = 0        # exported>=kernel only: a shortfall this small still agrees (say why in note)

    @property
    def ok(self) -> bool:
        if self.rule == "equal":
            return self.kernel == self.exported
        if self.rule == "exported>=kernel":
            return self.exported + self.slack >= self.kernel
        if self.rule == "exported<=kernel":
            return self.exported <= self.kernel
        return True


@dataclass
class Context:
    """What a scenario's ``drive`` gets: the lab, the collector's receiver, helpers."""
    lab: Lab
    otlp: str
    output: Path
    t0: float
    facts: dict[str, Any] = field(default_factory=dict)

    def step(self, msg: str) -> None:
        self.lab.say(f"[{time.monotonic() - self.t0:5.1f}s] {msg}")

    def app(self, name: str, service: str, netns: Netns | None, role: str, *args: str) -> Proc:
        cmd = [*APP, "--service", service, "--otlp", self.otlp]
        if netns is not None:
            cmd += ["--netns", netns.path]
        return self.lab.spawn(name, [*cmd, role, *args])

    def server(self, name: str, service: str, netns: Netns, *args: str) -> Proc:
        p = self.app(name, service, netns, "server", *args)
        ready = p.json(timeout=30)
        if not ready.get("ready"):
            raise LabError(f"{name} did not start: {ready}")
        return p

    def client(self, name: str, service: str, netns: Netns, *args: str, timeout: float = 60) -> dict:
        """Run a client to its end; its JSON summary."""
        p = self.app(name, service, netns, "client", *args)
        out = p.json(timeout=timeout)
        p.wait(15)
        return out


class Scenario:
    """A lab scenario. Subclasses set the class attributes and implement :meth:`drive`."""

    name = ""
    title = ""          # one line: the incident it reproduces
    case = ""           # CASES.md section
    expect = ""         # the diagnose kind that must come first
    families: tuple[str, ...] = ()
    config: dict = {}   # extra collector config (merged over the lab's)
    replay = False      # True: no live kernel cause (the pfmemalloc replay)

    def describe(self) -> list[str]:
        """Lines printed before the run: what is built and what is injected."""
        return []

    def namespaces(self, lab: Lab) -> list[Netns]:
        """Build the topology; the namespaces the collector is scoped to."""
        raise NotImplementedError

    def drive(self, ctx: Context) -> None:
        """Run the app, inject the cause; record counter deltas in ``ctx.facts``."""
        raise NotImplementedError

    def checks(self, ctx: Context, spans: list[dict]) -> list[Check]:
        """Counter cross-checks from ``ctx.facts`` and the exported spans."""
        return []

    def lead(self, report: dict, kind: str) -> dict | None:
        """The cause whose evidence :meth:`evidence_ok` judges: by default the most
        confident winner of ``kind`` (:func:`lead_cause`)."""
        return lead_cause(report, kind)

    def evidence_ok(self, cause: dict) -> list[str]:
        """Problems with the winning cause's evidence (empty: fine)."""
        return []


# --- the embedded store, read without the analysis package ------------------------------------

def _val(v: dict) -> Any:
    for k in ("stringValue", "boolValue", "doubleValue"):
        if k in v:
            return v[k]
    if "intValue" in v:
        return int(v["intValue"])
    if "arrayValue" in v:
        return [_val(x) for x in v["arrayValue"].get("values", [])]
    return None


def read_spans(directory: Path) -> Iterator[dict]:
    """Every span of the store as {name, attributes, resource, start, end}."""
    for f in sorted(Path(directory).glob("traces-*.jsonl")):
        for line in f.read_text().splitlines():
            if not line.strip():
                continue
            for rs in json.loads(line).get("resourceSpans", []):
                res = {kv["key"]: _val(kv["value"]) for kv in rs.get("resource", {}).get("attributes", [])}
                for ss in rs.get("scopeSpans", []):
                    for s in ss.get("spans", []):
                        yield {"name": s["name"], "resource": res,
                               "attributes": {kv["key"]: _val(kv["value"]) for kv in s.get("attributes", [])},
                               "start": int(s["startTimeUnixNano"]), "end": int(s["endTimeUnixNano"])}


def counted(spans: Iterable[dict], name: str, netns: int | None = None) -> int:
    """Sum of the exported ``kernel.counter`` deltas of counter ``name`` (in namespace
    ``netns`` when given): the exported side of a counter cross-check."""
    total = 0
    for s in spans:
        a = s["attributes"]
        if (a.get("kernelnet.kind") == "counter" and a.get("kernelnet.counter.name") == name
                and (netns is None or a.get("kernelnet.netns") == netns)):
            total += a.get("kernelnet.counter.delta", 0)
    return total


# --- the collector ---------------------------------------------------------------------------

def _collector_config(s: Scenario, scoped: list[Netns], http_port: int) -> dict:
    probes: dict[str, Any] = {f: {"enabled": f in s.families} for f in FAMILIES}
    cfg: dict[str, Any] = {
        "probes": probes,
        "scope": {"netns": [ns.path for ns in scoped]},
        "receiver": {"enabled": True, "grpc_endpoint": None, "http_endpoint": f"127.0.0.1:{http_port}"},
        "status": {"interval_s": 0},
    }
    _merge(cfg, s.config)
    return cfg


def _merge(dst: dict, src: dict) -> None:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _merge(dst[k], v)
        else:
            dst[k] = v


def start_collector(lab: Lab, cfg: dict, output: Path, timeout: float = 90) -> Proc:
    conf = lab.workdir / "logs" / "collector.yaml"
    conf.write_text(json.dumps(cfg, indent=1))  # JSON is YAML
    ready = lab.workdir / "logs" / "collector.ready"
    p = lab.spawn("collector", [*CLI, "run", "--config", str(conf), "--output", str(output),
                                "--ready-file", str(ready)], stdin=False)
    deadline = time.monotonic() + timeout
    while not ready.exists():
        if p.popen.poll() is not None:
            raise LabError(f"the collector exited ({p.popen.returncode}) before its probes were attached: {p.tail()}")
        if time.monotonic() > deadline:
            raise LabError(f"the collector was not ready within {timeout:.0f} s: {p.tail()}")
        time.sleep(0.05)
    return p


def stop_collector(p: Proc, timeout: float = 30) -> int:
    import signal
    import subprocess
    p.popen.send_signal(signal.SIGTERM)  # it flushes its buffers, detaches, exits
    try:
        return p.popen.wait(timeout)
    except subprocess.TimeoutExpired:
        raise LabError(f"the collector did not stop within {timeout:.0f} s") from None


# --- judging ---------------------------------------------------------------------------------

def first_kind(report: dict) -> tuple[str | None, int, int]:
    """(kind ranked first for the most spikes, how many spikes it led, spikes with a cause).

    Ties go to the kind leading the slowest spike (spikes are sorted slowest first).
    """
    tops = [s["causes"][0]["kind"] for s in report["spikes"] if s["causes"]]
    if not tops:
        return None, 0, 0
    counts: dict[str, int] = {}
    for k in tops:
        counts[k] = counts.get(k, 0) + 1
    best = max(counts.values())
    kind = next(k for k in tops if counts[k] == best)
    return kind, best, len(tops)


def lead_cause(report: dict, kind: str) -> dict | None:
    """The winning cause of ``kind`` with the highest confidence over all spikes."""
    best = None
    for s in report["spikes"]:
        if s["causes"] and s["causes"][0]["kind"] == kind:
            c = s["causes"][0]
            if best is None or c["confidence"] > best["confidence"]:
                best = c
    return best


def run_scenario(s: Scenario, output: str | None, out=None) -> int:
    out = out or sys.stdout

    def say(m: str) -> None:
        print(m, file=out, flush=True)

    if output:
        outdir = Path(output).resolve()
        if outdir.exists() and any(outdir.iterdir()):
            raise LabError(f"--output {outdir} is not empty: give a new or empty directory "
                           "(diagnose reads every file in it)")
    else:
        outdir = Path(tempfile.mkdtemp(prefix=f"kernelnet-lab-{s.name}-"))
    data = outdir
    outdir.mkdir(parents=True, exist_ok=True)
    say(f"otel-kernelnet lab {s.name}: {s.title}")
    say(f"  incident: CASES.md {s.case}; expected diagnosis: {s.expect}")
    for line in s.describe():
        say(f"  {line}")
    t0 = time.monotonic()
    ctx: Context | None = None
    with Lab(s.name, outdir, say=say) as lab:
        ctx = Context(lab=lab, otlp="", output=data, t0=t0)
        if not s.replay:
            ctx.step("building the topology (network namespaces, veth pairs)")
            scoped = s.namespaces(lab)
            port = free_port()
            ctx.otlp = f"http://127.0.0.1:{port}/v1/traces"
            ctx.step(f"starting the collector (probes: {', '.join(s.families)}; scoped to the lab's "
                     f"{len(scoped)} namespace(s); receiver 127.0.0.1:{port})")
            col = start_collector(lab, _collector_config(s, scoped, port), data)
        ctx.step("running the application and injecting the cause")
        s.drive(ctx)
        if not s.replay:
            ctx.step("stopping the collector (it flushes what it holds)")
            rc = stop_collector(col)
            if rc != 0:
                raise LabError(f"the collector exited {rc}: {col.tail()}")
        ctx.step("removing the topology")
    if lab.cleanup_errors:
        raise LabError("clean-up incomplete: " + "; ".join(lab.cleanup_errors))
    return report(s, ctx, data, say, t0)


def report(s: Scenario, ctx: Context, data: Path, say: Callable[[str], None], t0: float) -> int:
    spans = list(read_spans(data))
    if not spans:
        raise LabError(f"the collector exported nothing to {data}: see {data / 'logs' / 'collector.log'}")
    checks = s.checks(ctx, spans)
    if checks:
        say("\nCounter cross-check (kernel counters vs exported events, same window):")
        say(f"  {'what':<58} {'kernel':>8} {'exported':>9}  result")
        for c in checks:
            verdict = "info" if c.rule == "info" else ("ok" if c.ok else "MISMATCH")
            say(f"  {c.what:<58} {c.kernel:>8} {c.exported:>9}  {verdict}{('  (' + c.note + ')') if c.note else ''}")
    ctx.step("diagnosing the exported data")
    try:
        from kernelnet_analysis.diagnose import diagnose, render
    except ImportError as e:
        raise LabError(f"diagnose needs the analysis extra ({e}): pip install 'otel-kernelnet[analysis]'") from None
    rep = diagnose(str(data))
    say("")
    import io
    buf = io.StringIO()
    render(rep, buf, max_spikes=3)
    say(buf.getvalue().rstrip())
    kind, led, with_cause = first_kind(rep)
    problems = []
    if kind != s.expect:
        problems.append(f"expected {s.expect} first, got {kind or 'no cause at all'}")
    else:
        problems += s.evidence_ok(s.lead(rep, kind) or {})
    problems += [f"cross-check: {c.what}: kernel {c.kernel} vs exported {c.exported}" for c in checks if not c.ok]
    say("")
    say(f"data: {data}  (`otel-kernelnet diagnose {data}` prints this diagnosis again; logs in {data / 'logs'})")
    if kind:
        say(f"first cause: {kind} (top cause of {led} of {with_cause} spike(s) with a kernel cause)")
    if problems:
        for p in problems:
            say(f"FAIL: {p}")
        return 1
    say(f"PASS: {s.expect} came first, in {time.monotonic() - t0:.0f} s")
    return 0
