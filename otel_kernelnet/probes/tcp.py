"""TCP events family: retransmits, resets, congestion states, connect latency.

Tracepoints (each optional; the family runs with whichever this kernel has and says
what is lost): ``tcp:tcp_retransmit_skb``, ``tcp:tcp_send_reset``,
``tcp:tcp_receive_reset``, ``tcp:tcp_cong_state_set``, ``sock:inet_sock_set_state``
(TCP only: SYN_SENT -> ESTABLISHED gives a connect span from the SYN_SENT time to the
ESTABLISHED time; SYN_SENT -> CLOSE a failed connect; any -> CLOSE a close event when
``probes.tcp.close_events`` is on), ``sock:sock_rcvqueue_full`` and
``sock:sock_exceed_buf_limit``. Every record becomes one span named ``kernel.tcp``.

How it reads the kernel (STYLE habits 2-5):
- field offsets and sizes from each tracepoint's format file (-D ``KN_TP_<TP>_<FIELD>``);
  a field of an unexpected size counts as missing;
- TCP state numbers, IPPROTO_TCP, RST reasons and the buffer-limit kind from the
  format files' ``__print_symbolic`` tables (``tcp_retransmit_skb`` prints its states
  with unresolved names, so the numeric table of ``inet_sock_set_state`` names them);
- the socket cookie, where a tracepoint only has ``skaddr``, from
  ``sock.__sk_common.skc_cookie`` at its BTF offset (0: not assigned yet -> omitted);
  the netns from ``skc_net`` -> ``net.ns.inum``; the congestion state at a retransmit
  from the bitfield ``inet_connection_sock.icsk_ca_state`` located through BTF, named
  by the BTF enum ``tcp_ca_state``.

Retransmit type: ``syn`` in SYN_SENT/SYN_RECV; else from the congestion state the
socket is in when the segment goes out: Loss -> ``timeout`` (tcp_enter_loss runs
before an RTO retransmit), Recovery/Disorder -> ``fast``; anything else (Open: a tail
loss probe or RACK timer; CWR) or an unreadable state -> ``unknown``. Never guessed.
"""

from __future__ import annotations

import ctypes
import socket
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from .. import records
from .. import semconv as sc
from ..kernel.tracefs import TracepointFormat
from ..spans import STATUS_ERROR, STATUS_UNSET, IdSource, KernelSpan, ip_text
from .base import Emit, KernelContext, OnError, ProbeFamily, ProbeUnavailable, RingBufferProbe, read_optional_formats

RECORD = records.record_type("tcp", "kn_tcp_event")
DEFS = records.defines("tcp")
STATS = ("emitted", "rate_capped", "ringbuf_full", "seen", "connect_unmatched")
assert len(STATS) == DEFS["KN_TCP_STAT_MAX"]

# the common 4-tuple field set of tcp_* / inet_sock_set_state: field -> size
TUPLE = {"sport": 2, "dport": 2, "family": 2, "saddr": 4, "daddr": 4, "saddr_v6": 16, "daddr_v6": 16}


@dataclass(frozen=True)
class Tracepoint:
    key: str  # macro infix (KN_HAVE_<key>, KN_TP_<key>_<FIELD>)
    category: str
    name: str
    fn: str  # program in tcp.bpf.c
    required: Mapping[str, int]  # field -> size it must have (0: at least 16 bytes)
    optional: Mapping[str, tuple[int, str]] = field(default_factory=dict)  # field -> (size, what is lost)
    tuple: bool = False  # carries TUPLE
    what: str = ""  # what is lost without the tracepoint

    @property
    def full_name(self) -> str:
        return f"{self.category}:{self.name}"


TRACEPOINTS = (
    Tracepoint("RTX", "tcp", "tcp_retransmit_skb", "kn_tcp_on_retransmit", {"skaddr": 8, "state": 4},
               {"err": (4, "retransmits carry no error code (older kernel)")}, True, "no retransmit spans"),
    Tracepoint("SRST", "tcp", "tcp_send_reset", "kn_tcp_on_send_reset", {"skbaddr": 8, "skaddr": 8, "state": 4},
               {"reason": (4, "resets sent carry no RST reason (older kernel)"),
                "saddr": (28, "resets sent carry no addresses (old tcp_send_reset layout)"),
                "daddr": (28, "resets sent carry no addresses (old tcp_send_reset layout)")},
               False, "no reset-sent spans"),
    Tracepoint("RRST", "tcp", "tcp_receive_reset", "kn_tcp_on_receive_reset", {"skaddr": 8},
               {"sock_cookie": (8, "tcp_receive_reset has no sock_cookie: the cookie is read from the socket (BTF)")},
               True, "no reset-received spans"),
    Tracepoint("CONG", "tcp", "tcp_cong_state_set", "kn_tcp_on_cong_state", {"skaddr": 8, "cong_state": 1},
               {}, True, "no congestion-state spans"),
    Tracepoint("STATE", "sock", "inet_sock_set_state", "kn_tcp_on_set_state",
               {"skaddr": 8, "oldstate": 4, "newstate": 4, "protocol": 2}, {}, True,
               "no connect-latency or close spans"),
    Tracepoint("SYNACK", "tcp", "tcp_retransmit_synack", "kn_tcp_on_retransmit_synack", {"skaddr": 8, "req": 8},
               {}, True, "no SYN-ACK retransmit spans"),
    Tracepoint("RQF", "sock", "sock_rcvqueue_full", "kn_tcp_on_rcvqueue_full",
               {"rmem_alloc": 4, "truesize": 4, "sk_rcvbuf": 4}, {}, False, "no receive-queue-full events"),
    Tracepoint("EXB", "sock", "sock_exceed_buf_limit", "kn_tcp_on_exceed_buf",
               {"name": 0, "sysctl_mem": 24, "allocated": 8, "sysctl_rmem": 4, "rmem_alloc": 4,
                "sysctl_wmem": 4, "wmem_alloc": 4, "wmem_queued": 4, "kind": 4}, {}, False,
               "no socket-memory-limit events"),
)
BY_KEY = {tp.key: tp for tp in TRACEPOINTS}

BTF_MEMBERS = (
    ("KN_OFF_SK_COOKIE", "sock", "__sk_common.skc_cookie", "socket cookies of events that only carry skaddr"),
    ("KN_OFF_SK_NET", "sock", "__sk_common.skc_net", "network namespace of events"),
    ("KN_OFF_NET_NS_INUM", "net", "ns.inum", "network namespace of events"),
    ("KN_OFF_SKB_DEV", "sk_buff", "dev", "network namespace of resets sent for no socket"),
    ("KN_OFF_DEV_ND_NET", "net_device", "nd_net", "network namespace of resets sent for no socket"),
)

# kernel TCP state names -> OpenTelemetry network.connection.state spelling
SEMCONV_STATE = {
    "TCP_ESTABLISHED": "established", "TCP_SYN_SENT": "syn_sent", "TCP_SYN_RECV": "syn_received",
    "TCP_NEW_SYN_RECV": "syn_received",  # the request-socket form of SYN_RECV
    "TCP_FIN_WAIT1": "fin_wait_1", "TCP_FIN_WAIT2": "fin_wait_2", "TCP_TIME_WAIT": "time_wait",
    "TCP_CLOSE": "closed", "TCP_CLOSE_WAIT": "close_wait", "TCP_LAST_ACK": "last_ack",
    "TCP_LISTEN": "listen", "TCP_CLOSING": "closing",
}

KINDS = {
    DEFS["KN_TCP_EV_RETRANSMIT"]: sc.KIND_TCP_RETRANSMIT,
    DEFS["KN_TCP_EV_RESET_SENT"]: sc.KIND_TCP_RESET_SENT,
    DEFS["KN_TCP_EV_RESET_RECEIVED"]: sc.KIND_TCP_RESET_RECEIVED,
    DEFS["KN_TCP_EV_CONG_STATE"]: sc.KIND_TCP_CONG_STATE,
    DEFS["KN_TCP_EV_CONNECT"]: sc.KIND_TCP_CONNECT,
    DEFS["KN_TCP_EV_CLOSE"]: sc.KIND_TCP_CLOSE,
    DEFS["KN_TCP_EV_RCVQUEUE_FULL"]: sc.KIND_SOCK_RCVQUEUE_FULL,
    DEFS["KN_TCP_EV_EXCEED_BUF"]: sc.KIND_SOCK_EXCEED_BUF_LIMIT,
    DEFS["KN_TCP_EV_SYNACK_RETRANSMIT"]: sc.KIND_TCP_RETRANSMIT,
}
_TCP_KINDS = {sc.KIND_TCP_RETRANSMIT, sc.KIND_TCP_RESET_SENT, sc.KIND_TCP_RESET_RECEIVED,
              sc.KIND_TCP_CONG_STATE, sc.KIND_TCP_CONNECT, sc.KIND_TCP_CLOSE}


# --- names from the running kernel ------------------------------------------------
def _lookup(table: Mapping[int, str], code: int) -> str:
    name = table.get(code)
    return name if name is not None else f"unknown:{code}"


@dataclass(frozen=True)
class Names:
    """The running kernel's names for the numbers in a record (tables, not code)."""
    states: Mapping[int, str] = field(default_factory=dict)  # 1 -> TCP_ESTABLISHED
    rst_reasons: Mapping[int, str] = field(default_factory=dict)  # 1 -> NO_SOCKET
    ca_states: Mapping[int, str] = field(default_factory=dict)  # 4 -> Loss
    mem_kinds: Mapping[int, str] = field(default_factory=dict)  # 1 -> SK_MEM_RECV

    def state(self, code: int) -> str:
        """Semconv spelling of a kernel TCP state (``unknown:<n>`` when unnamed)."""
        name = self.states.get(code)
        if name is None:
            return f"unknown:{code}"
        return SEMCONV_STATE.get(name, name.removeprefix("TCP_").lower())

    def state_kernel_name(self, code: int) -> str:
        return _lookup(self.states, code)

    def rst_reason(self, code: int) -> str:
        return _lookup(self.rst_reasons, code)

    def ca_state(self, code: int) -> str:
        return _lookup(self.ca_states, code)

    def mem_kind(self, code: int) -> str:
        return _lookup(self.mem_kinds, code)


def retransmit_type(state_kernel_name: str, ca_state: str | None) -> str:
    """syn | timeout | fast | unknown (see the module doc: never guessed)."""
    if state_kernel_name in ("TCP_SYN_SENT", "TCP_SYN_RECV"):
        return "syn"
    if ca_state == "Loss":
        return "timeout"
    if ca_state in ("Recovery", "Disorder"):
        return "fast"
    return "unknown"


# --- plan --------------------------------------------------------------------------
@dataclass
class Plan:
    formats: dict[str, TracepointFormat]  # key -> format, only the tracepoints attached
    names: Names
    defines: dict[str, int] = field(default_factory=dict)
    degraded: list[str] = field(default_factory=list)

    @property
    def attach(self) -> list[Tracepoint]:
        return [BY_KEY[k] for k in self.formats]

    def describe(self) -> str:
        return (f"{len(self.formats)} tracepoints ({', '.join(tp.name for tp in self.attach)}); "
                f"{len(self.names.states)} TCP states, {len(self.names.rst_reasons)} RST reasons, "
                f"{len(self.names.ca_states)} congestion states from the kernel")


def read_formats(tracefs_root: str | None = None) -> dict[str, TracepointFormat | None]:
    """Format of every tracepoint the family can use (None where this kernel lacks it)."""
    return read_optional_formats(TRACEPOINTS, tracefs_root)


def _field_ok(fmt: TracepointFormat, name: str, size: int) -> bool:
    f = fmt.fields.get(name)
    if f is None:
        return False
    return f.size >= 16 if size == 0 else f.size == size


def bitfield(btf: Any, struct: str, path: str) -> tuple[int, int, int]:
    """(byte offset, shift, mask) of a member that may be a bitfield, from BTF.

    ``BTF.offsetof`` refuses bitfields (on purpose: a byte offset alone is wrong for
    them), so this asks ``BTF.bitfield``; the bitfield must sit inside one byte.
    """
    try:
        off = btf.offsetof(struct, path)
        size = btf.member_size(struct, path)
        if size != 1:
            raise ValueError(f"{struct}.{path} is {size} bytes, expected one")
        return off, 0, 0xFF
    except ValueError:
        raise
    except Exception:
        pass
    try:
        bit, nbits = btf.bitfield(struct, path)
    except Exception as e:
        raise ValueError(str(e)) from None
    if bit % 8 + nbits > 8:
        raise ValueError(f"{struct}.{path}: bitfield spans two bytes")
    return bit // 8, bit % 8, (1 << nbits) - 1


def btf_offsets(btf: Any | None) -> tuple[dict[str, int], dict[int, str], list[str]]:
    """-D offsets from BTF, the congestion-state names, and what is lost without them."""
    offs = {macro: -1 for macro, *_ in BTF_MEMBERS}
    offs.update(KN_OFF_CA_STATE=-1, KN_CA_STATE_SHIFT=0, KN_CA_STATE_MASK=0)
    if btf is None:
        return offs, {}, ["no kernel BTF: no cookies on retransmits/resets sent/state changes, "
                          "no netns, no congestion state (retransmit type syn or unknown)"]
    lost: list[str] = []
    for macro, struct, path, what in BTF_MEMBERS:
        try:
            offs[macro] = btf.offsetof(struct, path)
        except Exception:
            lost.append(f"BTF lacks {struct}.{path}: no {what}")
    if offs["KN_OFF_SK_NET"] < 0 or offs["KN_OFF_NET_NS_INUM"] < 0:
        offs["KN_OFF_SK_NET"] = offs["KN_OFF_NET_NS_INUM"] = -1
    if offs["KN_OFF_SKB_DEV"] < 0 or offs["KN_OFF_DEV_ND_NET"] < 0:
        offs["KN_OFF_SKB_DEV"] = offs["KN_OFF_DEV_ND_NET"] = -1
    ca_names: dict[int, str] = {}
    try:
        ca_names = {v: n.removeprefix("TCP_CA_") for v, n in btf.enum("tcp_ca_state").items()}
    except Exception:
        lost.append("BTF lacks enum tcp_ca_state: congestion states are reported as unknown:<n>")
    try:
        # a struct sock * is the inet_connection_sock it is embedded in (offset 0)
        if btf.offsetof("inet_connection_sock", "icsk_inet.sk") != 0:
            raise ValueError("struct sock is not at offset 0 of inet_connection_sock")
        byte, shift, mask = bitfield(btf, "inet_connection_sock", "icsk_ca_state")
        offs.update(KN_OFF_CA_STATE=byte, KN_CA_STATE_SHIFT=shift, KN_CA_STATE_MASK=mask)
    except Exception as e:
        lost.append(f"cannot locate icsk_ca_state in BTF ({e}): retransmit type is syn or unknown")
    return offs, ca_names, lost


def plan(formats: Mapping[str, TracepointFormat | None] | None = None, btf: Any | None = None, *,
         rate_limit: int = 10000, ringbuf_pages: int = 64, close_events: bool = False,
         connect_pending: int = 16384, rate_limit_node: int = 10000) -> Plan:
    """Decide how the family runs on this kernel (pure: give it formats and btf to test).

    ``formats`` maps a tracepoint key (RTX, SRST, ...) to its format, None or absent
    where the kernel lacks the tracepoint.
    """
    if formats is None:
        formats = read_formats()
    d: dict[str, int] = {}
    degraded: list[str] = []
    usable: dict[str, TracepointFormat] = {}
    for tp in TRACEPOINTS:
        fmt = formats.get(tp.key)
        d[f"KN_HAVE_{tp.key}"] = 0
        if fmt is None:
            degraded.append(f"{tp.full_name} does not exist on this kernel: {tp.what}")
            continue
        bad = [f for f, size in tp.required.items() if not _field_ok(fmt, f, size)]
        if bad:
            degraded.append(f"{tp.full_name} lacks field(s) {', '.join(bad)} (or their size differs): {tp.what}")
            continue
        for f in tp.required:
            d[f"KN_TP_{tp.key}_{f.upper()}"] = fmt.fields[f].offset
        for f, (size, loss) in tp.optional.items():
            ok = _field_ok(fmt, f, size)
            d[f"KN_TP_{tp.key}_{f.upper()}"] = fmt.fields[f].offset if ok else -1
            if not ok and loss not in degraded:
                degraded.append(loss)
        if tp.key == "SRST" and min(d["KN_TP_SRST_SADDR"], d["KN_TP_SRST_DADDR"]) < 0:
            d["KN_TP_SRST_SADDR"] = d["KN_TP_SRST_DADDR"] = -1
        if tp.tuple:
            ok = all(_field_ok(fmt, f, size) for f, size in TUPLE.items())
            for f in TUPLE:
                d[f"KN_TP_{tp.key}_{f.upper()}"] = fmt.fields[f].offset if ok else -1
            if not ok:
                degraded.append(f"{tp.full_name} has no usable address/port fields: its spans carry no 4-tuple")
        d[f"KN_HAVE_{tp.key}"] = 1
        usable[tp.key] = fmt

    # TCP state names: the first numeric table (tcp_retransmit_skb prints unresolved names)
    states: dict[int, str] = {}
    for key, fld in (("STATE", "newstate"), ("STATE", "oldstate"), ("RTX", "state"), ("SRST", "state")):
        fmt = formats.get(key)
        if fmt is not None and fmt.symbols.get(fld):
            states = dict(fmt.symbols[fld])
            break
    if not states:
        degraded.append("no tracepoint format names the TCP states: states are unknown:<n>, "
                        "retransmit type syn cannot be told")
    if "STATE" in usable:
        by_name = {v: k for k, v in states.items()}
        protos = {v: k for k, v in usable["STATE"].symbols.get("protocol", {}).items()}
        needed = ("TCP_SYN_SENT", "TCP_ESTABLISHED", "TCP_CLOSE")
        if all(n in by_name for n in needed):
            for n in needed:
                d[f"KN_TCP_STATE_{n.removeprefix('TCP_')}"] = by_name[n]
            # the format names IPPROTO_TCP; the UAPI constant is the fallback
            d["KN_PROTO_TCP"] = protos.get("IPPROTO_TCP", socket.IPPROTO_TCP)
        else:
            degraded.append("sock:inet_sock_set_state names no TCP states: no connect-latency or close spans")
            d["KN_HAVE_STATE"] = 0
            del usable["STATE"]
    if not usable:
        raise ProbeUnavailable("none of the TCP tracepoints (" + ", ".join(tp.full_name for tp in TRACEPOINTS)
                               + ") is usable on this kernel")

    offs, ca_names, lost = btf_offsets(btf)
    d.update(offs)
    degraded.extend(lost)
    srst = usable.get("SRST")
    if srst is not None and d["KN_TP_SRST_REASON"] >= 0 and not srst.symbols.get("reason"):
        degraded.append("the kernel publishes no RST reason names: reasons are reported as unknown:<n>")
    exb = usable.get("EXB")
    names = Names(states=states,
                  rst_reasons=dict(srst.symbols.get("reason", {})) if srst else {},
                  ca_states=ca_names,
                  mem_kinds=dict(exb.symbols.get("kind", {})) if exb else {})
    d["KN_RATE_LIMIT"] = int(rate_limit)
    d["KN_RATE_LIMIT_NODE"] = int(rate_limit_node)
    d["KN_RINGBUF_PAGES"] = int(ringbuf_pages)
    d["KN_CLOSE_EVENTS"] = 1 if close_events else 0
    d["KN_CONNECT_PENDING"] = int(connect_pending)
    return Plan(usable, names, d, degraded)


# --- decode ------------------------------------------------------------------------
@dataclass(slots=True)
class TcpEvent:
    """A decoded ``struct kn_tcp_event`` (see bpf/tcp.h for each field's meaning)."""
    type: int
    ts_ns: int
    start_ns: int
    skaddr: int
    sk_cookie: int
    netns: int
    pid: int
    tid: int
    cpu: int
    state: int
    oldstate: int
    reason: int
    err: int
    ca_state: int
    family: int
    sport: int
    dport: int
    has_addr: bool
    ipv6: bool
    has_ca_state: bool
    has_reason: bool
    has_err: bool
    saddr: bytes
    daddr: bytes
    comm: str
    rmem_alloc: int = 0
    truesize: int = 0
    rcvbuf: int = 0
    sysctl_wmem: int = 0
    wmem_alloc: int = 0
    wmem_queued: int = 0
    mem_kind: int = 0
    mem_allocated: int = 0
    sysctl_mem: tuple[int, int, int] = (0, 0, 0)
    proto: str = ""


# the TcpEvent fields the record holds under the same name, plus flags: one
# struct.unpack_from at the header's offsets (records.py); the booleans come from flags
_TCP_LAYOUT = records.layout("tcp", "kn_tcp_event")
_TCP_NAMES = (*(f for f in TcpEvent.__dataclass_fields__ if f in _TCP_LAYOUT.fields), "flags")
_TCP_READ = _TCP_LAYOUT.reader(*_TCP_NAMES)
_TCP_FLAGS = (("has_addr", "KN_TCP_F_ADDR"), ("ipv6", "KN_TCP_F_IPV6"), ("has_ca_state", "KN_TCP_F_CA_STATE"),
              ("has_reason", "KN_TCP_F_REASON"), ("has_err", "KN_TCP_F_ERR"))


def decode(buf: bytes | bytearray | memoryview) -> TcpEvent:
    """Decode one ``struct kn_tcp_event`` (exactly as tcp.h lays it out)."""
    n = ctypes.sizeof(RECORD)
    if len(buf) < n:
        raise ValueError(f"tcp record too short: {len(buf)} < {n} bytes")
    kw = dict(zip(_TCP_NAMES, _TCP_READ(buf)))
    if kw["type"] not in KINDS:
        raise ValueError(f"tcp record of unknown type {kw['type']}")
    f = kw.pop("flags")
    for name, bit in _TCP_FLAGS:
        kw[name] = bool(f & DEFS[bit])
    kw["comm"], kw["proto"] = records.cstr(kw["comm"]), records.cstr(kw["proto"])
    return TcpEvent(**kw)


# --- mapping -----------------------------------------------------------------------
def tcp_span(ev: TcpEvent, *, to_epoch_ns: Callable[[int], int], ids: IdSource, names: Names) -> KernelSpan:
    """One TCP event -> one span named ``kernel.tcp`` (zero-length except connects,
    which run from SYN_SENT to ESTABLISHED/CLOSE). Pure: names come from ``names``."""
    kind = KINDS[ev.type]
    attrs: dict[str, Any] = {sc.KIND: kind}
    if ev.netns:
        attrs["kernelnet.netns"] = ev.netns
    if ev.sk_cookie:
        attrs[sc.COOKIE] = ev.sk_cookie
    if kind in _TCP_KINDS:
        attrs["network.transport"] = "tcp"
    if ev.has_addr:
        attrs["network.type"] = "ipv6" if ev.ipv6 else "ipv4"
        attrs["network.local.address"] = ip_text(ev.saddr, ev.ipv6)
        attrs["network.local.port"] = ev.sport
        attrs["network.peer.address"] = ip_text(ev.daddr, ev.ipv6)
        attrs["network.peer.port"] = ev.dport
    status, message = STATUS_UNSET, ""
    ca = names.ca_state(ev.ca_state) if ev.has_ca_state else None
    if ev.type == DEFS["KN_TCP_EV_SYNACK_RETRANSMIT"]:
        # the server side of a handshake whose ACK has not come (the cookie is the listener's)
        attrs["network.connection.state"] = "syn_received"
        attrs["kernelnet.tcp.retransmit.type"] = "synack"
    elif kind == sc.KIND_TCP_RETRANSMIT:
        attrs["network.connection.state"] = names.state(ev.state)
        attrs["kernelnet.tcp.retransmit.type"] = retransmit_type(names.state_kernel_name(ev.state), ca)
        if ca is not None:
            attrs["kernelnet.tcp.cong_state"] = ca
        if ev.has_err:
            attrs["kernelnet.tcp.retransmit.err"] = ev.err
    elif kind == sc.KIND_TCP_RESET_SENT:
        if ev.state:  # 0: no socket, the kernel's "unknown state"
            attrs["network.connection.state"] = names.state(ev.state)
        if ev.has_reason:
            attrs["kernelnet.tcp.reset.reason"] = names.rst_reason(ev.reason)
            attrs["kernelnet.tcp.reset.reason_code"] = ev.reason
    elif kind == sc.KIND_TCP_CONG_STATE:
        attrs["kernelnet.tcp.cong_state"] = ca if ca is not None else f"unknown:{ev.ca_state}"
    elif kind in (sc.KIND_TCP_CONNECT, sc.KIND_TCP_CLOSE):
        attrs["network.connection.state"] = names.state(ev.state)
        attrs["kernelnet.tcp.state.previous"] = names.state(ev.oldstate)
        if kind == sc.KIND_TCP_CONNECT and names.state_kernel_name(ev.state) != "TCP_ESTABLISHED":
            status, message = STATUS_ERROR, f"connect failed: {names.state(ev.oldstate)} -> {names.state(ev.state)}"
    elif kind == sc.KIND_SOCK_RCVQUEUE_FULL:
        attrs["kernelnet.sock.rmem_alloc"] = ev.rmem_alloc
        attrs["kernelnet.sock.truesize"] = ev.truesize
        attrs["kernelnet.sock.rcvbuf"] = ev.rcvbuf
    elif kind == sc.KIND_SOCK_EXCEED_BUF_LIMIT:
        attrs["kernelnet.sock.protocol"] = ev.proto
        attrs["kernelnet.sock.mem.kind"] = names.mem_kind(ev.mem_kind)
        attrs["kernelnet.sock.mem.allocated"] = ev.mem_allocated
        attrs["kernelnet.sock.mem.min"], attrs["kernelnet.sock.mem.pressure"], attrs["kernelnet.sock.mem.max"] = ev.sysctl_mem
        attrs["kernelnet.sock.rmem_alloc"] = ev.rmem_alloc
        attrs["kernelnet.sock.sysctl_rmem"] = ev.rcvbuf
        attrs["kernelnet.sock.wmem_alloc"] = ev.wmem_alloc
        attrs["kernelnet.sock.wmem_queued"] = ev.wmem_queued
        attrs["kernelnet.sock.sysctl_wmem"] = ev.sysctl_wmem
    attrs["kernelnet.cpu"] = ev.cpu
    attrs["process.pid"] = ev.pid
    attrs["thread.id"] = ev.tid
    attrs["process.command"] = ev.comm
    return KernelSpan(
        name=sc.SPAN_TCP_EVENT, trace_id=ids.trace_id(), span_id=ids.span_id(),
        start_ns=to_epoch_ns(ev.start_ns), end_ns=to_epoch_ns(ev.ts_ns), attributes=attrs,
        status_code=status, status_message=message,
    )


# --- family ------------------------------------------------------------------------
class TcpFamily(ProbeFamily):
    name = "tcp"
    summary = "tcp: retransmits, resets, congestion states, connect latency"

    def __init__(self) -> None:
        self.probe: TcpProbe | None = None

    def plan(self, ctx: KernelContext) -> Plan:
        return plan(btf=ctx.btf, rate_limit=ctx.cfg["probes.tcp.rate_limit_per_cpu"],
                    rate_limit_node=ctx.cfg["probes.tcp.rate_limit_per_node"], ringbuf_pages=ctx.cfg["ringbuf.pages"], close_events=ctx.cfg["probes.tcp.close_events"])

    def start(self, loader, plan_: Plan, ctx: KernelContext, emit: Emit, on_error: OnError) -> None:
        def on_event(ev: TcpEvent) -> None:
            emit(tcp_span(ev, to_epoch_ns=ctx.clock.to_epoch_ns, ids=ctx.ids, names=plan_.names))
        self.probe = TcpProbe(loader, plan_, on_event, on_error, ctx.scope_netns)

    def stats(self) -> dict[str, int]:
        return self.probe.stats() if self.probe else {}


class TcpProbe(RingBufferProbe):
    """Compiled and attached TCP family; ``on_event`` receives each TcpEvent."""

    def __init__(self, loader, plan_: Plan, on_event: Callable[[TcpEvent], None], on_error: OnError,
                 scope_netns: frozenset[int] | None = None):
        self.plan = plan_
        super().__init__(loader, "tcp", "tcp.bpf.c", plan_.defines, "kn_tcp_events",
                         [(tp.full_name, tp.fn) for tp in plan_.attach], decode, on_event, on_error, STATS, scope_netns)
