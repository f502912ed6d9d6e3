"""BPF objects without a compiler in the process: bcc's output, cached and loaded.

bcc compiles a probe's C with clang and LLVM inside the process that imports it:
about 0.4-0.5 s per family here, and once the compiler has run, ~90 MB of LLVM text
and heap stay in that process (docs/benchmarks.md section 3). What the kernel needs
from a compile is small: each function's instructions, the maps they reference and
the license. So bcc runs in a child process (:class:`CompileWorker`), which sends
back that much (:func:`image_from_bcc`); the image is kept in an on-disk cache keyed
by everything that decides the bytecode (:class:`ObjectCache`: a restart compiles
nothing); and the collector creates the maps, loads and attaches the image through
``libbcc_bpf.so.0`` — bcc's own C wrapper of the ``bpf()`` system call, from the same
Debian packages as bcc, without LLVM (:class:`BpfObject`) — and reads the ring
buffers through their mapped pages (:class:`MmapRing`; libbpf's reader where that is
not safe). Every object takes this path, compiled now or cached, so there is one
run-time path.

Relocation: bcc creates a function's maps while compiling and writes their file
descriptors into the ``ld_imm64`` instructions that reference them
(``src_reg == BPF_PSEUDO_MAP_FD``). An image stores the map's index there instead;
loading writes the new map's descriptor back. The kernel computes a program's tag
with those immediates zeroed, so a program loaded from an image has the same tag as
bcc's own load (tests/kernel/test_bpfobj.py checks it). Any other pseudo source
(global data, BTF ids) is refused: bcc emits none for our programs.
"""

from __future__ import annotations

import base64
import ctypes
import functools
import hashlib
import json
import mmap
import os
import re
import stat
import struct
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

FORMAT = 1  # bump when the image layout or what it means changes
LIBRARY = "libbcc_bpf.so.0"
DEFAULT_CACHE_DIR = "/var/cache/otel-kernelnet/bpf"
MAX_ENTRIES = 64  # images kept in a cache directory (~5-25 KB each)

_INSN = 8
_LD_IMM64 = 0x18
_PSEUDO_MAP_FD = 1
# include/uapi/linux/bpf.h (UAPI: the numbers never change)
PROG_TYPE_TRACEPOINT = 5
PROG_TYPE_RAW_TRACEPOINT = 17
_PERCPU_TYPES = {5, 6, 10}  # PERCPU_HASH, PERCPU_ARRAY, LRU_PERCPU_HASH
_BPF_ANY = 0


class BpfObjectError(Exception):
    """An image could not be made, read, loaded or attached; the message says why."""


# --- the library ---------------------------------------------------------------------
RingCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int)
_lib: list = [None]


def library() -> Any:
    """``libbcc_bpf.so.0`` with the prototypes used here (loaded once)."""
    if _lib[0] is not None:
        return _lib[0]
    try:
        lib = ctypes.CDLL(LIBRARY, use_errno=True)
    except OSError as e:
        raise BpfObjectError(f"cannot load {LIBRARY} ({e}): apt-get install python3-bpfcc "
                             "(its libbpfcc package ships it)") from None
    c = ctypes
    proto = {
        "bcc_create_map": (c.c_int, [c.c_int, c.c_char_p, c.c_int, c.c_int, c.c_int, c.c_int]),
        "bcc_prog_load": (c.c_int, [c.c_int, c.c_char_p, c.c_void_p, c.c_int, c.c_char_p, c.c_uint,
                                    c.c_int, c.c_char_p, c.c_uint]),
        "bpf_attach_raw_tracepoint": (c.c_int, [c.c_int, c.c_char_p]),
        "bpf_attach_tracepoint": (c.c_int, [c.c_int, c.c_char_p, c.c_char_p]),
        "bpf_lookup_elem": (c.c_int, [c.c_int, c.c_void_p, c.c_void_p]),
        "bpf_update_elem": (c.c_int, [c.c_int, c.c_void_p, c.c_void_p, c.c_ulonglong]),
        "bpf_delete_elem": (c.c_int, [c.c_int, c.c_void_p]),
        "bpf_lookup_batch": (c.c_int, [c.c_int, c.c_void_p, c.c_void_p, c.c_void_p, c.c_void_p,
                                       c.POINTER(c.c_uint32)]),
        "bpf_new_ringbuf": (c.c_void_p, [c.c_int, RingCallback, c.c_void_p]),
        "bpf_add_ringbuf": (c.c_int, [c.c_void_p, c.c_int, RingCallback, c.c_void_p]),
        "bpf_consume_ringbuf": (c.c_int, [c.c_void_p]),
        "bpf_free_ringbuf": (None, [c.c_void_p]),
    }
    for name, (res, args) in proto.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = res, args
    _lib[0] = lib
    return lib


def _errno_text() -> str:
    e = ctypes.get_errno()
    return f"{os.strerror(e)} (errno {e})" if e else "no errno"


@functools.lru_cache(maxsize=4)  # fixed while the system runs; read per histogram read otherwise
def possible_cpus(path: str = "/sys/devices/system/cpu/possible") -> int:
    """How many CPUs a per-CPU map holds a value for (``0-1`` -> 2; ``0,2-3`` -> 4)."""
    text = Path(path).read_text().strip()
    top = 0
    for part in text.split(","):
        top = max(top, int(part.split("-")[-1]))
    return top + 1


# --- images --------------------------------------------------------------------------
@dataclass(frozen=True)
class MapDef:
    name: str
    type: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int


@dataclass(frozen=True)
class Image:
    """What the kernel needs of a compiled object: map definitions and, per function,
    its instructions with each map reference holding the map's index in ``maps``."""
    license: str
    maps: tuple[MapDef, ...]
    functions: dict[str, bytes]

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, "license": self.license,
                           "maps": [m.__dict__ for m in self.maps],
                           "functions": {k: base64.b64encode(v).decode() for k, v in self.functions.items()}})

    @classmethod
    def from_json(cls, text: str) -> "Image":
        try:
            d = json.loads(text)
            if d.get("format") != FORMAT:
                raise BpfObjectError(f"image format {d.get('format')!r}, expected {FORMAT}")
            maps = tuple(MapDef(**m) for m in d["maps"])
            funcs = {str(k): base64.b64decode(v, validate=True) for k, v in d["functions"].items()}
            image = cls(str(d["license"]), maps, funcs)
        except BpfObjectError:
            raise
        except Exception as e:
            raise BpfObjectError(f"unreadable image: {type(e).__name__}: {e}") from None
        for name, insns in funcs.items():  # the references must point at maps of the image
            for _off, index in map_references(insns):
                if not 0 <= index < len(maps):
                    raise BpfObjectError(f"image function {name}: map index {index} out of range")
        return image


def map_references(insns: bytes) -> list[tuple[int, int]]:
    """``(byte offset, imm)`` of every ``ld_imm64`` that loads a map by descriptor.

    >>> ld = bytes([0x18, 0x11, 0, 0]) + (7).to_bytes(4, "little") + bytes(8)
    >>> map_references(bytes([0xb7, 0, 0, 0, 0, 0, 0, 0]) + ld)
    [(8, 7)]
    """
    if len(insns) % _INSN:
        raise BpfObjectError(f"instruction stream of {len(insns)} bytes is not a multiple of {_INSN}")
    out = []
    i = 0
    while i < len(insns):
        if insns[i] == _LD_IMM64:
            src = insns[i + 1] >> 4
            if src == _PSEUDO_MAP_FD:
                out.append((i, struct.unpack_from("<i", insns, i + 4)[0]))
            elif src != 0:
                raise BpfObjectError(f"ld_imm64 with pseudo source {src} at instruction {i // _INSN}: "
                                     "only map references are supported")
            i += 2 * _INSN  # ld_imm64 takes two slots
        else:
            i += _INSN
    return out


def _patch(insns: bytes, new: Callable[[int], int]) -> bytes:
    """Replace each map reference's immediate ``x`` by ``new(x)``."""
    buf = bytearray(insns)
    for off, imm in map_references(insns):
        struct.pack_into("<i", buf, off + 4, new(imm))
    return bytes(buf)


def image_from_bcc(bpf: Any, lib: Any) -> Image:
    """The image of a compiled ``bcc.BPF`` (``lib``: bcc's ``bcc.libbcc.lib``)."""
    module = bpf.module
    maps: list[MapDef] = []
    index_of_fd: dict[int, int] = {}
    for i in range(lib.bpf_num_tables(module)):
        name = lib.bpf_table_name(module, i)
        fd = lib.bpf_table_fd_id(module, i)
        if fd < 0:
            raise BpfObjectError(f"bcc did not create map {name!r}")
        index_of_fd[fd] = len(maps)
        maps.append(MapDef(name=name.decode(), type=lib.bpf_table_type_id(module, i),
                           key_size=lib.bpf_table_key_size_id(module, i),
                           value_size=lib.bpf_table_leaf_size_id(module, i),
                           max_entries=lib.bpf_table_max_entries_id(module, i),
                           flags=lib.bpf_table_flags_id(module, i)))
    funcs: dict[str, bytes] = {}
    for i in range(lib.bpf_num_functions(module)):
        name = lib.bpf_function_name(module, i)
        raw = ctypes.string_at(lib.bpf_function_start(module, name), lib.bpf_function_size(module, name))
        refs = map_references(raw)
        missing = sorted({imm for _o, imm in refs} - set(index_of_fd))
        if missing:
            raise BpfObjectError(f"function {name.decode()} references map fds {missing} bcc does not list")
        funcs[name.decode()] = _patch(raw, index_of_fd.__getitem__)
    return Image(license=lib.bpf_module_license(module).decode(), maps=tuple(maps), functions=funcs)


def _bcc_table_prototypes(lib: Any) -> None:
    """bcc's Python wrapper declares most of these; the ``_id`` size getters it does not."""
    c = ctypes
    for name, res, args in (("bpf_num_tables", c.c_ulonglong, [c.c_void_p]),
                            ("bpf_table_name", c.c_char_p, [c.c_void_p, c.c_ulonglong]),
                            ("bpf_table_fd_id", c.c_int, [c.c_void_p, c.c_ulonglong]),
                            ("bpf_table_type_id", c.c_int, [c.c_void_p, c.c_ulonglong]),
                            ("bpf_table_key_size_id", c.c_size_t, [c.c_void_p, c.c_ulonglong]),
                            ("bpf_table_leaf_size_id", c.c_size_t, [c.c_void_p, c.c_ulonglong]),
                            ("bpf_table_max_entries_id", c.c_ulonglong, [c.c_void_p, c.c_ulonglong]),
                            ("bpf_table_flags_id", c.c_int, [c.c_void_p, c.c_ulonglong])):
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = res, args


def compile_image(bcc: Any, text: bytes, cflags: list[str]) -> Image:
    """Compile with bcc, take the image, and free bcc's object (its maps close)."""
    _bcc_table_prototypes(bcc.lib)
    bpf = bcc.BPF(text=text, cflags=cflags)
    try:
        return image_from_bcc(bpf, bcc.lib)
    finally:
        bpf.cleanup()


# --- the compiler process ------------------------------------------------------------
class CompileWorker:
    """bcc in a child process (``python -m otel_kernelnet.bpfobj``): clang and LLVM never
    enter the collector (~90 MB of their text and heap would stay in its RSS after the
    compiles; a crash in them ends the child, not the collector). One JSON line per
    request (``{"text", "cflags"}``) and per answer (``{"image"}`` or ``{"error"}``); the
    compiler's own messages go to the collector's stderr. It lives until :meth:`close`
    (the collector closes it once every family is attached)."""

    def __init__(self, env: dict[str, str] | None = None, argv: list[str] | None = None):
        import subprocess
        argv = argv or [sys.executable, "-m", "otel_kernelnet.bpfobj"]  # tests: a stand-in
        # run from the directory that holds this package: ``-m`` puts the working directory
        # first on sys.path, so the child imports this very code, not another checkout's
        home = Path(__file__).resolve().parents[1]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, cwd=home,
                                     stdout=subprocess.PIPE, env=env, text=True, close_fds=True)

    timeout_s = 300.0  # one compile; a healthy one takes about 0.5 s here

    def compile(self, text: str, cflags: list[str]) -> Image:
        import select
        try:
            self.proc.stdin.write(json.dumps({"text": text, "cflags": cflags}) + "\n")
            self.proc.stdin.flush()
            ready, _, _ = select.select([self.proc.stdout], [], [], self.timeout_s)
            if not ready:
                self.proc.kill()
                self.proc.wait()
                raise BpfObjectError(f"the compiler process did not answer within {self.timeout_s:.0f} s: stopped")
            line = self.proc.stdout.readline()
        except (BrokenPipeError, OSError):
            line = ""
        if not line:
            rc = self.proc.wait()
            raise BpfObjectError(f"the compiler process ended (exit status {rc}; its messages are above)")
        try:
            answer = json.loads(line)
        except ValueError:
            raise BpfObjectError(f"the compiler process answered something else: {line[:200]!r}") from None
        if "error" in answer:
            raise BpfObjectError(answer["error"])
        return Image.from_json(answer["image"])

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=10)
            except Exception:
                self.proc.kill()
                self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except Exception:
                pass


def _worker_main() -> int:
    """The child of :class:`CompileWorker`: import bcc once, compile until stdin ends.
    Its answers go to the original stdout; anything else written to fd 1 (by bcc,
    clang or LLVM) goes to stderr, so it cannot break a line of the protocol."""
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    from .loader import import_bcc
    try:
        bcc = import_bcc()
    except Exception as e:  # answer every request with the reason
        bcc, failure = None, str(e)
    out = answers
    for line in sys.stdin:
        req = json.loads(line)
        try:
            if bcc is None:
                raise BpfObjectError(failure)
            answer = {"image": compile_image(bcc, req["text"].encode(), req["cflags"]).to_json()}
        except Exception as e:  # bcc raises a bare Exception; clang printed the details on stderr
            answer = {"error": f"{e}"}
        out.write(json.dumps(answer) + "\n")
        out.flush()
    return 0


# --- the cache -----------------------------------------------------------------------
def compiler_identity() -> str:
    """What identifies the compiler: bcc's version file (read without importing bcc)."""
    import importlib.util
    try:
        spec = importlib.util.find_spec("bcc")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.origin:
        return "bcc:missing"
    version = Path(spec.origin).with_name("version.py")
    try:
        return "bcc:" + version.read_text().strip()
    except OSError:
        return "bcc:" + spec.origin


_QUOTED_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)


def local_headers(source: str, dirs: list[Path]) -> str:
    """The text of every ``#include "..."`` file the source reaches (recursively, looked
    up in ``dirs`` as the compiler's ``-I`` would), for :func:`cache_key`: a record
    layout changed in ``drop.h`` must not load an object compiled with the old one."""
    out, seen, todo = [], set(), _QUOTED_INCLUDE.findall(source)
    while todo:
        name = todo.pop(0)
        if name in seen:
            continue
        seen.add(name)
        for d in dirs:
            f = d / name
            if f.is_file():
                text = f.read_text()
                out.append(f"{name}\0{text}")
                todo.extend(_QUOTED_INCLUDE.findall(text))
                break
        else:
            out.append(f"{name}\0<missing>")
    return "\0\1".join(out)


def cache_key(source: str, cflags: list[str], compiler: str | None = None, headers: str = "") -> str:
    """sha256 over everything that decides the bytecode: the source and the local headers
    it includes (:func:`local_headers`), the ``-D`` flags (they carry the BTF offsets and
    tracepoint layouts of this kernel), the compiler, and the kernel's release and build
    (helper numbers, the verifier)."""
    u = os.uname()
    h = hashlib.sha256()
    for part in (str(FORMAT), source, headers, "\0".join(cflags), compiler or compiler_identity(),
                 u.release, u.version, u.machine):
        h.update(part.encode())
        h.update(b"\0\1")
    return h.hexdigest()


class ObjectCache:
    """Images on disk, one file per key. The collector runs as root and loads these
    into the kernel, so a directory or file that another user could write is not
    trusted: it is ignored (and said in :attr:`notes`), never used."""

    def __init__(self, directory: str | os.PathLike | None):
        self.directory = Path(directory) if directory else None
        self.notes: list[str] = []
        self.hits = self.misses = self.stored = 0

    def _safe(self, path: Path, st: os.stat_result) -> bool:
        if st.st_uid != os.geteuid() or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            self.notes.append(f"bpf cache: {path} is writable by another user or not ours: ignored")
            return False
        return True

    def usable(self, create: bool) -> bool:
        """Whether the directory can be used (created if ``create``); when not, it is
        turned off for this process and :attr:`notes` says why."""
        if self.directory is None:
            return False
        d = self.directory
        if create:
            try:
                d.mkdir(mode=0o700, parents=True, exist_ok=True)
            except OSError as e:
                self.notes.append(f"bpf cache: cannot create {d}: {e.strerror}")
                self.directory = None
                return False
        try:
            st = d.stat()
        except OSError:
            return False
        if not self._safe(d, st):
            self.directory = None
            return False
        return True

    def path(self, key: str) -> Path | None:
        return self.directory / f"{key}.json" if self.directory else None

    def load(self, key: str) -> Image | None:
        if not self.usable(create=False):
            self.misses += 1
            return None
        p = self.path(key)
        try:
            fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            self.misses += 1
            return None
        try:
            if not self._safe(p, os.fstat(fd)):
                self.misses += 1
                return None
            with os.fdopen(fd, "r", closefd=False) as f:
                text = f.read()
        finally:
            os.close(fd)
        try:
            image = Image.from_json(text)
        except BpfObjectError as e:
            self.notes.append(f"bpf cache: {p}: {e}: recompiled")
            self.evict(key)
            self.misses += 1
            return None
        self.hits += 1
        try:
            os.utime(p)  # recently used: pruned last
        except OSError:
            pass
        return image

    def store(self, key: str, image: Image) -> None:
        if not self.usable(create=True):
            return
        try:
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=self.directory)
            try:
                with os.fdopen(fd, "w") as f:
                    f.write(image.to_json())
                os.replace(tmp, self.path(key))
            except BaseException:
                os.unlink(tmp)
                raise
        except OSError as e:
            self.notes.append(f"bpf cache: cannot write {self.directory}: {e.strerror}")
            return
        self.stored += 1
        self._prune()

    def _prune(self) -> None:
        """Keep the :data:`MAX_ENTRIES` most recently used images (each config or kernel
        change makes new keys; old ones would otherwise pile up)."""
        try:
            entries = sorted(self.directory.glob("*.json"), key=lambda q: q.stat().st_mtime)
        except OSError:
            return
        for old in entries[:-MAX_ENTRIES]:
            try:
                old.unlink()
            except OSError:
                pass

    def evict(self, key: str) -> None:
        p = self.path(key)
        if p is not None:
            try:
                p.unlink()
            except OSError:
                pass


# --- loaded objects ------------------------------------------------------------------
class BpfMap:
    """One map of a loaded object, read and written with integer keys and values
    (native byte order, the map's key and value sizes)."""

    def __init__(self, d: MapDef, fd: int):
        self.name, self.type, self.fd = d.name, d.type, fd
        self.key_size, self.value_size, self.max_entries = d.key_size, d.value_size, d.max_entries
        self.percpu = d.type in _PERCPU_TYPES

    def _key(self, key: int) -> ctypes.Array:
        return ctypes.create_string_buffer(key.to_bytes(self.key_size, sys.byteorder), self.key_size)

    def set(self, key: int, value: int) -> None:
        """Insert or update; OSError when the kernel refuses (a full hash map: E2BIG)."""
        v = ctypes.create_string_buffer(value.to_bytes(self.value_size, sys.byteorder), self.value_size)
        if library().bpf_update_elem(self.fd, self._key(key), v, _BPF_ANY) != 0:
            e = ctypes.get_errno()
            raise OSError(e, f"update of map {self.name}: {os.strerror(e)}")

    def delete(self, key: int) -> bool:
        """False when the key was not there."""
        return library().bpf_delete_elem(self.fd, self._key(key)) == 0

    def percpu_rows(self, count: int) -> list[list[int]]:
        """The per-CPU u64 values of keys ``0..count-1`` of a per-CPU array: one batched
        lookup (BPF_MAP_LOOKUP_BATCH, Linux 5.6+: ~8x faster than a syscall per key for
        the 256-entry histograms the metrics read every interval), else key by key."""
        if not self.percpu or self.value_size != 8 or self.key_size != 4:
            raise BpfObjectError(f"map {self.name}: not a per-CPU array of u64")
        ncpu = possible_cpus()
        count = min(count, self.max_entries)
        rows = self._batch(count, ncpu)
        if rows is None:
            rows = []
            v = (ctypes.c_uint64 * ncpu)()
            for i in range(count):
                if library().bpf_lookup_elem(self.fd, self._key(i), v) != 0:
                    raise BpfObjectError(f"lookup of {self.name}[{i}]: {_errno_text()}")
                rows.append(list(v))
        return rows

    def _batch(self, count: int, ncpu: int) -> list[list[int]] | None:
        if count == 0:
            return []
        keys = (ctypes.c_uint32 * count)()
        vals = (ctypes.c_uint64 * (count * ncpu))()
        n = ctypes.c_uint32(count)
        out_batch = ctypes.c_uint32(0)
        rc = library().bpf_lookup_batch(self.fd, None, ctypes.byref(out_batch), keys, vals, ctypes.byref(n))
        if rc != 0 and ctypes.get_errno() != 2:  # ENOENT: the last batch, with what it found
            return None
        got = n.value
        if got < count:  # an array answers every key in one call; anything else: key by key
            return None
        rows: list[list[int] | None] = [None] * count
        for j in range(got):
            k = keys[j]
            if k < count:
                rows[k] = list(vals[j * ncpu:(j + 1) * ncpu])
        return rows if all(r is not None for r in rows) else None  # type: ignore[return-value]


class BpfObject:
    """An image in the kernel: its maps (created at once), its functions (loaded when
    first attached, with the attach's program type) and its attachments."""

    def __init__(self, image: Image, name: str):
        self.name = name
        self.image = image
        self.maps: dict[str, BpfMap] = {}
        self.funcs: dict[tuple[str, int], int] = {}  # (function, program type) -> fd
        self.links: dict[str, int] = {}  # attach point ("raw:x" or "cat:x") -> fd
        lib = library()
        fds: list[int] = []
        try:
            for d in image.maps:
                fd = lib.bcc_create_map(d.type, d.name[:15].encode(), d.key_size, d.value_size,
                                        d.max_entries, d.flags)
                if fd < 0:
                    raise BpfObjectError(f"{name}: creating map {d.name} (type {d.type}, "
                                         f"{d.max_entries} entries) failed: {_errno_text()}")
                fds.append(fd)
                self.maps[d.name] = BpfMap(d, fd)
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        self._map_fds = fds

    def __getitem__(self, name: str) -> BpfMap:
        try:
            return self.maps[name]
        except KeyError:
            raise KeyError(f"{self.name} has no map {name!r}") from None

    def load(self, fn: str, prog_type: int) -> int:
        """The program fd of function ``fn`` loaded as ``prog_type`` (once per pair)."""
        fd = self.funcs.get((fn, prog_type))
        if fd is not None:
            return fd
        insns = self.image.functions.get(fn)
        if insns is None:
            raise BpfObjectError(f"{self.name} has no function {fn!r}")
        code = ctypes.create_string_buffer(_patch(insns, self._map_fds.__getitem__), len(insns))
        lib = library()
        lic = self.image.license.encode()
        fd = lib.bcc_prog_load(prog_type, fn.encode(), code, len(insns), lic, 0, 0, None, 0)
        if fd < 0:  # again with the verifier's log, for the message
            err = _errno_text()
            log = ctypes.create_string_buffer(1 << 20)
            fd2 = lib.bcc_prog_load(prog_type, fn.encode(), code, len(insns), lic, 0, 1, log, len(log))
            if fd2 >= 0:
                fd = fd2
            else:
                tail = log.value.decode(errors="replace").strip().splitlines()[-6:]
                raise BpfObjectError(f"{self.name}: loading {fn} failed: {err}" +
                                     (": " + " | ".join(tail) if tail else ""))
        self.funcs[(fn, prog_type)] = fd
        return fd

    def attach_raw_tracepoint(self, tp: str, fn: str) -> None:
        fd = _attach_fd(library().bpf_attach_raw_tracepoint, self.load(fn, PROG_TYPE_RAW_TRACEPOINT),
                             tp.encode())
        self.links["raw:" + tp] = fd

    def attach_tracepoint(self, tp: str, fn: str) -> None:
        category, _, event = tp.partition(":")
        fd = _attach_fd(library().bpf_attach_tracepoint, self.load(fn, PROG_TYPE_TRACEPOINT),
                             category.encode(), event.encode())
        self.links[tp] = fd

    def detach(self, point: str) -> None:
        """Close the attachment (``raw:name`` or ``category:name``): the kernel detaches."""
        fd = self.links.pop(point, None)
        if fd is not None:
            os.close(fd)

    def prog_fd(self, fn: str) -> int | None:
        """The fd of ``fn`` as loaded (whatever its type), None when not loaded."""
        return next((fd for (f, _t), fd in self.funcs.items() if f == fn), None)

    def close(self) -> None:
        for point in list(self.links):
            self.detach(point)
        for fd in list(self.funcs.values()) + self._map_fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.funcs.clear()
        self._map_fds = []
        self.maps.clear()


def _attach_fd(fn: Callable[..., int], *args: Any) -> int:
    """The fd a libbcc_bpf attach call returned; its errno as an error when it failed."""
    fd = fn(*args)
    if fd < 0:
        raise BpfObjectError(f"attach failed: {_errno_text()}")
    return fd


# BPF ring buffer layout (include/uapi/linux/bpf.h, kernel/bpf/ringbuf.c; UAPI): the map
# fd maps a consumer page (read-write: consumer_pos at 0), then read-only a producer
# page (producer_pos at 0) followed by the data area mapped twice in a row, so a record
# that wraps is contiguous. Each record: u32 length with the BUSY and DISCARD bits,
# u32 page offset, the sample, padded to 8 bytes.
_RB_BUSY = 1 << 31
_RB_DISCARD = 1 << 30
_RB_LEN = _RB_DISCARD - 1
_RB_HDR = 8
_U32 = struct.Struct("=I")
_U64 = struct.Struct("=Q")
READER_ENV = "OTEL_KERNELNET_RINGBUF_READER"  # "mmap" or "libbpf": force a reader


def default_reader() -> str:
    """``mmap`` on x86-64, ``libbpf`` elsewhere (or as ``READER_ENV`` says).

    The mmap reader reads the positions and record headers with plain loads and writes
    the consumer position with a plain aligned 8-byte store. On x86-64 (total store
    order) those order exactly as libbpf's ``smp_load_acquire``/``smp_store_release``;
    on weaker memory models (arm64) they do not, so libbpf reads there."""
    forced = os.environ.get(READER_ENV, "").strip().lower()
    if forced in ("mmap", "libbpf"):
        return forced
    return "mmap" if os.uname().machine in ("x86_64", "amd64") else "libbpf"


class MmapRing:
    """One ring buffer map, read through its own mapped pages by the calling thread.

    What libbpf's ``ring_buffer__consume`` does, without a C callback per record: with
    libbpf each record crosses ctypes (a callback object, the GIL taken and given back
    while another thread may hold it, ``string_at``); here a drain is one Python loop
    that holds the GIL, copies each sample out of the mapping (``bytes``) and passes it
    on. The consumer position is advanced before the callback, as soon as the sample is
    copied, so the kernel can reuse the space at once. A record still being written
    (BUSY) ends the drain; discarded records are skipped. One call reads at most one
    ring's worth of bytes, so a producer faster than the callbacks cannot keep it
    looping: the collector's loop drains again a poll interval later.
    """

    def __init__(self, m: BpfMap, callback: Callable[[bytes], None]):
        page = mmap.PAGESIZE
        size = m.max_entries
        if size <= 0 or size & (size - 1) or size % page:
            raise BpfObjectError(f"ring buffer {m.name}: size {size} is not a power-of-2 multiple of the page size")
        self.name = m.name
        self._page, self._size, self._mask = page, size, size - 1
        self._callback = callback
        try:
            self._cons_map = mmap.mmap(m.fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        except OSError as e:
            raise BpfObjectError(f"mapping ring buffer {m.name} (consumer page) failed: {e}") from None
        try:
            self._data = mmap.mmap(m.fd, page + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page)
        except OSError as e:
            self._cons_map.close()
            raise BpfObjectError(f"mapping ring buffer {m.name} (data) failed: {e}") from None
        self._cons = ctypes.c_uint64.from_buffer(self._cons_map)  # one aligned 8-byte store per write

    def consume(self) -> int:
        """Pass every complete record to the callback; how many were passed."""
        data, cons_ref, callback = self._data, self._cons, self._callback
        base, mask = self._page, self._mask
        u32, u64 = _U32.unpack_from, _U64.unpack_from
        cons = cons_ref.value
        limit = cons + self._size
        n = 0
        while cons < limit:
            prod = u64(data, 0)[0]
            if cons >= prod:
                break
            while cons < prod:
                off = base + (cons & mask)
                hdr = u32(data, off)[0]
                if hdr & _RB_BUSY:
                    return n
                length = hdr & _RB_LEN
                sample = None if hdr & _RB_DISCARD else data[off + _RB_HDR:off + _RB_HDR + length]
                cons += (length + _RB_HDR + 7) & ~7
                cons_ref.value = cons
                if sample is not None:
                    n += 1
                    callback(sample)
        return n

    def close(self) -> None:
        self._cons = None  # the ctypes view holds an export of the mapping: release it first
        self._cons_map.close()
        self._data.close()


class RingBuffers:
    """All ring buffers of all objects; one consume call drains every one and returns
    how many records it passed to the callbacks (``callback(sample: bytes)``, which must
    not raise). Read by :class:`MmapRing` or, where that is not safe (see
    :func:`default_reader`), by libbpf's ``ring_buffer`` through ``libbcc_bpf``."""

    def __init__(self, reader: str | None = None) -> None:
        self.reader = reader or default_reader()
        if self.reader not in ("mmap", "libbpf"):
            raise ValueError(f"unknown ring buffer reader {self.reader!r}")
        self._rings: list[MmapRing] = []
        self._mgr: int | None = None
        self._callbacks: list[Any] = []  # ctypes keeps no reference of its own

    def add(self, m: BpfMap, callback: Callable[[bytes], None]) -> None:
        if self.reader == "mmap":
            self._rings.append(MmapRing(m, callback))
            return

        def one(_ctx: Any, data: Any, size: int, _cb: Callable[[bytes], None] = callback) -> int:
            _cb(ctypes.string_at(data, size))
            return 0

        cb = RingCallback(one)
        lib = library()
        if self._mgr is None:
            mgr = lib.bpf_new_ringbuf(m.fd, cb, None)
            if not mgr:
                raise BpfObjectError(f"opening ring buffer {m.name} failed: {_errno_text()}")
            self._mgr = mgr
        elif lib.bpf_add_ringbuf(self._mgr, m.fd, cb, None) < 0:
            raise BpfObjectError(f"adding ring buffer {m.name} failed: {_errno_text()}")
        self._callbacks.append(cb)

    def consume(self) -> int:
        n = 0
        for ring in self._rings:
            n += ring.consume()
        if self._mgr is not None:
            n += max(0, library().bpf_consume_ringbuf(self._mgr))
        return n

    def close(self) -> None:
        for ring in self._rings:
            ring.close()
        self._rings.clear()
        if self._mgr is not None:
            library().bpf_free_ringbuf(self._mgr)
            self._mgr = None
        self._callbacks.clear()


if __name__ == "__main__":
    sys.exit(_worker_main())
