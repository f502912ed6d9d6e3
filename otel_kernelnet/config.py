"""Collector configuration: every key, its type, default and meaning, defined here once.

``config/otel-kernelnet.yaml`` is the documented default file (``run`` without
``--config`` uses it); a test checks that it lists exactly these keys with these
defaults. Loading validates everything and rejects unknown keys; a ``ConfigError``
names the key and the bad value in one line.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

DEFAULT_FILE = Path(__file__).resolve().parent.parent / "config" / "otel-kernelnet.yaml"


class ConfigError(Exception):
    pass


@dataclass(frozen=True)
class Key:
    default: Any
    doc: str
    check: Callable[[Any], bool]
    expect: str


def _int(lo: int, hi: int | None = None) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= lo and (hi is None or v <= hi)


def _num(lo: float) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v > lo


def _pow2(v: Any) -> bool:
    return _int(1, 1 << 16)(v) and v & (v - 1) == 0


def _opt_str(v: Any) -> bool:
    return v is None or (isinstance(v, str) and v != "")


def _str_map(v: Any) -> bool:
    return isinstance(v, dict) and all(isinstance(k, str) and isinstance(x, (str, int, float, bool))
                                       for k, x in v.items())


SCHEMA: dict[str, Key] = {
    "output.directory": Key("./kernelnet-data", "Directory of the embedded store (OTLP JSON Lines), used when no OTLP endpoint is configured. --output overrides.",
                            lambda v: isinstance(v, str) and v != "", "a non-empty path"),
    "output.max_file_mb": Key(64, "Rotate to a new file when the current one would exceed this size (MiB).", _int(1), "an integer >= 1"),
    "output.max_files": Key(20, "Keep at most this many files; the oldest are deleted (and counted).", _int(1), "an integer >= 1"),
    "export.otlp.endpoint": Key(None, "OTLP endpoint URL (e.g. http://collector:4317). null: use OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT if set, else the embedded store. --otlp-endpoint overrides.",
                                _opt_str, "null or a URL"),
    "export.otlp.protocol": Key(None, "grpc or http/protobuf. null: OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL, else grpc for port 4317 and http/protobuf otherwise.",
                                lambda v: v in (None, "grpc", "http/protobuf"), "null, grpc or http/protobuf"),
    "export.otlp.timeout_s": Key(10, "Timeout of one OTLP export request, seconds.", _num(0), "a number > 0"),
    "export.queue_spans": Key(65536, "Spans waiting for export at most; beyond it new spans are dropped and counted.", _int(1), "an integer >= 1"),
    "export.batch_spans": Key(2048, "Spans per export batch (one JSON Lines record or one OTLP request).", _int(1), "an integer >= 1"),
    "export.batch_delay_ms": Key(200, "Export a partial batch after this long (bounds end-to-end latency).", _int(1), "an integer >= 1"),
    "probes.drop.enabled": Key(True, "Drop probe (skb:kfree_skb): one span per dropped packet.", lambda v: isinstance(v, bool), "true or false"),
    "probes.drop.rate_limit_per_cpu": Key(10000, "Drop spans per CPU per second at most; the excess is counted (rate_capped), never silent.", _int(1), "an integer >= 1"),
    "probes.tcp.enabled": Key(True, "TCP events (retransmits, resets sent/received, congestion states, connect latency): one kernel.tcp span per event.", lambda v: isinstance(v, bool), "true or false"),
    "probes.tcp.rate_limit_per_cpu": Key(10000, "TCP event spans per CPU per second at most; the excess is counted (rate_capped), never silent.", _int(1), "an integer >= 1"),
    "probes.tcp.close_events": Key(False, "Also emit a span for every TCP socket that reaches CLOSE (one per connection: volume!).", lambda v: isinstance(v, bool), "true or false"),
    "probes.netns_counters.enabled": Key(True, "Per-network-namespace counters (netstat, snmp, conntrack stats) and accept-queue overflows: no BPF, read from /proc.", lambda v: isinstance(v, bool), "true or false"),
    "probes.netns_counters.interval_ms": Key(1000, "Sample every namespace's counters this often (ms); a counter that rose becomes a kernel.counter span.", _int(10, 3_600_000), "an integer from 10 to 3600000"),
    "probes.netns_counters.rescan_s": Key(5, "Look for new and vanished network namespaces (/proc/[pid]/ns/net, /run/netns) this often (seconds).", _int(1), "an integer >= 1"),
    "probes.netns_counters.max_namespaces": Key(256, "Track at most this many namespaces; the others are counted (namespaces_skipped).", _int(1), "an integer >= 1"),
    "probes.netns_counters.counters": Key(["TcpExtListenOverflows", "TcpExtListenDrops", "TcpExtPFMemallocDrop", "TcpExtTCPBacklogDrop", "TcpExtTCPRcvQDrop", "TcpExtTCPFastRetrans", "TcpExtTCPDSACKRecv", "TcpExtTCPSACKReorder", "TcpExtTCPTimeouts", "TcpExtTCPSynRetrans", "TcpRetransSegs", "TcpExtTCPAbortOnData", "ConntrackInvalid"],
                                          "Counters whose jumps become spans: netstat/snmp names as prefix+name (TcpExtListenOverflows, TcpRetransSegs), conntrack stats as Conntrack+Column (ConntrackInvalid).",
                                          lambda v: isinstance(v, list) and all(isinstance(x, str) and x.strip() != "" for x in v), "a list of non-empty strings"),
    "ringbuf.pages": Key(64, "Size of each BPF ring buffer in pages (power of two); reservation failures are counted.", _pow2, "a power of two between 1 and 65536"),
    "ringbuf.poll_interval_ms": Key(20, "How often the ring buffers are drained (records are written without wakeups).", _int(1, 1000), "an integer from 1 to 1000"),
    "status.interval_s": Key(5, "Print a status line this often (seconds); 0 turns it off.", lambda v: _int(0)(v), "an integer >= 0"),
    "resource.attributes": Key({}, "Extra OpenTelemetry resource attributes for every span (OTEL_RESOURCE_ATTRIBUTES is honoured too).", _str_map, "a map of string keys to scalar values"),
}


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if not isinstance(d, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'top level'}: expected a mapping, got {d!r}")
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and key not in SCHEMA:
            if not any(s.startswith(key + ".") for s in SCHEMA):
                _unknown(key)
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _unknown(key: str) -> None:
    close = difflib.get_close_matches(key, SCHEMA, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise ConfigError(f"unknown key '{key}'{hint}")


class Config(dict):
    """Flat ``{"section.key": value}`` view of a validated configuration."""

    source: str = "built-in defaults"

    def __getattr__(self, name: str) -> Any:  # pragma: no cover - convenience only
        raise AttributeError(name)


def validate(data: Any, source: str = "<dict>") -> Config:
    flat = _flatten(data or {})
    cfg = Config({k: key.default for k, key in SCHEMA.items()})
    for k, v in flat.items():
        if k not in SCHEMA and any(s.startswith(k + ".") for s in SCHEMA):
            raise ConfigError(f"'{k}': expected a mapping of its keys, got {v!r}")
        if k not in SCHEMA:
            _unknown(k)
        key = SCHEMA[k]
        if not key.check(v):
            raise ConfigError(f"'{k}': expected {key.expect}, got {v!r}")
        cfg[k] = v
    cfg.source = source
    return cfg


def load(path: str | Path | None = None) -> Config:
    """Load and validate a config file; without a path, the default file (or defaults)."""
    if path is None:
        if not DEFAULT_FILE.exists():
            return validate({}, "built-in defaults")
        path = DEFAULT_FILE
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read {p}: {e.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{p}:{where} is not valid YAML ({getattr(e, 'problem', e)})") from None
    try:
        return validate(data, str(p))
    except ConfigError as e:
        raise ConfigError(f"{p}: {e}") from None
