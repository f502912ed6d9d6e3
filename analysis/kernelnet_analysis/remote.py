"""Jaeger and Tempo query APIs to the :mod:`~kernelnet_analysis.schema` frames.

Converters (pure, tested on recorded-shape fixtures) and a small stdlib HTTP client:

* Jaeger v1 (``/api/traces``, ``/api/traces/{id}``): ``{"data": [Trace]}``, times in
  **microseconds**, ``tags``/``logs``/``references``/``processes``; the span kind and
  status come back as the tags ``span.kind`` and ``otel.status_code``/``error``;
  links are ``FOLLOWS_FROM`` references (their attributes are lost by Jaeger).
* Jaeger v3 (``/api/v3/traces``): OTLP JSON in ``{"result": ...}`` (older: unwrapped).
* Tempo ``/api/traces/{id}`` (``{"batches": [...]}``), ``/api/v2/traces/{id}``
  (``{"trace": {...}}``, base64 ids and enum names) and ``/api/search`` (TraceQL;
  trace ids there lose their leading zeros: padded back).

>>> v1 = {"data": [{"traceID": "abc", "spans": [{"traceID": "abc", "spanID": "01",
...   "operationName": "GET", "references": [], "startTime": 1000, "duration": 5,
...   "tags": [{"key": "span.kind", "type": "string", "value": "server"},
...            {"key": "kernelnet.socket.cookie", "type": "int64", "value": "42"}],
...   "logs": [], "processID": "p1"}], "processes": {"p1": {"serviceName": "api", "tags": []}}}]}
>>> jaeger_v1_traces(v1).spans.select("trace_id", "kind", "start_ns", "duration_ns", "kernelnet.socket.cookie").row(0)
('00000000000000000000000000000abc', 2, 1000000, 5000, 42)
"""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from otel_kernelnet import semconv as sc

from .errors import SourceError
from .otlp import FrameBuilder, add_otlp, norm_id
from .schema import Traces, concat_traces, empty_traces

_JAEGER_KIND = {"internal": 1, "server": 2, "client": 3, "producer": 4, "consumer": 5}


def _tag_value(tag: dict) -> Any:
    t, v = (tag.get("type") or "string").lower(), tag.get("value")
    if t in ("int64", "int"):
        try:
            return int(v)
        except (TypeError, ValueError):
            return v
    if t in ("float64", "double"):
        return float(v)
    if t == "bool":
        return v if isinstance(v, bool) else str(v).lower() == "true"
    if t == "binary":
        return v  # base64 text
    return v


def jaeger_v1_traces(payload: dict) -> Traces:
    """Frames from a Jaeger v1 ``/api/traces`` or ``/api/traces/{id}`` response."""
    if not isinstance(payload, dict) or "data" not in payload:
        raise SourceError("not a Jaeger /api/traces response (no 'data')")
    if payload.get("errors") and not payload.get("data"):
        msg = "; ".join(str(e.get("msg")) for e in payload["errors"] if isinstance(e, dict))
        raise SourceError(f"Jaeger error: {msg}")
    b = FrameBuilder()
    for trace in payload.get("data") or ():
        rids: dict[str, tuple[int, str | None]] = {}
        for pid, proc in (trace.get("processes") or {}).items():
            attrs = {t["key"]: _tag_value(t) for t in proc.get("tags") or ()}
            svc = proc.get("serviceName")
            rids[pid] = (b.add_resource(svc, {"service.name": svc, **attrs}), svc)
        for sp in trace.get("spans") or ():
            tags = {t["key"]: _tag_value(t) for t in sp.get("tags") or ()}
            kind = _JAEGER_KIND.get(str(tags.pop("span.kind", "")).lower(), 0)
            status = str(tags.pop("otel.status_code", "")).upper()
            code = 2 if status == "ERROR" or tags.get("error") is True else (1 if status == "OK" else 0)
            message = tags.pop("otel.status_description", None)
            scope = tags.pop("otel.scope.name", None) or tags.pop("otel.library.name", None)
            tags.pop("otel.scope.version", None)
            if code == 2:
                tags.pop("error", None)
            parent = None
            tid, sid = sp.get("traceID"), sp.get("spanID")
            for ref in sp.get("references") or ():
                if ref.get("refType") == "CHILD_OF" and parent is None and norm_id(ref.get("traceID"), 16) == norm_id(tid, 16):
                    parent = ref.get("spanID")
                else:
                    b.add_link(tid, sid, ref.get("traceID"), ref.get("spanID"), {})
            start_us, dur_us = int(sp.get("startTime") or 0), int(sp.get("duration") or 0)
            rid, svc = rids.get(sp.get("processID"), (None, None))
            if svc is None and isinstance(sp.get("process"), dict):
                svc = sp["process"].get("serviceName")
                rid = b.add_resource(svc, {"service.name": svc})
            b.add_span(tid, sid, parent, sp.get("operationName"), kind, start_us * 1000, (start_us + dur_us) * 1000,
                       code, message, svc, scope, rid, tags)
            for log in sp.get("logs") or ():
                fields = {f["key"]: _tag_value(f) for f in log.get("fields") or ()}
                b.add_event(tid, sid, int(log.get("timestamp") or 0) * 1000, fields.pop("event", "log"), fields)
    return b.finish()


def otlp_traces(payload: dict) -> Traces:
    """Frames from Jaeger v3 (``{"result": ...}`` or bare) or Tempo trace-by-id responses."""
    if not isinstance(payload, dict):
        raise SourceError("expected a JSON object")
    b = FrameBuilder()
    add_otlp(b, payload)
    return b.finish()


def tempo_search_ids(payload: dict) -> list[str]:
    """Trace ids of a Tempo ``/api/search`` response, left-padded to 32 hex characters.

    >>> tempo_search_ids({"traces": [{"traceID": "2f3e0cee77ae5dc9"}, {"traceID": "abc"}]})
    ['00000000000000002f3e0cee77ae5dc9', '00000000000000000000000000000abc']
    """
    if not isinstance(payload, dict) or "traces" not in payload:
        raise SourceError("not a Tempo /api/search response (no 'traces')")
    return [norm_id(t.get("traceID"), 16) for t in payload.get("traces") or () if t.get("traceID")]


# --- HTTP ------------------------------------------------------------------------------------------
class Http:
    """Tiny JSON-over-HTTP client with one clear error per failure."""

    def __init__(self, base: str, timeout: float = 10.0):
        self.base, self.timeout = base.rstrip("/"), timeout

    def get(self, path: str, params: dict | None = None, allow_404: bool = False) -> Any:
        url = self.base + path + ("?" + urllib.parse.urlencode(params) if params else "")
        req = urllib.request.Request(url, headers={"Accept": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                body = resp.read()
        except urllib.error.HTTPError as exc:
            if allow_404 and exc.code == 404:
                return None
            raise SourceError(f"{url}: HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise SourceError(f"cannot reach {self.base}: {reason}") from None
        try:
            return json.loads(body)
        except ValueError:
            raise SourceError(f"{url}: response is not JSON") from None

    def ok(self, path: str) -> bool:
        try:
            with urllib.request.urlopen(self.base + path, timeout=self.timeout) as resp:
                body = resp.read()
                return resp.status == 200 and (path != "/api/services" or b'"data"' in body)
        except (urllib.error.URLError, OSError, ValueError):
            return False


def detect_backend(source: str) -> tuple[str, str]:
    """(``"jaeger"`` or ``"tempo"``, base URL) of SOURCE; explicit ``jaeger+``/``tempo+`` prefixes win.

    >>> detect_backend("tempo+https://t.example:3200/")
    ('tempo', 'https://t.example:3200')
    """
    for kind in ("jaeger", "tempo"):
        if source.lower().startswith(kind + "+"):
            return kind, source[len(kind) + 1:].rstrip("/")
    base = source.rstrip("/")
    http = Http(base, timeout=5.0)
    if http.ok("/api/services"):
        return "jaeger", base
    if http.ok("/api/echo") or http.ok("/api/search?limit=1"):
        return "tempo", base
    raise SourceError(f"{base} is neither Jaeger (/api/services) nor Tempo (/api/echo, /api/search); "
                      "prefix it with jaeger+ or tempo+ if it is behind a proxy")


def _window(lookback_s: float) -> tuple[int, int]:
    end = time.time()
    return int(end - lookback_s), int(end) + 1


def load_jaeger(base: str, service: str | None = None, limit: int = 200, lookback_s: float = 3600.0,
                api: str = "v1", notes: list[str] | None = None) -> Traces:
    """Traces of ``service`` (or of every service) from Jaeger, plus standalone kernel spans.

    At most ``limit`` traces per service; kernel spans are fetched for the same
    time range (service ``otel-kernelnet``), also bounded by ``limit`` x 10.
    """
    http = Http(base)
    start_s, end_s = _window(lookback_s)
    if service:
        services = [service]
    else:
        data = http.get("/api/services").get("data") or []
        services = sorted(s for s in data if s != sc.SERVICE_NAME)
        if notes is not None:
            notes.append(f"analysed {len(services)} service(s) from Jaeger, at most {limit} traces each "
                         f"from the last {lookback_s / 60:.0f} min (narrow with --service)")

    def fetch(svc: str, n: int) -> Traces:
        if api == "v3":
            params = {"query.service_name": svc, "query.search_depth": n,
                      "query.start_time_min": _rfc3339(start_s), "query.start_time_max": _rfc3339(end_s)}
            payload = http.get("/api/v3/traces", params, allow_404=True)  # 404 = no traces found
            return otlp_traces(payload) if payload else empty_traces()
        payload = http.get("/api/traces", {"service": svc, "limit": n, "start": start_s * 1_000_000,
                                           "end": end_s * 1_000_000})
        return jaeger_v1_traces(payload)

    parts = [fetch(s, limit) for s in services]
    app = concat_traces(parts)
    if app.spans.height and sc.SERVICE_NAME not in services:
        parts.append(fetch(sc.SERVICE_NAME, limit * 10))
    return _dedupe(concat_traces(parts))


def _rfc3339(ts: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _dedupe(t: Traces) -> Traces:
    """A trace fetched twice (as an app trace and as a kernel trace) keeps one copy of each span."""
    return Traces(t.spans.unique(subset=["trace_id", "span_id"], keep="first", maintain_order=True),
                  t.events.unique(maintain_order=True), t.links.unique(maintain_order=True), t.resources)


def load_tempo(base: str, service: str | None = None, limit: int = 200, lookback_s: float = 3600.0,
               notes: list[str] | None = None) -> Traces:
    """Traces of ``service`` (or of every service) from Tempo, via TraceQL search then trace by id."""
    http = Http(base)
    start_s, end_s = _window(lookback_s)
    if service:
        services = [service]
    else:
        tags = http.get("/api/search/tag/resource.service.name/values", allow_404=True) or {}
        vals = tags.get("tagValues") or []
        services = sorted({v["value"] if isinstance(v, dict) else v for v in vals} - {sc.SERVICE_NAME})
        if notes is not None:
            notes.append(f"analysed {len(services)} service(s) from Tempo, at most {limit} traces each "
                         f"from the last {lookback_s / 60:.0f} min (narrow with --service)")
    ids: list[str] = []
    for svc in [*services, sc.SERVICE_NAME]:
        n = limit if svc != sc.SERVICE_NAME else limit * 10
        q = "{ resource.service.name = " + json.dumps(svc) + " }"
        found = tempo_search_ids(http.get("/api/search", {"q": q, "limit": n, "start": start_s, "end": end_s}))
        ids.extend(i for i in found if i not in ids)
    parts = []
    for tid in ids:
        payload = http.get(f"/api/v2/traces/{tid}", allow_404=True)
        if payload is None:
            payload = http.get(f"/api/traces/{tid}", allow_404=True)
        if payload:
            parts.append(otlp_traces(payload))
    return _dedupe(concat_traces(parts))


def load_remote(source: str, service: str | None = None, limit: int = 200, lookback_s: float = 3600.0,
                notes: list[str] | None = None) -> Traces:
    """Jaeger or Tempo by probing (or by the ``jaeger+`` / ``tempo+`` prefix)."""
    kind, base = detect_backend(source)
    if kind == "jaeger":
        return load_jaeger(base, service, limit, lookback_s, notes=notes)
    return load_tempo(base, service, limit, lookback_s, notes=notes)


def b64_id(hex_id: str) -> str:
    """Hex id -> base64, as Tempo's v2 API writes ids (handy for fixtures).

    >>> b64_id("eee19b7ec3c1b100")
    '7uGbfsPBsQA='
    """
    return base64.b64encode(bytes.fromhex(hex_id)).decode()
