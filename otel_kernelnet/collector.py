"""The collector's run loop: probes -> decode -> spans -> export, with a live status line.

Lifecycle: resolve where spans go, read what the probes need from the running kernel
(tracefs format files, BTF), compile and attach, start the receiver, write the ready
file (the "start-up:" line says where the time went), then drain the ring buffers
whenever the BPF side wakes the loop (at most every ``ringbuf.poll_interval_ms`` per
CPU while records come; a record waits about that long at most) or, when quiet, the
next housekeeping task is due (the zone sample, the join, the status line: once a second
idle), until ``--duration`` passes or SIGINT/SIGTERM arrives (a signal ends the sleep
at once); kallsyms is parsed after the start. On every exit
path the tracepoints are detached (all at once), the ring buffers drained a last
time, the probes freed and the export queue flushed; the final summary says what was
seen, exported and lost.
"""

from __future__ import annotations

import gc
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


# Families whose poll() samples on a period of their own, and the key of that period: the
# loop runs a housekeeping round at least that often (else every ringbuf.max_wait_ms).
POLL_PERIOD_KEYS = {"reclaim": "probes.reclaim.zoneinfo_interval_ms"}
JOIN_TICK_S = 0.25  # the join's housekeeping period while it has work (Collector._join_hot)
COALESCE_S = 0.05  # a status line due this close before a housekeeping round waits for it
# The cyclic garbage collector once running (docs/benchmarks.md section 6): the start-up's
# objects (modules, bcc, BTF, kallsyms) are frozen out of its scans, and a collection of
# the youngest generation waits for this many new container objects, not 700. The
# per-span objects form no cycles (reference counting frees them) but every collection
# scanned them and every full one the whole start-up heap: at ~14 K spans/s that was
# ~5.6 points of a core and ~44 ms of p99 latency (medians of 5 interleaved pairs).
GC_GEN0_THRESHOLD = 20_000


class QuietGc:
    """``start()``: collect once, freeze what survives, raise the first threshold;
    ``freeze()`` again after a late load (kallsyms); ``restore()`` undoes both (the
    collector also runs inside other processes: tests, the lab's replay)."""

    def __init__(self, gen0: int = GC_GEN0_THRESHOLD):
        self.gen0 = gen0
        self._old: tuple[int, ...] | None = None
        self._lock = threading.Lock()  # freeze() comes from the kallsyms thread, maybe after restore()

    def start(self) -> None:
        with self._lock:
            if self._old is None:
                self._old = gc.get_threshold()
                gc.collect()
                gc.freeze()
                gc.set_threshold(max(self.gen0, self._old[0]), *self._old[1:])

    def freeze(self) -> None:
        with self._lock:
            if self._old is not None:
                gc.freeze()

    def restore(self) -> None:
        with self._lock:
            if self._old is not None:
                gc.set_threshold(*self._old)
                gc.unfreeze()
                self._old = None


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


class LazySymbols:
    """``address -> symbol+offset`` from /proc/kallsyms parsed on another thread (about
    0.15-0.2 s of Python) once the collector is ready; a lookup before ``load()`` has
    finished waits for it (at most 30 s, then hex). ``note``: "ok" or why addresses stay hex."""

    def __init__(self) -> None:
        self._done = threading.Event()
        self._resolve: Callable[[int], str] = lambda a: f"0x{a:x}"
        self.note = "not loaded"

    def load(self) -> None:
        try:
            self._resolve, self.note = load_ksyms()
        except Exception as e:  # never leave a lookup waiting
            self.note = f"kallsyms: {e}"
        finally:
            self._done.set()

    def __call__(self, addr: int) -> str:
        if not self._done.is_set():
            self._done.wait(30)
        return self._resolve(addr)


def process_age_s() -> float | None:
    """Seconds since this process started (from /proc/self/stat; 10 ms resolution)."""
    try:
        stat = Path("/proc/self/stat").read_text()
        start_ticks = int(stat.rsplit(")", 1)[1].split()[19])
        return time.clock_gettime(time.CLOCK_BOOTTIME) - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


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
        self._gc = QuietGc()
        self.out = out
        self.debug_bpf = debug_bpf
        self.stop_event = threading.Event()
        self.counters = Counters()
        self.clock = KernelClock()
        self.ids = RandomIds()
        self.pipeline: ExportPipeline | None = None
        self.metrics = None
        self.probes: list[Any] = []
        # end of each start-up phase (time.monotonic()), in order; the first is where it
        # started: the process's exec when the process is new (`run`), else now
        age = process_age_s()
        self.start_phases: dict[str, float] = (
            {"exec": time.monotonic() - age} if age is not None and age < 30 else {"start": time.monotonic()})

    # -- helpers ---------------------------------------------------------------------
    def start_breakdown(self) -> str:
        """``1.23 s since exec (imports+checks 0.30, ...)``: where the start-up went."""
        items = list(self.start_phases.items())
        if len(items) < 2:
            return "?"
        parts = [f"{name} {t - items[i][1]:.2f}" for i, (name, t) in enumerate(items[1:])]
        return f"{items[-1][1] - items[0][1]:.2f} s since {items[0][0]} ({', '.join(parts)})"

    def _load_symbols(self, symbols: "LazySymbols") -> None:
        symbols.load()
        self._gc.freeze()  # the symbol table joins the frozen start-up heap
        if symbols.note != "ok":
            self.say(f"degraded: kernel addresses shown in hex ({symbols.note})")

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

    def open_export(self) -> tuple[dict[str, Any], Any, Any]:
        """The export side, without any probe: resource, sink (target None: the embedded
        store) and ``self.pipeline``. ``run()`` uses it; so does the lab's pfmemalloc replay,
        which feeds recorded kernel records through the families into the same pipeline."""
        res = resource.build(self.cfg["resource.attributes"])
        sink, target = self._make_sink(res)
        self.pipeline = ExportPipeline(sink, max_queue=self.cfg["export.queue_spans"],
                                       max_batch=self.cfg["export.batch_spans"],
                                       max_delay_s=self.cfg["export.batch_delay_ms"] / 1000)
        return res, sink, target

    pods: Any = None  # k8s.PodResolver in daemonset mode
    _interrupt: Callable[[], None] = staticmethod(lambda: None)  # the loader's, once it exists
    _monotonic: Callable[[], float] = staticmethod(time.monotonic)  # the loop's clock (tests: a fake one)

    def _emit(self, span: KernelSpan) -> None:
        self.counters.events += 1
        assert self.pipeline is not None
        if self.pods is not None:  # daemonset: which pod the event belongs to (k8s.*)
            a = span.attributes
            ns, cg = a.get("kernelnet.netns"), a.get("kernelnet.cgroup.id")
            if ns or cg:
                a.update(self.pods.attributes_for(netns_inode=ns, cgroup_id=cg))
        if self.join is not None:
            self.join.add_kernel(span)  # joined, buffered for its app span, or passed on
        else:
            self.pipeline.submit(span)

    # -- OTLP receiver and join (docs/join.md) -------------------------------------------
    join: Any = None
    receiver: Any = None
    forwarder: Any = None
    watch_errors: int = 0

    def _start_receiver(self, sink: Any, target: Any) -> None:
        """Receiver -> forwarder (app spans, unchanged) and join index; kernel spans -> join -> pipeline."""
        if not self.cfg["receiver.enabled"]:
            return
        from .export.forward import Forwarder, make_target
        from .join import Join
        from .receiver import Ingest, OtlpReceiver
        assert self.pipeline is not None
        self.forwarder = Forwarder(make_target(target, sink, self.cfg["export.otlp.timeout_s"]),
                                   max_spans=self.cfg["receiver.forward_queue_spans"],
                                   max_attempts=self.cfg["receiver.forward_attempts"])
        if self.cfg["join.enabled"]:
            ms = 1_000_000
            self.join = Join(self.pipeline.submit, buffer_ttl_ns=self.cfg["join.kernel_buffer_ms"] * ms,
                             buffer_max=self.cfg["join.kernel_buffer_spans"], app_ttl_ns=self.cfg["join.app_ttl_ms"] * ms,
                             index_max=self.cfg["join.app_index_spans"], slack_ns=self.cfg["join.slack_us"] * 1000,
                             on_watch=lambda c: self._watch(c, True), on_unwatch=lambda c: self._watch(c, False))
        ingest = Ingest(self.cfg["receiver.max_request_mb"] << 20, forward=self.forwarder.submit,
                        add_app_spans=self._add_app_spans if self.join is not None else None)
        self.receiver = OtlpReceiver(ingest, self.cfg["receiver.grpc_endpoint"], self.cfg["receiver.http_endpoint"])
        for problem in self.receiver.start():
            self.say(f"warning: {problem}")
        if self.receiver.running:
            self.say(f"receiving application traces: {', '.join(self.receiver.running)}; forwarding them "
                     f"{self.forwarder.target.description}" + ("; joining kernel spans by socket cookie" if self.join else ""))

    def _watch(self, cookie: int, add: bool) -> None:
        """Cookies of indexed app spans -> the families that keep a watch list (full lifecycle spans)."""
        for fam in self.probes:
            if hasattr(fam, "watch") and hasattr(fam, "unwatch"):
                try:
                    (fam.watch if add else fam.unwatch)(cookie)
                except Exception as e:
                    self.watch_errors += 1
                    if self.watch_errors <= 3:
                        self.say(f"warning: watch list of {fam.name}: {e}")

    def _stop_receiver(self) -> None:
        if self.receiver is not None:
            self.receiver.stop()

    def _flush_join(self) -> None:
        """Release buffered kernel spans (unjoined) into the pipeline; deliver queued app spans."""
        if self.join is not None:
            self.join.flush()
        if self.forwarder is not None:
            self.forwarder.close(timeout_s=max(5.0, self.cfg["export.otlp.timeout_s"]))

    def join_status(self) -> str:
        if self.receiver is None:
            return ""
        ing, fw = self.receiver.ingest.stats, self.forwarder.stats
        out = (f" | app spans: {ing.spans} received, {fw.spans} forwarded, {ing.bad_requests + ing.too_large} bad "
               f"requests, {ing.backpressure_spans} refused (queue full), {fw.failed_spans + fw.unsent_spans} "
               f"forward failed")
        if self.join is not None:
            js = self.join.stats
            out += (f" | join: {js.joined_cookie} by cookie, {js.joined_inferred} inferred, {self.join.pending} "
                    f"waiting, {js.buffer_shed} shed")
        return out

    def _on_error(self, e: Exception) -> None:
        self.counters.mapping_errors += 1
        if self.counters.mapping_errors <= 3:
            self.say(f"warning: could not decode/map a kernel record: {e}")

    _final_probe_stats: dict[str, dict[str, int]] | None = None

    def stats_by_probe(self) -> dict[str, dict[str, int]]:
        """Each probe's counters (the last reading once the probes are detached)."""
        if self._final_probe_stats is not None:
            return self._final_probe_stats
        out = {p.name: p.stats() for p in self.probes}
        if self.pods is not None:
            out["k8s"] = self.pods.stats()
        return out

    def probe_stats(self) -> dict[str, int]:
        """Counters summed over probes."""
        total: dict[str, int] = {}
        for st in self.stats_by_probe().values():
            for k, v in st.items():
                total[k] = total.get(k, 0) + v
        return total

    _final_histograms: list | None = None

    def _from_families(self, method: str) -> list:
        """What every family that has ``method`` returns, in family order."""
        return [getattr(fam, method)() for fam in self.probes if hasattr(fam, method)]

    def metric_histograms(self) -> list:
        """The families' kernel-side histograms (the last reading once detached)."""
        if self._final_histograms is not None:
            return self._final_histograms
        return [p for points in self._from_families("metric_histograms") for p in points]

    def zone_gauges(self) -> list:
        return [z for zones in self._from_families("gauges") for z in zones]

    def netns_counter_values(self) -> dict:
        return {k: v for latest in self._from_families("latest") for k, v in latest.items()}

    def app_stats(self) -> dict[str, dict[str, int]]:
        parts = {"ingest": self.receiver and self.receiver.ingest, "forward": self.forwarder, "join": self.join}
        return {name: part.stats.as_dict() for name, part in parts.items() if part is not None}

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
                f"{st.get('kernel_missed', 0)} nested in the kernel, "
                f"{st.get('rate_capped', 0)} rate-capped, {pl.dropped_queue_full} export queue full, "
                f"{pl.failed} export failed, {st.get('decode_errors', 0)} undecodable") + self.join_status()

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
        tracefs.hide_fields(self.cfg["probes.hide_fields"])
        if self.cfg["probes.hide_fields"]:
            self.say("hiding tracepoint fields as if absent (probes.hide_fields): "
                     + ", ".join(self.cfg["probes.hide_fields"]))
        phases = self.start_phases
        phases["imports+checks"] = time.monotonic()
        btf, _btf_note = load_btf()
        symbols = LazySymbols()  # loaded once the collector is ready (off the start-up path)
        from .links import LinkIndex
        from . import scope as scope_mod
        try:
            scope = scope_mod.resolve(self.cfg["scope.mode"], self.cfg["scope.netns"])
            cg_scope = scope_mod.resolve_cgroup(self.cfg["scope.mode"], self.cfg["scope.cgroup"])
        except scope_mod.ScopeError as e:
            raise StartError(str(e)) from None
        self.say(f"scope ({self.cfg['scope.mode']}): {scope_mod.describe(scope)}; per family: "
                 + "; ".join(scope_mod.describe_families(scope, cg_scope,
                                                                self.cfg["scope.mode"] == "sidecar")))
        if self.cfg["scope.mode"] == "daemonset":
            from .k8s import PodResolver
            self.pods = PodResolver()
        ctx = KernelContext(btf=btf, symbol=symbols, clock=self.clock, ids=self.ids, cfg=self.cfg, links=LinkIndex(),
                            scope_netns=scope)
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
        phases["kernel info+plans"] = time.monotonic()

        res, sink, target = self.open_export()
        embedded = target is None
        if embedded:
            self.say(f"no OTLP endpoint configured: writing {sink.description} "
                     "(read it with `otel-kernelnet diagnose` or any OTLP JSON reader)")
        else:
            self.say(f"exporting {sink.description}")

        from .export import metrics
        self.metrics = metrics.build(res, target, self.output, self.cfg["metrics.interval_s"],
                                     self.stats_by_probe, self.pipeline_stats,
                                     timeout_s=self.cfg["export.otlp.timeout_s"],
                                     histograms=self.metric_histograms, netns_counters=self.netns_counter_values,
                                     zones=self.zone_gauges, app_stats=self.app_stats)
        phases["exporter"] = time.monotonic()
        old_handlers = self._install_signals()
        # bcc compiles one family at a time, on this thread: concurrent compiles in one
        # process are not safe (iovisor/bcc#4500: a process-wide table registry, chdir)
        # and, measured on a loaded 2-CPU VM, overlapping Python work with them made
        # the start slower, not faster (docs/benchmarks.md section 3). A warm start
        # compiles nothing: the objects come from bpf.cache_dir (bpfobj.py).
        loader = Loader(debug_print_source=self.debug_bpf, wake_interval_ms=self.cfg["ringbuf.poll_interval_ms"],
                        cache_dir=self.cfg["bpf.cache_dir"] or None)
        self._interrupt = loader.interrupt
        t0 = time.monotonic()
        try:
            for fam, plan in planned:
                try:
                    fam.start(loader, plan, ctx, self._emit, self._on_error)
                except LoaderError as e:
                    raise StartError(f"probe {fam.name}: {e}") from None
                self.probes.append(fam)
            phases["compile+attach"] = time.monotonic()
            self.say(f"probes attached in {time.monotonic() - t0:.2f}s "
                     f"({'; '.join(f.summary for f in self.probes)})")
            self.say(f"bpf objects: {loader.objects_summary()}")
            for note in loader.cache.notes:
                self.say(f"warning: {note}")
            self._start_receiver(sink, target)
            loader.stop_compiler()  # the child process bcc compiled in, if the cache missed
            phases["receiver"] = time.monotonic()
            self.say("start-up: " + self.start_breakdown())
            if self.ready_file:
                self.ready_file.write_text(f"{os.getpid()}\n")
            self._gc.start()  # after the ready file: its one full collection does not delay readiness
            # kallsyms (0.15-0.2 s of Python) is only needed to name a drop's location:
            # parsed after the start, the first such lookup waits for it
            threading.Thread(target=self._load_symbols, args=(symbols,), name="kn-ksyms", daemon=True).start()
            self._loop(loader)
        finally:
            self._shutdown(loader, old_handlers)
        return 0

    def _shutdown(self, loader, old_handlers) -> None:
        """Detach, drain, flush: runs on every exit path, each step even if one fails.

        The receiver stops while the tracepoints detach (both mostly wait: gRPC's
        grace, the kernel's RCU grace periods); the ring buffers are drained after the
        detach, so every record written before it is exported."""
        t0 = time.monotonic()
        stopper = threading.Thread(target=self._stop_receiver, name="kn-stop-receiver", daemon=True)
        stopper.start()
        try:
            detach = getattr(loader, "detach", None)
            if detach is not None:
                detach()
        except Exception as e:
            self.say(f"warning: detaching: {e}")
        t_detach = time.monotonic()
        stopper.join()
        try:
            loader.consume()
            self._final_probe_stats = self.stats_by_probe()
            self._final_histograms = self.metric_histograms()
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
            self._gc.restore()
            if self.ready_file:
                self.ready_file.unlink(missing_ok=True)
            if self.pipeline:
                self._flush_join()
                self.pipeline.close(timeout_s=max(5.0, self.cfg["export.otlp.timeout_s"]))
                self.say("stopped: " + self.status_line(0.0).split(" | ", 1)[1])
            if self.metrics:
                try:
                    self.metrics.shutdown()  # one last export of the final counts
                except Exception as e:
                    self.say(f"warning: final metrics export failed: {e}")
            self.say(f"shutdown: {time.monotonic() - t0:.2f} s (detach {t_detach - t0:.2f} s, then drain, "
                     f"free, flush {time.monotonic() - t_detach:.2f} s)")

    def _loop(self, loader) -> None:
        # Sleeps until the BPF side wakes it (the first record a CPU writes after
        # ringbuf.poll_interval_ms without a wake-up: bpf/common.bcc.h kn_wake), then
        # drains every ring buffer. After a wake-up or a drain that found records it
        # drains once more a poll interval later (the records written without a wake-up
        # since: a CPU that woke us wakes us again only a poll interval later), so every
        # record waits about one poll interval at most. After a quiet drain it sleeps
        # until the next housekeeping task is due (docs/benchmarks.md section 3):
        # - the families' poll(): the reclaim family's /proc/zoneinfo sample every
        #   probes.reclaim.zoneinfo_interval_ms (POLL_PERIOD_KEYS), else every
        #   ringbuf.max_wait_ms; the netns-counter worker wakes the loop itself when it
        #   has queued spans;
        # - the join (expiry, watch-list changes) every JOIN_TICK_S while an application
        #   sends keyed spans or kernel spans wait in its buffer; the receiver wakes the
        #   loop when the first app spans arrive;
        # - the status line (on a housekeeping round when one is due within
        #   COALESCE_S after it), the --duration deadline; a signal ends the sleep at once.
        # Idle with the defaults that is one wake-up a second. (Before: a fixed 20 ms
        # poll, 2.1% of a core; then a fixed 250 ms housekeeping sleep, 4 wake-ups/s;
        # a back-off without kernel wake-ups lost records.)
        mono = self._monotonic
        poll = self.cfg["ringbuf.poll_interval_ms"] / 1000
        period = min([self.cfg["ringbuf.max_wait_ms"] / 1000]
                     + [self.cfg[POLL_PERIOD_KEYS[f.name]] / 1000 for f in self.probes if f.name in POLL_PERIOD_KEYS])
        every = self.cfg["status.interval_s"]
        tty = hasattr(self.out, "isatty") and self.out.isatty()
        start = last = mono()
        last_events = 0
        deadline = start + self.duration if self.duration else None
        next_poll = start + period  # the families' next poll() (after the start's first samples)
        wait = getattr(loader, "wait", None)
        busy = True
        while not self.stop_event.is_set():
            now = mono()
            if busy:
                wake_at = now + poll
            else:
                wake_at = next_poll
                if self._join_hot():
                    wake_at = min(wake_at, now + JOIN_TICK_S)
                if every and last + every < wake_at - COALESCE_S:
                    wake_at = last + every
            if deadline is not None:
                wake_at = min(wake_at, deadline)
            timeout = max(0.0, wake_at - now)
            woke = wait(timeout) if wait is not None else None
            if woke is None:  # nothing to block on (no ring buffer open)
                self.stop_event.wait(timeout)
            found = loader.consume()
            busy = bool(woke) or bool(found)
            due = mono() >= next_poll
            for fam in self.probes:
                fam.poll()
            if due:
                # after the polls: a sampler that samples on its own period (>= ours) is
                # due again by then
                next_poll = mono() + period
            self.clock.maybe_recalibrate()
            if self.join is not None:
                self.join.tick()
            now = mono()
            if every and now - last >= every - COALESCE_S:
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

    def _join_hot(self) -> bool:
        """The join has work on a short period: an application sent keyed spans within
        ``join.app_ttl_ms`` (watch-list changes, expiries) or kernel spans wait for theirs."""
        j = self.join
        return j is not None and bool(j.pending or j.active)

    def _add_app_spans(self, spans) -> None:
        """The receiver's hand-off to the join: the first app spans (the join was idle, the
        loop may be in a long sleep) wake the loop, so that their cookies are watched and
        the join ticks on its short period from now on."""
        hot = self._join_hot()
        self.join.add_app_spans(spans)
        if not hot:
            self._interrupt()

    def _install_signals(self):
        if threading.current_thread() is not threading.main_thread():
            return None

        def stop(signum, _frame):
            self.stop_event.set()
            self._interrupt()  # ends the loop's sleep on the ring buffers at once
        return {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}

    @staticmethod
    def _restore_signals(old) -> None:
        if old:
            for s, h in old.items():
                signal.signal(s, h)
