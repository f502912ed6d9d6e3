"""Start-up, shutdown and idle behaviour of the loader and the collector's loop, with
stand-ins for bcc (issue 7 items 6-7; the kernel side: tests/kernel/test_drop_probe.py)."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from otel_kernelnet import collector as collector_mod
from otel_kernelnet.collector import Collector, LazySymbols
from otel_kernelnet.config import validate
from otel_kernelnet.loader import Loader, LoaderError, Program
from otel_kernelnet.spans import KernelSpan

ROOT = Path(__file__).resolve().parents[2]


class FakeObject:
    """What Loader.detach/close use of a BpfObject; ``gate`` runs inside each detach."""

    def __init__(self, gate=None, fail: set[str] = frozenset()):
        self.gate = gate
        self.fail = fail
        self.detached: list[str] = []
        self.cleaned = False

    def detach(self, tp: str) -> None:
        if self.gate is not None:
            self.gate()
        if tp in self.fail:
            raise Exception("kernel said no")
        self.detached.append(tp)

    def close(self) -> None:
        self.cleaned = True


def loader_with(*programs: Program) -> Loader:
    loader = Loader()
    loader._programs.extend(programs)
    return loader


def test_detach_closes_all_tracepoints_at_once():
    # every detach waits at a barrier for all the others: a serial detach breaks it
    tps = [f"cat:tp{i}" for i in range(6)]
    barrier = threading.Barrier(len(tps), timeout=10)
    a, b = FakeObject(gate=barrier.wait), FakeObject(gate=barrier.wait)
    loader = loader_with(Program("a", a, attached=[(tp, "fn") for tp in tps[:4]]),
                         Program("b", b, attached=[(tp, "fn") for tp in tps[4:]]))
    loader.detach()
    assert sorted(a.detached + b.detached) == tps
    assert not barrier.broken
    loader.close()  # raises if any detach had failed
    assert a.cleaned and b.cleaned


def test_detach_keeps_programs_until_close_and_close_reports_failures():
    bpf = FakeObject(fail={"cat:bad"})
    prog = Program("p", bpf, attached=[("cat:good", "f1"), ("cat:bad", "f2")])
    loader = loader_with(prog)
    loader.detach()
    assert bpf.detached == ["cat:good"]
    # maps and programs stay for the final drain and counters (recursion_misses reads
    # the attached list) until close()
    assert not bpf.cleaned and prog.attached == [("cat:good", "f1"), ("cat:bad", "f2")]
    loader.detach()  # a second detach does not detach again
    assert bpf.detached == ["cat:good"]
    with pytest.raises(LoaderError, match="cat:bad: kernel said no"):
        loader.close()
    assert bpf.cleaned
    loader.close()  # once closed, nothing is left to report


class FakeLoader:
    """Stands in for Loader in the collector's loop and shutdown; ``pending`` holds
    records in the ring buffer, handed to ``emit`` on consume()."""

    def __init__(self, emit, pending: int = 0, flows: set[int] = frozenset()):
        self.emit = emit
        self.pending = pending
        self.flows = flows  # consume() calls (0-based) that find one record
        self.calls: list[str] = []
        self.consumes = 0

    def detach(self) -> None:
        self.calls.append("detach")

    def consume(self) -> None:
        self.calls.append("consume")
        n = self.pending + (1 if self.consumes in self.flows else 0)
        self.pending = 0
        self.consumes += 1
        for _ in range(n):
            self.emit(KernelSpan(name="kernel.drop", start_ns=1, end_ns=2, trace_id=b"\x01" * 16,
                                 span_id=b"\x02" * 8, attributes={}))
        return n

    def close(self) -> None:
        self.calls.append("close")


def make_collector(tmp_path: Path, **config) -> Collector:
    cfg = validate({"receiver": {"enabled": False}, "status": {"interval_s": 0}, **config}, "test")
    col = Collector(cfg, output=str(tmp_path / "out"), out=open(tmp_path / "log", "w"))
    col.open_export()
    return col


def test_shutdown_detaches_first_then_drains_what_the_ring_buffers_still_hold(tmp_path):
    col = make_collector(tmp_path)
    loader = FakeLoader(col._emit, pending=7)  # written after the loop's last drain
    col._shutdown(loader, None)
    assert loader.calls[:2] == ["detach", "consume"] and loader.calls[-1] == "close"
    assert col.counters.events == 7
    assert col.pipeline.exported == 7  # flushed before returning


class CountingStop:
    """stop_event stand-in: records each wait's timeout and advances a fake clock by
    it (``monotonic``); set after ``n`` waits."""

    def __init__(self, n: int):
        self.n = n
        self.waits: list[float] = []
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def wait(self, timeout: float) -> bool:
        self.waits.append(round(timeout, 6))
        self.now += timeout
        return self.is_set()

    def is_set(self) -> bool:
        return len(self.waits) >= self.n


def test_without_ring_buffer_wake_ups_the_loop_sleeps_long_only_after_a_quiet_drain(tmp_path):
    # a loader with nothing to block on (no wait()): the loop sleeps on its stop event and
    # drains after every sleep; one poll interval first and after a drain that found a
    # record (the records written without a wake-up since), ringbuf.max_wait_ms otherwise
    # (no family samples on a shorter period, no join, no status line)
    col = make_collector(tmp_path)
    stop = CountingStop(80)
    col.stop_event, col._monotonic = stop, stop.monotonic
    loader = FakeLoader(col._emit, flows={10})
    col._loop(loader)
    poll, long = col.cfg["ringbuf.poll_interval_ms"] / 1000, col.cfg["ringbuf.max_wait_ms"] / 1000
    assert poll < long
    # the quiet sleeps end on the families' period (from the start), so the sleep after a
    # follow-up drain is what is left of it
    assert stop.waits == [poll, long - poll] + [long] * 9 + [poll, long - poll] + [long] * 67  # consume #10 found one
    assert col.counters.events == 1 and loader.calls.count("consume") == 80
    col.pipeline.close(timeout_s=5)


def test_with_ring_buffer_wake_ups_the_loop_blocks_in_the_loader(tmp_path):
    col = make_collector(tmp_path)
    stop = CountingStop(10**9)
    col.stop_event, col._monotonic = stop, stop.monotonic
    loader = FakeLoader(col._emit, flows={3})
    waits: list[float] = []

    def wait(timeout: float) -> bool:  # the loader blocks (epoll); the stop event is not slept on
        waits.append(round(timeout, 6))
        stop.now += timeout
        if len(waits) == 6:
            stop.n = 0
        return len(waits) == 2  # woken by a ring buffer once, else timed out
    loader.wait = wait
    col._loop(loader)
    poll, long = col.cfg["ringbuf.poll_interval_ms"] / 1000, col.cfg["ringbuf.max_wait_ms"] / 1000
    # start: a follow-up drain; woken (2nd): a follow-up; consume #3 (0-based) finds a record: a
    # follow-up. A quiet sleep ends when the families' next round is due: max_wait after the
    # last one (the first at the start), not a full max_wait after a follow-up drain.
    assert waits == [poll, long - poll] * 3
    assert stop.waits == []
    assert loader.calls.count("consume") == 6 and col.counters.events == 1
    col.pipeline.close(timeout_s=5)


class PolledFamily:
    """A family whose poll() the loop calls; records the (fake) time of each call."""

    def __init__(self, name: str, clock):
        self.name, self.clock, self.polls = name, clock, []

    def poll(self) -> None:
        self.polls.append(round(self.clock(), 6))


def test_idle_the_loop_wakes_when_the_zone_sample_is_due_not_every_max_wait(tmp_path):
    # the reclaim family samples /proc/zoneinfo in poll() every zoneinfo_interval_ms: the
    # quiet sleep ends then; other families only get the max_wait period
    col = make_collector(tmp_path, probes={"reclaim": {"zoneinfo_interval_ms": 400}},
                         ringbuf={"max_wait_ms": 1000})
    stop = CountingStop(12)
    col.stop_event, col._monotonic = stop, stop.monotonic
    col.probes = [PolledFamily("reclaim", stop.monotonic), PolledFamily("drop", stop.monotonic)]
    col._loop(FakeLoader(col._emit))
    poll = col.cfg["ringbuf.poll_interval_ms"] / 1000
    assert stop.waits == [poll, 0.38] + [0.4] * 10
    assert col.probes[0].polls[-3:] == [1003.6, 1004.0, 1004.4]  # every round: every 0.4 s
    col.pipeline.close(timeout_s=5)

    col = make_collector(tmp_path)  # no family with a period: the default max_wait, 1 s
    stop = CountingStop(5)
    col.stop_event, col._monotonic = stop, stop.monotonic
    col.probes = [PolledFamily("drop", stop.monotonic)]
    col._loop(FakeLoader(col._emit))
    assert col.cfg["ringbuf.max_wait_ms"] == 1000 and stop.waits == [poll, 0.98, 1.0, 1.0, 1.0]
    col.pipeline.close(timeout_s=5)


def test_a_status_line_due_just_before_a_round_waits_for_it(tmp_path):
    # status every 5 s, rounds every 1 s: the line is printed on a round, no wake-up of its own
    col = make_collector(tmp_path, status={"interval_s": 5})
    stop = CountingStop(16)
    col.stop_event, col._monotonic = stop, stop.monotonic
    printed: list[float] = []
    col.status_line = lambda rate: printed.append(round(stop.now, 6)) or "status"
    col._loop(FakeLoader(col._emit))
    assert stop.waits == [0.02, 0.98] + [1.0] * 14
    assert printed == [1005.0, 1010.0, 1015.0]
    col.pipeline.close(timeout_s=5)

    # a status period shorter than the rounds: it is a deadline of its own
    col = make_collector(tmp_path, status={"interval_s": 1}, ringbuf={"max_wait_ms": 1000},
                         probes={"reclaim": {"zoneinfo_interval_ms": 3000}})
    stop = CountingStop(4)
    col.stop_event, col._monotonic = stop, stop.monotonic
    col._loop(FakeLoader(col._emit))
    assert stop.waits == [0.02, 0.98, 1.0, 1.0]
    col.pipeline.close(timeout_s=5)


class FakeJoin:
    def __init__(self):
        self.pending, self.active, self.ticks, self.added = 0, False, 0, []

    def tick(self) -> None:
        self.ticks += 1

    def add_app_spans(self, spans) -> None:
        self.added.extend(spans)
        self.active = True


def test_the_join_ticks_on_its_short_period_only_while_it_has_work(tmp_path):
    from otel_kernelnet.collector import JOIN_TICK_S
    col = make_collector(tmp_path)
    stop = CountingStop(8)
    col.stop_event, col._monotonic = stop, stop.monotonic
    col.join = join = FakeJoin()
    wakes: list[int] = []
    col._interrupt = lambda: wakes.append(1)
    loader = FakeLoader(col._emit)
    orig = loader.consume

    def consume():
        orig()
        if loader.consumes == 3:  # the first app spans arrive (receiver thread)
            col._add_app_spans(["app span"])
        if loader.consumes == 4:  # a second batch: the join is already hot, no wake-up
            col._add_app_spans(["another"])
    loader.consume = consume
    col._loop(loader)
    assert wakes == [1] and join.added == ["app span", "another"]
    assert stop.waits == [0.02, 0.98, 1.0] + [JOIN_TICK_S] * 5
    assert join.ticks == 8  # every round
    col.pipeline.close(timeout_s=5)


def test_lazy_symbols_wait_for_the_load(monkeypatch):
    monkeypatch.setattr(collector_mod, "load_ksyms", lambda: ((lambda a: f"sym+{a:#x}"), "ok"))
    syms = LazySymbols()
    out: list[str] = []
    t = threading.Thread(target=lambda: out.append(syms(0x10)))
    t.start()
    syms.load()
    t.join(20)
    assert out == ["sym+0x10"] and syms.note == "ok"


def test_lazy_symbols_fall_back_to_hex_when_the_load_fails(monkeypatch):
    def boom():
        raise RuntimeError("unreadable")
    monkeypatch.setattr(collector_mod, "load_ksyms", boom)
    syms = LazySymbols()
    syms.load()
    assert syms(0xff) == "0xff" and "unreadable" in syms.note


def test_start_breakdown_names_each_phase(tmp_path):
    col = make_collector(tmp_path)
    col.start_phases = {"exec": 10.0, "imports+checks": 10.25, "compile+attach": 11.75}
    assert col.start_breakdown() == "1.75 s since exec (imports+checks 0.25, compile+attach 1.50)"
    col.pipeline.close(timeout_s=5)


def test_run_does_not_import_the_lab_or_the_analysis_package():
    code = ("import sys\nfrom otel_kernelnet import cli\n"
            "assert cli.main(['run', '--duration', '-1']) == 2\n"
            "import otel_kernelnet.collector\n"
            "print(sorted(m for m in sys.modules if m.startswith(('otel_kernelnet.lab', 'kernelnet_analysis'))))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


class PipeRing:
    """A ring buffer map stand-in: its ``fd`` is a pipe's read end, readable once
    something is written to the write end (as a ring buffer's fd after a wake-up)."""

    def __init__(self):
        import os
        self.fd, self.w = os.pipe()
        self.name = "kn_events"


class PipeObject:
    def __init__(self, ring: PipeRing):
        self.ring = ring

    def __getitem__(self, name: str) -> PipeRing:
        assert name == "kn_events"
        return self.ring

    def close(self) -> None:
        pass


class FakeRings:
    """Stands in for bpfobj.RingBuffers (a ring buffer reader wants a real map)."""

    def __init__(self):
        self.added: list = []

    def add(self, table, cb) -> None:
        self.added.append((table.name, cb))

    def consume(self) -> int:
        return 0

    def close(self) -> None:
        pass


def test_loader_wait_sleeps_until_a_wake_up_or_an_interrupt():
    import os
    import time
    ring = PipeRing()
    loader = Loader()
    loader._rings = FakeRings()
    prog = Program("fam", PipeObject(ring))
    assert loader.wait(0.01) is None  # no ring buffer open: nothing to block on
    loader.open_ring_buffer(prog, "kn_events", lambda sample: None)
    assert [name for name, _cb in loader._rings.added] == ["kn_events"]
    t0 = time.monotonic()
    assert loader.wait(0.05) is False and time.monotonic() - t0 >= 0.04  # timed out
    os.write(ring.w, b"x")  # the BPF side's wake-up
    assert loader.wait(5) is True
    os.read(ring.fd, 1)
    threading.Timer(0.05, loader.interrupt).start()  # a stop request from elsewhere
    t0 = time.monotonic()
    assert loader.wait(5) is True and time.monotonic() - t0 < 2
    assert loader.wait(0.01) is False  # the interrupt was consumed
    loader.close()  # closes the epoll and the eventfd
    assert loader.wait(0.01) is None
    loader.interrupt()  # after close: a no-op
    os.close(ring.w)
    os.close(ring.fd)


def test_quiet_gc_freezes_the_start_up_heap_raises_gen0_and_restores_both(tmp_path):
    import gc

    from otel_kernelnet.collector import GC_GEN0_THRESHOLD, QuietGc
    before, frozen0 = gc.get_threshold(), gc.get_freeze_count()
    assert frozen0 == 0, "another test left objects frozen"
    q = QuietGc()
    q.start()
    try:
        assert gc.get_threshold() == (max(GC_GEN0_THRESHOLD, before[0]), *before[1:])
        assert gc.get_freeze_count() > 1000  # the test process's modules and objects
        late = [[i] for i in range(100)]  # a late load (kallsyms) joins the frozen heap
        n = gc.get_freeze_count()
        q.freeze()
        assert gc.get_freeze_count() >= n + 100
        q.start()  # a second start changes nothing
        assert gc.get_threshold()[0] == max(GC_GEN0_THRESHOLD, before[0])
    finally:
        q.restore()
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0
    q.freeze()  # after restore (the symbol thread finishing late): no freeze
    assert gc.get_freeze_count() == 0
    del late
    # the collector's shutdown restores them on its exit path
    col = make_collector(tmp_path)
    col._gc.start()
    col._shutdown(FakeLoader(col._emit), None)
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0
