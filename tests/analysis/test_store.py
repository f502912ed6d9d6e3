"""Loader of the embedded store and the collector file-exporter formats."""

import gzip
import json
import struct

import polars as pl
import pytest

from kernelnet_analysis import SPAN_SCHEMA, SourceError, load_store, read_file, store_to_parquet, scan_parquet

TID = "5b8efff798038103d269b633813fc700"


def doc(n=2, numbers=False):
    """An OTLP/JSON TracesData line as the collector writes it (int64 as strings unless numbers)."""
    num = (lambda v: v) if numbers else str
    spans = []
    for i in range(n):
        spans.append({
            "traceId": TID, "spanId": f"{i + 1:016x}", "parentSpanId": "" if i == 0 else "0000000000000001",
            "name": f"op{i}", "kind": 2, "startTimeUnixNano": num(1_000 + i), "endTimeUnixNano": num(5_000 + i),
            "attributes": [{"key": "kernelnet.socket.cookie", "value": {"intValue": num(4097)}},
                           {"key": "net.x", "value": {"arrayValue": {"values": [{"intValue": "1"}]}}}],
            "events": [{"timeUnixNano": num(2_000), "name": "exception",
                        "attributes": [{"key": "exception.type", "value": {"stringValue": "E"}}]}],
            "links": [{"traceId": "0" * 31 + "1", "spanId": "0" * 15 + "2"}],
            "status": {"code": 2, "message": "boom"} if i else {},
        })
    return {"resourceSpans": [{"resource": {"attributes": [
        {"key": "service.name", "value": {"stringValue": "api"}},
        {"key": "process.pid", "value": {"intValue": "77"}}]},
        "scopeSpans": [{"scope": {"name": "lib", "version": "1"}, "spans": spans}]}]}


def check(t, n=2):
    assert t.spans.schema == SPAN_SCHEMA
    s = t.spans.sort("span_id")
    assert s.height == n
    assert s["trace_id"].to_list() == [TID] * n
    assert s["parent_span_id"].to_list()[:2] == [None, "0000000000000001"]
    assert s["duration_ns"].to_list() == [4000] * n
    assert s["kernelnet.socket.cookie"].to_list() == [4097] * n
    assert s["status_code"].to_list()[:2] == [0, 2]
    assert s["process.pid"].to_list() == [77] * n  # from the resource
    assert s["service"].unique().to_list() == ["api"]
    assert t.events.height == n and t.events["name"][0] == "exception"
    assert t.links["linked_span_id"].to_list() == ["0000000000000002"] * n
    assert t.resources["service"].to_list() == ["api"]


def test_jsonl_dir_and_rotation(tmp_path):
    (tmp_path / "traces-0001.jsonl").write_text(json.dumps(doc()) + "\n")
    (tmp_path / "traces-0002.jsonl").write_text(json.dumps(doc(numbers=True)) + "\n\n")
    t = load_store(tmp_path)
    assert t.spans.height == 4 and t.resources.height == 2
    assert t.spans["resource_id"].unique().sort().to_list() == [0, 1]


def test_numbers_and_strings(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_text(json.dumps(doc(numbers=True)) + "\n")
    check(read_file(p))


def test_gzip(tmp_path):
    p = tmp_path / "traces-1.jsonl.gz"
    p.write_bytes(gzip.compress((json.dumps(doc()) + "\n").encode()))
    check(read_file(p))


def _proto_bytes():
    from google.protobuf.json_format import ParseDict
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    d = doc()
    # protobuf's JSON mapping wants base64 ids
    import base64
    for rs in d["resourceSpans"]:
        for ss in rs["scopeSpans"]:
            for sp in ss["spans"]:
                for k in ("traceId", "spanId", "parentSpanId"):
                    sp[k] = base64.b64encode(bytes.fromhex(sp[k])).decode() if sp.get(k) else ""
                for lk in sp["links"]:
                    lk["traceId"] = base64.b64encode(bytes.fromhex(lk["traceId"])).decode()
                    lk["spanId"] = base64.b64encode(bytes.fromhex(lk["spanId"])).decode()
    return ParseDict(d, ExportTraceServiceRequest()).SerializeToString()


def test_length_prefixed_protobuf(tmp_path):
    msg = _proto_bytes()
    p = tmp_path / "traces.pb"
    p.write_bytes(struct.pack(">I", len(msg)) + msg + struct.pack(">I", len(msg)) + msg)
    t = read_file(p)
    assert t.spans.height == 4
    check(pl.DataFrame() if False else type(t)(t.spans.head(2), t.events.head(2), t.links.head(2), t.resources.head(1)))


def test_length_prefixed_json(tmp_path):
    body = json.dumps(doc()).encode()
    p = tmp_path / "traces.bin"
    p.write_bytes(struct.pack(">I", len(body)) + body)
    check(read_file(p))


def test_zstd_records_and_whole_file(tmp_path):
    zstandard = pytest.importorskip("zstandard")
    msg = _proto_bytes()
    z = zstandard.ZstdCompressor().compress(msg)
    p = tmp_path / "traces.zst"
    p.write_bytes(struct.pack(">I", len(z)) + z)
    check(read_file(p))
    q = tmp_path / "whole.jsonl.zst"
    q.write_bytes(zstandard.ZstdCompressor().compress((json.dumps(doc()) + "\n").encode()))
    check(read_file(q))


def test_zstd_missing_module_is_a_clear_error(tmp_path, monkeypatch):
    import builtins
    real = builtins.__import__

    def fake(name, *a, **k):
        if name == "zstandard":
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    p = tmp_path / "t.zst"
    p.write_bytes(b"\x28\xb5\x2f\xfd" + b"\0" * 8)
    with pytest.raises(SourceError, match="pip install zstandard"):
        read_file(p)


@pytest.mark.parametrize("content, message", [
    (b"{not json\n", "not valid JSON"),
    (b'{"foo": 1}\n', "resourceSpans"),
    (b"\x00\x00\x10\x00abc", "runs past the end"),
    (b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"name":"x","traceId":"zz!","spanId":"01"}]}]}]}',
     "invalid trace id"),
])
def test_bad_files(tmp_path, content, message):
    p = tmp_path / "traces-1.jsonl"
    p.write_bytes(content)
    with pytest.raises(SourceError, match=message):
        load_store(tmp_path)


def test_missing_and_empty(tmp_path):
    with pytest.raises(SourceError, match="no such file"):
        load_store(tmp_path / "nope")
    with pytest.raises(SourceError, match="no trace files"):
        load_store(tmp_path)


def test_window_filter_and_parquet(tmp_path, datasets):
    t = load_store(datasets["control"])
    t0 = t.spans["start_ns"].min()
    part = load_store(datasets["control"], start_ns=t0, end_ns=t0 + 5_000_000_000)
    assert 0 < part.spans.height < t.spans.height
    out = store_to_parquet(datasets["control"], tmp_path / "pq", files_per_batch=1)
    lf = scan_parquet(out)
    assert lf["spans"].select(pl.len()).collect().item() == t.spans.height
    assert lf["spans"].collect_schema() == t.spans.schema


def test_tolerant_shapes():
    from kernelnet_analysis.otlp import traces_from_otlp
    old = {"resource_spans": [{"resource": {"attributes": []}, "instrumentationLibrarySpans": [
        {"instrumentationLibrary": {"name": "old"}, "spans": [
            {"trace_id": "ABC", "span_id": "0A", "name": "x", "kind": "SPAN_KIND_CLIENT",
             "start_time_unix_nano": 1, "end_time_unix_nano": 0, "status": {"code": "STATUS_CODE_ERROR"}}]}]}]}
    s = traces_from_otlp(old).spans
    assert s.select("trace_id", "span_id", "kind", "status_code", "scope", "duration_ns").row(0) == (
        "0" * 29 + "abc", "0" * 14 + "0a", 3, 2, "old", 0)


def test_collector_metrics_files_beside_the_traces_are_not_spans(tmp_path):
    import json as _json

    from kernelnet_analysis.store import load_store
    trace = {"resourceSpans": [{"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "otel-kernelnet"}}]},
                                "scopeSpans": [{"scope": {"name": "otel-kernelnet"}, "spans": [{
                                    "traceId": "0" * 31 + "1", "spanId": "0" * 15 + "1", "name": "kernel.skb.drop",
                                    "kind": 1, "startTimeUnixNano": "5", "endTimeUnixNano": "5", "status": {"code": 2}}]}]}]}
    metrics = {"resourceMetrics": [{"resource": {}, "scopeMetrics": [{"metrics": [{"name": "kernelnet.collector.lost"}]}]}]}
    (tmp_path / "traces-1.jsonl").write_text(_json.dumps(trace) + "\n")
    (tmp_path / "metrics-1.jsonl").write_text(_json.dumps(metrics) + "\n")
    t = load_store(tmp_path)
    assert t.spans.height == 1 and t.spans["name"].to_list() == ["kernel.skb.drop"]
