"""Kernel tests of the TCP events family: real tracepoints, real connections in a
fresh network namespace, spans read back from the embedded store.

Each workload runs in one Python process inside the namespace and prints, as JSON,
what the application itself sees (SO_COOKIE, ports, TCP_INFO); the spans must match
it exactly. Prime counts (5 resets, 7 SYN-dropped clients, 3 connects) make a doubled
or missing event fail. Every span is filtered by the test namespace's inode.
"""

from __future__ import annotations

import json
import sys

from tests.kernel.conftest import read_store



COOKIE_OF = r"""
import struct as _struct
def cookie_of(sock):  # getsockopt(SOL_SOCKET, SO_COOKIE): a u64, assigned on first use
    return _struct.unpack("Q", sock.getsockopt(socket.SOL_SOCKET, 57, 8))[0]
"""

RESETS = r"""
import json, socket, struct
n, out = 5, []
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(8)
port = srv.getsockname()[1]
for _ in range(n):
    c = socket.create_connection(("127.0.0.1", port))
    s, _addr = srv.accept()
    rec = {"client_cookie": cookie_of(c), "client_port": c.getsockname()[1],
           "server_cookie": cookie_of(s), "server_port": port}
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()  # linger 0: abort, the server sends RST
    try:
        c.recv(1)
        rec["client_saw"] = "eof"
    except ConnectionResetError:
        rec["client_saw"] = "reset"
    c.close()
    out.append(rec)
print(json.dumps(out))
"""

SYN_RETRANSMITS = r"""
import json, select, socket, struct, time, errno
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)  # never accepts
port = srv.getsockname()[1]
clients = []
for _ in range(7):
    c = socket.socket(); c.setblocking(False)
    cookie = cookie_of(c)  # assigned now, before connect
    assert c.connect_ex(("127.0.0.1", port)) in (0, errno.EINPROGRESS)
    clients.append((c, cookie))

def info(c):  # struct tcp_info: tcpi_state at 0, tcpi_total_retrans at 100
    raw = c.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    return raw[0], struct.unpack_from("I", raw, 100)[0]

# ready signal, not a sleep: every client is either established or has had its SYN
# retransmitted at least once (the first SYN RTO is 1 s); bounded at 2.5 s
deadline = time.monotonic() + 2.5
while True:
    states = [info(c) for c, _ in clients]
    if all(st == 1 or rtx >= 1 for st, rtx in states) or time.monotonic() > deadline:
        break
    time.sleep(0.02)
out = [{"cookie": cookie, "port": c.getsockname()[1], "state": st, "total_retrans": rtx}
       for (c, cookie), (st, rtx) in zip(clients, states)]
for c, _ in clients:
    c.close()
print(json.dumps({"server_port": port, "clients": out}))
"""

CONNECTS = r"""
import json, socket
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(8)
port, out, keep = srv.getsockname()[1], [], []
for _ in range(3):
    c = socket.socket()
    cookie = cookie_of(c)
    c.connect(("127.0.0.1", port))
    s, _ = srv.accept()
    keep += [c, s]
    out.append({"cookie": cookie, "port": c.getsockname()[1]})
for x in keep:
    x.close()
print(json.dumps({"server_port": port, "clients": out}))
"""


def run_json(netns, code: str) -> dict | list:
    """Run a workload in the namespace; its last line of output is JSON."""
    r = netns.exec(sys.executable, "-c", "import socket\n" + COOKIE_OF + code, check=False, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout)


def tcp_spans(spans: list[dict], netns, kind: str) -> list[dict]:
    return [s for s in spans if s["name"] == "kernel.tcp"
            and s["attributes"].get("kernelnet.netns") == netns.inode
            and s["attributes"].get("kernelnet.kind") == kind]


def test_reset_by_peer_gives_reset_received_on_the_victims_cookie_and_reset_sent_with_reason(netns, collector):
    c = collector()
    recs = run_json(netns, RESETS)
    assert c.stop() == 0, c.text()
    assert [r["client_saw"] for r in recs] == ["reset"] * 5
    spans = read_store(c.output)

    received = tcp_spans(spans, netns, "tcp.reset.received")
    assert len(received) == 5, c.text()
    assert sorted(s["attributes"]["kernelnet.socket.cookie"] for s in received) == \
        sorted(r["client_cookie"] for r in recs)
    by_cookie = {r["client_cookie"]: r for r in recs}
    for s in received:
        a, r = s["attributes"], by_cookie[s["attributes"]["kernelnet.socket.cookie"]]
        assert s["start"] == s["end"]
        assert a["network.transport"] == "tcp" and a["network.type"] == "ipv4"
        assert (a["network.local.address"], a["network.local.port"]) == ("127.0.0.1", r["client_port"])
        assert (a["network.peer.address"], a["network.peer.port"]) == ("127.0.0.1", r["server_port"])

    sent = tcp_spans(spans, netns, "tcp.reset.sent")
    assert len(sent) == 5, c.text()
    by_cookie = {r["server_cookie"]: r for r in recs}
    assert sorted(s["attributes"].get("kernelnet.socket.cookie", 0) for s in sent) == sorted(by_cookie)
    for s in sent:
        a = s["attributes"]
        r = by_cookie[a["kernelnet.socket.cookie"]]
        # close() with SO_LINGER {1, 0} on an established socket goes through
        # tcp_disconnect(), which resets with SK_RST_REASON_TCP_STATE (6.18)
        assert a["kernelnet.tcp.reset.reason"] == "TCP_STATE", a
        assert isinstance(a["kernelnet.tcp.reset.reason_code"], int)
        # tcp_disconnect() sets TCP_CLOSE before it sends the reset: the kernel's view
        assert a["network.connection.state"] == "closed"
        assert (a["network.local.port"], a["network.peer.port"]) == (r["server_port"], r["client_port"])
        assert a["network.peer.address"] == "127.0.0.1"


def test_accept_queue_overflow_shows_syn_retransmits_on_the_clients_cookies(netns, collector):
    c = collector()
    res = run_json(netns, SYN_RETRANSMITS)
    assert c.stop() == 0, c.text()
    clients = res["clients"]
    assert len(clients) == 7
    # backlog 1 admits two connections to the accept queue (full means > backlog); the
    # other five stay in SYN_SENT: their SYNs were dropped and retransmitted
    dropped = [x for x in clients if x["state"] != 1]
    assert len(dropped) == 5, clients
    assert all(x["total_retrans"] >= 1 for x in dropped), clients

    spans = read_store(c.output)
    rtx = tcp_spans(spans, netns, "tcp.retransmit")
    assert len(rtx) == sum(x["total_retrans"] for x in clients) >= 5, c.text()
    per_cookie: dict[int, int] = {}
    for s in rtx:
        a = s["attributes"]
        assert a["kernelnet.tcp.retransmit.type"] == "syn", a
        assert a["network.connection.state"] == "syn_sent"
        assert a["network.peer.port"] == res["server_port"]
        assert s["start"] == s["end"]
        per_cookie[a["kernelnet.socket.cookie"]] = per_cookie.get(a["kernelnet.socket.cookie"], 0) + 1
    # exactly as many retransmit spans per socket as the socket's own TCP_INFO counts
    assert per_cookie == {x["cookie"]: x["total_retrans"] for x in clients if x["total_retrans"]}, (clients, c.text())
    ports = {a["attributes"]["kernelnet.socket.cookie"]: a["attributes"]["network.local.port"] for a in rtx}
    assert ports == {x["cookie"]: x["port"] for x in clients if x["total_retrans"]}


def test_connect_latency_span_runs_from_syn_sent_to_established(netns, collector):
    c = collector()
    res = run_json(netns, CONNECTS)
    assert c.stop() == 0, c.text()
    spans = read_store(c.output)
    connects = tcp_spans(spans, netns, "tcp.connect")
    assert len(connects) == 3, c.text()  # clients only: the server side never is in SYN_SENT
    by_cookie = {x["cookie"]: x for x in res["clients"]}
    assert sorted(s["attributes"]["kernelnet.socket.cookie"] for s in connects) == sorted(by_cookie)
    for s in connects:
        a = s["attributes"]
        assert s["end"] > s["start"], s
        assert s["end"] - s["start"] < 1_000_000_000  # loopback handshake: far below a second
        assert a["network.connection.state"] == "established"
        assert a["kernelnet.tcp.state.previous"] == "syn_sent"
        assert a["network.local.port"] == by_cookie[a["kernelnet.socket.cookie"]]["port"]
        assert a["network.peer.port"] == res["server_port"]
        assert s["status"].get("code", 0) == 0
    assert not tcp_spans(spans, netns, "tcp.close"), "close events are off by default"


def test_close_events_when_enabled(netns, collector):
    c = collector(config={"probes": {"tcp": {"close_events": True}}})
    res = run_json(netns, CONNECTS)
    assert c.stop() == 0, c.text()
    closes = tcp_spans(read_store(c.output), netns, "tcp.close")
    client_cookies = {x["cookie"] for x in res["clients"]}
    mine = [s for s in closes if s["attributes"].get("kernelnet.socket.cookie") in client_cookies]
    assert len(mine) == 3, c.text()
    for s in mine:
        assert s["attributes"]["network.connection.state"] == "closed"
        assert s["start"] == s["end"]
