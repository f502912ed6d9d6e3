"""The ring buffer readers (otel_kernelnet/bpfobj.py: ``MmapRing`` and libbpf's, through
``Loader.open_ring_buffer``) on a real BPF ring buffer (root).

A small program (ringbuf_test.bpf.c), run on demand with BPF_PROG_TEST_RUN, writes one
record per run into a one-page ring: 8-, 13- and 301-byte records and discarded ones,
so records wrap around the ring's end at many offsets. Both readers must hand over
exactly the submitted records, in order, byte for byte; skip the discarded ones; and,
when the ring was let fill up, the records the kernel kept (the rest counted by the
program as reserve failures).
"""

from __future__ import annotations

import ctypes
import mmap
import os
import struct
from pathlib import Path

import pytest

from otel_kernelnet.bpfobj import PROG_TYPE_RAW_TRACEPOINT, READER_ENV, library
from otel_kernelnet.loader import Loader

HERE = Path(__file__).parent
_NR_BPF = {"x86_64": 321, "aarch64": 280}
_BPF_PROG_TEST_RUN = 10
_libc = ctypes.CDLL(None, use_errno=True)


def _test_run(prog_fd: int) -> None:
    """Run a raw tracepoint program once (union bpf_attr.test, UAPI; no context)."""
    attr = ctypes.create_string_buffer(80)
    struct.pack_into("=I", attr, 0, prog_fd)
    if _libc.syscall(_NR_BPF[os.uname().machine], _BPF_PROG_TEST_RUN, attr, len(attr)) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"BPF_PROG_TEST_RUN: {os.strerror(e)}")


def padded(n: int) -> int:
    """The ring space run ``n``'s record takes: 8-byte header plus sample, rounded to 8."""
    return (8 + (8, 13, 13, 301)[n % 4] + 7) & ~7


def expected(n: int) -> bytes | None:
    """The sample run ``n`` submits (None: discarded)."""
    kind = n % 4
    head = struct.pack("=Q", n)
    if kind == 0:
        return head
    if kind == 1:
        return head + bytes([n & 0xFF]) * 5
    if kind == 2:
        return None
    return head + bytes([n & 0xFF]) * 293


class Ring:
    def __init__(self, loader: Loader, then=None):
        self.prog = loader.compile("ringtest", "ringbuf_test.bpf.c", {}, directory=HERE)
        self.fd = self.prog.obj.load("kn_ring_test", PROG_TYPE_RAW_TRACEPOINT)
        self.got: list[bytes] = []

        def on_sample(sample: bytes) -> None:
            self.got.append(sample)
            if then is not None:
                then(self)

        loader.open_ring_buffer(self.prog, "kn_test_ring", on_sample)
        self.runs = 0

    def run(self, times: int) -> None:
        for _ in range(times):
            _test_run(self.fd)
            self.runs += 1

    def counter(self, key: int) -> int:
        """kn_test_seq[key]: 1 reserve failures (ring full), 2 discarded records."""
        k, v = ctypes.c_uint32(key), ctypes.c_uint64()
        assert library().bpf_lookup_elem(self.prog.map("kn_test_seq").fd, ctypes.byref(k), ctypes.byref(v)) == 0
        return v.value


@pytest.fixture(params=["mmap", "libbpf"])
def loader(request, monkeypatch, tmp_path):
    monkeypatch.setenv(READER_ENV, request.param)
    with Loader(cache_dir=tmp_path) as ld:
        assert ld._rings.reader == request.param
        yield ld


def test_every_submitted_record_in_order_across_the_wrap(loader):
    ring = Ring(loader)
    drained = 0
    for i in range(600):  # ~2,100 runs, drained after 1-7 runs: the wrap falls everywhere
        ring.run(1 + i % 7)
        drained += loader.consume()
    want = [s for s in map(expected, range(ring.runs)) if s is not None]
    assert ring.counter(1) == 0  # never full: the ring holds 7 runs easily
    assert drained == len(ring.got) == len(want)
    assert ring.got == want
    # the kernel's consumer position, as the reader left it: every record's padded size
    # (discarded ones too), and many times round the one-page ring
    with mmap.mmap(ring.prog.map("kn_test_ring").fd, mmap.PAGESIZE, mmap.MAP_SHARED, mmap.PROT_READ) as page:
        consumed = struct.unpack_from("=Q", page, 0)[0]
    assert consumed == sum(padded(n) for n in range(ring.runs)) > 4 * 4096


def test_a_full_ring_keeps_what_fit_and_the_rest_is_counted(loader):
    ring = Ring(loader)
    ring.run(200)  # ~16 KB of records into 4 KB, nothing drained
    full, discarded = ring.counter(1), ring.counter(2)
    assert full > 0
    assert loader.consume() == len(ring.got)
    assert len(ring.got) + discarded + full == ring.runs  # every run is accounted for
    seqs = [struct.unpack_from("=Q", s)[0] for s in ring.got]
    assert seqs == sorted(seqs) and all(s == expected(n) for s, n in zip(ring.got, seqs))
    ring.run(8)  # drained: the ring takes records again
    assert loader.consume() == 6 and ring.counter(1) == full


def test_a_producer_faster_than_the_reader_does_not_keep_a_drain_going(monkeypatch, tmp_path):
    """Each record handed over makes the program write two more (a run in four writes
    nothing): one drain still ends after about one ring's worth of bytes, and the next
    drain takes the rest (the collector's loop drains again a poll interval later)."""
    monkeypatch.setenv(READER_ENV, "mmap")
    with Loader(cache_dir=tmp_path) as loader:
        ring = Ring(loader, then=lambda r: r.run(2) if r.runs < 5000 else None)  # bounded if it never ends
        ring.run(1)
        n = loader.consume()
        assert 0 < n == len(ring.got) <= 4096 // 16 + 2  # records of 16-312 bytes in one 4 KB ring's worth
        assert ring.runs < 5000
        assert loader.consume() > 0


def test_a_wait_ends_on_a_wake_up_not_on_records_already_there(tmp_path):
    """The loader's epoll is edge-triggered on ring buffers: records left unread do not
    end the next wait (level-triggered, a busy ring made every wait return at once and
    the collector's loop never slept its poll interval)."""
    with Loader(cache_dir=tmp_path) as loader:
        ring = Ring(loader)
        ring.run(1)  # flags 0: the kernel wakes a reader that has caught up
        assert loader.wait(2) is True
        assert loader.wait(0.2) is False  # the record is still there, unread: no new wake-up
        assert loader.consume() == 1
        ring.run(1)
        assert loader.wait(2) is True
