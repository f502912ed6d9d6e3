"""B4: the pipeline ceiling: ring-buffer records -> decode -> span -> encode -> send.

Synthetic ``skb:kfree_skb`` records (the drop probe's real record layout, varied
ports, lengths, addresses, reasons, commands) are copied out of one contiguous buffer
(``ctypes.string_at``: one copy per record, as the collector's ring reader makes with a
slice of the mapped ring, bpfobj.MmapRing), decoded by the drop probe's decoder,
mapped by ``drop_span``, queued in the collector's ``ExportPipeline`` and exported by
``OtlpSink`` to a real OTLP receiver (rotel, the [test] extra, blackhole exporter, in
its own process). What is *not* in it: the ring reader's own loop per record (header
read, position update; libbpf's per-record ctypes callback, 0.7-1.1 us/record on this
VM class, research section 2, where the libbpf reader is used).

Four measurements, all in one run:

0. ``previous``: paired, interleaved (ABBA) closed-loop gRPC windows of this tree and
   of the code before the decode/map/queue speed-up (``--baseline``, a git commit:
   its ``otel_kernelnet`` is extracted with ``git archive`` and imported instead of
   this tree's), each window in a fresh child process of this script (``--child``)
   so both pay the same start-up and neither shares caches; per pair the ratio of CPU
   us per exported span, previous / now; median and IQR.
1. ``ratio``: paired, interleaved closed-loop windows (the producer waits when the
   queue holds more than 4 batches, so nothing is dropped) of the stock SDK path
   (``ReadableSpan`` + opentelemetry-exporter-otlp, what OtlpSink did before) and
   ``OtlpSink``; per pair the ratio of CPU us per exported span; median and IQR.
2. ``ceiling``: spans exported per CPU-second of the process (= per core) for OtlpSink
   over gRPC and HTTP, and the embedded JSON Lines store, with the CPU us per span by
   stage (read, decode, map, queue in the collector's thread; encode, send in the
   export thread).
3. ``sustained``: a fixed offered rate (``--rate``, default 80% of the measured gRPC
   ceiling, at most one core) for ``--seconds`` (60; ``--quick``: 10): loss (queue full
   + failed) must stay under 0.1% and the queue must not grow.

    .venv/bin/python benchmarks/bench_pipeline.py [--quick] [--pairs 8] [--rate N] [--seconds 60]
        [--baseline COMMIT | --baseline none]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT, Rotel, log, paired, result  # noqa: E402

if os.environ.get("KN_BENCH_ROOT"):  # a child measuring another tree's otel_kernelnet
    sys.path.insert(0, os.environ["KN_BENCH_ROOT"])

from otel_kernelnet.clock import KernelClock  # noqa: E402
from otel_kernelnet.export import otlp_json  # noqa: E402
from otel_kernelnet.export.sinks import ExportPipeline, JsonLinesSink, OtlpSink, OtlpTarget  # noqa: E402
from otel_kernelnet.probes import drop  # noqa: E402
from otel_kernelnet.spans import RandomIds, drop_span  # noqa: E402

RESOURCE = {"service.name": "otel-kernelnet", "host.name": "bench"}
SCOPE = ("otel-kernelnet", "bench")
BATCH = 2048
BASELINE = "e088de2bad975cec0342a7026192c00da0186279"  # before struct decode, PRNG ids, lock-free submit
REASONS = {2: "NOT_SPECIFIED", 3: "NO_SOCKET", 5: "PKT_TOO_SMALL", 7: "TCP_CSUM", 9: "NETFILTER_DROP"}


def make_records(n: int, seed: int = 23) -> tuple[Any, list[tuple[int, int]]]:
    """``n`` drop records in one buffer (like a ring buffer) and their (offset, size)."""
    rnd = random.Random(seed)
    rec = drop.RECORD
    size = ctypes.sizeof(rec)
    buf = ctypes.create_string_buffer(size * n)
    F = drop.FLAGS
    comms = [f"worker-{i}".encode() for i in range(20)] + [b"swapper/0", b"swapper/1"]
    for i in range(n):
        r = rec.from_buffer(buf, i * size)
        r.ts_ns = 1_000_000_000 + i * 997
        r.location = 0xFFFFFFFF81000000 + rnd.randrange(0, 64) * 16
        r.skbaddr = 0xFFFF888000000000 + rnd.randrange(1 << 24) * 256
        r.sk_cookie = rnd.choice((0, 0, 4099, 4111, 8191))
        r.reason = rnd.choice(list(REASONS))
        r.netns, r.pid, r.tid, r.cpu = 4026531840 + rnd.randrange(4), rnd.randrange(1, 60), rnd.randrange(1, 90), i % 2
        r.ifindex, r.len, r.protocol = 2, rnd.randrange(40, 1500), 0x0800
        r.sport, r.dport, r.l4proto = rnd.randrange(1024, 5120), rnd.choice((80, 443, 4099, 53)), rnd.choice((6, 17))
        r.flags = F["KN_DROP_F_ADDR"] | F["KN_DROP_F_DEV"] | (F["KN_DROP_F_HAS_SK"] if r.sk_cookie else 0)
        r.saddr[:4] = [10, 99, rnd.randrange(4), rnd.randrange(1, 255)]
        r.daddr[:4] = [10, 99, 0, rnd.randrange(1, 8)]
        r.comm = rnd.choice(comms)
        r.ifname = rnd.choice((b"eth0", b"veth1", b"lo"))
    base = ctypes.addressof(buf)
    return buf, [(base + i * size, size) for i in range(n)]


class SdkSink:
    """The baseline: SDK ReadableSpans through opentelemetry-exporter-otlp (gRPC)."""

    description = "SDK"

    def __init__(self, endpoint: str):
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        self._exporter = OTLPSpanExporter(endpoint=endpoint, insecure=True, timeout=10)
        self._conv = OtlpSink.__new__(OtlpSink)
        self._conv._resource_attrs, self._conv._scope_pair = RESOURCE, SCOPE

    def write(self, batch) -> bool:
        from opentelemetry.sdk.trace.export import SpanExportResult
        return self._exporter.export([self._conv._to_sdk(s) for s in batch]) == SpanExportResult.SUCCESS

    def close(self) -> None:
        self._exporter.shutdown()


class Producer:
    """The collector thread's share: read, decode, map, queue; CPU time per stage."""

    def __init__(self, records: list[tuple[int, int]]):
        self.records = records
        self.clock = KernelClock()
        self.ids = RandomIds()
        self.cpu = {"read": 0.0, "decode": 0.0, "map": 0.0, "queue": 0.0}
        self.produced = 0
        self._i = 0

    def chunk(self, n: int, pipeline: ExportPipeline) -> None:
        recs, start = self.records, self._i
        take = [recs[(start + k) % len(recs)] for k in range(n)]
        self._i = (start + n) % len(recs)
        t0 = time.thread_time()
        raw = [ctypes.string_at(a, s) for a, s in take]
        t1 = time.thread_time()
        evs = [drop.decode(b) for b in raw]
        t2 = time.thread_time()
        to_epoch, ids, sym = self.clock.to_epoch_ns, self.ids, _symbol
        spans = [drop_span(e, to_epoch_ns=to_epoch, ids=ids, reason_name=_reason, symbol=sym) for e in evs]
        t3 = time.thread_time()
        submit = pipeline.submit
        for s in spans:
            submit(s)
        t4 = time.thread_time()
        c = self.cpu
        c["read"] += t1 - t0
        c["decode"] += t2 - t1
        c["map"] += t3 - t2
        c["queue"] += t4 - t3
        self.produced += n


def _reason(code: int) -> str:
    return REASONS.get(code, f"unknown:{code}")


_SYMS = {}


def _symbol(addr: int) -> str:
    s = _SYMS.get(addr)
    if s is None:
        s = _SYMS[addr] = f"kfree_skb_site_{(addr >> 4) & 0x3f}+0x{addr & 0xf:x}"
    return s


def window(make_sink: Callable[[], Any], records, seconds: float, rate: float | None = None) -> dict[str, Any]:
    """One run of the pipeline: closed loop (rate None) or a fixed offered rate."""
    sink = make_sink()
    pipe = ExportPipeline(sink, max_queue=65536, max_batch=BATCH, max_delay_s=0.2)
    prod = Producer(records)
    queue_samples: list[int] = []
    cpu0, wall0, th0 = time.process_time(), time.monotonic(), time.thread_time()
    deadline = wall0 + seconds
    next_sample = wall0 + 0.5
    tick, owed, last = 0.02, 0.0, wall0
    try:
        while True:
            now = time.monotonic()
            if now >= deadline:
                break
            if now >= next_sample:
                queue_samples.append(pipe.queued)
                next_sample += 0.5
            if rate is None:
                if pipe.queued > 4 * BATCH:
                    time.sleep(0.001)
                    continue
                prod.chunk(1000, pipe)
            else:
                owed += (now - last) * rate
                last = now
                n = int(owed)
                if n:
                    owed -= n
                    prod.chunk(n, pipe)
                time.sleep(max(0.0, tick - (time.monotonic() - now)))
    finally:
        main_cpu = time.thread_time() - th0
        pipe.close(timeout_s=30)
    wall = time.monotonic() - wall0
    cpu = time.process_time() - cpu0
    out: dict[str, Any] = {
        "seconds": round(wall, 2), "produced": prod.produced, "exported": pipe.exported,
        "dropped_queue_full": pipe.dropped_queue_full, "failed": pipe.failed,
        "cpu_s": round(cpu, 3), "core_fraction": round(cpu / wall, 3),
        "us_per_span": round(cpu / max(pipe.exported, 1) * 1e6, 2),
        "spans_per_cpu_s": round(pipe.exported / cpu) if cpu else 0,
        "spans_per_s": round(pipe.exported / wall),
        "queue_samples": queue_samples,
    }
    n = max(prod.produced, 1)
    stages = {k: v / n * 1e6 for k, v in prod.cpu.items()}
    if isinstance(sink, OtlpSink):
        stages.update({k: v / n * 1e6 for k, v in sink.cpu_s.items()})
    else:
        stages["export"] = (cpu - main_cpu) / n * 1e6
    out["us_by_stage"] = {k: round(v, 2) for k, v in stages.items()}
    if pipe.last_error:
        out["last_error"] = pipe.last_error
    return out


def collector_gc(mode: str) -> str:
    """The cyclic GC as the collector of the code on sys.path runs it once started
    (``collector.QuietGc``: start-up heap frozen, first threshold raised; older code:
    Python's defaults, as its collector ran), or Python's defaults (``mode`` "default")."""
    if mode == "default":
        return "default"
    try:
        from otel_kernelnet.collector import QuietGc
    except ImportError:
        return "default (this code's collector has no QuietGc)"
    QuietGc().start()
    return "collector (QuietGc)"


def child(endpoint: str, seconds: float, gc_mode: str) -> int:
    """One gRPC ceiling window (after a 0.5 s warm-up) of whichever otel_kernelnet is on
    sys.path; the window's figures as one JSON line on stdout."""
    import otel_kernelnet
    _buf, records = make_records(20000)
    collector_gc(gc_mode)
    target = OtlpTarget(endpoint, "grpc", "bench")
    make = lambda: OtlpSink(target, RESOURCE, SCOPE, timeout_s=10)  # noqa: E731
    window(make, records, 0.5)
    out = window(make, records, seconds)
    out["package"] = os.path.dirname(otel_kernelnet.__file__)
    print(json.dumps(out), flush=True)
    return 0


def extract(commit: str, into: str) -> str:
    """``otel_kernelnet`` as of ``commit``, extracted under ``into``; the directory to import from."""
    arch = subprocess.run(["git", "-C", str(ROOT), "archive", commit, "otel_kernelnet"],
                          check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", into], input=arch, check=True)
    return into


def run_child(root: str | None, endpoint: str, seconds: float, gc_mode: str) -> dict[str, Any]:
    env = dict(os.environ)
    env.pop("KN_BENCH_ROOT", None)
    if root:
        env["KN_BENCH_ROOT"] = root
    p = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", endpoint, "--window", str(seconds), "--gc", gc_mode],
                       env=env, capture_output=True, text=True, timeout=120 + 2 * seconds)
    if p.returncode:
        raise RuntimeError(f"child ({root or 'this tree'}) failed: {p.stderr[-2000:]}")
    out = json.loads(p.stdout.strip().splitlines()[-1])
    want = os.path.join(root, "otel_kernelnet") if root else str(ROOT / "otel_kernelnet")
    assert os.path.realpath(out["package"]) == os.path.realpath(want), (out["package"], want)
    return out


def previous_vs_now(baseline: str, endpoint: str, pairs: int, seconds: float, tmp: str, gc_mode: str) -> dict[str, Any]:
    """Paired ABBA child windows: the baseline commit's otel_kernelnet against this tree's."""
    root = extract(baseline, tempfile.mkdtemp(prefix="baseline-", dir=tmp))
    ratios, rows = [], []
    for i in range(pairs):
        order = ("previous", "now") if i % 2 == 0 else ("now", "previous")
        got = {w: run_child(root if w == "previous" else None, endpoint, seconds, gc_mode) for w in order}
        r = got["previous"]["us_per_span"] / got["now"]["us_per_span"]
        ratios.append(r)
        rows.append({w: {"us_per_span": got[w]["us_per_span"], "spans_per_cpu_s": got[w]["spans_per_cpu_s"],
                         "us_by_stage": got[w]["us_by_stage"]} for w in ("previous", "now")})
        log(f"previous/now pair {i + 1}/{pairs}: previous {got['previous']['us_per_span']} us/span, "
            f"now {got['now']['us_per_span']} us/span, ratio {r:.2f}")
    stage_names = rows[0]["now"]["us_by_stage"].keys()
    median_stages = {w: {k: round(statistics.median(row[w]["us_by_stage"][k] for row in rows), 2) for k in stage_names}
                     for w in ("previous", "now")}
    return {"baseline": baseline, "ratio": paired(ratios), "pairs": rows, "median_us_by_stage": median_stages,
            "median_spans_per_cpu_s": {w: round(statistics.median(row[w]["spans_per_cpu_s"] for row in rows))
                                       for w in ("previous", "now")}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", default=BASELINE,
                    help="git commit of the previous code for the paired previous/now windows ('none': skip)")
    ap.add_argument("--child", metavar="GRPC_ENDPOINT", help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="short windows and a 10 s sustained run")
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--window", type=float, default=None, help="seconds per paired window")
    ap.add_argument("--rate", type=float, default=None, help="offered spans/s of the sustained run")
    ap.add_argument("--seconds", type=float, default=None, help="length of the sustained run")
    ap.add_argument("--gc", choices=("collector", "default"), default="collector",
                    help="the cyclic GC as the collector runs it once started (default), or Python's defaults")
    a = ap.parse_args()
    win = a.window or (1.5 if a.quick else 4.0)
    if a.child:
        return child(a.child, win, a.gc)
    sustain_s = a.seconds or (10.0 if a.quick else 60.0)
    _buf, records = make_records(20000)
    gc_used = collector_gc(a.gc)
    log(f"cyclic GC: {gc_used}")
    with Rotel() as rotel, tempfile.TemporaryDirectory(prefix="kn-bench-") as tmp:
        grpc_t = OtlpTarget(rotel.grpc_endpoint, "grpc", "bench")
        http_t = OtlpTarget(rotel.http_endpoint, "http/protobuf", "bench")
        new = lambda: OtlpSink(grpc_t, RESOURCE, SCOPE, timeout_s=10)  # noqa: E731
        old = lambda: SdkSink(rotel.grpc_endpoint)  # noqa: E731
        previous = None
        if a.baseline != "none":
            previous = previous_vs_now(a.baseline, rotel.grpc_endpoint, a.pairs, win * 2, tmp, a.gc)
        window(new, records, 0.5)  # warm both paths (imports, connections, caches)
        window(old, records, 0.5)
        ratios, pairs = [], []
        for i in range(a.pairs):
            order = (old, new) if i % 2 == 0 else (new, old)  # ABBA
            got = {f: window(f, records, win) for f in order}
            r = got[old]["us_per_span"] / got[new]["us_per_span"]
            ratios.append(r)
            pairs.append({"sdk_us": got[old]["us_per_span"], "otlp_proto_us": got[new]["us_per_span"]})
            log(f"pair {i + 1}/{a.pairs}: SDK {got[old]['us_per_span']} us/span, "
                f"OtlpSink {got[new]['us_per_span']} us/span, ratio {r:.2f}")
        ceiling = {}
        for name, make in (("otlp_grpc", new), ("otlp_http", lambda: OtlpSink(http_t, RESOURCE, SCOPE, timeout_s=10)),
                           ("jsonl", lambda: JsonLinesSink(tmp, RESOURCE, SCOPE, max_file_bytes=64 << 20, max_files=2)),
                           ("sdk_grpc", old)):
            ceiling[name] = window(make, records, win * 2)
            log(f"ceiling {name}: {ceiling[name]['spans_per_cpu_s']} spans per CPU-second, "
                f"stages {ceiling[name]['us_by_stage']}")
        # the JSON Lines store before the fast encoder, paired with it (same sink, encoder swapped)
        fast = otlp_json.encode_line
        json_pairs = []
        for i in range(max(2, a.pairs // 2)):
            res = {}
            for which in (("ref", "fast") if i % 2 == 0 else ("fast", "ref")):
                otlp_json.encode_line = otlp_json.encode_line_reference if which == "ref" else fast
                try:
                    res[which] = window(lambda: JsonLinesSink(tmp, RESOURCE, SCOPE, max_files=2), records, win)
                finally:
                    otlp_json.encode_line = fast
            json_pairs.append(res["ref"]["us_per_span"] / res["fast"]["us_per_span"])
        rate = a.rate or min(0.8 * ceiling["otlp_grpc"]["spans_per_cpu_s"], 0.8 * ceiling["otlp_grpc"]["spans_per_s"])
        log(f"sustained: {rate:.0f} spans/s for {sustain_s:.0f} s")
        rotel_cpu0 = rotel.cpu_s()
        sus = window(new, records, sustain_s, rate=rate)
        sus["receiver_cpu_s"] = round(rotel.cpu_s() - rotel_cpu0, 2)
        lost = sus["produced"] - sus["exported"]  # queue full + failed + anything unaccounted
        sus["loss_fraction"] = round(lost / max(sus["produced"], 1), 6)
        q = sus["queue_samples"]
        third = max(1, len(q) // 3)
        sus["queue_growing"] = bool(q) and statistics.mean(q[-third:]) > statistics.mean(q[:third]) + BATCH
        sus["offered_rate"] = round(rate)
        sus["pass"] = sus["loss_fraction"] < 0.001 and not sus["queue_growing"]
    result("pipeline", quick=a.quick, window_s=win, gc=gc_used, record="drop (kn_drop_event, %d B)" % ctypes.sizeof(drop.RECORD),
           receiver="rotel blackhole (OTLP gRPC/HTTP)", batch=BATCH,
           previous_over_now_cpu_per_span=previous,
           sdk_over_otlp_proto_cpu_per_span=paired(ratios), pairs=pairs,
           jsonl_reference_over_fast_cpu_per_span=paired(json_pairs),
           ceiling={k: {kk: vv for kk, vv in v.items() if kk != "queue_samples"} for k, v in ceiling.items()},
           sustained=sus, target_spans_per_cpu_s=100_000)
    return 0


if __name__ == "__main__":
    sys.exit(main())
