"""Command line: ``otel-kernelnet check | run | diagnose | lab``.

The names and flags here are a contract relied on outside the project (DESIGN.md):
keep them stable. Errors are one line on stderr and a non-zero exit, never a
traceback (set OTEL_KERNELNET_DEBUG=1 to see one).
"""

from __future__ import annotations

import argparse
import os
import sys

from . import __version__


def _parser(lab_scenarios: bool = True) -> argparse.ArgumentParser:
    """``lab_scenarios=False``: the lab's scenario list is not imported (about 50 ms
    that `run` does not need); only the lab's own help shows it."""
    p = argparse.ArgumentParser(prog="otel-kernelnet",
                                description="Linux kernel network events as OpenTelemetry spans.")
    p.add_argument("--version", action="version", version=f"otel-kernelnet {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = sub.add_parser("check", help="preflight: can `run` work here? (exit 0 ok, 1 degraded, 2 cannot)")
    c.add_argument("--json", action="store_true", help="one JSON object instead of lines")
    c.add_argument("--config", metavar="FILE", help="YAML config to check with (default: config/otel-kernelnet.yaml)")

    r = sub.add_parser("run", help="the collector")
    r.add_argument("--config", metavar="FILE", help="YAML config (default: config/otel-kernelnet.yaml)")
    r.add_argument("--output", metavar="DIR", help="embedded store directory (default ./kernelnet-data)")
    r.add_argument("--otlp-endpoint", metavar="URL", help="export over OTLP to URL instead of the embedded store")
    r.add_argument("--duration", metavar="SECONDS", type=float, help="stop after this long")
    r.add_argument("--ready-file", metavar="PATH", help="written once probes are attached, removed at exit")
    r.add_argument("--debug-bpf", action="store_true", help=argparse.SUPPRESS)  # print the final BPF programs

    d = sub.add_parser("diagnose", help="find latency spikes in traces and rank their kernel causes")
    d.add_argument("source", metavar="SOURCE", help="data directory of OTLP JSON Lines, or a Jaeger/Tempo base URL")
    d.add_argument("--service", metavar="NAME", help="only this application service")
    d.add_argument("--json", action="store_true", help="one JSON object (the diagnose contract)")

    lab = sub.add_parser("lab", help="reproduce an incident of CASES.md on this machine (root; pfmemalloc is a replay without)",
                         description="Reproduce an incident of CASES.md in network namespaces, diagnose it, "
                                     "remove everything. Exit 0 only when the expected cause comes first.")
    if lab_scenarios:
        from .lab import SCENARIOS
        lab.add_argument("scenario", metavar="SCENARIO", help="one of: " + ", ".join(SCENARIOS))
    else:
        lab.add_argument("scenario", metavar="SCENARIO", help="see `otel-kernelnet lab --help`")
    lab.add_argument("--output", metavar="DIR", help="new or empty directory for the run's OTLP JSON Lines "
                     "(default: a fresh temporary directory, printed)")
    return p


def _fail(msg: str, code: int = 2) -> int:
    print(f"otel-kernelnet: error: {msg}", file=sys.stderr)
    return code


def cmd_run(args: argparse.Namespace) -> int:
    from .collector import Collector, StartError
    from .config import ConfigError, load
    try:
        cfg = load(args.config)
    except ConfigError as e:
        return _fail(f"config: {e}")
    if args.duration is not None and args.duration <= 0:
        return _fail("--duration must be > 0 seconds")
    try:
        return Collector(cfg, output=args.output, otlp_endpoint=args.otlp_endpoint, duration=args.duration,
                         ready_file=args.ready_file, debug_bpf=args.debug_bpf).run()
    except StartError as e:
        return _fail(str(e))


def cmd_diagnose(args: argparse.Namespace) -> int:
    try:
        from kernelnet_analysis.diagnose import run
    except ImportError as e:
        return _fail(f"diagnose needs the analysis extra ({e}): pip install 'otel-kernelnet[analysis]'")
    return run(args.source, service=args.service, as_json=args.json)


def cmd_lab(args: argparse.Namespace) -> int:
    from .lab import SCENARIOS, scenario
    from .lab.env import LabError
    from .lab.runner import run_scenario
    if args.scenario not in SCENARIOS:
        return _fail(f"unknown lab scenario {args.scenario!r}; known: {', '.join(SCENARIOS)}")
    s = scenario(args.scenario)
    if not s.replay and os.geteuid() != 0:
        return _fail("the lab needs root (network namespaces, BPF): run it with sudo")
    try:
        return run_scenario(s, args.output)
    except LabError as e:
        return _fail(f"lab {args.scenario}: {e}", 1)
    except KeyboardInterrupt:
        print("otel-kernelnet lab: interrupted; everything the run created was removed", file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    args = _parser(lab_scenarios="lab" in words).parse_args(argv)
    try:
        if args.command == "check":
            from .check import main as check_main
            from .config import ConfigError
            try:
                return check_main(as_json=args.json, config=args.config)
            except ConfigError as e:
                return _fail(f"config: {e}")
        if args.command == "run":
            return cmd_run(args)
        if args.command == "diagnose":
            return cmd_diagnose(args)
        return cmd_lab(args)
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # last resort: one line, not a traceback
        if os.environ.get("OTEL_KERNELNET_DEBUG"):
            raise
        return _fail(f"{type(e).__name__}: {e} (set OTEL_KERNELNET_DEBUG=1 for a traceback)", 1)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
