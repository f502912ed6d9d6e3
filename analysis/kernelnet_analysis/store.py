"""Read the embedded store and OTel collector file-exporter output.

Accepted inputs (a directory is searched for all of them, sorted by name, which
for the collector's ``traces-*.jsonl`` rotation is time order):

* ``*.jsonl`` / ``*.json``: OTLP JSON Lines, one ``TracesData`` per line (the
  embedded store and the collector ``fileexporter`` with ``format: json``);
* ``*.gz``: the same, gzip-compressed;
* ``*.zst`` / ``*.zstd``: the same, zstd-compressed (needs ``zstandard``);
* ``*.pb`` / ``*.proto`` / ``*.bin`` or any file that is not JSON: the file
  exporter's length-prefixed records (4-byte big-endian length + message), each
  message a protobuf ``ExportTraceServiceRequest``/``TracesData`` or a JSON object,
  and each possibly zstd-compressed (``compression: zstd``).

Everything is detected from the bytes, not trusted from the name.

>>> import json, tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> line = {"resourceSpans": [{"resource": {"attributes": [
...   {"key": "service.name", "value": {"stringValue": "api"}}]}, "scopeSpans": [{"spans": [
...   {"traceId": "01" * 16, "spanId": "02" * 8, "name": "GET", "kind": 2,
...    "startTimeUnixNano": "5", "endTimeUnixNano": "9"}]}]}]}
>>> _ = (d / "traces-0001.jsonl").write_text(json.dumps(line) + "\\n")
>>> load_store(d).spans.select("service", "name", "duration_ns").row(0)
('api', 'GET', 4)
"""

from __future__ import annotations

import gzip
import io
import json
import os
import struct
from pathlib import Path
from typing import Iterator

import polars as pl

from .errors import SourceError
from .otlp import FrameBuilder, add_otlp, add_otlp_protobuf
from .schema import Traces, concat_traces

_GZ = b"\x1f\x8b"
_ZSTD = b"\x28\xb5\x2f\xfd"
_PATTERNS = ("*.jsonl", "*.json", "*.jsonl.gz", "*.json.gz", "*.gz", "*.zst", "*.zstd",
             "*.pb", "*.proto", "*.bin")


def _zstd_decompress(data: bytes) -> bytes:
    try:
        import zstandard
    except ImportError:
        raise SourceError("zstd-compressed traces need the 'zstandard' module: pip install zstandard") from None
    try:
        return zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read()
    except zstandard.ZstdError as exc:
        raise SourceError(f"bad zstd data ({exc})") from None


def list_files(path: str | os.PathLike) -> list[Path]:
    """Trace files under ``path`` (a file, or a directory searched recursively), sorted.

    >>> list_files("/nonexistent/dir")
    Traceback (most recent call last):
    kernelnet_analysis.errors.SourceError: no such file or directory: /nonexistent/dir
    """
    p = Path(path)
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise SourceError(f"no such file or directory: {p}")
    found = {f for pat in _PATTERNS for f in p.rglob(pat) if f.is_file()}
    if not found:
        raise SourceError(f"no trace files (traces-*.jsonl, *.jsonl.gz, *.pb, *.zst) under {p}")
    return sorted(found, key=lambda f: (str(f.parent), f.name))


def _records(data: bytes, name: str) -> Iterator[tuple[str, bytes]]:
    """Yield ("json", line) or ("proto", message) records of one file's bytes."""
    if data.startswith(_GZ):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise SourceError(f"{name}: bad gzip data ({exc})") from None
    elif data.startswith(_ZSTD):
        data = _zstd_decompress(data)
    head = data.lstrip()[:1]
    if not data.strip():
        return
    if head in (b"{", b"["):
        for line in data.splitlines():
            if line.strip():
                yield "json", line
        return
    # length-prefixed records
    pos, n = 0, len(data)
    while pos < n:
        if pos + 4 > n:
            raise SourceError(f"{name}: truncated length prefix at byte {pos}")
        (length,) = struct.unpack_from(">I", data, pos)
        pos += 4
        if pos + length > n:
            raise SourceError(f"{name}: record of {length} bytes at byte {pos - 4} runs past the end "
                              "(not OTLP JSON Lines nor length-prefixed protobuf?)")
        rec = data[pos:pos + length]
        pos += length
        if rec.startswith(_ZSTD):
            rec = _zstd_decompress(rec)
        yield ("json" if rec.lstrip()[:1] == b"{" else "proto"), rec


def read_file(path: str | os.PathLike) -> Traces:
    """Frames of one trace file (any of the formats in the module docs)."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise SourceError(f"cannot read {p}: {exc.strerror}") from None
    b = FrameBuilder()
    for i, (fmt, rec) in enumerate(_records(data, str(p))):
        if fmt == "json":
            try:
                doc = json.loads(rec)
            except ValueError as exc:
                raise SourceError(f"{p}: record {i + 1} is not valid JSON ({exc})") from None
            try:
                add_otlp(b, doc)
            except SourceError as exc:
                raise SourceError(f"{p}: record {i + 1}: {exc}") from None
        else:
            try:
                add_otlp_protobuf(b, rec)
            except SourceError as exc:
                raise SourceError(f"{p}: record {i + 1}: {exc}") from None
    return b.finish()


def iter_store(path: str | os.PathLike, files_per_batch: int = 8) -> Iterator[Traces]:
    """Yield the store in batches of files, so a large store never sits in memory at once.

    Filter or aggregate each batch, then :func:`~kernelnet_analysis.schema.concat_traces`
    what you keep.
    """
    files = list_files(path)
    for i in range(0, len(files), files_per_batch):
        yield concat_traces([read_file(f) for f in files[i:i + files_per_batch]])


def load_store(path: str | os.PathLike, start_ns: int | None = None, end_ns: int | None = None,
               services: list[str] | None = None) -> Traces:
    """Load a store directory or file; optional time window and service filter applied per batch.

    The filter keeps every span of a trace that has a span in the window (and
    always keeps kernel spans in the window), so joins stay complete.
    """
    parts = []
    for t in iter_store(path):
        if start_ns is not None or end_ns is not None or services:
            keep = pl.lit(True)
            if start_ns is not None:
                keep &= pl.col("end_ns") >= start_ns
            if end_ns is not None:
                keep &= pl.col("start_ns") <= end_ns
            if services:
                from otel_kernelnet.semconv import SERVICE_NAME
                keep &= pl.col("service").is_in([*services, SERVICE_NAME])
            spans = t.spans.filter(keep)
            ids = spans.select("trace_id", "span_id")
            t = Traces(spans, t.events.join(ids, on=["trace_id", "span_id"], how="semi"),
                       t.links.join(ids, on=["trace_id", "span_id"], how="semi"), t.resources)
        parts.append(t)
    return concat_traces(parts)


def store_to_parquet(path: str | os.PathLike, out_dir: str | os.PathLike, files_per_batch: int = 8) -> Path:
    """Convert a store to Parquet once (``spans/``, ``events/``, ``links/``, ``resources/``
    with one file per batch) so that :func:`scan_parquet` can read it lazily.
    """
    out = Path(out_dir)
    for name in ("spans", "events", "links", "resources"):
        (out / name).mkdir(parents=True, exist_ok=True)
    offset = 0
    for i, t in enumerate(iter_store(path, files_per_batch)):
        t.spans.with_columns((pl.col("resource_id") + offset).cast(pl.UInt32)).write_parquet(out / "spans" / f"part-{i:05d}.parquet")
        t.resources.with_columns((pl.col("resource_id") + offset).cast(pl.UInt32)).write_parquet(out / "resources" / f"part-{i:05d}.parquet")
        t.events.write_parquet(out / "events" / f"part-{i:05d}.parquet")
        t.links.write_parquet(out / "links" / f"part-{i:05d}.parquet")
        offset += t.resources.height
    return out


def scan_parquet(out_dir: str | os.PathLike) -> dict[str, pl.LazyFrame]:
    """Lazy frames over a :func:`store_to_parquet` directory (keys: spans, events, links, resources)."""
    out = Path(out_dir)
    if not (out / "spans").is_dir():
        raise SourceError(f"{out} is not a store_to_parquet directory")
    return {name: pl.scan_parquet(out / name / "*.parquet") for name in ("spans", "events", "links", "resources")}
