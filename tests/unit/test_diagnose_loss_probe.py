"""A tail loss probe (TLP) on a spike's socket is a retransmit: diagnose must count it.

The flaky `lab loss` run (tests/kernel/test_lab_reordering.py): the only spike led by
loss_retransmit was a 248 ms server span whose socket had one retransmit, a TLP (the tail
segment was dropped; with one segment out the probe fires 2 RTT + 200 ms later). The tcp
family exports it as ``kernelnet.tcp.retransmit.type=unknown`` with
``kernelnet.tcp.cong_state=Open`` (it never guesses a type; only a TLP retransmits in Open or
CWR). diagnose counted fast and timeout retransmits only: the cause came out at 0.55 with
fast=0 timeout=0, and the lab's check said "evidence has no retransmit on the span's socket".
The fast retransmits of that run cost one round trip and stayed below the spike threshold.
These frames reproduce it without a kernel.
"""

from __future__ import annotations

from kernelnet_analysis.diagnose import analyse, to_report
from kernelnet_analysis.otlp import FrameBuilder

from otel_kernelnet.lab.reordering import Loss
from otel_kernelnet.lab.runner import first_kind, lead_cause

MS = 1_000_000
COOKIE = 66143


class Run:
    """A lab-server of keep-alive requests on one socket, and the kernel spans of the tcp and
    netns_counters families, as the collector exports them (retransmits are children of the
    request they happened in)."""

    def __init__(self) -> None:
        self.b = FrameBuilder()
        self.app = self.b.add_resource("lab-server", {"process.pid": 10})
        self.k = self.b.add_resource("otel-kernelnet", {})
        self.n = 0

    def _ids(self) -> tuple[str, str]:
        self.n += 1
        return f"{self.n:032x}", f"{self.n:016x}"

    def request(self, start_ms: float, dur_ms: float) -> tuple[str, str]:
        tid, sid = self._ids()
        self.b.add_span(tid, sid, None, "GET", 2, int(start_ms * MS), int((start_ms + dur_ms) * MS), 0, None,
                        "lab-server", None, self.app, {"kernelnet.socket.cookie": COOKIE})
        return tid, sid

    def kernel(self, at_ms: float, kind: str, parent: tuple[str, str] | None = None, **attrs) -> None:
        tid, sid = self._ids()
        if parent:
            tid = parent[0]
        self.b.add_span(tid, sid, parent[1] if parent else None, "kernel.tcp", 1, int(at_ms * MS),
                        int(at_ms * MS), 0, None, "otel-kernelnet", "otel-kernelnet", self.k,
                        {"kernelnet.kind": kind, **{k.replace("__", "."): v for k, v in attrs.items()}})

    def retransmit(self, req: tuple[str, str], at_ms: float, rtype: str, cong_state: str | None,
                   err: int | None = None) -> None:
        attrs = {"kernelnet.socket.cookie": COOKIE, "kernelnet.tcp.retransmit.type": rtype,
                 "network.connection.state": "established"}
        if err is not None:
            attrs["kernelnet.tcp.retransmit.err"] = err
        if cong_state is not None:
            attrs["kernelnet.tcp.cong_state"] = cong_state
        self.kernel(at_ms, "tcp.retransmit", req, **attrs)

    def counter(self, at_ms: float, name: str, delta: int) -> None:
        self.kernel(at_ms, "counter", kernelnet__counter__name=name, kernelnet__counter__delta=delta)


def _run(tail_state: str | None, dsack: int = 0, rto: bool = False, rto_err: int | None = None) -> dict:
    """120 requests of 14-16 ms; two lose a segment to a SACK hole (fast retransmit, +10 ms:
    below the spike threshold, 2 x the median), one loses its tail (248 ms)."""
    r = Run()
    t = 0.0
    for i in range(120):
        dur = 14 + (i % 3)
        if i in (70, 90):
            req = r.request(t, 25)
            r.retransmit(req, t + 12, "fast", "Recovery")
            r.kernel(t + 12, "tcp.cong_state", req, kernelnet__socket__cookie=COOKIE, kernelnet__tcp__cong_state="Recovery")
        elif i == 100:
            req = r.request(t, 248)
            r.retransmit(req, t + 236, "unknown", tail_state)  # the TLP: the tcp family types it unknown
            if rto:  # the probe was lost too: the RTO (Loss state) sends the tail a third time
                r.retransmit(req, t + 240, "timeout", "Loss", rto_err)
            if tail_state:
                r.kernel(t + 240, "tcp.cong_state", req, kernelnet__socket__cookie=COOKIE, kernelnet__tcp__cong_state="CWR")
            r.counter(t + 240, "TcpExtTCPLossProbes", 1)
            if dsack:
                r.counter(t + 240, "TcpExtTCPDSACKRecv", dsack)
            dur = 248
        else:
            r.request(t, dur)
        t += dur + 5
    spikes, causes = analyse(r.b.finish())
    return to_report(spikes, causes)


def test_tail_loss_probe_is_the_spikes_retransmit():
    rep = _run("Open")
    assert [s["duration_ms"] for s in rep["spikes"]] == [248.0]  # the fast retransmits are no spike
    kind, led, _ = first_kind(rep)
    assert (kind, led) == ("loss_retransmit", 1)
    cause = lead_cause(rep, kind)
    # the lab's verdict on it: the winning cause carries its evidence (failed before: "evidence
    # has no retransmit on the span's socket")
    assert Loss().evidence_ok(cause) == []
    # a tail loss repaired by its probe explains the whole wait, as a timeout would: not the
    # 0.55 of "some retransmit of unknown kind on the socket"
    assert cause["confidence"] >= 0.9
    ev = cause["evidence"]
    assert (ev.get("loss_probe"), ev["fast"], ev["timeout"], ev.get("unknown")) == (1, 0, 0, 0)
    assert ev["reorder_ratio"] == 0 and ev["dsack_recv"] == 0


def test_probe_in_cwr_counts_too_and_an_unreadable_state_does_not():
    ev = _run("CWR")["spikes"][0]["causes"][0]["evidence"]
    assert ev.get("loss_probe") == 1
    # no congestion state (no BTF for icsk_ca_state): the kind of the retransmit cannot be told;
    # it is still evidence of a retransmit on the socket, at the weak 0.55
    cause = _run(None)["spikes"][0]["causes"][0]
    assert cause["kind"] == "loss_retransmit" and cause["confidence"] == 0.55
    assert (cause["evidence"].get("loss_probe"), cause["evidence"].get("unknown")) == (0, 1)


def test_probe_that_dsacks_prove_spurious_is_not_loss():
    # the receiver reported the probe as a duplicate: the tail had arrived, its ACK was late
    c = {x["kind"]: x for x in _run("Open", dsack=1)["spikes"][0]["causes"]}
    assert c["loss_retransmit"]["confidence"] < 0.5
    assert c["loss_retransmit"]["evidence"]["reorder_ratio"] == 1.0


def test_probe_then_timeout_is_all_loss():
    # a tail loss whose probe was lost too (seen in the lab: 1 TLP + 1 RTO on a 464 ms span):
    # every retransmit of the span is loss, as sure as a timeout alone
    cause = _run("Open", rto=True)["spikes"][0]["causes"][0]
    assert cause["kind"] == "loss_retransmit" and cause["confidence"] >= 0.9
    assert (cause["evidence"].get("loss_probe"), cause["evidence"]["timeout"]) == (1, 1)


def test_a_retransmit_the_kernel_did_not_send_is_not_loss():
    # the same RTO, refused by the kernel (-EBUSY, 16: the original still in this host's
    # queues): nothing was lost on the path, so it neither adds to the loss share nor hides
    # the TLP; it is reported as not sent (the lab's cross-check leaves such spans out too)
    sent = _run("Open", dsack=1, rto=True)["spikes"][0]["causes"]
    refused = _run("Open", dsack=1, rto=True, rto_err=-16)["spikes"][0]["causes"]
    loss = {x["kind"]: x for x in sent}["loss_retransmit"]
    loss_refused = {x["kind"]: x for x in refused}["loss_retransmit"]
    assert (loss["evidence"]["timeout"], loss["evidence"]["not_sent"]) == (1, 0)
    assert (loss_refused["evidence"]["timeout"], loss_refused["evidence"]["not_sent"]) == (0, 1)
    # with the DSACK proving the probe spurious, only the timeout made it loss
    assert loss["confidence"] >= 0.6 and loss_refused["confidence"] < 0.5
