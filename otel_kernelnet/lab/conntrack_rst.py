"""``lab conntrack-rst``: conntrack lets an out-of-window segment through un-NATed (CASES.md #3).

Topology: client netns -- veth -- router netns -- veth -- server netns. The router
DNATs a virtual IP (a ClusterIP) to the server's real address with nftables, so its
conntrack tracks every connection (``nf_conntrack_tcp_be_liberal`` = 0, the default).
The client makes keep-alive requests over one connection to the VIP; the server
takes a little time per request and answers with a sizeable body.

The cause: while one request is in flight, a stray segment of the server's side of the
flow (server real IP:port -> client) arrives at the router with a sequence number far
outside the window. conntrack marks it INVALID and returns ``-NF_ACCEPT``: the packet
is neither dropped nor NATed, and reaches the client from the server's *real*
address. The client has no socket for that 4-tuple and answers RST (``NO_SOCKET``);
the RST (INVALID too: a new flow starting with RST) also crosses the router un-NATed,
lands on the server's real socket with exactly the expected sequence number, and the
server drops the connection. The client's request never gets its answer: its still
unacknowledged request goes out again ~200 ms later (tail-loss probe), reaches the
server's listener and is answered with RST (or, had the server acked it, the client
waits for its 2 s read timeout). That request is the spike; expected diagnosis
``conntrack_invalid_rst`` (a reset on the span's connection and a conntrack INVALID
jump in its window).

The stray segment is built here (raw socket, our own TCP checksum; no scapy), from the
server's namespace, with the flow's current sequence numbers read by an AF_PACKET
sniffer on the server's veth. Its ACK field is the server's ``rcv_nxt`` so that the
client's RST (whose sequence number is that ACK) is accepted as genuine.

Linux >= 6.1 (netfilter "ignore overly delayed tcp packets") no longer marks a segment
*below* the window ("already ACKed data retransmitted", the incident's 5.8 MB-behind
retransmission) INVALID: it is IGNOREd, still NATed, and nothing happens. A segment
*beyond* the window's right edge ("SEQ is over upper bound") is still INVALID, so the
lab places the stray segment that far ahead (``--direction behind`` shows the other
case for comparison).
"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import struct
import sys
import time

from ..kernel.netstat import parse_conntrack_stat
from .env import Lab, LabError, Netns
from .runner import Check, Context, Scenario, counted

CLIENT_IP, ROUTER_C_IP = "10.89.1.2", "10.89.1.1"
ROUTER_S_IP, SERVER_IP = "10.89.2.1", "10.89.2.2"
VIP, PORT = "10.89.100.10", 8080
DELAY_MS, SIZE = 30, 64 * 1024          # per request on the server; response body
REQUESTS, INJECT_AFTER = 80, 40         # keep-alive requests; the stray segment hits request no. INJECT_AFTER
CLIENT_TIMEOUT_S = 2.0                  # the client's read timeout: how long the hit request stalls
STALE_OFFSET = 5_800_000                # bytes outside the window (the incident's 5.8 MB)


# --- the injector: runs inside the server's namespace ---------------------------------------------

ETH_P_ALL, ETH_P_IP = 0x0003, 0x0800
SYN, RST, PSH, ACK, FIN = 0x02, 0x04, 0x08, 0x10, 0x01


def _csum(data: bytes) -> int:
    """Internet checksum (RFC 1071).

    >>> hex(_csum(bytes.fromhex("4500003c1c4640004006") + bytes(2) + bytes.fromhex("ac100a63ac100a0c")))
    '0xb1e6'
    """
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def tcp_segment(src: str, sport: int, dst: str, dport: int, seq: int, ack: int, flags: int,
                payload: bytes = b"", window: int = 502) -> bytes:
    """An IPv4 packet carrying one TCP segment with a correct TCP checksum (the kernel fills
    in the IP header's total length and checksum on an IPPROTO_RAW socket; we set them anyway)."""
    s, d = socket.inet_aton(src), socket.inet_aton(dst)
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 5 << 4, flags, window, 0, 0)
    pseudo = s + d + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(tcp) + len(payload))
    tcp = tcp[:16] + struct.pack("!H", _csum(pseudo + tcp + payload)) + tcp[18:]
    total = 20 + len(tcp) + len(payload)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 0, 0x4000, 64, socket.IPPROTO_TCP, 0, s, d)
    ip = ip[:10] + struct.pack("!H", _csum(ip)) + ip[12:]
    return ip + tcp + payload


def _after(a: int, b: int) -> bool:
    """TCP sequence comparison: a after b (mod 2**32)."""
    return 0 < (a - b) & 0xFFFFFFFF < 0x80000000


def inject(a: argparse.Namespace) -> int:
    """Sniff the flow on ``a.iface``; after request ``a.after`` arrives, wait ``a.delay_ms`` and
    send one stray server->client segment outside the window. Prints JSON lines.

    Before sending, every captured packet is read, so the sequence numbers are current; if
    the server has already begun to answer that request (the injector ran late), the next
    request is tried instead (up to ``a.retries`` times)."""
    sniff = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
    sniff.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sniff.bind((a.iface, 0))
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    print(json.dumps({"ready": True, "pid": os.getpid()}), flush=True)
    deadline = time.monotonic() + a.max_seconds
    cport = None
    c_nxt = s_nxt = None
    c_wscale, c_win = 0, 0
    requests = 0
    due = None
    target = a.after
    answered = False   # the server began its answer to the target request: too late to hit it in flight
    while True:
        now = time.monotonic()
        if due is not None and now >= due:
            if not _pending(sniff):
                if not answered:
                    break
                if target - a.after >= a.retries:
                    print(json.dumps({"injected": False, "reason": f"missed requests {a.after}..{target} in "
                                      "flight (the injector ran too late each time)"}), flush=True)
                    return 1
                target, due, answered = requests + 1, None, False  # too late (CPU noise): the next one
                continue
        if now > deadline:
            print(json.dumps({"injected": False, "reason": f"request {a.after} not seen within {a.max_seconds} s",
                              "requests_seen": requests, "client_port": cport}), flush=True)
            return 1
        wait = min(deadline, due if due is not None else deadline) - now
        ready = select.select([sniff, sys.stdin], [], [], max(0.0, wait))[0]
        if sys.stdin in ready and not os.read(sys.stdin.fileno(), 4096):  # the lab closed our stdin: stop
            print(json.dumps({"injected": False, "reason": "stopped before the injection"}), flush=True)
            return 1
        if sniff not in ready:
            continue
        data, addr = sniff.recvfrom(65535)
        if addr[1] != ETH_P_IP or len(data) < 40 or data[9] != socket.IPPROTO_TCP:
            continue
        ihl = (data[0] & 0x0F) * 4
        tot = struct.unpack("!H", data[2:4])[0] or len(data)
        src, dst = socket.inet_ntoa(data[12:16]), socket.inet_ntoa(data[16:20])
        sport, dport, seq, ack, off, flags, win = struct.unpack("!HHIIBBH", data[ihl:ihl + 16])
        doff = (off >> 4) * 4
        plen = tot - ihl - doff
        end = seq + plen + (1 if flags & (SYN | FIN) else 0)
        if src == a.client and dst == a.server and dport == a.port:      # client -> server
            if flags & SYN and not flags & ACK:
                cport, requests, c_nxt, s_nxt, due = sport, 0, None, None, None
                c_wscale = _wscale(data[ihl + 20:ihl + doff])
            if sport != cport:
                continue
            c_nxt = end & 0xFFFFFFFF if c_nxt is None or _after(end, c_nxt) else c_nxt
            if not flags & SYN:
                c_win = win << c_wscale
            if plen > 0:
                requests += 1
                if requests == target and due is None:
                    due = time.monotonic() + a.delay_ms / 1000.0
        elif src == a.server and sport == a.port and dst == a.client and dport == cport:  # server -> client
            s_nxt = end & 0xFFFFFFFF if s_nxt is None or _after(end, s_nxt) else s_nxt
            if plen > 0 and due is not None:
                answered = True
    if c_nxt is None or s_nxt is None:
        print(json.dumps({"injected": False, "reason": "no sequence numbers seen for the flow"}), flush=True)
        return 1
    # beyond the right edge of the client's window (conntrack's td_maxend): still INVALID on 6.18
    offset = max(a.offset, 4 * c_win)
    seq = s_nxt + offset if a.direction == "ahead" else s_nxt - offset
    pkt = tcp_segment(a.server, a.port, a.client, cport, seq, c_nxt, ACK | PSH, b"\0" * a.payload)
    raw.sendto(pkt, (a.client, 0))
    print(json.dumps({"injected": True, "client_port": cport, "seq": seq & 0xFFFFFFFF, "ack": c_nxt,
                      "server_snd_nxt": s_nxt, "offset": offset, "direction": a.direction,
                      "client_window": c_win, "request": target, "t_ns": time.time_ns()}), flush=True)
    return 0


def _pending(sock: socket.socket, timeout: float = 0.0) -> bool:
    return bool(select.select([sock], [], [], timeout)[0])


def _wscale(opts: bytes) -> int:
    """The window-scale shift of a SYN's TCP options (0 when absent)."""
    i = 0
    while i < len(opts):
        kind = opts[i]
        if kind == 0:
            break
        if kind == 1:
            i += 1
            continue
        if i + 1 >= len(opts) or opts[i + 1] < 2:
            break
        if kind == 3 and opts[i + 1] == 3:
            return opts[i + 2]
        i += opts[i + 1]
    return 0


# --- the scenario -----------------------------------------------------------------------------------


def _conntrack(ns: Netns) -> dict[str, int]:
    return parse_conntrack_stat(ns.run("cat", "/proc/net/stat/nf_conntrack").stdout)


class ConntrackRst(Scenario):
    name = "conntrack-rst"
    title = "an out-of-window segment passes conntrack un-NATed; the client's RST kills the server's connection"
    case = "#3 (conntrack out-of-window -> RST)"
    expect = "conntrack_invalid_rst"
    families = ("tcp", "netns_counters")
    config = {"probes": {"netns_counters": {
        "interval_ms": 250, "rescan_s": 1,
        "counters": ["ConntrackInvalid", "TcpExtTCPTimeouts", "TcpRetransSegs", "TcpExtTCPAbortOnData"]}}}
    #: where the stray segment lies: "ahead" of the window (INVALID on every kernel) or "behind"
    #: it (the incident's case; IGNOREd, so tracked and NATed, by Linux >= 6.1: nothing happens)
    direction = "ahead"

    def describe(self) -> list[str]:
        return [f"client {CLIENT_IP} -> router (nftables DNAT {VIP}:{PORT} -> {SERVER_IP}:{PORT}, conntrack, "
                f"be_liberal=0) -> server {SERVER_IP}, each in its own namespace;",
                f"{REQUESTS} keep-alive requests ({DELAY_MS} ms each, {SIZE // 1024} KiB answers); during request "
                f"{INJECT_AFTER} a server->client segment {STALE_OFFSET / 1e6:.1f} MB outside the window is injected: "
                "conntrack lets it through un-NATed, the client answers RST, the RST kills the server's socket"]

    def namespaces(self, lab: Lab) -> list[Netns]:
        self.cli, self.rtr, self.srv = lab.netns("client"), lab.netns("router"), lab.netns("server")
        lab.veth(self.cli, CLIENT_IP, self.rtr, ROUTER_C_IP)
        _, self.srv_dev = lab.veth(self.rtr, ROUTER_S_IP, self.srv, SERVER_IP)
        self.cli.run("ip", "route", "add", "default", "via", ROUTER_C_IP)
        self.srv.run("ip", "route", "add", "default", "via", ROUTER_S_IP)
        self.rtr.sysctl("net.ipv4.ip_forward", 1)
        rules = (f"table ip kn_lab {{\n chain pre {{\n  type nat hook prerouting priority dstnat; policy accept;\n"
                 f"  ip daddr {VIP} tcp dport {PORT} dnat to {SERVER_IP}:{PORT}\n }}\n}}\n")
        conf = lab.logdir / "router.nft"
        conf.write_text(rules)
        self.rtr.run("nft", "-f", str(conf))  # goes with the namespace
        # the default, stated: a liberal tracker would accept the segment as in-window
        self.rtr.sysctl("net.netfilter.nf_conntrack_tcp_be_liberal", 0)
        return [self.cli, self.rtr, self.srv]

    def drive(self, ctx: Context) -> None:
        ct_before, cli_before = _conntrack(self.rtr), self.cli.counters()
        server = ctx.server("server", "lab-server", self.srv, "--addr", SERVER_IP, "--port", str(PORT),
                            "--threads", "--delay-ms", str(DELAY_MS), "--size", str(SIZE))
        inj = ctx.lab.spawn("injector", [sys.executable, "-m", __name__, "inject", "--iface", self.srv_dev,
                                         "--server", SERVER_IP, "--port", str(PORT), "--client", CLIENT_IP,
                                         "--after", str(INJECT_AFTER), "--delay-ms", "8",
                                         "--offset", str(STALE_OFFSET), "--direction", self.direction,
                                         "--max-seconds", "30"], netns=self.srv)
        if not inj.json(timeout=30).get("ready"):
            raise LabError(f"the injector did not start: {inj.tail()}")
        ctx.step(f"{REQUESTS} keep-alive requests to {VIP}:{PORT}; the stray segment goes out during request "
                 f"{INJECT_AFTER}")
        client = ctx.app("client", "lab-client", self.cli, "client", "--host", VIP, "--port", str(PORT),
                         "--keepalive", "--requests", str(REQUESTS), "--interval-ms", "10",
                         "--timeout", str(CLIENT_TIMEOUT_S), "--max-seconds", "40")
        shot = inj.json(timeout=45)
        if not shot.get("injected"):
            raise LabError(f"the stray segment was not sent: {shot}")
        where = "ahead of" if shot["direction"] == "ahead" else "behind"
        ctx.step(f"  injected during request {shot['request']}: {SERVER_IP}:{PORT} -> {CLIENT_IP}:"
                 f"{shot['client_port']} seq {shot['seq']} ({shot['offset']} bytes {where} the server's snd_nxt "
                 f"{shot['server_snd_nxt']}), ack {shot['ack']}")
        res = client.json(timeout=60)
        client.wait(15)
        ctx.step(f"  {res['ok']} ok, median {res['p50_ms']} ms, slowest {res['max_ms']} ms, "
                 f"errors {res['errors'] or 'none'}")
        time.sleep(0.5)  # last packets (the client's FIN meeting the server's RST) land
        ct_after, cli_after = _conntrack(self.rtr), self.cli.counters()
        d = ctx.facts
        d["ct_invalid"] = ct_after.get("ConntrackInvalid", 0) - ct_before.get("ConntrackInvalid", 0)
        d["cli_out_rsts"] = cli_after.get("TcpOutRsts", 0) - cli_before.get("TcpOutRsts", 0)
        d["rtr_inode"], d["cli_inode"], d["srv_inode"] = self.rtr.inode, self.cli.inode, self.srv.inode
        d["client_port"] = shot["client_port"]
        d["client_errors"] = res["errors"]
        time.sleep(0.6)  # two more rounds of the counters family (every 250 ms) see the final values
        server.stop()

    def checks(self, ctx: Context, spans: list[dict]) -> list[Check]:
        d = ctx.facts
        a = [s["attributes"] for s in spans]
        invalid = counted(spans, "ConntrackInvalid", d["rtr_inode"])
        rst = sum(1 for x in a if x.get("kernelnet.kind") == "tcp.reset.sent"
                  and x.get("kernelnet.netns") == d["cli_inode"])
        return [Check("router netns conntrack invalid delta vs counter spans", d["ct_invalid"], invalid),
                Check("client netns TcpOutRsts delta vs tcp.reset.sent spans", d["cli_out_rsts"], rst)]

    def evidence_ok(self, cause: dict) -> list[str]:
        ev = cause.get("evidence", {})
        out = []
        if not ev.get("resets_sent"):
            out.append("evidence lacks the client's RST (resets_sent)")
        if not ev.get("resets_received"):
            out.append("evidence lacks the server's received RST (resets_received)")
        if not (ev.get("conntrack_invalid") or ev.get("rst_to_unnated_address")):
            out.append("evidence has neither a conntrack invalid jump nor an RST to the un-NATed address")
        return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=f"python -m {__name__}")
    sub = p.add_subparsers(dest="cmd", required=True)
    i = sub.add_parser("inject", help="sniff the flow and send one stray segment (run inside the server netns)")
    i.add_argument("--iface", required=True)
    i.add_argument("--server", required=True)
    i.add_argument("--port", type=int, required=True)
    i.add_argument("--client", required=True)
    i.add_argument("--after", type=int, default=INJECT_AFTER, help="inject during this request (1-based)")
    i.add_argument("--delay-ms", type=float, default=8.0, help="after the request arrived")
    i.add_argument("--offset", type=int, default=STALE_OFFSET, help="bytes outside the window")
    i.add_argument("--direction", choices=("ahead", "behind"), default="ahead")
    i.add_argument("--payload", type=int, default=100)
    i.add_argument("--retries", type=int, default=5, help="later requests to try when one was missed")
    i.add_argument("--max-seconds", type=float, default=30.0)
    a = p.parse_args(argv)
    return inject(a)


if __name__ == "__main__":
    sys.exit(main())
