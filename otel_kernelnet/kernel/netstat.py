"""Per-network-namespace counters: parsing, deltas and the inet_diag listener query.

Pure functions and plain values only (no file or socket I/O except where a function
says so), so each piece is tested on captured text and hand-built bytes:

- ``parse_pairs``: ``/proc/<pid>/net/netstat`` and ``.../snmp`` (pairs of header and
  value lines) -> ``{"TcpExtListenOverflows": n, "TcpRetransSegs": n, ...}``.
- ``parse_conntrack_stat``: ``.../stat/nf_conntrack`` (one header line, then one line
  of hex columns per CPU) -> ``{"ConntrackInvalid": n, ...}`` summed over CPUs.
- ``CounterDeltas``: jumps between two samples of the same namespace; the first
  sample is the baseline, a counter going down means the namespace was recreated
  (re-baseline, never a negative delta).
- ``diag_request`` / ``parse_diag``: NETLINK_SOCK_DIAG inet_diag request and response
  (uapi ``linux/inet_diag.h`` and ``linux/sock_diag.h``: a stable ABI, so fixed
  struct formats are correct here, unlike internal kernel structs).
- ``pick_listeners``: which listener(s) an accept-queue overflow is blamed on.
"""

from __future__ import annotations

import ipaddress
import re
import struct
from dataclasses import dataclass

# --- /proc/net/{netstat,snmp} ------------------------------------------------------


class ParseError(ValueError):
    pass


def parse_pairs(text: str) -> dict[str, int]:
    """``Prefix: name name ...`` followed by ``Prefix: value value ...`` -> {PrefixName: value}.

    Used for both /proc/net/netstat (TcpExt:, IpExt:, MPTcpExt:) and /proc/net/snmp
    (Ip:, Icmp:, Tcp:, Udp:, ...). Values are signed (snmp's Tcp MaxConn is -1).
    """
    out: dict[str, int] = {}
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) % 2:
        raise ParseError(f"odd number of lines ({len(lines)}): header/value pairs expected")
    for i in range(0, len(lines), 2):
        head, vals = lines[i].split(), lines[i + 1].split()
        if not head or head[0] != vals[0] or not head[0].endswith(":"):
            raise ParseError(f"line {i + 1}: header {head[:1]} and value line {vals[:1]} do not pair")
        if len(head) != len(vals):
            raise ParseError(f"{head[0]} {len(head) - 1} names but {len(vals) - 1} values")
        prefix = head[0][:-1]
        for name, v in zip(head[1:], vals[1:]):
            out[prefix + name] = int(v)
    return out


def _camel(col: str) -> str:
    return "".join(p[:1].upper() + p[1:] for p in col.split("_"))


def parse_conntrack_stat(text: str) -> dict[str, int]:
    """/proc/net/stat/nf_conntrack -> {"Conntrack<Column>": sum over CPUs}.

    One header line of column names, then one line per possible CPU with each column
    in hex. ``entries`` is the global table size repeated on every line (a gauge), so
    it is taken once, not summed; every other column is a per-CPU counter.
    """
    lines = [line.split() for line in text.splitlines() if line.strip()]
    if not lines:
        return {}
    cols = lines[0]
    out = {f"Conntrack{_camel(c)}": 0 for c in cols}
    for n, row in enumerate(lines[1:], 2):
        if len(row) != len(cols):
            raise ParseError(f"nf_conntrack line {n}: {len(row)} columns, header has {len(cols)}")
        for c, v in zip(cols, row):
            if c == "entries":
                out["ConntrackEntries"] = int(v, 16)
            else:
                out[f"Conntrack{_camel(c)}"] += int(v, 16)
    return out


_NS_LINK = re.compile(r"^net:\[(\d+)\]$")


def netns_inode(link: str) -> int | None:
    """The inode in a /proc/<pid>/ns/net link text (``net:[4026531840]``)."""
    m = _NS_LINK.match(link)
    return int(m.group(1)) if m else None


# --- deltas ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Jump:
    """A counter of one namespace rose by ``delta`` between two samples."""
    netns: int
    name: str
    delta: int
    value: int  # the value at this sample
    start_ns: int  # previous sample (epoch ns)
    end_ns: int  # this sample (epoch ns)


class CounterDeltas:
    """Latest sample per namespace; ``update`` returns the jumps since the previous one.

    Only the counters in ``names`` are tracked (a name absent on this kernel is simply
    never reported). The first sample of a namespace sets the baseline; a tracked
    counter going down means the inode now names a different (recreated) namespace:
    the whole namespace is re-baselined and ``resets`` counts it.
    """

    def __init__(self, names: list[str] | tuple[str, ...]):
        self.names = tuple(dict.fromkeys(names))
        self._prev: dict[int, tuple[int, dict[str, int]]] = {}
        self.resets = 0

    def update(self, netns: int, values: dict[str, int], t_ns: int) -> list[Jump]:
        cur = {n: values[n] for n in self.names if n in values}
        prev = self._prev.get(netns)
        self._prev[netns] = (t_ns, cur)
        if prev is None:
            return []
        t0, old = prev
        if any(cur[n] < old[n] for n in cur if n in old):
            self.resets += 1
            return []
        return [Jump(netns, n, cur[n] - old[n], cur[n], t0, t_ns)
                for n in self.names if n in cur and n in old and cur[n] > old[n]]

    def forget(self, netns: int) -> None:
        self._prev.pop(netns, None)

    def latest(self) -> dict[tuple[int, str], int]:
        """{(netns inode, counter name): value at the latest sample}."""
        return {(ns, n): v for ns, (_t, vals) in self._prev.items() for n, v in vals.items()}

    def namespaces(self) -> set[int]:
        return set(self._prev)


# --- inet_diag (uapi linux/netlink.h, linux/sock_diag.h, linux/inet_diag.h) -------------

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300  # NLM_F_DUMP = NLM_F_ROOT | NLM_F_MATCH
NLMSG_ERROR, NLMSG_DONE = 2, 3
IPPROTO_TCP = 6
TCP_LISTEN = 10
AF_INET, AF_INET6 = 2, 10

# struct nlmsghdr { __u32 len; __u16 type; __u16 flags; __u32 seq; __u32 pid; }
NLMSGHDR = struct.Struct("=IHHII")
# struct inet_diag_req_v2 { __u8 family, protocol, ext, pad; __u32 states;
#                           struct inet_diag_sockid id (48 bytes) }
REQ_V2 = struct.Struct("=BBBBI48s")
# struct inet_diag_msg { __u8 family, state, timer, retrans;
#   struct inet_diag_sockid { __be16 sport, dport; __be32 src[4], dst[4]; __u32 if; __u32 cookie[2]; };
#   __u32 expires, rqueue, wqueue, uid, inode; }
DIAG_MSG_HEAD = struct.Struct("=BBBB")  # offset 0
SOCKID_PORTS = struct.Struct("!HH")  # offset 4: network byte order
SOCKID_REST = struct.Struct("=16s16sIII")  # offset 8: src, dst, if, cookie[0], cookie[1]
DIAG_MSG_TAIL = struct.Struct("=IIIII")  # offset 52: expires, rqueue, wqueue, uid, inode
DIAG_MSG_SIZE = 72
assert REQ_V2.size == 56 and DIAG_MSG_TAIL.size + 52 == DIAG_MSG_SIZE


def diag_request(family: int, seq: int = 1, states: int = 1 << TCP_LISTEN) -> bytes:
    """A dump request for TCP sockets of ``family`` in ``states`` (default: listeners)."""
    body = REQ_V2.pack(family, IPPROTO_TCP, 0, 0, states, b"\0" * 48)
    return NLMSGHDR.pack(NLMSGHDR.size + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body


@dataclass(frozen=True)
class Listener:
    family: int
    address: str  # text form; IPv6 without brackets
    port: int
    state: int
    rqueue: int  # for a listener: accept-queue length (sk_ack_backlog)
    wqueue: int  # for a listener: accept-queue limit (sk_max_ack_backlog = min(backlog, somaxconn))
    inode: int
    cookie: int

    @property
    def endpoint(self) -> str:
        """``addr:port`` (``[addr]:port`` for IPv6)."""
        return f"[{self.address}]:{self.port}" if self.family == AF_INET6 else f"{self.address}:{self.port}"


def parse_diag(buf: bytes) -> tuple[list[Listener], bool]:
    """Decode one recv() of netlink messages: (sockets, saw NLMSG_DONE).

    NLMSG_ERROR raises OSError with the kernel's errno; unknown types are skipped.
    """
    out: list[Listener] = []
    off, done = 0, False
    while off + NLMSGHDR.size <= len(buf):
        length, mtype, _flags, _seq, _pid = NLMSGHDR.unpack_from(buf, off)
        if length < NLMSGHDR.size or off + length > len(buf):
            raise ParseError(f"netlink message at {off}: bad length {length} (buffer {len(buf)})")
        body = off + NLMSGHDR.size
        if mtype == NLMSG_DONE:
            done = True
        elif mtype == NLMSG_ERROR:
            err = struct.unpack_from("=i", buf, body)[0]
            if err:
                raise OSError(-err, f"inet_diag: kernel answered error {-err}")
        elif mtype == SOCK_DIAG_BY_FAMILY:
            if length - NLMSGHDR.size < DIAG_MSG_SIZE:
                raise ParseError(f"inet_diag_msg too short: {length - NLMSGHDR.size} < {DIAG_MSG_SIZE}")
            family, state, _timer, _retrans = DIAG_MSG_HEAD.unpack_from(buf, body)
            sport, _dport = SOCKID_PORTS.unpack_from(buf, body + 4)
            src, _dst, _ifi, c0, c1 = SOCKID_REST.unpack_from(buf, body + 8)
            _exp, rq, wq, _uid, inode = DIAG_MSG_TAIL.unpack_from(buf, body + 52)
            addr = str(ipaddress.IPv6Address(src) if family == AF_INET6 else ipaddress.IPv4Address(src[:4]))
            out.append(Listener(family, addr, sport, state, rq, wq, inode, c0 | c1 << 32))
        off += (length + 3) & ~3  # NLMSG_ALIGN
    return out, done


def pick_listeners(listeners: list[Listener]) -> list[Listener]:
    """The listeners whose accept queue is full (rqueue >= wqueue), else the fullest one(s).

    When every queue has drained by the time of the sample (a burst shorter than the
    sampling interval), the namespace's only TCP listener is blamed: the counter is
    per namespace, so it cannot be anyone else's. Among several listeners with empty
    queues none is blamed (nothing points at one)."""
    full = [li for li in listeners if li.wqueue > 0 and li.rqueue >= li.wqueue]
    if full:
        return sorted(full, key=lambda li: (-li.rqueue, li.port))
    busy = [li for li in listeners if li.rqueue > 0]
    if not busy:
        return list(listeners) if len(listeners) == 1 else []
    top = max(li.rqueue / max(li.wqueue, 1) for li in busy)
    return sorted((li for li in busy if li.rqueue / max(li.wqueue, 1) == top), key=lambda li: li.port)
