"""Deterministic synthetic data sets: one per incident of CASES.md, plus a control.

Each data set is what the collector's embedded store would hold after a minute of
an instrumented two-service application (``frontend`` -> ``checkout``), with the
incident injected into a dozen requests and realistic background kernel noise
(short softirq waits on every CPU, a port scanner's NO_SOCKET drops, fast skb
lifecycle spans, stray counter jumps). Affected requests are joined to their
kernel spans in the three ways the collector can leave them: as children (parent
span id), standalone with the socket cookie, and standalone with only a 4-tuple
(application span without ``kernelnet.socket.cookie``, so the join is inferred).

>>> import tempfile
>>> d = generate("listen_overflow", tempfile.mkdtemp(), seed=1)
>>> sorted(p.name for p in d.iterdir())
['traces-000001.jsonl', 'traces-000002.jsonl']
>>> SCENARIOS["listen_overflow"], SCENARIOS["control"]
('listen_overflow', None)
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

from otel_kernelnet import semconv as sc

#: scenario name -> the diagnose kind expected first (None: no kernel cause)
SCENARIOS: dict[str, str | None] = {
    "pfmemalloc": "pfmemalloc_drop",
    "reclaim": "memory_reclaim",
    "softirq_delay": "softirq_delay",
    "softirq_long_run": "softirq_long_run",
    "conntrack": "conntrack_invalid_rst",
    "reordering": "reordering_retransmit",
    "loss": "loss_retransmit",
    "listen_overflow": "listen_overflow",
    "rcvbuf": "rcvbuf_drop",
    "netfilter": "netfilter_drop",
    "no_socket": "no_socket_rst",
    "control": None,
}

#: counter name the analysis reads for conntrack INVALID verdicts (not yet in semconv)
CONNTRACK_INVALID_COUNTER = "ConntrackInvalid"  # as otel_kernelnet.kernel.netstat names it

T0 = 1_740_787_200_000_000_000  # 2025-03-01T00:00:00Z in ns
MS = 1_000_000
CLIENT_IP, SERVER_IP, VIP = "10.0.2.7", "10.0.1.5", "10.96.0.10"
ROUTES = ["/api/cart", "/api/upload", "/api/bulk", "/images/logo.png",
          "/envoy.service.discovery.v3.AggregatedDiscoveryService/Stream"]
SERVER_PORT = 8080
SERVER_PID, CLIENT_PID, NETNS_SERVER, NETNS_CLIENT = 4242, 3131, 4026532001, 4026532002


def _kv(attrs: dict[str, Any]) -> list[dict]:
    out = []
    for k, v in attrs.items():
        if v is None:
            continue
        if isinstance(v, bool):
            val = {"boolValue": v}
        elif isinstance(v, int):
            val = {"intValue": str(v)}
        elif isinstance(v, float):
            val = {"doubleValue": v}
        else:
            val = {"stringValue": str(v)}
        out.append({"key": k, "value": val})
    return out


class _World:
    def __init__(self, scenario: str, seed: int, n_requests: int):
        if scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {scenario!r}; choose from {', '.join(SCENARIOS)}")
        self.scenario, self.rng, self.n = scenario, random.Random(f"{scenario}:{seed}"), n_requests
        self.app: dict[str, list[dict]] = {"frontend": [], "checkout": []}
        self.kernel: list[dict] = []
        self.conns = [dict(cport=41000 + 37 * i, ccookie=8193 + 2 * i, scookie=8194 + 2 * i) for i in range(8)]

    def tid(self) -> str:
        return f"{self.rng.getrandbits(128):032x}"

    def sid(self) -> str:
        return f"{self.rng.getrandbits(64) or 1:016x}"

    def span(self, bucket: list, name: str, kind: int, start: int, end: int, attrs: dict,
             trace_id: str | None = None, parent: str | None = None, error: str | None = None,
             links: list[tuple[str, str]] = ()) -> dict:
        s = {"traceId": trace_id or self.tid(), "spanId": self.sid(), "name": name, "kind": kind,
             "startTimeUnixNano": str(start), "endTimeUnixNano": str(end), "attributes": _kv(attrs),
             "status": {"code": 2, "message": error} if error else {}}
        if parent:
            s["parentSpanId"] = parent
        if links:
            s["links"] = [{"traceId": t, "spanId": i} for t, i in links]
        bucket.append(s)
        return s

    def kspan(self, name: str, kind: str, start: int, end: int, attrs: dict, host: dict | None = None,
              error: bool = False, links=()) -> dict:
        """A kernel span; ``host`` = the app span it is joined to (child) or None (standalone)."""
        a = {sc.KIND: kind, "kernelnet.cpu": attrs.pop("cpu", self.rng.randrange(2)), **attrs}
        if host is not None and a.get(sc.COOKIE) is not None:
            a["kernelnet.join"] = "cookie"
        return self.span(self.kernel, name, 1, start, end, a,
                         trace_id=host["traceId"] if host else None,
                         parent=host["spanId"] if host else None,
                         error="dropped" if error else None, links=links)

    # --- the application ------------------------------------------------------------
    def request(self, t: int, conn: dict, server_ms: float, client_extra_ms: float = 0.0,
                cookies: bool = True, error: str | None = None, route: str = "/api/cart",
                peer: str = SERVER_IP):
        tid = self.tid()
        c_start = t
        s_start = c_start + int(0.4 * MS)
        s_end = s_start + int(server_ms * MS)
        c_end = s_end + int((0.5 + client_extra_ms) * MS)
        client = self.span(self.app["frontend"], f"GET {route}", 3, c_start, c_end, {
            sc.COOKIE: conn["ccookie"] if cookies else None,
            "server.address": peer, "server.port": SERVER_PORT,
            "network.peer.address": peer, "network.peer.port": SERVER_PORT,
            "network.local.address": CLIENT_IP, "network.local.port": conn["cport"],
        }, trace_id=tid, error=error)
        server = self.span(self.app["checkout"], f"GET {route}", 2, s_start, s_end, {
            sc.COOKIE: conn["scookie"] if cookies else None, "http.route": route,
            "client.address": CLIENT_IP, "client.port": conn["cport"],
            "network.peer.address": CLIENT_IP, "network.peer.port": conn["cport"],
            "network.local.address": SERVER_IP, "network.local.port": SERVER_PORT,
            "server.address": SERVER_IP, "server.port": SERVER_PORT,
        }, trace_id=tid, parent=client["spanId"], error=error)
        return client, server

    def sock_attrs(self, conn: dict, side: str) -> dict:
        if side == "server":
            return {sc.COOKIE: conn["scookie"], "network.local.address": SERVER_IP, "network.local.port": SERVER_PORT,
                    "network.peer.address": CLIENT_IP, "network.peer.port": conn["cport"],
                    "network.transport": "tcp", "network.type": "ipv4", "kernelnet.netns": NETNS_SERVER}
        return {sc.COOKIE: conn["ccookie"], "network.local.address": CLIENT_IP, "network.local.port": conn["cport"],
                "network.peer.address": SERVER_IP, "network.peer.port": SERVER_PORT,
                "network.transport": "tcp", "network.type": "ipv4", "kernelnet.netns": NETNS_CLIENT}

    def pkt_attrs(self, conn: dict, to: str, cookie: bool = True) -> dict:
        """A received packet's addressing: to='server' (client -> server) or 'client'."""
        cli, srv = (CLIENT_IP, conn["cport"]), (SERVER_IP, SERVER_PORT)
        src, dst = (cli, srv) if to == "server" else (srv, cli)
        return {sc.COOKIE: (conn["scookie"] if to == "server" else conn["ccookie"]) if cookie else None,
                "source.address": src[0], "source.port": src[1], "destination.address": dst[0],
                "destination.port": dst[1], "network.transport": "tcp", "network.type": "ipv4",
                "network.interface.name": "eth0", "kernelnet.skb.protocol": 0x0800,
                "kernelnet.netns": NETNS_SERVER if to == "server" else NETNS_CLIENT}

    def counter(self, t: int, name: str, delta: int, netns: int = NETNS_SERVER):
        self.kspan(sc.SPAN_COUNTER, sc.KIND_COUNTER, t, t, {
            "kernelnet.counter.name": name, "kernelnet.counter.delta": delta, "kernelnet.netns": netns})

    # --- background noise (present in every scenario) -------------------------------
    def noise(self, horizon: int):
        r = self.rng
        for _ in range(120):  # short softirq waits on both CPUs
            t = T0 + r.randrange(horizon)
            w, run = r.randrange(20_000, 300_000), r.randrange(5_000, 80_000)
            self.kspan(sc.SPAN_SOFTIRQ, sc.KIND_SOFTIRQ, t, t + w + run, {
                "kernelnet.softirq.vector": "NET_RX", "kernelnet.softirq.wait_ns": w, "kernelnet.softirq.run_ns": run,
                "kernelnet.culprit.comm": r.choice(["containerd", "kubelet", "swapper/0"]),
                "kernelnet.culprit.pid": r.choice([812, 900, 0]), "kernelnet.culprit.ns": w // 2})
        for _ in range(8):  # a few real but harmless waits of a few ms
            t = T0 + r.randrange(horizon)
            w = r.randrange(1_000_000, 4_000_000)
            self.kspan(sc.SPAN_SOFTIRQ, sc.KIND_SOFTIRQ, t, t + w + 30_000, {
                "kernelnet.softirq.vector": "NET_RX", "kernelnet.softirq.wait_ns": w, "kernelnet.softirq.run_ns": 30_000,
                "kernelnet.culprit.comm": "containerd", "kernelnet.culprit.pid": 812, "kernelnet.culprit.ns": w // 2})
        for _ in range(25):  # a port scanner hitting closed low ports
            t = T0 + r.randrange(horizon)
            self.kspan(sc.SPAN_DROP, sc.KIND_DROP, t, t, {
                "kernelnet.drop.reason": "NO_SOCKET", "kernelnet.drop.location": "tcp_v4_rcv+0x1a4",
                "source.address": "10.9.9.9", "source.port": 40000, "destination.address": SERVER_IP,
                "destination.port": r.randrange(20, 1024), "network.transport": "tcp",
                "kernelnet.skb.has_socket": False, "kernelnet.netns": NETNS_SERVER}, error=True)
        for _ in range(6):
            self.counter(T0 + r.randrange(horizon), r.choice(["TcpExtTCPDSACKRecv", "TcpExtTCPTimeouts",
                                                              "TcpExtTCPFastRetrans"]), 1)

    def normal_skb(self, server: dict, conn: dict):
        s = int(server["startTimeUnixNano"]) - 60_000
        self.kspan(sc.SPAN_SKB, sc.KIND_SKB, s, s + self.rng.randrange(20_000, 90_000),
                   self.pkt_attrs(conn, "server"), host=server)


def _inject(w: _World, i: int, t: int, conn: dict) -> None:
    """One affected request of the scenario, joined in mode i % 3 (child / cookie / 4-tuple)."""
    r, sc_ = w.rng, w.scenario
    mode = i % 3
    cookies = mode != 2

    def host(span):  # child of the app span only in mode 0
        return span if mode == 0 else None

    def sock(c, side):
        a = w.sock_attrs(c, side)
        return a

    if sc_ == "pfmemalloc":
        extra = r.uniform(250, 700)
        client, server = w.request(t, conn, 8 + extra, cookies=cookies, route="/api/upload")
        s0 = int(server["startTimeUnixNano"])
        rec = w.kspan(sc.SPAN_RECLAIM, sc.KIND_RECLAIM, s0 + 2 * MS, s0 + int(extra * 0.6 * MS), {
            "kernelnet.reclaim.type": "direct", "kernelnet.reclaim.order": 0, "kernelnet.reclaim.nr_reclaimed": 1800,
            "process.pid": 5555, "process.command": "java", "kernelnet.cgroup.path": "/kubepods/burstable/pod-batch"})
        for k in range(r.randrange(3, 8)):
            d = s0 + int((5 + k * extra / 8) * MS)
            w.kspan(sc.SPAN_DROP, sc.KIND_DROP, d, d, {
                **w.pkt_attrs(conn, "server"), "kernelnet.drop.reason": "PFMEMALLOC", "kernelnet.skb.len": 65160,
                "kernelnet.drop.location": "tcp_v4_rcv+0x1e0", "kernelnet.skb.has_socket": True},
                host=host(server), error=True, links=[(rec["traceId"], rec["spanId"])])
            w.kspan(sc.SPAN_TCP_EVENT, sc.KIND_TCP_RETRANSMIT, d + 200 * MS, d + 200 * MS, {
                **sock(conn, "client"), "kernelnet.tcp.retransmit.type": "timeout",
                "network.connection.state": "established"}, host=host(client))
        w.counter(s0 + int(extra * MS), "TcpExtPFMemallocDrop", 3)
    elif sc_ == "reclaim":
        extra = r.uniform(200, 600)
        client, server = w.request(t, conn, 6 + extra, cookies=cookies)
        s0 = int(server["startTimeUnixNano"])
        rec = w.kspan(sc.SPAN_RECLAIM, sc.KIND_RECLAIM, s0 + 1 * MS, s0 + int((1 + extra * 0.9) * MS), {
            "kernelnet.reclaim.type": "memcg", "kernelnet.reclaim.order": 0, "kernelnet.reclaim.nr_reclaimed": 3100,
            "process.pid": SERVER_PID, "process.command": "checkout", "kernelnet.cgroup.path": "/kubepods/pod-checkout"})
        links = [(rec["traceId"], rec["spanId"])] if mode != 1 else []
        w.kspan(sc.SPAN_SKB, sc.KIND_SKB, s0 - 50_000, s0 + int(extra * MS), w.pkt_attrs(conn, "server"),
                host=host(server), links=links)
    elif sc_ in ("softirq_delay", "softirq_long_run"):
        extra = r.uniform(120, 450)
        client, server = w.request(t, conn, 6, client_extra_ms=extra, cookies=cookies)
        c0 = int(server["endTimeUnixNano"]) + MS
        delay = sc_ == "softirq_delay"
        wait, run = (int(extra * MS), 40_000) if delay else (60_000, int(extra * MS))
        sirq = w.kspan(sc.SPAN_SOFTIRQ, sc.KIND_SOFTIRQ, c0, c0 + wait + run, {
            "cpu": 1, "kernelnet.softirq.vector": "NET_RX", "kernelnet.softirq.wait_ns": wait,
            "kernelnet.softirq.run_ns": run,
            "kernelnet.culprit.comm": "kubelet" if delay else "node-exporter",
            "kernelnet.culprit.pid": 900 if delay else 1777,
            "kernelnet.culprit.ns": int(wait * 0.93) if delay else run})
        links = [(sirq["traceId"], sirq["spanId"])] if mode != 1 else []
        w.kspan(sc.SPAN_SKB, sc.KIND_SKB, c0, c0 + wait + run + 30_000, {**w.pkt_attrs(conn, "client"), "cpu": 1},
                host=host(client), links=links)
    elif sc_ == "conntrack":
        extra = r.uniform(900, 2500)
        client, server = w.request(t, conn, extra, cookies=cookies, error="connection reset by peer", peer=VIP,
                                   route="/envoy.service.discovery.v3.AggregatedDiscoveryService/Stream")
        s0, s1 = int(server["startTimeUnixNano"]), int(server["endTimeUnixNano"])
        for k in range(3):
            w.kspan(sc.SPAN_TCP_EVENT, sc.KIND_TCP_RETRANSMIT, s0 + (200 << k) * MS, s0 + (200 << k) * MS, {
                **sock(conn, "server"), "kernelnet.tcp.retransmit.type": "timeout",
                "network.connection.state": "established"}, host=host(server))
        # the stale segment reached the client un-NATed: RST for a flow to the pod's real address
        rst = {**sock(conn, "client"), sc.COOKIE: None, "network.peer.address": SERVER_IP,
               "kernelnet.tcp.reset.reason": "NO_SOCKET", "network.connection.state": "close"}
        w.kspan(sc.SPAN_TCP_EVENT, sc.KIND_TCP_RESET_SENT, s1 - 2 * MS, s1 - 2 * MS, rst)
        w.kspan(sc.SPAN_TCP_EVENT, sc.KIND_TCP_RESET_RECEIVED, s1 - MS, s1 - MS, {
            **sock(conn, "server"), "network.connection.state": "established"}, host=host(server))
        w.counter(s1, CONNTRACK_INVALID_COUNTER, 1, NETNS_CLIENT)
    elif sc_ in ("reordering", "loss"):
        extra = r.uniform(250, 800)
        client, server = w.request(t, conn, 10, client_extra_ms=extra, cookies=cookies, route="/api/bulk")
        c0 = int(server["endTimeUnixNano"])
        n = r.randrange(20, 60)
        reorder = sc_ == "reordering"
        for k in range(n):
            ts = c0 + int(k * extra / n * MS)
            typ = "fast" if reorder or k % 3 else "timeout"
            w.kspan(sc.SPAN_TCP_EVENT, sc.KIND_TCP_RETRANSMIT, ts, ts, {
                **sock(conn, "client"), "kernelnet.tcp.retransmit.type": typ,
                "network.connection.state": "established"}, host=host(client))
        for k in range(4):
            ts = c0 + int(k * extra / 4 * MS)
            w.kspan(sc.SPAN_TCP_EVENT, sc.KIND_TCP_CONG_STATE, ts, ts, {
                **sock(conn, "client"), "kernelnet.tcp.cong_state": "Recovery" if reorder else "Loss"}, host=host(client))
        end = c0 + int(extra * MS)
        w.counter(end, "TcpExtTCPFastRetrans", n if reorder else 2 * n // 3, NETNS_CLIENT)
        if reorder:
            w.counter(end, "TcpExtTCPDSACKRecv", n - r.randrange(3), NETNS_CLIENT)
            w.counter(end, "TcpExtTCPSACKReorder", n // 2, NETNS_CLIENT)
        else:
            w.counter(end, "TcpExtTCPTimeouts", n // 3, NETNS_CLIENT)
    elif sc_ == "listen_overflow":
        syns = 1 if i % 2 else 2
        delay = 1000 if syns == 1 else 3000
        client, server = w.request(t + delay * MS, conn, 5, cookies=cookies, route="/images/logo.png")
        client["startTimeUnixNano"] = str(t)
        for k in range(syns):
            ts = t + (1000 << k) * MS
            w.kspan(sc.SPAN_TCP_EVENT, sc.KIND_TCP_RETRANSMIT, ts, ts, {
                **sock(conn, "client"), "kernelnet.tcp.retransmit.type": "syn",
                "network.connection.state": "syn_sent"}, host=host(client))
        ts = t + 2 * MS
        w.kspan(sc.SPAN_TCP_EVENT, sc.KIND_LISTEN_OVERFLOW, ts, ts, {
            "kernelnet.listen.address": f"{SERVER_IP}:{SERVER_PORT}", "kernelnet.listen.queue_len": 129,
            "kernelnet.listen.queue_limit": 128, "kernelnet.netns.somaxconn": 128,
            "kernelnet.counter.name": "TcpExtListenOverflows", "kernelnet.counter.delta": 4,
            "kernelnet.netns": NETNS_SERVER})
        w.counter(ts + 500 * MS, "TcpExtListenOverflows", 4)
        w.counter(ts + 500 * MS, "TcpExtListenDrops", 4)
    elif sc_ in ("rcvbuf", "netfilter"):
        extra = r.uniform(200, 600)
        client, server = w.request(t, conn, 6 + extra, cookies=cookies, route="/api/upload")
        s0 = int(server["startTimeUnixNano"])
        reason = "SOCKET_RCVBUFF" if sc_ == "rcvbuf" else "NETFILTER_DROP"
        for k in range(r.randrange(3, 9)):
            d = s0 + int((2 + k * extra / 9) * MS)
            w.kspan(sc.SPAN_DROP, sc.KIND_DROP, d, d, {
                **w.pkt_attrs(conn, "server", cookie=sc_ == "rcvbuf"), "kernelnet.drop.reason": reason,
                "kernelnet.skb.has_socket": sc_ == "rcvbuf", "kernelnet.skb.len": 1448},
                host=host(server) if sc_ == "rcvbuf" else None, error=True)
            if sc_ == "rcvbuf":  # the tracepoint names no socket: a standalone, host-wide span
                w.kspan(sc.SPAN_TCP_EVENT, sc.KIND_SOCK_RCVQUEUE_FULL, d, d, {
                    "kernelnet.sock.rmem_alloc": 212_480, "kernelnet.sock.truesize": 2_304,
                    "kernelnet.sock.rcvbuf": 212_992, "cpu": 1})
            w.kspan(sc.SPAN_TCP_EVENT, sc.KIND_TCP_RETRANSMIT, d + 210 * MS, d + 210 * MS, {
                **sock(conn, "client"), "kernelnet.tcp.retransmit.type": "timeout",
                "network.connection.state": "established"}, host=host(client))
    elif sc_ == "no_socket":
        extra = r.uniform(200, 500)
        client, server = w.request(t, conn, 5, client_extra_ms=extra, cookies=cookies,
                                   error="connection reset by peer")
        c1 = int(client["endTimeUnixNano"]) - MS
        w.kspan(sc.SPAN_DROP, sc.KIND_DROP, c1 - MS, c1 - MS, {
            **w.pkt_attrs(conn, "server", cookie=False), "kernelnet.drop.reason": "NO_SOCKET",
            "kernelnet.skb.has_socket": False}, error=True)
        w.kspan(sc.SPAN_TCP_EVENT, sc.KIND_TCP_RESET_SENT, c1 - MS, c1 - MS, {
            **sock(conn, "server"), sc.COOKIE: None, "kernelnet.tcp.reset.reason": "NO_SOCKET"})
        w.kspan(sc.SPAN_TCP_EVENT, sc.KIND_TCP_RESET_RECEIVED, c1, c1, sock(conn, "client"), host=host(client))
    elif sc_ == "control":
        # slow because of the application itself: a slow database call, no kernel cause
        extra = r.uniform(250, 800)
        client, server = w.request(t, conn, 6 + extra, cookies=cookies)
        s0 = int(server["startTimeUnixNano"])
        w.span(w.app["checkout"], "SELECT cart", 3, s0 + MS, s0 + int((1 + extra) * MS),
               {"db.system": "postgresql", "server.address": "10.0.3.3", "server.port": 5432},
               trace_id=server["traceId"], parent=server["spanId"])
        if i % 2 == 0:  # and a harmless background softirq wait that happens to overlap it
            w.kspan(sc.SPAN_SOFTIRQ, sc.KIND_SOFTIRQ, s0 + 3 * MS, s0 + 5 * MS, {
                "kernelnet.softirq.vector": "NET_RX", "kernelnet.softirq.wait_ns": 1_900_000,
                "kernelnet.softirq.run_ns": 100_000, "kernelnet.culprit.comm": "containerd",
                "kernelnet.culprit.pid": 812, "kernelnet.culprit.ns": 1_000_000})


def generate_docs(scenario: str, seed: int = 0, n_requests: int = 400,
                  n_affected: int = 12, duration_s: float = 60.0) -> list[dict]:
    """The data set as OTLP ``TracesData`` dicts (app spans first, then kernel batches).

    >>> docs = generate_docs("control", seed=3, n_requests=50, n_affected=3)
    >>> [rs["resource"]["attributes"][0]["value"]["stringValue"] for d in docs for rs in d["resourceSpans"]]
    ['frontend', 'checkout', 'otel-kernelnet']
    """
    w = _World(scenario, seed, n_requests)
    horizon = int(duration_s * 1e9)
    r = w.rng
    affected = set(r.sample(range(20, n_requests - 5), n_affected)) if n_affected else set()
    step = horizon // n_requests
    for i in range(n_requests):
        t = T0 + i * step + r.randrange(step // 2)
        conn = w.conns[i % len(w.conns)]
        if i in affected:
            _inject(w, len([a for a in affected if a < i]), t, conn)
        else:
            client, server = w.request(t, conn, r.lognormvariate(2.08, 0.3), route=r.choice(ROUTES))  # median 8 ms
            if r.random() < 0.2:
                w.normal_skb(server, conn)
    w.noise(horizon)

    def resource(service: str, pid: int | None) -> dict:
        return {"attributes": _kv({"service.name": service, "process.pid": pid, "host.name": "node-1"})}

    app_doc = {"resourceSpans": [
        {"resource": resource("frontend", CLIENT_PID),
         "scopeSpans": [{"scope": {"name": "opentelemetry.instrumentation.requests"}, "spans": w.app["frontend"]}]},
        {"resource": resource("checkout", SERVER_PID),
         "scopeSpans": [{"scope": {"name": "opentelemetry.instrumentation.flask"}, "spans": w.app["checkout"]}]},
    ]}
    kdoc = {"resourceSpans": [{"resource": resource(sc.SERVICE_NAME, None),
                               "scopeSpans": [{"scope": {"name": sc.SCOPE_NAME, "version": "0.1.0"},
                                               "spans": w.kernel}]}]}
    return [app_doc, kdoc]


def write_store(docs: list[dict], out_dir: str | os.PathLike, spans_per_line: int = 500) -> Path:
    """Write docs as the embedded store: ``traces-000001.jsonl`` (apps), ``-000002`` (kernel)...

    Large documents are split into lines of at most ``spans_per_line`` spans, as the
    collector's batches would be.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for n, doc in enumerate(docs, 1):
        lines = []
        for rs in doc["resourceSpans"]:
            for ss in rs["scopeSpans"]:
                spans = ss["spans"]
                for k in range(0, max(len(spans), 1), spans_per_line):
                    lines.append({"resourceSpans": [{"resource": rs["resource"], "scopeSpans": [
                        {"scope": ss["scope"], "spans": spans[k:k + spans_per_line]}]}]})
        (out / f"traces-{n:06d}.jsonl").write_text("".join(json.dumps(x, separators=(",", ":")) + "\n" for x in lines))
    return out


def generate(scenario: str, out_dir: str | os.PathLike, seed: int = 0, n_requests: int = 400,
             n_affected: int = 12) -> Path:
    """Generate one scenario of :data:`SCENARIOS` into ``out_dir`` (the embedded store format)."""
    return write_store(generate_docs(scenario, seed, n_requests, n_affected), out_dir)


def generate_all(out_dir: str | os.PathLike, seed: int = 0, n_requests: int = 400) -> dict[str, Path]:
    """Every scenario into ``out_dir/<scenario>``; returns scenario -> directory."""
    return {s: generate(s, Path(out_dir) / s, seed, n_requests) for s in SCENARIOS}
