"""Images, relocation and the object cache of otel_kernelnet/bpfobj.py, without the
kernel (the kernel side: tests/kernel/test_bpfobj.py)."""

from __future__ import annotations

import os
import struct

import pytest

from otel_kernelnet import bpfobj
from otel_kernelnet.bpfobj import BpfObjectError, Image, MapDef, ObjectCache, cache_key, map_references

MOV = bytes([0xB7, 0x00, 0, 0]) + struct.pack("<i", 0)  # r0 = 0
EXIT = bytes([0x95, 0, 0, 0, 0, 0, 0, 0])


def ld_map(dst: int, imm: int, src: int = 1) -> bytes:
    return bytes([0x18, (src << 4) | dst, 0, 0]) + struct.pack("<i", imm) + bytes(8)


def image(**functions: bytes) -> Image:
    maps = (MapDef("kn_a", 2, 4, 8, 4, 0), MapDef("kn_events", 27, 0, 0, 4096, 0))
    return Image("GPL", maps, functions or {"kn_f": ld_map(1, 1) + MOV + EXIT})


def test_map_references_skip_the_second_half_of_ld_imm64_and_plain_constants():
    # the second slot of an ld_imm64 may look like any instruction: it must not be decoded
    tricky = bytes([0x18, 0x01, 0, 0]) + struct.pack("<i", 5) + bytes([0x18, 0x10, 0, 0, 9, 0, 0, 0])
    code = MOV + ld_map(2, 3) + tricky + ld_map(1, 0) + EXIT
    assert map_references(code) == [(8, 3), (40, 0)]


def test_patch_writes_each_reference_and_nothing_else():
    code = MOV + ld_map(2, 1) + ld_map(3, 0) + EXIT
    out = bpfobj._patch(code, {0: 40, 1: 41}.__getitem__)
    assert map_references(out) == [(8, 41), (24, 40)]
    assert out[:8] == code[:8] and out[-8:] == EXIT and len(out) == len(code)


@pytest.mark.parametrize("bad, match", [
    (ld_map(1, 0, src=2), "pseudo source 2"),  # a map value (global data): not supported
    (MOV[:5], "not a multiple of 8"),
])
def test_map_references_refuse_what_an_image_cannot_hold(bad, match):
    with pytest.raises(BpfObjectError, match=match):
        map_references(bad)


def test_an_image_survives_json_and_is_checked_when_read():
    img = image()
    assert Image.from_json(img.to_json()) == img
    for text, match in [("{", "unreadable image"),
                        (img.to_json().replace('"format": 1', '"format": 99'), "format 99"),
                        (image(kn_f=ld_map(1, 2) + EXIT).to_json(), "map index 2 out of range")]:
        with pytest.raises(BpfObjectError, match=match):
            Image.from_json(text)


def test_the_cache_key_covers_source_flags_and_compiler():
    k = cache_key("int f(void) { return 0; }", ["-DA=1"], compiler="bcc:1")
    assert len(k) == 64
    assert k != cache_key("int f(void) { return 1; }", ["-DA=1"], compiler="bcc:1")
    assert k != cache_key("int f(void) { return 0; }", ["-DA=2"], compiler="bcc:1")
    assert k != cache_key("int f(void) { return 0; }", ["-DA=1"], compiler="bcc:2")
    assert k != cache_key("int f(void) { return 0; }", ["-DA", "=1"], compiler="bcc:1")  # flags are not just joined
    assert k == cache_key("int f(void) { return 0; }", ["-DA=1"], compiler="bcc:1")
    assert k != cache_key("int f(void) { return 0; }", ["-DA=1"], compiler="bcc:1", headers="x.h\0struct a;")


def test_the_key_changes_with_an_included_header(tmp_path):
    (tmp_path / "rec.h").write_text('#include "inner.h"\nstruct rec { int a; };\n')
    (tmp_path / "inner.h").write_text("#define X 1\n")
    src = '#include "rec.h"\nint f(void) { return X; }\n'
    before = bpfobj.local_headers(src, [tmp_path])
    assert "struct rec" in before and "#define X 1" in before  # recursively
    (tmp_path / "inner.h").write_text("#define X 2\n")
    after = bpfobj.local_headers(src, [tmp_path])
    assert cache_key(src, [], compiler="c", headers=before) != cache_key(src, [], compiler="c", headers=after)
    assert "<missing>" in bpfobj.local_headers('#include "nowhere.h"\n', [tmp_path])
    # the real sources: every family's record header is part of its key
    from otel_kernelnet.loader import BPF_DIR, inline_bcc_headers
    drop_src = inline_bcc_headers((BPF_DIR / "drop.bpf.c").read_text())
    assert (BPF_DIR / "drop.h").read_text() in bpfobj.local_headers(drop_src, [BPF_DIR])


def test_the_cache_stores_private_files_and_reads_them_back(tmp_path):
    d = tmp_path / "sub" / "bpf"
    cache = ObjectCache(d)
    assert cache.load("k") is None and cache.misses == 1
    cache.store("k", image())
    assert cache.stored == 1 and (d.stat().st_mode & 0o777) == 0o700
    assert (cache.path("k").stat().st_mode & 0o777) == 0o600
    assert not list(d.glob(".tmp-*"))  # written atomically: no temporary file left
    assert ObjectCache(d).load("k") == image()


def test_a_cache_another_user_could_write_is_not_used(tmp_path):
    d = tmp_path / "bpf"
    ObjectCache(d).store("k", image())
    os.chmod(d, 0o777)
    cache = ObjectCache(d)
    assert cache.load("k") is None and "writable by another user" in cache.notes[0]
    cache.store("k2", image())  # nor written to
    assert cache.directory is None and cache.stored == 0 and not (d / "k2.json").exists()
    os.chmod(d, 0o700)
    os.chmod(d / "k.json", 0o620)  # a group-writable file
    cache = ObjectCache(d)
    assert cache.load("k") is None and "ignored" in cache.notes[0]


def test_an_unreadable_entry_is_removed_and_counted_as_a_miss(tmp_path):
    cache = ObjectCache(tmp_path)
    cache.store("k", image())
    cache.path("k").write_text('{"format": 1, "license": "GPL"')
    assert cache.load("k") is None and cache.misses == 1
    assert not cache.path("k").exists() and "recompiled" in cache.notes[0]


def test_a_cache_that_cannot_be_created_is_said_and_turned_off(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    cache = ObjectCache(blocker / "bpf")
    cache.store("k", image())
    assert cache.stored == 0 and cache.directory is None and "cannot create" in cache.notes[0]
    assert ObjectCache(None).load("k") is None


def test_possible_cpus_reads_ranges_and_lists(tmp_path):
    for i, (text, n) in enumerate([("0\n", 1), ("0-1\n", 2), ("0,2-3\n", 4), ("0-7,16\n", 17)]):
        f = tmp_path / f"possible{i}"  # one file each: the answer is remembered per path
        f.write_text(text)
        assert bpfobj.possible_cpus(str(f)) == n


def test_the_cache_keeps_the_most_recently_used_entries(tmp_path, monkeypatch):
    monkeypatch.setattr(bpfobj, "MAX_ENTRIES", 3)
    cache = ObjectCache(tmp_path)
    for i in range(3):
        cache.store(f"k{i}", image())
        os.utime(cache.path(f"k{i}"), (1000 + i, 1000 + i))
    assert cache.load("k0") is not None  # used now: the newest
    cache.store("k3", image())
    assert sorted(p.stem for p in tmp_path.glob("*.json")) == ["k0", "k2", "k3"]


@pytest.mark.parametrize("script, match", [
    ("import sys; sys.stdin.readline(); print('clang says hi'); sys.stdout.flush()", "answered something else"),
    ("import sys; sys.stdin.readline(); sys.exit(3)", "ended \\(exit status 3"),
    ("import sys, time; sys.stdin.readline(); time.sleep(30)", "did not answer within 1 s"),
    ("import sys, json; sys.stdin.readline(); print(json.dumps({'error': 'Failed to compile BPF module'}))",
     "Failed to compile BPF module"),
])
def test_the_compiler_process_failing_is_an_error_not_a_hang(script, match):
    import sys
    worker = bpfobj.CompileWorker(argv=[sys.executable, "-c", script])
    worker.timeout_s = 1.0
    try:
        with pytest.raises(BpfObjectError, match=match):
            worker.compile("int f(void) { return 0; }", [])
    finally:
        worker.close()
    assert worker.proc.poll() is not None


def test_the_compiler_process_answers_with_an_image():
    import sys
    img = image()
    script = ("import sys, json; req = json.loads(sys.stdin.readline()); "
              f"print(json.dumps({{'image': {img.to_json()!r}}})); sys.stdout.flush(); sys.stdin.read()")
    worker = bpfobj.CompileWorker(argv=[sys.executable, "-c", script])
    try:
        assert worker.compile("src", ["-DX=1"]) == img
    finally:
        worker.close()
    assert worker.proc.returncode == 0  # ended by closing its stdin
