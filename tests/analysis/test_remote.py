"""Jaeger v1/v3 and Tempo readers: recorded-shape fixtures, then a fake server on loopback."""

import base64
import io
import json
import threading
import urllib.parse
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import polars as pl
import pytest

from kernelnet_analysis import SourceError, diagnose, run, synth
from kernelnet_analysis.remote import detect_backend, jaeger_v1_traces, otlp_traces, tempo_search_ids

FIX = Path(__file__).parent / "fixtures"
TID = "000a7651916cd43dd8448eb211c80319"


def fixture(name):
    return json.loads((FIX / name).read_text())


COLS = ["trace_id", "span_id", "parent_span_id", "name", "kind", "start_ns", "end_ns", "status_code", "service",
        "kernelnet.socket.cookie", "kernelnet.drop.reason", "kernelnet.kind", "network.peer.port", "process.pid"]


def canon(t):
    return t.spans.select(COLS).sort("span_id")


@pytest.mark.parametrize("name, parse", [
    ("jaeger_v3_traces.json", otlp_traces), ("jaeger_v3_traces_unwrapped.json", otlp_traces),
    ("tempo_v1_trace.json", otlp_traces), ("tempo_v2_trace.json", otlp_traces),
    ("jaeger_v1_traces.json", jaeger_v1_traces)])
def test_fixture_shapes_give_the_same_frames(name, parse):
    t = parse(fixture(name))
    ref = canon(otlp_traces(fixture("jaeger_v3_traces.json")))
    assert canon(t).equals(ref), canon(t)
    s = t.spans.sort("span_id")
    app = s.filter(pl.col("service") == "checkout").row(0, named=True)
    assert (app["trace_id"], app["kind"], app["status_code"], app["duration_ns"]) == (TID, 2, 2, 250_000_000)
    assert app["kernelnet.socket.cookie"] == 4097
    assert t.links.select("linked_trace_id", "linked_span_id").rows() == [
        ("4bf92f3577b34da6a3ce929d0e0e4736", "53995c3f42cd8ad8")]
    assert t.events["name"].to_list() == ["exception"]


def test_jaeger_v1_specifics():
    t = jaeger_v1_traces(fixture("jaeger_v1_traces.json"))
    app = t.spans.filter(pl.col("service") == "checkout").row(0, named=True)
    assert app["status_message"] == "boom" and app["scope"] == "flask"
    # span.kind / otel.status_code / error are mapped to columns, not left as attributes
    keys = {a["key"] for a in app["attributes"]}
    assert not keys & {"span.kind", "otel.status_code", "error"}
    assert t.events["time_ns"][0] == 1740787200000001000  # microseconds -> ns
    with pytest.raises(SourceError, match="service' is required"):
        jaeger_v1_traces(fixture("jaeger_v1_error.json"))
    with pytest.raises(SourceError):
        jaeger_v1_traces({"nope": 1})


def test_tempo_search_pads_ids():
    assert tempo_search_ids(fixture("tempo_search.json")) == [TID]


# --- fake servers ------------------------------------------------------------------------------
def _by_trace(docs):
    """synth OTLP docs -> {trace_id: [(service, scope, span)]}"""
    out = defaultdict(list)
    for d in docs:
        for rs in d["resourceSpans"]:
            svc = rs["resource"]["attributes"][0]["value"]["stringValue"]
            for ss in rs["scopeSpans"]:
                for sp in ss["spans"]:
                    out[sp["traceId"]].append((svc, ss["scope"]["name"], sp))
    return out


def _jaeger_v1_trace(tid, items):
    procs, spans = {}, []
    for svc, scope, sp in items:
        pid = procs.setdefault(svc, f"p{len(procs) + 1}")
        tags = []
        for a in sp.get("attributes", []):
            (typ, v), = a["value"].items()
            tags.append({"key": a["key"], "type": {"intValue": "int64", "stringValue": "string",
                                                   "boolValue": "bool", "doubleValue": "float64"}[typ],
                         "value": int(v) if typ == "intValue" else v})
        tags.append({"key": "span.kind", "type": "string",
                     "value": ["unspecified", "internal", "server", "client"][sp["kind"]]})
        if sp.get("status", {}).get("code") == 2:
            tags.append({"key": "otel.status_code", "type": "string", "value": "ERROR"})
        refs = ([{"refType": "CHILD_OF", "traceID": tid, "spanID": sp["parentSpanId"]}] if sp.get("parentSpanId") else [])
        refs += [{"refType": "FOLLOWS_FROM", "traceID": lk["traceId"], "spanID": lk["spanId"]} for lk in sp.get("links", [])]
        start = int(sp["startTimeUnixNano"]) // 1000
        spans.append({"traceID": tid, "spanID": sp["spanId"], "operationName": sp["name"], "references": refs,
                      "startTime": start, "duration": int(sp["endTimeUnixNano"]) // 1000 - start, "tags": tags,
                      "logs": [], "processID": pid})
    return {"traceID": tid, "spans": spans,
            "processes": {p: {"serviceName": s, "tags": []} for s, p in procs.items()}}


def _tempo_v2_trace(items):
    b64 = lambda h: base64.b64encode(bytes.fromhex(h)).decode()
    rss = []
    for svc, scope, sp in items:
        sp = dict(sp, traceId=b64(sp["traceId"]), spanId=b64(sp["spanId"]),
                  kind=["SPAN_KIND_UNSPECIFIED", "SPAN_KIND_INTERNAL", "SPAN_KIND_SERVER", "SPAN_KIND_CLIENT"][sp["kind"]])
        if sp.get("parentSpanId"):
            sp["parentSpanId"] = b64(sp["parentSpanId"])
        if "links" in sp:
            sp["links"] = [{"traceId": b64(lk["traceId"]), "spanId": b64(lk["spanId"])} for lk in sp["links"]]
        rss.append({"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": svc}}]},
                    "scopeSpans": [{"scope": {"name": scope}, "spans": [sp]}]})
    return {"trace": {"resourceSpans": rss}}


def make_handler(kind, traces, calls):
    services = sorted({svc for items in traces.values() for svc, _, _ in items})

    class H(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def reply(self, obj, code=200, raw=None):
            body = raw if raw is not None else json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            u = urllib.parse.urlparse(self.path)
            q = urllib.parse.parse_qs(u.query)
            calls.append(u.path)
            if kind == "jaeger" and u.path == "/api/services":
                return self.reply({"data": services, "total": len(services), "errors": None})
            if kind == "jaeger" and u.path == "/api/traces":
                svc, limit = q["service"][0], int(q["limit"][0])
                tids = [t for t, items in traces.items() if any(s == svc for s, _, _ in items)][:limit]
                return self.reply({"data": [_jaeger_v1_trace(t, traces[t]) for t in tids], "errors": None})
            if kind == "tempo" and u.path == "/api/echo":
                return self.reply(None, raw=b"echo")
            if kind == "tempo" and u.path == "/api/search/tag/resource.service.name/values":
                return self.reply({"tagValues": [{"type": "string", "value": s} for s in services]})
            if kind == "tempo" and u.path == "/api/search":
                svc = q["q"][0].split('"')[1]
                limit = int(q["limit"][0])
                tids = [t for t, items in traces.items() if any(s == svc for s, _, _ in items)][:limit]
                return self.reply({"traces": [{"traceID": t.lstrip("0")} for t in tids], "metrics": {}})
            if kind == "tempo" and u.path.startswith("/api/v2/traces/"):
                tid = u.path.rsplit("/", 1)[1]
                return self.reply(_tempo_v2_trace(traces[tid])) if tid in traces else self.reply({}, 404)
            self.reply({"error": "not found"}, 404)
    return H


@pytest.fixture(params=["jaeger", "tempo"])
def server(request):
    docs = synth.generate_docs("listen_overflow", seed=0, n_requests=150, n_affected=6)
    calls = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(request.param, _by_trace(docs), calls))
    th = threading.Thread(target=httpd.serve_forever, daemon=True)
    th.start()
    yield request.param, f"http://127.0.0.1:{httpd.server_address[1]}", calls
    httpd.shutdown()
    httpd.server_close()


def test_fake_server_end_to_end(server, capsys):
    kind, url, calls = server
    assert detect_backend(url) == (kind, url)
    report = diagnose(url, limit=1000)
    firsts = [s["causes"][0]["kind"] for s in report["spikes"] if s["causes"]]
    assert firsts.count("listen_overflow") >= 6, firsts
    # explicit scheme prefix skips probing; --service narrows the query
    calls.clear()
    buf = io.StringIO()
    assert run(f"{kind}+{url}", service="frontend", as_json=True, out=buf) == 0
    assert "/api/services" not in calls and "/api/echo" not in calls
    got = json.loads(buf.getvalue())
    assert {s["service"] for s in got["spikes"]} == {"frontend"}


def test_url_without_service_says_it_is_bounded(server, capsys):
    kind, url, _ = server
    assert run(url, out=io.StringIO()) == 0
    err = capsys.readouterr().err
    assert "at most 200 traces" in err


def test_unreachable_and_unknown_backends(capsys):
    assert run("http://127.0.0.1:9/", out=io.StringIO()) == 2  # discard port: nothing listens
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "neither Jaeger" in err[0]
    assert run("jaeger+http://127.0.0.1:9", out=io.StringIO()) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot reach" in err[0]
