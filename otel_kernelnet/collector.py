"""The collector's run loop: probes -> decode -> spans -> export, with a live status line.

Lifecycle: resolve where spans go, read what the probes need from the running kernel
(tracefs format files, BTF, kallsyms), compile and attach, write the ready file, then
drain the ring buffers every ``ringbuf.poll_interval_ms`` until ``--duration`` passes
or SIGINT/SIGTERM arrives. On every exit path the probes are detached and the export
queue is flushed; the final summary says what was seen, exported and lost.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TextIO

from . import __version__, resource, semconv
from .clock import KernelClock
from .config import Config
from .export.sinks import ExportPipeline, JsonLinesSink, OtlpSink, resolve_otlp
from .kernel import tracefs
from .spans import KernelSpan, RandomIds


class StartError(Exception):
    """The collector cannot start; the message names the fix."""


def load_btf() -> tuple[Any | None, str]:
    from .kernel.btf import BTF, BTFError
    try:
        return BTF.load(), "ok"
    except (OSError, BTFError) as e:
        return None, str(e)


def load_ksyms() -> tuple[Callable[[int], str], str]:
    """Address -> symbol+offset; hex addresses when kallsyms is hidden from us."""
    from .kernel.ksyms import KernelSymbols, KsymsError
    try:
        ks = KernelSymbols.load(require_addresses=True)
        return ks.resolve, "ok"
    except (OSError, KsymsError) as e:
        return (lambda a: f"0x{a:x}"), str(e)


@dataclass
class Counters:
    events: int = 0
    mapping_errors: int = 0


class Collector:
    def __init__(self, cfg: Config, *, output: str | None = None, otlp_endpoint: str | None = None,
                 duration: float | None = None, ready_file: str | None = None,
                 out: TextIO = sys.stderr, debug_bpf: bool = False):
        self.cfg = cfg
        self.output = output or cfg["output.directory"]
        self.otlp_endpoint = otlp_endpoint
        self.duration = duration
        self.ready_file = Path(ready_file) if ready_file else None
        self.out = out
        self.debug_bpf = debug_bpf
        self.stop_event = threading.Event()
        self.counters = Counters()
        self.clock = KernelClock()
        self.ids = RandomIds()
        self.pipeline: ExportPipeline | None = None
        self.metrics = None
        self.probes: list[Any] = []

    # -- helpers ---------------------------------------------------------------------
    def say(self, msg: str) -> None:
        print(f"otel-kernelnet: {msg}", file=self.out, flush=True)

    def _make_sink(self, res: dict[str, Any]):
        scope = (semconv.SCOPE_NAME, __version__)
        try:
            target = resolve_otlp(self.otlp_endpoint, self.cfg["export.otlp.endpoint"],
                                  self.cfg["export.otlp.protocol"])
        except ValueError as e:
            raise StartError(str(e)) from None
        if target is None:
            return JsonLinesSink(self.output, res, scope,
                                 max_file_bytes=self.cfg["output.max_file_mb"] << 20,
                                 max_files=self.cfg["output.max_files"]), None
        return OtlpSink(target, res, scope, timeout_s=self.cfg["export.otlp.timeout_s"]), target

    def _emit(self, span: KernelSpan) -> None:
        self.counters.events += 1
        assert self.pipeline is not None
        self.pipeline.submit(span)

    def _on_error(self, e: Exception) -> None:
        self.counters.mapping_errors += 1
        if self.counters.mapping_errors <= 3:
            self.say(f"warning: could not decode/map a kernel record: {e}")

    _final_probe_stats: dict[str, dict[str, int]] | None = None

    def stats_by_probe(self) -> dict[str, dict[str, int]]:
        """Each probe's counters (the last reading once the probes are detached)."""
        if self._final_probe_stats is not None:
            return self._final_probe_stats
        return {p.name: p.stats() for p in self.probes}

    def probe_stats(self) -> dict[str, int]:
        """Counters summed over probes."""
        total: dict[str, int] = {}
        for st in self.stats_by_probe().values():
            for k, v in st.items():
                total[k] = total.get(k, 0) + v
        return total

    def pipeline_stats(self) -> dict[str, int]:
        pl = self.pipeline
        return {"exported": pl.exported, "dropped_queue_full": pl.dropped_queue_full,
                "failed": pl.failed} if pl else {}

    def status_line(self, rate: float) -> str:
        st = self.probe_stats()
        pl = self.pipeline
        assert pl is not None
        return (f"{rate:.1f} events/s | {self.counters.events} events, {pl.exported} spans exported, "
                f"{pl.queued} queued | lost: {st.get('ringbuf_full', 0)} ring buffer, "
                f"{st.get('rate_capped', 0)} rate-capped, {pl.dropped_queue_full} export queue full, "
                f"{pl.failed} export failed, {st.get('decode_errors', 0)} undecodable")

    # -- the run ---------------------------------------------------------------------
    def run(self) -> int:
        from .loader import Loader, LoaderError
        from .probes import KernelContext, ProbeUnavailable, families

        from .check import OK, check_privileges
        priv = check_privileges()
        if priv.status != OK:
            raise StartError(f"{priv.detail}. Fix: {priv.fix}")
        tfs, how = tracefs.ensure_tracefs()
        if tfs is None:
            raise StartError(f"tracefs: {how}. Fix: {tracefs.MOUNT_FIX}")
        btf, _btf_note = load_btf()
        symbol, ks_note = load_ksyms()
        ctx = KernelContext(btf=btf, symbol=symbol, clock=self.clock, ids=self.ids, cfg=self.cfg)
        planned = []
        for fam in families():
            if not self.cfg[f"probes.{fam.name}.enabled"]:
                continue
            try:
                plan = fam.plan(ctx)
            except ProbeUnavailable as e:
                self.say(f"probe {fam.name} cannot run here: {e}")
                continue
            for note in getattr(plan, "degraded", []):
                self.say(f"degraded: {note}")
            planned.append((fam, plan))
        if not planned:
            raise StartError("no probe can run (all disabled in the config, or unavailable: see above; "
                             "`otel-kernelnet check` says why)")
        if ks_note != "ok":
            self.say(f"degraded: kernel addresses shown in hex ({ks_note})")

        res = resource.build(self.cfg["resource.attributes"])
        sink, target = self._make_sink(res)
        embedded = target is None
        self.pipeline = ExportPipeline(sink, max_queue=self.cfg["export.queue_spans"],
                                       max_batch=self.cfg["export.batch_spans"],
                                       max_delay_s=self.cfg["export.batch_delay_ms"] / 1000)
        if embedded:
            self.say(f"no OTLP endpoint configured: writing {sink.description} "
                     "(read it with `otel-kernelnet diagnose` or any OTLP JSON reader)")
        else:
            self.say(f"exporting {sink.description}")

        from .export import metrics
        self.metrics = metrics.build(res, target, self.output, self.cfg["status.interval_s"],
                                     self.stats_by_probe, self.pipeline_stats,
                                     timeout_s=self.cfg["export.otlp.timeout_s"])
        old_handlers = self._install_signals()
        loader = Loader(debug_print_source=self.debug_bpf)
        t0 = time.monotonic()
        try:
            for fam, plan in planned:
                try:
                    fam.start(loader, plan, ctx, self._emit, self._on_error)
                except LoaderError as e:
                    raise StartError(f"probe {fam.name}: {e}") from None
                self.probes.append(fam)
            self.say(f"probes attached in {time.monotonic() - t0:.2f}s "
                     f"({'; '.join(f.summary for f in self.probes)}); "
                     f"headers: {loader.headers.how if loader.headers else '?'}")
            if self.ready_file:
                self.ready_file.write_text(f"{os.getpid()}\n")
            self._loop(loader)
        finally:
            self._shutdown(loader, old_handlers)
        return 0

    def _shutdown(self, loader, old_handlers) -> None:
        """Drain, detach, flush: runs on every exit path, each step even if one fails."""
        try:
            loader.consume()
            self._final_probe_stats = self.stats_by_probe()
        except Exception:
            pass
        for fam in self.probes:
            try:
                fam.close()
            except Exception as e:
                self.say(f"warning: closing probe {fam.name}: {e}")
        try:
            loader.close()
        finally:
            self._restore_signals(old_handlers)
            if self.ready_file:
                self.ready_file.unlink(missing_ok=True)
            if self.pipeline:
                self.pipeline.close(timeout_s=max(5.0, self.cfg["export.otlp.timeout_s"]))
                self.say("stopped: " + self.status_line(0.0).split(" | ", 1)[1])
            if self.metrics:
                try:
                    self.metrics.shutdown()  # one last export of the final counts
                except Exception as e:
                    self.say(f"warning: final metrics export failed: {e}")

    def _loop(self, loader) -> None:
        poll = self.cfg["ringbuf.poll_interval_ms"] / 1000
        every = self.cfg["status.interval_s"]
        tty = hasattr(self.out, "isatty") and self.out.isatty()
        start = last = time.monotonic()
        last_events = 0
        deadline = start + self.duration if self.duration else None
        while not self.stop_event.is_set():
            timeout = poll if deadline is None else max(0.0, min(poll, deadline - time.monotonic()))
            self.stop_event.wait(timeout)
            loader.consume()
            for fam in self.probes:
                fam.poll()
            self.clock.maybe_recalibrate()
            now = time.monotonic()
            if every and now - last >= every:
                rate = (self.counters.events - last_events) / (now - last)
                line = self.status_line(rate)
                if tty:
                    print(f"\r\033[K{line}", end="", file=self.out, flush=True)
                else:
                    self.say(line)
                last, last_events = now, self.counters.events
            if deadline is not None and now >= deadline:
                break
        if tty and every:
            print(file=self.out)

    def _install_signals(self):
        if threading.current_thread() is not threading.main_thread():
            return None

        def stop(signum, _frame):
            self.stop_event.set()
        return {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}

    @staticmethod
    def _restore_signals(old) -> None:
        if old:
            for s, h in old.items():
                signal.signal(s, h)
