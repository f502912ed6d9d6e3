"""The loader: the one module that imports bcc.

It finds a kernel header tree bcc can compile against, compiles a probe's C with its
``-D`` settings in a child process (bpfobj.CompileWorker: clang and LLVM never enter
the collector) or takes the same object from the object cache (bpfobj.py: then no
compiler or header tree is needed), loads and attaches it through ``libbcc_bpf``,
drains BPF ring buffers and detaches on every exit path (it is a context manager; the
collector also turns SIGINT/SIGTERM into a normal exit so the ``finally`` runs). If the process dies hard, the kernel detaches
the programs anyway when their file descriptors close.

Header trees: no struct layout may come from headers (probes take offsets from
tracepoint format files and BTF), so any installed tree serves. Order of preference:
``$BCC_KERNEL_SOURCE``; ``/lib/modules/$(uname -r)/build``; the newest
``/usr/src/linux-headers-*``. Debian splits a tree into ``-common`` (sources) and
``-<arch>`` (generated files and config); bcc wants one directory, so the two are
merged into a private directory of symlinks that is removed at exit.
"""

from __future__ import annotations

import glob
import os
import re
import select
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .bpfobj import (DEFAULT_CACHE_DIR, BpfMap, BpfObject, BpfObjectError, CompileWorker, ObjectCache,
                     RingBuffers, cache_key, local_headers)
from .kernel import tracefs

BPF_DIR = Path(__file__).parent / "bpf"
HEADERS_FIX = "apt-get install linux-headers-amd64 (any version: no struct layout is taken from it)"
BCC_FIX = "apt-get install python3-bpfcc, then scripts/setup.sh (the PyPI package 'bcc' is unrelated)"


RAW_PREFIX = "raw:"  # Loader.attach: "raw:netif_rx" is a raw tracepoint, "net:netif_rx" a classic one


class LoaderError(Exception):
    """A probe could not be compiled, loaded or attached; the message says why and the fix."""


# --- kernel headers --------------------------------------------------------------
def _has_headers(path: str) -> bool:
    return os.path.isdir(os.path.join(path, "include", "linux")) and (
        os.path.isdir(os.path.join(path, "include", "generated"))
        or os.path.isdir(os.path.join(path, "arch", "x86", "include", "generated")))


def _debian_pair(arch_dir: str) -> str | None:
    """The ``-common`` tree a Debian ``-<arch>`` header tree belongs to."""
    mk = os.path.join(arch_dir, "Makefile")
    try:
        text = Path(mk).read_text()
    except OSError:
        return None
    m = re.search(r"include\s+(\S+)/Makefile", text)
    if m:
        cand = os.path.normpath(os.path.join(arch_dir, m.group(1)))
        if os.path.isdir(os.path.join(cand, "include", "linux")):
            return cand
    name = os.path.basename(arch_dir.rstrip("/"))
    base = re.sub(r"-[a-z0-9_]+$", "-common", name)
    cand = os.path.join(os.path.dirname(arch_dir), base)
    return cand if os.path.isdir(os.path.join(cand, "include", "linux")) else None


def _merge_tree(common: str, arch: str, dest: str) -> str:
    """A directory of symlinks that looks like one complete header tree."""
    for sub in ("include", os.path.join("arch", "x86", "include")):
        os.makedirs(os.path.join(dest, sub), exist_ok=True)
        for src in (common, arch):
            d = os.path.join(src, sub)
            if os.path.isdir(d):
                for entry in os.listdir(d):
                    link = os.path.join(dest, sub, entry)
                    if not os.path.lexists(link):
                        os.symlink(os.path.join(d, entry), link)
    for name in (".config", "Makefile"):
        for src in (arch, common):
            if os.path.exists(os.path.join(src, name)):
                os.symlink(os.path.join(src, name), os.path.join(dest, name))
                break
    return dest


@dataclass
class HeaderTree:
    path: str
    how: str
    tmpdir: str | None = None

    def cleanup(self) -> None:
        if self.tmpdir:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None


def find_headers() -> HeaderTree | None:
    """A header tree bcc can compile against, or None."""
    env = os.environ.get("BCC_KERNEL_SOURCE")
    if env and _has_headers(env):
        return HeaderTree(env, "BCC_KERNEL_SOURCE")
    build = f"/lib/modules/{os.uname().release}/build"
    if _has_headers(build):
        return HeaderTree(build, "the running kernel's own headers")
    trees = sorted(glob.glob("/usr/src/linux-headers-*"),
                   key=lambda p: [int(x) if x.isdigit() else x for x in re.split(r"(\d+)", p)],
                   reverse=True)
    for tree in trees:
        if _has_headers(tree):
            return HeaderTree(tree, f"{tree} (not the running kernel's; fine: no layout is taken from it)")
    for tree in trees:
        common = _debian_pair(tree)
        if common and os.path.isdir(os.path.join(tree, "include", "generated")):
            tmp = tempfile.mkdtemp(prefix="otel-kernelnet-headers-")
            path = _merge_tree(common, tree, tmp)
            return HeaderTree(path, f"{tree} + {os.path.basename(common)} merged "
                                    "(not the running kernel's; fine: no layout is taken from it)", tmp)
    return None


# --- bcc -------------------------------------------------------------------------
_BCC_INCLUDE = re.compile(r'^#include "([\w.-]+\.bcc\.h)"\s*$', re.M)


def inline_bcc_headers(src: str, directory: Path = BPF_DIR) -> str:
    r"""Paste ``#include "x.bcc.h"`` files in place (bcc rewrites map syntax such as
    ``m.lookup()`` only in the main file, so shared code that uses maps must be in it).

    >>> out = inline_bcc_headers('#include "drop.h"\n#include "common.bcc.h"\n')
    >>> out.startswith('#include "drop.h"'), "kn_rate_ok" in out, '"common.bcc.h"' in out
    (True, True, False)
    """
    return _BCC_INCLUDE.sub(lambda m: (directory / m.group(1)).read_text(), src)


def import_bcc() -> Any:
    """Import bcc after tracefs is mounted (bcc picks its tracefs path at import)."""
    tracefs.ensure_tracefs()
    try:
        import bcc  # noqa: PLC0415  (the only import of bcc in the project)
    except ImportError as e:
        raise LoaderError(f"cannot import bcc ({e}): {BCC_FIX}") from None
    return bcc


# struct bpf_prog_info is UAPI (include/uapi/linux/bpf.h: append-only, so offsets never
# move); recursion_misses arrived in 5.12. tests/kernel/test_btf_vmlinux.py checks the
# offset against the running kernel's BTF.
PROG_INFO_SIZE = 232
PROG_INFO_RECURSION_MISSES = 208
_NR_BPF = {"x86_64": 321, "aarch64": 280}
_BPF_OBJ_GET_INFO_BY_FD = 15
_libc: list = [None]  # loaded on first use


def prog_info_u64(fd: int, offset: int) -> int:
    """One u64 of a BPF program's bpf_prog_info (0 when the kernel does not say)."""
    import ctypes
    nr = _NR_BPF.get(os.uname().machine)
    if nr is None:
        return 0
    info = ctypes.create_string_buffer(PROG_INFO_SIZE)
    # union bpf_attr.info: { __u32 bpf_fd; __u32 info_len; __aligned_u64 info; }
    attr = ctypes.create_string_buffer(16)
    ctypes.memmove(attr, ctypes.byref(ctypes.c_uint32(fd)), 4)
    ctypes.memmove(ctypes.byref(attr, 4), ctypes.byref(ctypes.c_uint32(PROG_INFO_SIZE)), 4)
    ctypes.memmove(ctypes.byref(attr, 8), ctypes.byref(ctypes.c_uint64(ctypes.addressof(info))), 8)
    if _libc[0] is None:
        _libc[0] = ctypes.CDLL(None, use_errno=True)
    if _libc[0].syscall(nr, _BPF_OBJ_GET_INFO_BY_FD, attr, 16) != 0:
        return 0
    got = ctypes.c_uint32.from_buffer(attr, 4).value  # the kernel writes back the size it filled
    if got < offset + 8:
        return 0
    return ctypes.c_uint64.from_buffer(info, offset).value


@dataclass
class Program:
    """One probe family's BPF object in the kernel, and what it attached."""
    name: str
    obj: BpfObject
    cached: bool = False  # loaded from the object cache, not compiled now
    key: str = ""  # its object cache key
    attached: list[tuple[str, str]] = field(default_factory=list)  # (tracepoint, fn)
    detached: bool = False  # Loader.detach() ran: ``attached`` says what was attached

    def map(self, name: str) -> BpfMap:
        return self.obj[name]


class Loader:
    """Compiles (or takes from the object cache), attaches and drains probes; detaches
    everything on close()."""

    def __init__(self, debug_print_source: bool = False, wake_interval_ms: int = 20,
                 cache_dir: str | os.PathLike | None = DEFAULT_CACHE_DIR):
        self._wake_ns = int(wake_interval_ms) * 1_000_000  # -D KN_WAKE_NS (bpf/common.bcc.h)
        self._epoll: select.epoll | None = None  # the open ring buffers' map fds
        self._stop_fd: int | None = None  # an eventfd in the epoll: interrupt()
        self._rings = RingBuffers()
        self._bcc = None  # bcc in this process: only _prepare() imports it
        self._worker: CompileWorker | None = None  # bcc in a child process: every compile
        self._headers: HeaderTree | None = None
        self._programs: list[Program] = []
        self._debug = debug_print_source
        self._detach_errors: list[str] = []
        self.cache = ObjectCache(cache_dir)
        self.compiles = 0  # objects compiled (cache misses, or the cache off)
        self.compile_seconds = 0.0  # waiting for the compiler

    def __enter__(self) -> "Loader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _find_headers(self) -> None:
        if self._headers is not None:
            return
        self._headers = find_headers()
        if self._headers is None:
            raise LoaderError(f"no kernel header tree found for bcc: {HEADERS_FIX}")
        os.environ["BCC_KERNEL_SOURCE"] = self._headers.path

    def _prepare(self) -> None:
        """bcc in this process (benchmarks and tests that use bcc directly; the loader
        itself compiles in a child process: :class:`bpfobj.CompileWorker`)."""
        if self._bcc is not None:
            return
        self._find_headers()
        self._bcc = import_bcc()

    def _compiler(self) -> CompileWorker:
        if self._worker is None or self._worker.proc.poll() is not None:
            self._find_headers()
            self._worker = CompileWorker(env=dict(os.environ))
        return self._worker

    @property
    def headers(self) -> HeaderTree | None:
        return self._headers

    @property
    def compiled(self) -> bool:
        """Whether anything was compiled (a cache miss, or the cache off)."""
        return self.compiles > 0

    def objects_summary(self) -> str:
        """One phrase for the start-up line: where the objects came from."""
        hits = sum(p.cached for p in self._programs)
        n = len(self._programs)
        where = self.cache.directory
        if hits == n:
            return f"objects: {n} from the cache ({where})"
        how = self._headers.how if self._headers else "?"
        done = f"compiled {n - hits} in {self.compile_seconds:.2f}s (headers: {how})"
        if hits:
            done += f", {hits} from the cache"
        if where is None:
            return done + "; object cache off"
        return done + f"; cached in {where} for the next start" if self.cache.stored else done

    def source(self, source_file: str, defines: dict[str, int | str],
               directory: Path = BPF_DIR) -> tuple[str, list[str]]:
        """The C text and compiler flags of a probe, as :meth:`compile` gives them to bcc."""
        src = inline_bcc_headers((directory / source_file).read_text())
        defines = {"KN_WAKE_NS": f"{self._wake_ns}ULL", **defines}
        return src, [f"-I{BPF_DIR}"] + [f"-D{k}={v}" for k, v in sorted(defines.items())]

    def compile(self, name: str, source_file: str, defines: dict[str, int | str],
                directory: Path = BPF_DIR) -> Program:
        """Compile ``<directory>/<source_file>`` (default: the package's bpf/) with ``-D``
        settings (include dir and ``*.bcc.h`` files: bpf/), or take the same object from
        the cache (bpfobj.py: keyed by the source, the flags, bcc's version and the
        kernel); then create its maps."""
        src, cflags = self.source(source_file, defines, directory)
        if self._debug:
            print(f"/* {source_file} compiled with: {' '.join(cflags)} */\n{src}")
        key = cache_key(src, cflags, headers=local_headers(src, [directory, BPF_DIR]))
        t0 = time.monotonic()
        image = self.cache.load(key)
        cached = image is not None
        if image is None:
            try:
                image = self._compiler().compile(src, cflags)
            except (BpfObjectError, OSError) as e:  # the compiler's own output is on stderr
                raise LoaderError(f"compiling {source_file} failed: {e}") from None
            self.compile_seconds += time.monotonic() - t0
            self.compiles += 1
            self.cache.store(key, image)
        try:
            obj = BpfObject(image, name)
        except BpfObjectError as e:
            raise LoaderError(str(e)) from None
        prog = Program(name, obj, cached=cached, key=key)
        self._programs.append(prog)
        return prog

    def attach(self, prog: Program, tracepoint: str, fn_name: str) -> None:
        """``category:name`` attaches a classic tracepoint; ``raw:name`` a raw tracepoint
        (BPF_PROG_TYPE_RAW_TRACEPOINT: the TP_PROTO arguments, no trace record built,
        and not skipped when nested in another tracing program; probes/*.py decide).
        The function is loaded (verified) at its first attach."""
        try:
            if tracepoint.startswith(RAW_PREFIX):
                prog.obj.attach_raw_tracepoint(tracepoint[len(RAW_PREFIX):], fn_name)
            else:
                tracefs.ensure_tracefs()  # the tracepoint's id comes from tracefs
                prog.obj.attach_tracepoint(tracepoint, fn_name)
        except (BpfObjectError, OSError) as e:
            if prog.cached:  # a cached image the kernel refuses is not kept: the next start compiles
                self.cache.evict(prog.key)
                e = f"{e} (loaded from the object cache, entry removed: a restart compiles afresh)"
            raise LoaderError(f"attaching {fn_name} to tracepoint {tracepoint} failed: {e}") from None
        prog.attached.append((tracepoint, fn_name))

    def open_ring_buffer(self, prog: Program, map_name: str, callback: Callable[[bytes], None]) -> None:
        """``callback(sample)`` for each record of ``map_name`` (a copy, ``bytes``), in
        :meth:`consume`; it must not raise (bpfobj.RingBuffers)."""
        table = prog.map(map_name)
        try:
            self._rings.add(table, callback)
        except BpfObjectError as e:
            raise LoaderError(str(e)) from None
        if self._epoll is None:
            self._epoll = select.epoll()
            self._stop_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            self._epoll.register(self._stop_fd, select.EPOLLIN)
        # edge-triggered: only a wake-up the BPF side sent (kn_wake) ends a wait. A ring
        # buffer's fd stays readable while it holds records, so level-triggered, every
        # wait returned at once while records kept coming and the busy loop polled without
        # sleeping (~15 % of the collector's CPU at ~14 K spans/s, docs/benchmarks.md)
        self._epoll.register(table.fd, select.EPOLLIN | select.EPOLLET)

    def interrupt(self) -> None:
        """End a :meth:`wait` now (a stop request: signal handler or another thread)."""
        if self._stop_fd is not None:
            os.eventfd_write(self._stop_fd, 1)

    def wait(self, timeout_s: float) -> bool | None:
        """Sleep until a ring buffer's wake-up (bpf/common.bcc.h kn_wake: the first record
        after a quiet interval on a CPU) or ``timeout_s``: True when woken, False on the
        timeout, None at once when no ring buffer is open (the caller sleeps on its own).
        A record written without a wake-up does not end the sleep: :meth:`consume`
        drains it afterwards."""
        if self._epoll is None:
            return None
        try:
            events = self._epoll.poll(timeout_s)
        except InterruptedError:  # pragma: no cover - PEP 475 retries; a handler may raise
            return False
        if any(fd == self._stop_fd for fd, _ in events):
            try:
                os.eventfd_read(self._stop_fd)
            except BlockingIOError:
                pass
        return bool(events)

    def consume(self) -> int:
        """Drain every open ring buffer now; the number of records drained (most are
        written without a wake-up: see :meth:`wait`)."""
        return self._rings.consume()

    @staticmethod
    def percpu_sum(prog: Program, map_name: str, count: int) -> list[int]:
        return [sum(row) for row in prog.map(map_name).percpu_rows(count)]

    @staticmethod
    def recursion_misses(prog: Program) -> int:
        """Events the kernel skipped because another tracing BPF program was already
        running on that CPU (an interrupt or softirq nested inside it): summed over the
        program's attached functions, from BPF_OBJ_GET_INFO_BY_FD. 0 where unknown."""
        total = 0
        for _tp, fn in prog.attached:
            fd = prog.obj.prog_fd(fn)
            if fd is not None:
                total += prog_info_u64(fd, PROG_INFO_RECURSION_MISSES)
        return total

    def detach(self) -> None:
        """Detach every attached tracepoint of every program, all at once.

        Closing a tracepoint's perf event waits in the kernel for RCU grace periods
        (``tracepoint_synchronize_unregister`` when the last perf user of that
        tracepoint goes away): 70-85 ms per tracepoint on this 6.18 guest, serially.
        Part of that wait runs under the kernel's ``event_mutex`` and part outside it,
        so closing them from parallel threads overlaps the latter (measured about 2x;
        docs/benchmarks.md section 3); ``os.close`` releases the GIL.
        The programs, maps and ring buffers stay until :meth:`close`, so records
        written up to the detach can still be drained. Safe to call more than once.
        """
        jobs = [(prog, tp) for prog in self._programs if not prog.detached for tp, _fn in prog.attached]
        for prog in self._programs:
            prog.detached = True
        if not jobs:
            return

        def one(prog: Program, tp: str) -> None:
            try:
                prog.obj.detach(tp)
            except Exception as e:  # keep detaching the rest
                self._detach_errors.append(f"{tp}: {e}")

        threads = [threading.Thread(target=one, args=job, name="kn-detach", daemon=True) for job in jobs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()  # no timeout: returning before the kernel detached would break the promise

    def stop_compiler(self) -> None:
        """End the compiler process (call once every probe is compiled; a later compile
        starts a new one). Its header tree stays until :meth:`close`."""
        if self._worker is not None:
            self._worker.close()
            self._worker = None

    def close(self) -> None:
        """Detach (if not yet) and free everything; safe to call more than once."""
        try:
            self.detach()
        finally:
            if self._epoll is not None:
                self._epoll.close()
                self._epoll = None
            if self._stop_fd is not None:
                os.close(self._stop_fd)
                self._stop_fd = None
            errors, self._detach_errors = self._detach_errors, []
            self.stop_compiler()
            self._rings.close()
            while self._programs:
                prog = self._programs.pop()
                try:
                    prog.obj.close()
                except Exception as e:
                    errors.append(f"cleanup {prog.name}: {e}")
            if self._headers is not None:
                self._headers.cleanup()
        if errors:
            raise LoaderError("detach problems: " + "; ".join(errors))
