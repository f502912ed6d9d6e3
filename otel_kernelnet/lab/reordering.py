"""``lab reordering`` and its control ``lab loss``: fast retransmits on a path (CASES.md #4).

Both scenarios share one path: a server in its own namespace answers 12 kB responses
(9 segments: one flight) over keep-alive to a client in another namespace, through a
veth pair and a *delay line* in each direction: a tun device whose packets a small
forwarder (:func:`delay_line`) sends on over the veth 5 ms later (netem is not compiled
in on the reference kernel). The delay gives the path a real round trip (10 ms),
without which a retransmit costs microseconds and no request would be slower for it.
The server waits until its response is acknowledged before it finishes (a hook in every
request, :func:`wait_delivered`, with TCP_NODELAY; the client's route has ``quickack``),
so the server span measures the delivery: the lab app's client span ends with the
headers, before the body arrives.

reordering: after a baseline, the delay line of the data direction holds one full-sized
packet in ``HOLD_EVERY`` for ``HOLD_MS`` more, and the packets behind it overtake it.
The client SACKs past the hole, the server declares it lost and retransmits it (a fast
retransmit, in Recovery); the original arrives after all and the client reports the
duplicate (DSACK: TcpExtTCPDSACKRecv), which proves the retransmit spurious. The request
waited for the retransmit: one or two round trips more, which doubles the first few
such requests of the connection (later, TCP has learnt the reordering and they cost
about one round trip: still retransmitted, below the spike threshold). Expected:
``reordering_retransmit``, fast retransmits on the server's socket, DSACKs in the window.

loss: the same path and baseline, then an iptables rule in the client's namespace drops a
random ``LOSS`` of the data segments (``-m statistic``; not the handshake). The server
retransmits on SACK holes (fast), on a tail loss by loss probe or timeout (RTO), and no
DSACK ever comes back, as the originals never arrived. Expected: ``loss_retransmit``, with
fast, timeout or loss-probe retransmits on the span's socket (a tail loss repaired by its
TLP costs ~2 RTT + 200 ms, the slowest spikes of a run; the fast ones cost one round trip
and are spikes only just, so on a busy machine a run's spikes may be TLP spikes alone).

Why not the incident's own mechanism (no RPS, the sender migrating between CPUs so its
packets land on two CPUs' backlogs)? It does reorder here: a server whose threads are
moved between CPU 0 and 1 every millisecond, over a bare veth pair without RPS, gets
hundreds of fast retransmits with DSACKs and TcpExtTCPSACKReorder in a second, and none
once RPS is on. But on a bare veth the round trip is tens of microseconds, so the
spurious retransmits cost no latency and diagnose, which starts from latency spikes, has
nothing to explain (tried: no spike carried them); and with a delay line giving the path
a round trip, the sender's transmissions are clocked by ACKs in softirq and the migration
no longer reorders. So the lab reorders in the delay line.

Cross-check: the server namespace's retransmit counters vs the retransmit spans
exported for that namespace. The kernel counts *segments* (``TcpRetransSegs`` and
``TcpExtTCPFastRetrans`` add ``tcp_skb_pcount(skb)``); the tracepoint
``tcp:tcp_retransmit_skb`` fires once per retransmitted *skb*, which may carry several
segments (GSO; on a bare veth, ~40 segments per span were seen). So the spans cannot be
more than the segments: the rule is exported <= kernel, and the test also wants both
above zero (on this path, with single-segment retransmits, they come out equal). The
counter spans of the netns_counters family must add up to the same deltas exactly. Spans whose
``kernelnet.tcp.retransmit.err`` is set (a retransmit the kernel did not send, e.g.
-EBUSY: the original still in the host's queues) are not counted as sent.
"""

from __future__ import annotations

import os
import sys
import time

from .env import Lab, LabError, Netns
from .runner import Check, Context, Scenario, counted

SERVER_IP, CLIENT_IP, PORT = "10.88.4.1", "10.88.4.2", 8080
SIZE = 12_000               # response body bytes: 9 segments, one flight of the initial window
BASELINE, MAIN = 60, 60     # requests (keep-alive) before / with the cause
DELAY_MS = 5.0              # one-way delay of each delay line (round trip 10 ms)
HOLD_EVERY, HOLD_MS = 40, 40.0   # reordering: one full-sized data packet in HOLD_EVERY waits HOLD_MS more
LOSS = 0.05                 # loss: share of the data segments dropped (a tail loss, the costly kind, in most runs
                            # several times: P(none in 60 requests) = 0.95**60 = 5 %)
MAX_S = 60.0                # the delay lines stop on their own after this long

COUNTERS = ["TcpExtListenOverflows", "TcpExtListenDrops", "TcpExtTCPFastRetrans", "TcpExtTCPDSACKRecv",
            "TcpExtTCPDSACKOfoRecv", "TcpExtTCPSACKReorder", "TcpExtTCPTSReorder", "TcpExtTCPTimeouts",
            "TcpExtTCPLossProbes", "TcpExtTCPSynRetrans", "TcpRetransSegs"]
NAMES = ("TcpExtTCPFastRetrans", "TcpRetransSegs", "TcpExtTCPDSACKRecv", "TcpExtTCPSACKReorder",
         "TcpExtTCPTimeouts", "TcpExtTCPLossProbes")


def _delta(before: dict, after: dict, name: str) -> int:
    return after.get(name, 0) - before.get(name, 0)


class _FastRetransmits(Scenario):
    """What reordering and loss share: the path, the workload, the cross-check."""

    case = "#4 (reordering -> fast retransmits)"
    families = ("tcp", "netns_counters")
    config = {"probes": {"netns_counters": {"interval_ms": 250, "rescan_s": 1, "counters": COUNTERS}}}
    counter_rows: tuple[str, ...] = ()

    def path(self) -> str:
        return (f"server {SERVER_IP}:{PORT} ({SIZE // 1000} kB responses) and client {CLIENT_IP} in two "
                f"namespaces, a veth pair with a {DELAY_MS:g} ms delay line each way (tun + forwarder)")

    def namespaces(self, lab: Lab) -> list[Netns]:
        self.srv, self.cli = lab.netns("server"), lab.netns("client")
        dev_s, dev_c = lab.veth(self.srv, SERVER_IP, self.cli, CLIENT_IP)
        self.lines = {}
        for ns, dev, peer_ns, peer_dev, peer_ip, self_ip, role in (
                (self.srv, dev_s, self.cli, dev_c, CLIENT_IP, SERVER_IP, "server"),
                (self.cli, dev_c, self.srv, dev_s, SERVER_IP, CLIENT_IP, "client")):
            mac = peer_ns.run("cat", f"/sys/class/net/{peer_dev}/address").stdout.strip()
            tun = f"kt{lab.tag}{role[0]}"
            line = lab.spawn(f"delay-{role}", [sys.executable, "-m", "otel_kernelnet.lab.reordering",
                                               tun, dev, mac, str(DELAY_MS), str(MAX_S)], netns=ns)
            if not line.json(timeout=15).get("ready"):
                raise LabError(f"the {role}'s delay line did not start: {line.tail()}")
            # packets to the peer go into the tun, the forwarder sends them out of the veth; the
            # peer's packets still come in on the veth, so no reverse-path filter
            ns.sysctl("net.ipv4.conf.all.rp_filter", 0)
            ns.sysctl(f"net.ipv4.conf.{dev}.rp_filter", 0)
            ns.run("ip", "link", "set", tun, "up")
            # quickack: no delayed ACKs (40 ms at least) on this path, so a response is acknowledged
            # one round trip after its last segment and the server's span measures the delivery
            ns.run("ip", "route", "add", f"{peer_ip}/32", "dev", tun, "src", self_ip, "quickack", "1")
            self.lines[role] = line
        return [self.srv, self.cli]

    def inject(self, ctx: Context) -> None:
        raise NotImplementedError

    def uninject(self, ctx: Context) -> None:
        raise NotImplementedError

    def drive(self, ctx: Context) -> None:
        before = self.srv.counters()
        server = ctx.server("server", "lab-server", self.srv, "--addr", SERVER_IP, "--port", str(PORT),
                            "--size", str(SIZE), "--hook", f"{__name__}:wait_delivered", "--hook-arg", "2")
        # keep-alive: a DSACK needs the connection still open when the held original arrives
        common = ("--host", SERVER_IP, "--port", str(PORT), "--keepalive", "--interval-ms", "5")
        ctx.step(f"baseline: {BASELINE} requests of {SIZE // 1000} kB over keep-alive")
        base = ctx.client("client-baseline", "lab-client", self.cli, *common, "--requests", str(BASELINE))
        mid = self.srv.counters()
        ctx.step(f"  {base['ok']} ok, median {base['p50_ms']} ms, slowest {base['max_ms']} ms; "
                 f"retransmitted segments {_delta(before, mid, 'TcpRetransSegs')}")
        self.inject(ctx)
        try:
            ctx.step(f"{MAIN} more requests with the cause on")
            main = ctx.client("client-main", "lab-client", self.cli, *common, "--requests", str(MAIN))
        finally:
            self.uninject(ctx)
        ctx.step(f"  {main['ok']} ok, median {main['p50_ms']} ms, slowest {main['max_ms']} ms, "
                 f"errors {main['errors'] or 'none'}")
        time.sleep(0.3)  # the last ACKs land
        after = self.srv.counters()
        d = ctx.facts
        d.update({n: _delta(before, after, n) for n in NAMES})
        d["main"] = {n: _delta(mid, after, n) for n in NAMES}
        d["srv_inode"] = self.srv.inode
        ctx.step("  server namespace during the cause: " +
                 ", ".join(f"{n.replace('TcpExt', '')} {v}" for n, v in d["main"].items()))
        time.sleep(0.6)  # two more rounds of the counters family (every 250 ms) see the final values
        server.stop()

    def checks(self, ctx: Context, spans: list[dict]) -> list[Check]:
        d = ctx.facts
        rtx = [s["attributes"] for s in spans if s["attributes"].get("kernelnet.kind") == "tcp.retransmit"
               and s["attributes"].get("kernelnet.netns") == d["srv_inode"]]
        sent = [a for a in rtx if not a.get("kernelnet.tcp.retransmit.err")]
        fast = sum(1 for a in sent if a.get("kernelnet.tcp.retransmit.type") == "fast")
        failed = len(rtx) - len(sent)
        seg = "segments vs skbs: an skb may carry several segments"
        rows = [Check("server netns TcpExtTCPFastRetrans vs fast retransmit spans", d["TcpExtTCPFastRetrans"],
                      fast, "exported<=kernel", seg),
                Check("server netns TcpRetransSegs vs retransmit spans (any type)", d["TcpRetransSegs"],
                      len(sent), "exported<=kernel",
                      seg + (f"; {failed} not sent (err set) left out" if failed else ""))]
        exported = {n: counted(spans, n, d["srv_inode"]) for n in self.counter_rows}
        rows += [Check(f"server netns {n} delta vs counter spans", d[n], exported[n]) for n in self.counter_rows]
        return rows


class Reordering(_FastRetransmits):
    name = "reordering"
    title = "spurious fast retransmits: packets reordered on the path, DSACKs show the originals arrived"
    expect = "reordering_retransmit"
    counter_rows = ("TcpExtTCPFastRetrans", "TcpExtTCPDSACKRecv")

    def describe(self) -> list[str]:
        return [self.path() + ";",
                f"{BASELINE} keep-alive requests, then {MAIN} more while the server->client delay line holds one "
                f"packet in {HOLD_EVERY} for {HOLD_MS:g} ms more: the packets behind it overtake it"]

    def inject(self, ctx: Context) -> None:
        ctx.step(f"cause: the data direction's delay line holds one packet in {HOLD_EVERY} for "
                 f"{HOLD_MS:g} ms more (reordering)")
        self._hold(HOLD_EVERY, HOLD_MS)

    def uninject(self, ctx: Context) -> None:
        try:
            self._hold(0, 0)
        except (LabError, OSError) as e:  # best effort: the delay line goes with the topology anyway
            ctx.step(f"  could not stop the reordering: {e}")

    def _hold(self, every: int, ms: float) -> None:
        line = self.lines["server"]
        line.popen.stdin.write(f"hold {every} {ms}\n".encode())
        line.popen.stdin.flush()
        ack = line.json(timeout=5)
        if ack.get("hold") != every:
            raise LabError(f"the delay line did not take the hold command: {ack}")

    def evidence_ok(self, cause: dict) -> list[str]:
        ev = cause.get("evidence", {})
        out = []
        if not ev.get("fast"):
            out.append("evidence has no fast retransmit on the span's socket")
        if not (ev.get("dsack_recv") or ev.get("sack_reorder")):
            out.append("evidence has no DSACK/reorder counter in the window")
        return out


class Loss(_FastRetransmits):
    name = "loss"
    title = "the control for reordering: retransmits caused by real packet loss"
    expect = "loss_retransmit"
    counter_rows = ("TcpExtTCPFastRetrans", "TcpExtTCPTimeouts")

    def describe(self) -> list[str]:
        return [self.path() + ";",
                f"{BASELINE} keep-alive requests, then {MAIN} more while the client's namespace drops "
                f"{LOSS:.1%} of the data packets at random (iptables -m statistic): fast and timeout "
                "retransmits, no DSACK"]

    def _rule(self, op: str) -> list[str]:
        # data segments only (not the handshake: a lost SYN-ACK is a 1 s connect, another story)
        return ["iptables", op, "INPUT", "-p", "tcp", "-s", SERVER_IP, "--sport", str(PORT),
                "--tcp-flags", "SYN", "NONE", "-m", "length", "--length", "100:65535",
                "-m", "statistic", "--mode", "random", "--probability", f"{LOSS}", "-j", "DROP"]

    def inject(self, ctx: Context) -> None:
        ctx.step(f"cause: dropping {LOSS:.1%} of the data packets in the client's namespace")
        self.cli.run(*self._rule("-A"))
        self.rule_on = True
        ctx.lab.defer("iptables loss rule", lambda: self.uninject(None))

    def uninject(self, ctx: Context | None) -> None:
        if getattr(self, "rule_on", False):
            self.rule_on = False
            self.cli.run(*self._rule("-D"), check=False)

    def evidence_ok(self, cause: dict) -> list[str]:
        ev = cause.get("evidence", {})
        out = []
        # a tail loss costs a loss probe (TLP: the last segment again, ~2 RTT + 200 ms later with one
        # segment out) or an RTO; the TLP repairs it in most cases, so the slowest spikes of a run
        # may carry nothing but TLPs: those count as retransmits on the span's socket too
        if not (ev.get("timeout") or ev.get("fast") or ev.get("loss_probe")):
            out.append("evidence has no retransmit on the span's socket")
        if (ev.get("reorder_ratio") or 0) > 0.5:
            out.append(f"reorder_ratio {ev.get('reorder_ratio')} is high for real loss")
        return out


def wait_delivered(handler, arg: str) -> None:
    """Server hook (runs in every request, before the response): the response's write returns
    only once the client has acknowledged all of it (the socket's SIOCOUTQ is 0; at most ``arg``
    seconds), so the server span measures the delivery, as a bulk sender's clock would: the
    lab app's client span ends with the headers, before the body arrives."""
    import fcntl
    import struct
    import socket
    sock, w = handler.connection, handler.wfile
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no Nagle wait for the body's tail
    limit = float(arg)
    orig = w.write

    def write(data):
        n = orig(data)
        if len(data) < 1000:  # the headers: the body follows at once
            return n
        end = time.monotonic() + limit
        while time.monotonic() < end:
            if struct.unpack("i", fcntl.ioctl(sock.fileno(), 0x5411, b"\0\0\0\0"))[0] == 0:  # SIOCOUTQ
                break
            time.sleep(0.0002)
        return n
    w.write = write


# --- the delay line: a path with a round-trip time, optionally reordering -----------------------

TUNSETIFF, IFF_TUN, IFF_NO_PI = 0x400454CA, 0x0001, 0x1000


def delay_line(tun_name: str, out_dev: str, dst_mac: str, delay_ms: float, max_s: float) -> int:
    """Forward every IP packet routed into tun ``tun_name`` out of ``out_dev`` to ``dst_mac``,
    ``delay_ms`` later (a fixed one-way delay: netem is not compiled in).

    Runs in the namespace it is started in, until its stdin closes or ``max_s`` pass. A line
    ``hold EVERY EXTRA_MS`` on stdin makes every EVERY-th packet wait EXTRA_MS longer, so the
    packets behind it overtake it (reordering); ``hold 0 0`` stops that. Prints JSON lines:
    ready, then the totals at the end."""
    import fcntl
    import heapq
    import json
    import select
    import socket
    import struct

    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is the lab's to handle: it closes our stdin
    tun = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(tun, TUNSETIFF, struct.pack("16sH", tun_name.encode(), IFF_TUN | IFF_NO_PI))
    out = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, 0)
    addr = (out_dev, 0x0800, 0, 0, bytes.fromhex(dst_mac.replace(":", "")))
    print(json.dumps({"ready": True, "pid": os.getpid(), "tun": tun_name}), flush=True)
    heap: list = []
    delay, deadline = delay_ms / 1000.0, time.monotonic() + max_s
    every, extra = 0, 0.0
    seen = full = held = sent = lost = 0
    cmd = b""
    while time.monotonic() < deadline:
        wait = min(0.5, max(0.0, heap[0][0] - time.monotonic())) if heap else 0.5
        r, _, _ = select.select([tun, 0], [], [], wait)
        if 0 in r:
            data = os.read(0, 4096)
            if not data:
                break
            cmd += data
            while b"\n" in cmd:
                line, cmd = cmd.split(b"\n", 1)
                parts = line.split()
                if len(parts) == 3 and parts[0] == b"hold":
                    every, extra = int(parts[1]), float(parts[2]) / 1000.0
                    print(json.dumps({"hold": every, "extra_ms": extra * 1000}), flush=True)
        if tun in r:
            now = time.monotonic()
            for _ in range(256):
                try:
                    pkt = os.read(tun, 65536)
                except BlockingIOError:
                    break
                seen += 1
                due = now + delay
                full += len(pkt) >= 1000  # full-sized data segments only: never a lone ACK or a tail
                if every and len(pkt) >= 1000 and full % every == 0:
                    due += extra
                    held += 1
                heapq.heappush(heap, (due, seen, pkt))
        now = time.monotonic()
        while heap and heap[0][0] <= now:
            try:
                out.sendto(heapq.heappop(heap)[2], addr)
                sent += 1
            except OSError:  # a full device queue: the packet is lost, as on a real link
                lost += 1
    print(json.dumps({"seen": seen, "held": held, "sent": sent, "lost": lost}), flush=True)
    return 0


if __name__ == "__main__":
    a = sys.argv[1:]
    sys.exit(delay_line(a[0], a[1], a[2], float(a[3]), float(a[4])))
