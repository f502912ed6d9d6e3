"""The BPF object cache and the compiler-free load path (otel_kernelnet/bpfobj.py) on
the running kernel (root).

- Every default family's programs, loaded from our images, are the programs bcc
  itself loads: the kernel's tag (a hash of the instructions with map references
  zeroed) is the same for every attached function.
- A start with an empty cache compiles and stores; the next one compiles nothing,
  and both see a real drop (a datagram to a closed loopback port).
- An image the kernel refuses fails the attach with a clear error and is removed
  from the cache, so the next start compiles afresh.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from otel_kernelnet.bpfobj import PROG_TYPE_RAW_TRACEPOINT, PROG_TYPE_TRACEPOINT, Image, ObjectCache
from otel_kernelnet.loader import BPF_DIR, Loader, LoaderError, prog_info_u64
from otel_kernelnet.probes import drop, families

from tests.kernel.test_rawtp import ctx

PROG_INFO_TAG = 8  # struct bpf_prog_info { __u32 type; __u32 id; __u8 tag[8]; ... } (UAPI)


class RecordingLoader(Loader):
    """A Loader that remembers what it was asked to compile."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.asked: list[tuple[str, dict]] = []

    def compile(self, name, source_file, defines, directory=BPF_DIR):
        self.asked.append((source_file, dict(defines)))
        return super().compile(name, source_file, defines, directory)


def _prog_type(tracepoint: str) -> int:
    return PROG_TYPE_RAW_TRACEPOINT if tracepoint.startswith("raw:") else PROG_TYPE_TRACEPOINT


def test_programs_from_images_are_the_programs_bcc_loads(tmp_path):
    c = ctx()
    fams = [f for f in families() if f.name != "netns_counters"]
    assert {f.name for f in fams} >= {"drop", "tcp", "lifecycle", "softirq", "reclaim"}
    with RecordingLoader(cache_dir=tmp_path) as loader:
        for fam in fams:
            fam.start(loader, fam.plan(c), c, lambda span: None, lambda e: None)
        assert loader.compiled and loader.cache.stored == len(fams)
        loader._prepare()  # bcc in this process too, for the reference loads
        bcc = loader._bcc
        compared = 0
        for prog, (source_file, defines) in zip(loader._programs, loader.asked):
            src, cflags = loader.source(source_file, defines)
            ref = bcc.BPF(text=src.encode(), cflags=cflags)
            try:
                for tp, fn in prog.attached:
                    t = _prog_type(tp)
                    ours = prog.obj.funcs[(fn, t)]
                    theirs = ref.load_func(fn.encode(), t).fd
                    assert prog_info_u64(ours, PROG_INFO_TAG) == prog_info_u64(theirs, PROG_INFO_TAG) != 0, \
                        (prog.name, fn)
                    compared += 1
            finally:
                ref.cleanup()
        assert compared >= 15  # every attached program of five families


def _drop_once(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"x" * 16, ("127.0.0.1", port))


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when this returns


def _see_a_drop(loader: Loader) -> tuple[bool, list]:
    c = ctx()
    fam = drop.DropFamily()
    spans: list = []
    fam.start(loader, fam.plan(c), c, spans.append, lambda e: None)
    port = _closed_port()
    deadline = time.monotonic() + 10
    mine: list = []
    while time.monotonic() < deadline and not mine:
        _drop_once(port)
        loader.wait(0.5)  # the record's wake-up (kn_wake) ends it; the deadline bounds the loop
        loader.consume()
        mine = [s for s in spans if s.attributes.get("destination.port") == port]
    return fam.probe.prog.cached, mine


def test_a_second_start_compiles_nothing_and_sees_the_same_drops(tmp_path):
    with Loader(cache_dir=tmp_path) as cold:
        cached, mine = _see_a_drop(cold)
        assert not cached and cold.compiled and cold.cache.stored == 1
        assert mine, "no drop span for the datagram to a closed port (compiled object)"
    files = list(tmp_path.glob("*.json"))
    assert len(files) == 1 and files[0].stat().st_mode & 0o077 == 0
    with Loader(cache_dir=tmp_path) as warm:
        cached, mine = _see_a_drop(warm)
        assert cached and not warm.compiled and warm._bcc is None and warm.headers is None
        assert warm.cache.hits == 1 and warm.cache.stored == 0
        assert mine, "no drop span for the datagram to a closed port (object from the cache)"
        assert "from the cache" in warm.objects_summary()


def test_an_image_the_kernel_refuses_is_removed_from_the_cache(tmp_path):
    with Loader(cache_dir=tmp_path) as cold:
        cold.compile("drop", "drop.bpf.c", drop.DropFamily().plan(ctx()).defines)
    (path,) = tmp_path.glob("*.json")
    image = Image.from_json(path.read_text())
    # every function becomes "exit" with r0 never written: the verifier refuses it
    bad = Image(image.license, image.maps, {fn: bytes([0x95, 0, 0, 0, 0, 0, 0, 0]) for fn in image.functions})
    path.write_text(bad.to_json())
    with Loader(cache_dir=tmp_path) as warm:
        p = drop.DropFamily().plan(ctx())
        with pytest.raises(LoaderError, match="object cache, entry removed"):
            drop.DropProbe(warm, p, lambda ev: None, lambda e: None)
    assert not path.exists()
    with Loader(cache_dir=tmp_path) as again:  # compiles afresh and works
        cached, mine = _see_a_drop(again)
        assert not cached and again.compiled and mine


def test_the_cache_default_is_under_var_cache():
    assert str(Loader().cache.directory) == "/var/cache/otel-kernelnet/bpf"
    assert ObjectCache(None).directory is None and ObjectCache("").directory is None


def test_a_compile_error_is_a_clear_error_and_the_compiler_process_ends(tmp_path):
    (tmp_path / "broken.bpf.c").write_text("int kn_broken(void *ctx) { return undefined_name; }\n")
    loader = Loader(cache_dir=tmp_path / "cache")
    try:
        with pytest.raises(LoaderError, match="compiling broken.bpf.c failed: .*Failed to compile BPF module"):
            loader.compile("broken", "broken.bpf.c", {}, directory=tmp_path)
        worker = loader._worker.proc
        assert worker.poll() is None  # serves the next compile
        prog = loader.compile("witness", "witness.bpf.c", {"OFF_SKB_DEV": 16, "OFF_DEV_ND_NET": 8,
                                                             "OFF_NET_INUM": 8, "NETNS": 1},
                              directory=Path(__file__).parent)
        assert loader.compiles == 1 and not prog.cached and "hits" in prog.obj.maps
    finally:
        loader.close()
    assert worker.poll() is not None  # no compiler process left behind
    assert len(list((tmp_path / "cache").glob("*.json"))) == 1  # the good one was stored
