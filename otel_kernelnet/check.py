"""``otel-kernelnet check``: can ``run`` work here, fully, degraded, or not at all?

Each check reports ok / degraded / fail with a one-line detail and, when not ok, the
fix. Exit code: 0 = runs fully, 1 = runs degraded (the lines say what is lost),
2 = cannot run. Checks that depend on an earlier failure are skipped, and say so.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TextIO

OK, DEGRADED, FAIL, SKIP = "ok", "degraded", "fail", "skipped"

CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF = 21, 38, 39
PRIV_FIX = "run as root, or grant CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN and CAP_SYS_RESOURCE (CAP_SYS_ADMIN on kernels < 5.8)"


@dataclass
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""


def effective_caps(status_text: str | None = None) -> int:
    if status_text is None:
        try:
            with open("/proc/self/status") as f:
                status_text = f.read()
        except OSError:
            return 0
    for line in status_text.splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def check_privileges(caps: int | None = None) -> Check:
    caps = effective_caps() if caps is None else caps
    has = lambda c: bool(caps >> c & 1)  # noqa: E731
    if has(CAP_SYS_ADMIN) or (has(CAP_BPF) and has(CAP_PERFMON)):
        who = "root" if os.geteuid() == 0 else f"uid {os.geteuid()}"
        return Check("privileges", OK, f"{who} with the capabilities to load and attach BPF programs")
    return Check("privileges", FAIL, f"missing CAP_BPF/CAP_PERFMON (effective capabilities 0x{caps:x})", PRIV_FIX)


def check_scope(mode: str, netns: list | tuple = (), proc_root: str = "/proc", kubelet_root: str = "/var/lib/kubelet",
                log_root: str = "/var/log", environ=os.environ, cgroup: str = "",
                mounts_text: str | None = None) -> Check:
    """What the collector will see in ``scope.mode`` / ``scope.netns`` / ``scope.cgroup``, per
    family (see otel_kernelnet/k8s.py and otel_kernelnet/scope.py)."""
    from .k8s import PodDirectory, describe_scope, node_name, own_scope
    from .scope import ScopeError, describe, describe_families, resolve, resolve_cgroup
    try:
        proc_cgroup = open(f"{proc_root}/self/cgroup").read()
    except OSError:
        proc_cgroup = ""
    try:
        cg = resolve_cgroup(mode, cgroup, mounts_text=mounts_text, proc_self_cgroup=proc_cgroup, environ=environ)
    except ScopeError as e:
        return Check("scope", FAIL, str(e), "set scope.cgroup to a directory under the cgroup v2 mount, or leave it empty")
    cg_fix = ("set scope.cgroup (a path under the cgroup v2 mount), or mount the host's /sys/fs/cgroup read-only "
              "with $POD_UID set (docs/deploy-sidecar.md), or disable probes.reclaim in sidecars")
    own = own_scope(proc_root)
    if netns:
        try:
            ns_scope = resolve(mode, netns)
        except ScopeError as e:
            return Check("scope", FAIL, str(e), "list existing namespaces (inode numbers or /run/netns/NAME paths)")
        ok, detail, fix = True, f"{mode} with scope.netns: {describe(ns_scope)}", ""
    else:
        ns_scope = frozenset({own.netns}) if mode == "sidecar" and own.netns else None
        pods = len(PodDirectory(kubelet_root, log_root).scan()) if mode == "daemonset" else None
        ok, detail, fix = describe_scope(mode, own, pods, node_name(environ))
    detail += " | " + "; ".join(describe_families(ns_scope, cg, mode == "sidecar"))
    if cg is not None and not cg.active:
        ok, fix = False, "; ".join(f for f in (fix, cg_fix) if f)
    return Check("scope", OK if ok else DEGRADED, detail, fix)


def run_checks(compile_test: bool = True, config: str | None = None) -> list[Check]:
    from .kernel import tracefs
    from .loader import BCC_FIX, HEADERS_FIX, find_headers

    checks: list[Check] = [check_privileges()]
    privileged = checks[0].status == OK

    path, how = tracefs.ensure_tracefs()
    checks.append(Check("tracefs", OK, how) if path else Check("tracefs", FAIL, how, tracefs.MOUNT_FIX))

    from .collector import load_btf, load_ksyms
    btf, note = load_btf()
    checks.append(Check("btf", OK, "/sys/kernel/btf/vmlinux readable") if btf else
                  Check("btf", DEGRADED, f"no kernel BTF ({note}): drops lose addresses, ports, device, netns and cookie",
                        "use a kernel built with CONFIG_DEBUG_INFO_BTF=y"))

    from .clock import KernelClock
    from .config import load
    from .probes import KernelContext, ProbeUnavailable, families
    from .spans import RandomIds
    cfg = load(config)
    tracefs.hide_fields(cfg["probes.hide_fields"])
    ctx = KernelContext(btf=btf, symbol=hex, clock=KernelClock(), ids=RandomIds(), cfg=cfg)
    runnable = []
    for fam in families():
        name = f"probe {fam.summary}"
        if not path:
            checks.append(Check(name, SKIP, "needs tracefs"))
            continue
        try:
            p = fam.plan(ctx)
        except ProbeUnavailable as e:
            checks.append(Check(name, FAIL, str(e), "a newer kernel (see docs/probes/)"))
            continue
        runnable.append((fam, p))
        # programs kept on classic tracepoints (probes/rawtp.py) cost more and can miss events
        degraded = [*getattr(p, "degraded", []), *getattr(p, "fallbacks", [])]
        checks.append(Check(name, DEGRADED, "; ".join(degraded), getattr(p, "fix", "") or "a kernel >= 6.11 with BTF has every field the probes use")
                      if degraded else Check(name, OK, getattr(p, "describe", lambda: "all fields present")()))

    checks.append(check_scope(ctx.cfg["scope.mode"], ctx.cfg.get("scope.netns", ()), cgroup=ctx.cfg.get("scope.cgroup", "")))

    _sym, ks_note = load_ksyms()
    checks.append(Check("kallsyms", OK, "kernel symbols readable") if ks_note == "ok" else
                  Check("kallsyms", DEGRADED, f"drop locations shown as addresses ({ks_note})", "run as root"))

    headers = find_headers()
    if headers:
        checks.append(Check("kernel headers", OK, headers.how))
        headers.cleanup()
    else:
        checks.append(Check("kernel headers", FAIL, "no header tree for bcc to compile against", HEADERS_FIX))

    bcc_ok = False
    try:
        from .loader import import_bcc
        import_bcc()
        bcc_ok = True
        checks.append(Check("bcc", OK, "python3-bpfcc imports"))
    except Exception as e:
        checks.append(Check("bcc", FAIL, str(e), BCC_FIX))

    checks.append(_object_cache(cfg["bpf.cache_dir"]))
    checks.append(_encoder())

    if compile_test and bcc_ok and headers and privileged and runnable:
        checks.append(_compile_and_attach(runnable, ctx))
    elif compile_test:
        checks.append(Check("compile and attach", SKIP, "needs privileges, tracefs, headers, bcc and a runnable probe"))
    return checks


def _encoder() -> Check:
    """Whether spans are encoded (OTLP protobuf, the embedded store's JSON) by the C
    encoder (setup.py) or by Python."""
    from .export import otlp_proto
    if otlp_proto.native_module() is not None:
        return Check("otlp encoder", OK, "C (otel_kernelnet.export._otlp_native)")
    if otlp_proto.native_off():
        return Check("otlp encoder", OK, f"Python ({otlp_proto.NATIVE_ENV}=0): the same bytes, ~5x the CPU per span")
    return Check("otlp encoder", DEGRADED, "Python: the C encoder was not built at install (the same bytes, "
                 "~5x the CPU per span)", "install gcc and the Python headers (python3-dev), then reinstall the package")


def _object_cache(directory: str) -> Check:
    """Whether a restart can skip the compiler (bpf.cache_dir, bpfobj.ObjectCache)."""
    if not directory:
        return Check("bpf object cache", DEGRADED, "off (bpf.cache_dir is empty): every start compiles (~2-3 s, ~90 MB more RSS)",
                     "set bpf.cache_dir to a directory only the collector's user can write")
    from .bpfobj import ObjectCache
    cache = ObjectCache(directory)
    p = Path(directory)
    if p.exists():
        usable = cache.usable(create=False)
        n = len(list(p.glob("*.json"))) if usable else 0
    else:  # the collector creates it (mode 0700) if its parent allows
        parent = next((q for q in p.parents if q.exists()), None)
        usable = parent is not None and os.access(parent, os.W_OK)
        if not usable:
            cache.notes.append(f"bpf cache: cannot create {directory} (no writable parent)")
        n = 0
    if usable:
        return Check("bpf object cache", OK, f"{directory}: {n} object(s); a restart loads them without compiling")
    return Check("bpf object cache", DEGRADED, "; ".join(cache.notes) + ": every start compiles",
                 f"chown the directory to the collector's user and chmod 0700, or set bpf.cache_dir")


def _compile_and_attach(runnable, ctx) -> Check:
    """Compile every runnable probe for real (never from the object cache: this checks
    the compiler), attach it, detach it."""
    from .loader import Loader, LoaderError
    try:
        with Loader(cache_dir=None) as loader:
            for fam, plan in runnable:
                fam.start(loader, plan, ctx, lambda span: None, lambda e: None)
            secs = loader.compile_seconds
        names = ", ".join(f.name for f, _ in runnable)
        return Check("compile and attach", OK, f"probes {names} compiled in {secs:.2f}s, attached and detached")
    except LoaderError as e:
        return Check("compile and attach", FAIL, str(e), "see the compiler message above; report it with `uname -r`")


def exit_code(checks: list[Check]) -> int:
    if any(c.status == FAIL for c in checks):
        return 2
    if any(c.status == DEGRADED for c in checks):
        return 1
    return 0


def main(as_json: bool = False, out: TextIO = sys.stdout, config: str | None = None) -> int:
    checks = run_checks(config=config)
    code = exit_code(checks)
    verdict = {0: "ok: `otel-kernelnet run` works fully here",
               1: "degraded: `otel-kernelnet run` works, with the losses above",
               2: "fail: `otel-kernelnet run` cannot work here until the problems above are fixed"}[code]
    if as_json:
        json.dump({"status": verdict.split(":")[0], "exit_code": code,
                   "checks": [asdict(c) for c in checks]}, out, indent=2)
        print(file=out)
        return code
    for c in checks:
        line = f"{c.status.upper():9} {c.name}: {c.detail}"
        if c.fix and c.status in (FAIL, DEGRADED):
            line += f" -- fix: {c.fix}"
        print(line, file=out)
    print(verdict, file=out)
    return code
