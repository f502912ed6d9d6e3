"""``lab accept-overflow``: a listener whose accept queue fills (CASES.md #5).

A server in its own namespace listens with a small backlog and is slow to accept (it
pauses before each ``accept()``, like nginx waiting on NFS). A client first makes
serial requests (the baseline), then a burst of concurrent connections: the queue
fills, the kernel drops the SYNs it cannot queue (ListenOverflows, ListenDrops; the
dropped SYN never reaches kfree_skb), and the clients connect only after their SYN is
retransmitted, 1 s later or more. Expected: ``listen_overflow`` naming the listener,
its queue limit and the namespace's somaxconn.
"""

from __future__ import annotations

import time

from .env import Lab, Netns
from .runner import Check, Context, Scenario, counted

SERVER_IP, CLIENT_IP, PORT = "10.88.0.1", "10.88.0.2", 8080
BACKLOG = 4
ACCEPT_DELAY_MS = 30
BASELINE, BURST = 50, 24


class AcceptOverflow(Scenario):
    name = "accept-overflow"
    title = "SYNs dropped because a slow server's accept queue is full"
    case = "#5 (accept-queue overflow)"
    expect = "listen_overflow"
    families = ("tcp", "netns_counters")
    config = {"probes": {"netns_counters": {"interval_ms": 250, "rescan_s": 1}}}

    def describe(self) -> list[str]:
        return [f"server {SERVER_IP}:{PORT} (backlog {BACKLOG}, {ACCEPT_DELAY_MS} ms before each accept) in one "
                f"namespace, client {CLIENT_IP} in another;",
                f"{BASELINE} serial requests, then {BURST} concurrent new connections: the queue overflows and "
                "the dropped SYNs are retransmitted after 1 s"]

    def namespaces(self, lab: Lab) -> list[Netns]:
        self.srv, self.cli = lab.netns("server"), lab.netns("client")
        lab.veth(self.srv, SERVER_IP, self.cli, CLIENT_IP)
        return [self.srv, self.cli]

    def drive(self, ctx: Context) -> None:
        srv_before, cli_before = self.srv.counters(), self.cli.counters()
        server = ctx.server("server", "lab-server", self.srv, "--addr", SERVER_IP, "--port", str(PORT),
                            "--backlog", str(BACKLOG), "--accept-delay-ms", str(ACCEPT_DELAY_MS))
        ctx.step(f"baseline: {BASELINE} serial requests")
        base = ctx.client("client-baseline", "lab-client", self.cli, "--host", SERVER_IP, "--port", str(PORT),
                          "--requests", str(BASELINE), "--interval-ms", "10")
        ctx.step(f"  {base['ok']} ok, median {base['p50_ms']} ms; now {BURST} concurrent connections")
        burst = ctx.client("client-burst", "lab-client", self.cli, "--host", SERVER_IP, "--port", str(PORT),
                           "--requests", str(BURST), "--concurrency", str(BURST))
        ctx.step(f"  {burst['ok']} ok, slowest {burst['max_ms']} ms, errors {burst['errors'] or 'none'}")
        time.sleep(0.5)  # the last retransmits land
        srv_after, cli_after = self.srv.counters(), self.cli.counters()
        d = ctx.facts
        d["overflows"] = srv_after.get("TcpExtListenOverflows", 0) - srv_before.get("TcpExtListenOverflows", 0)
        d["syn_retrans"] = cli_after.get("TcpExtTCPSynRetrans", 0) - cli_before.get("TcpExtTCPSynRetrans", 0)
        d["srv_inode"], d["cli_inode"] = self.srv.inode, self.cli.inode
        time.sleep(0.6)  # two more rounds of the counters family (every 250 ms) see the final values
        server.stop()

    def checks(self, ctx: Context, spans: list[dict]) -> list[Check]:
        d = ctx.facts
        overflows = counted(spans, "TcpExtListenOverflows", d["srv_inode"])
        syn = sum(1 for s in spans if s["attributes"].get("kernelnet.kind") == "tcp.retransmit"
                  and s["attributes"].get("kernelnet.tcp.retransmit.type") == "syn"
                  and s["attributes"].get("kernelnet.netns") == d["cli_inode"])
        return [Check("server netns TcpExtListenOverflows delta vs counter spans", d["overflows"], overflows),
                Check("client netns TcpExtTCPSynRetrans delta vs SYN retransmit spans", d["syn_retrans"], syn)]

    def evidence_ok(self, cause: dict) -> list[str]:
        ev = cause.get("evidence", {})
        return [f"evidence lacks {k}" for k in ("listen_address", "queue_limit", "netns_somaxconn") if not ev.get(k)]
