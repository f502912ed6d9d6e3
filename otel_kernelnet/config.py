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


def _listen(v: Any) -> bool:
    if not isinstance(v, str):
        return False
    host, sep, port = v.rpartition(":")
    return bool(sep and host and port.isdigit() and int(port) <= 65535)


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
    "export.batch_delay_ms": Key(50, "Export a partial batch this long after its first span (bounds end-to-end latency: p50 about half of it, plus ~15-25 ms).", _int(1), "an integer >= 1"),
    "probes.drop.enabled": Key(True, "Drop probe (skb:kfree_skb): one span per dropped packet.", lambda v: isinstance(v, bool), "true or false"),
    "probes.drop.rate_limit_per_cpu": Key(10000, "Drop spans per CPU per second at most; the excess is counted (rate_capped), never silent.", _int(1), "an integer >= 1"),
    "probes.drop.rate_limit_per_node": Key(10000, "Drop spans per second at most from all CPUs together (the per-CPU caps add up with the CPU count; this bounds what one collector must take on a large node); the excess is counted (rate_capped). 0: no node-wide cap.", _int(0), "an integer >= 0"),
    "probes.tcp.enabled": Key(True, "TCP events (retransmits, resets sent/received, congestion states, connect latency): one kernel.tcp span per event.", lambda v: isinstance(v, bool), "true or false"),
    "probes.tcp.rate_limit_per_cpu": Key(10000, "TCP event spans per CPU per second at most; the excess is counted (rate_capped), never silent.", _int(1), "an integer >= 1"),
    "probes.tcp.rate_limit_per_node": Key(10000, "TCP event spans per second at most from all CPUs together (the per-CPU caps add up with the CPU count; this bounds what one collector must take on a large node); the excess is counted (rate_capped). 0: no node-wide cap.", _int(0), "an integer >= 0"),
    "probes.tcp.close_events": Key(False, "Also emit a span for every TCP socket that reaches CLOSE (one per connection: volume!).", lambda v: isinstance(v, bool), "true or false"),
    "probes.netns_counters.enabled": Key(True, "Per-network-namespace counters (netstat, snmp, conntrack stats) and accept-queue overflows: no BPF, read from /proc.", lambda v: isinstance(v, bool), "true or false"),
    "probes.netns_counters.interval_ms": Key(1000, "Sample every namespace's counters this often (ms); a counter that rose becomes a kernel.counter span.", _int(10, 3_600_000), "an integer from 10 to 3600000"),
    "probes.netns_counters.rescan_s": Key(5, "Look for new and vanished network namespaces (/proc/[pid]/ns/net, /run/netns) this often (seconds).", _int(1), "an integer >= 1"),
    "probes.netns_counters.max_namespaces": Key(256, "Track at most this many namespaces; the others are counted (namespaces_skipped).", _int(1), "an integer >= 1"),
    "probes.netns_counters.counters": Key(["TcpExtListenOverflows", "TcpExtListenDrops", "TcpExtPFMemallocDrop", "TcpExtTCPBacklogDrop", "TcpExtTCPRcvQDrop", "TcpExtTCPFastRetrans", "TcpExtTCPDSACKRecv", "TcpExtTCPSACKReorder", "TcpExtTCPTimeouts", "TcpExtTCPSynRetrans", "TcpRetransSegs", "TcpExtTCPAbortOnData", "ConntrackInvalid"],
                                          "Counters whose jumps become spans: netstat/snmp names as prefix+name (TcpExtListenOverflows, TcpRetransSegs), conntrack stats as Conntrack+Column (ConntrackInvalid).",
                                          lambda v: isinstance(v, list) and all(isinstance(x, str) and x.strip() != "" for x in v), "a list of non-empty strings"),
    "probes.lifecycle.enabled": Key(True, "skb lifecycle probe: the receive path of each packet (arrival -> protocol -> socket -> read, or drop), stitched in the kernel; spans only per the volume policy, histograms of every packet.", lambda v: isinstance(v, bool), "true or false"),
    "probes.lifecycle.slow_threshold_us": Key(1000, "Emit a lifecycle span when arrival -> read (or drop) took longer than this (microseconds).", _int(1), "an integer >= 1"),
    "probes.lifecycle.sample_one_in": Key(0, "Also emit 1 in N of the other lifecycles (0: no sampling).", _int(0), "an integer >= 0"),
    "probes.lifecycle.rate_limit_per_cpu": Key(2000, "Lifecycle spans per CPU per second at most; the excess is counted (rate_capped), never silent.", _int(1), "an integer >= 1"),
    "probes.lifecycle.rate_limit_per_node": Key(4000, "Lifecycle spans per second at most from all CPUs together (the per-CPU caps add up with the CPU count; this bounds what one collector must take on a large node); the excess is counted (rate_capped). 0: no node-wide cap.", _int(0), "an integer >= 0"),
    "probes.lifecycle.max_in_flight": Key(16384, "Packets followed at once (the kernel's slot table has twice as many slots, rounded up to a power of two; a newer packet takes the older of two colliding slots over).", _int(64), "an integer >= 64"),
    "probes.lifecycle.max_watched": Key(4096, "Socket cookies on the watch list at most (every lifecycle of a watched socket is emitted); more are counted (watch_full).", _int(1), "an integer >= 1"),
    "probes.hide_fields": Key([], "Treat these tracepoint fields as absent, as on an older kernel (\"kfree_skb:rx_sk\", \"kfree_skb:reason\", \"tcp_probe:sock_cookie\"): every probe and `check` then run their fallbacks; for tests and diagnosis.", lambda v: isinstance(v, list) and all(isinstance(x, str) and x.count(":") == 1 and "" not in x.split(":") for x in v), "a list of \"tracepoint:field\" strings"),
    "scope.netns": Key([], "Network namespaces to report, as inode numbers (ls -Li /proc/PID/ns/net) or paths (/run/netns/NAME, /proc/PID/ns/net); empty: as scope.mode says (sidecar: the collector's own).", lambda v: isinstance(v, list) and all((isinstance(x, int) and not isinstance(x, bool) and x > 0) or (isinstance(x, str) and x != "") for x in v), "a list of inode numbers or paths"),
    "scope.cgroup": Key("", "The cgroup whose tasks' reclaim stalls are reported, as a path under the cgroup v2 mount (/kubepods/burstable/pod<uid>, or /sys/fs/cgroup/...); filtered in the kernel (bpf_get_current_ancestor_cgroup_id). Empty: as scope.mode says (sidecar: the pod's cgroup, found from /proc/self/cgroup or $POD_UID; node, daemonset: every cgroup).", lambda v: isinstance(v, str), "a cgroup path (string), or empty"),
    "probes.softirq.enabled": Key(True, "Softirq probe: NET_RX/NET_TX wait (raise -> entry) and run (entry -> exit) per CPU; histograms of every run, a kernel.softirq span naming the culprit task when a threshold is reached.", lambda v: isinstance(v, bool), "true or false"),
    "probes.softirq.wait_threshold_ms": Key(1, "Emit a softirq span when the wait (raise, or the RPS IPI before it, -> entry) reached this (milliseconds).", _num(0), "a number > 0"),
    "probes.softirq.run_threshold_ms": Key(1, "Emit a softirq span when the run (entry -> exit) reached this (milliseconds).", _num(0), "a number > 0"),
    "probes.softirq.rate_limit_per_cpu": Key(1000, "Softirq spans per CPU per second at most; the excess is counted (rate_capped), never silent.", _int(1), "an integer >= 1"),
    "probes.softirq.rate_limit_per_node": Key(2000, "Softirq spans per second at most from all CPUs together (the per-CPU caps add up with the CPU count; this bounds what one collector must take on a large node); the excess is counted (rate_capped). 0: no node-wide cap.", _int(0), "an integer >= 0"),
    "probes.reclaim.enabled": Key(True, "Memory-reclaim probe: direct and memcg reclaim of each task (vmscan:*), kswapd wake/sleep, throttling, and zone watermarks from /proc/zoneinfo.", lambda v: isinstance(v, bool), "true or false"),
    "probes.reclaim.rate_limit_per_cpu": Key(1000, "Reclaim spans per CPU per second at most; the excess is counted (rate_capped), never silent.", _int(1), "an integer >= 1"),
    "probes.reclaim.rate_limit_per_node": Key(2000, "Reclaim spans per second at most from all CPUs together (the per-CPU caps add up with the CPU count; this bounds what one collector must take on a large node); the excess is counted (rate_capped). 0: no node-wide cap.", _int(0), "an integer >= 0"),
    "probes.reclaim.zoneinfo_interval_ms": Key(1000, "Sample /proc/zoneinfo (free pages vs min/low/high watermarks) this often (ms); a zone falling below min becomes a kernel.reclaim span.", _int(10, 3_600_000), "an integer from 10 to 3600000"),
    "bpf.cache_dir": Key("/var/cache/otel-kernelnet/bpf", "Keep the compiled BPF objects here (one file per probe family, keyed by its source, settings, bcc version and kernel) so that a restart compiles nothing: start-up ~0.7 s instead of ~2.8 s, ~90 MB less RSS. Must be owned by the collector's user and writable by nobody else, else it is ignored (said at start). Empty: compile at every start.", lambda v: isinstance(v, str), "a directory path, or empty"),
    "ringbuf.pages": Key(512, "Size of each BPF ring buffer in pages (power of two); reservation failures are counted. 512 (2 MiB per family) rides out ~0.7 s without CPU for the collector at the default rate caps.", _pow2, "a power of two between 1 and 65536"),
    "ringbuf.poll_interval_ms": Key(20, "While records come, how often each CPU wakes the collector at most (the first record after this long without a wake-up wakes it; the others are written without one and drained a poll interval later at the latest).", _int(1, 1000), "an integer from 1 to 1000"),
    "ringbuf.max_wait_ms": Key(1000, "The longest the collector sleeps when nothing wakes it and the last drain found nothing (ms): its housekeeping period when idle. Shorter periods still apply: the zone sample (probes.reclaim.zoneinfo_interval_ms), the join's 250 ms while an application sends spans, the status line; a signal, a ring-buffer wake-up and queued counter spans end the sleep at once.", _int(1, 1000), "an integer from 1 to 1000"),
    "status.interval_s": Key(5, "Print a status line this often (seconds); 0 turns it off.", lambda v: _int(0)(v), "an integer >= 0"),
    "metrics.interval_s": Key(15, "Export the collector's own metrics (counters, the kernel's histograms) this often (seconds), and once more at exit.", _int(1, 3600), "an integer from 1 to 3600"),
    "scope.mode": Key("node", "What the collector reports: node (every network namespace and cgroup on the node), sidecar (only its own pod, filtered in the kernel, so N sidecars on a node never export N copies of an event: packets and sockets by its network namespace, reclaim stalls by the pod's cgroup (scope.cgroup), softirq spans only when the pod's packets waited through them; no node-level metrics, kswapd or zone spans: those are the DaemonSet's), daemonset (node, plus k8s.* pod attribution of each event from the kubelet's pod directory and the runtime's cgroup paths).",
                      lambda v: v in ("node", "sidecar", "daemonset"), "node, sidecar or daemonset"),
    "receiver.enabled": Key(True, "Receive the application's OTLP traces (sidecar join): forward them unchanged to where kernel spans go, and attach kernel spans to the app spans carrying kernelnet.socket.cookie.", lambda v: isinstance(v, bool), "true or false"),
    "receiver.grpc_endpoint": Key("127.0.0.1:4317", "host:port of the OTLP/gRPC receiver (loopback by default: only local apps); null turns it off. A port in use is a warning, not a failure.", lambda v: v is None or _listen(v), "null or host:port"),
    "receiver.http_endpoint": Key("127.0.0.1:4318", "host:port of the OTLP/HTTP receiver (POST /v1/traces, protobuf or JSON, gzip); null turns it off.", lambda v: v is None or _listen(v), "null or host:port"),
    "receiver.max_request_mb": Key(4, "Largest OTLP request accepted (MiB, after decompression); larger gets 413 / RESOURCE_EXHAUSTED.", _int(1, 1024), "an integer from 1 to 1024"),
    "receiver.forward_queue_spans": Key(65536, "App spans waiting to be forwarded at most; beyond it requests are refused with a retryable 503 / UNAVAILABLE (counted), so the app's SDK retries.", _int(1), "an integer >= 1"),
    "receiver.forward_attempts": Key(5, "Delivery attempts per forwarded request when the backend fails retryably (backoff 0.5 s doubling to 5 s); then its spans are dropped and counted.", _int(1, 100), "an integer from 1 to 100"),
    "join.enabled": Key(True, "Attach kernel spans to the application spans they overlap on the same socket (needs the receiver).", lambda v: isinstance(v, bool), "true or false"),
    "join.kernel_buffer_ms": Key(10000, "How long a kernel span on a socket waits for its app span (which arrives only after it ends and the app's export delay); then it is exported unjoined.", _int(0), "an integer >= 0"),
    "join.kernel_buffer_spans": Key(65536, "Kernel spans waiting for an app span at most; beyond it the oldest is exported unjoined at once (counted: buffer_shed).", _int(1), "an integer >= 1"),
    "join.app_ttl_ms": Key(30000, "How long an app span stays indexed after it ends, for late kernel spans.", _int(0), "an integer >= 0"),
    "join.app_index_spans": Key(100000, "App spans indexed at most; beyond it the oldest is forgotten (counted: index_shed).", _int(1), "an integer >= 1"),
    "join.slack_us": Key(1000, "When no app span overlaps a kernel span, one this close in time (microseconds) is taken (clock conversion is not exact).", _int(0), "an integer >= 0"),
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
