"""The struct-based record readers equal the ctypes decode, field by field, for every
record type and every family's decoder; the fast ids, address text and queue keep
their contracts."""

import ctypes
import dataclasses
import ipaddress
import os
import random
import struct
import threading

import pytest

from otel_kernelnet import records, spans
from otel_kernelnet.export.sinks import ExportPipeline
from otel_kernelnet.probes import drop, lifecycle, reclaim, softirq, tcp

# the record headers (not the *.bcc.h helpers compiled into the BPF programs only)
ALL = sorted((p.stem, s) for p in records.BPF_DIR.glob("*.h") if "." not in p.stem
             for s in records.load_header(p.stem)[1])


def test_every_header_has_a_record():
    assert {h for h, _s in ALL} >= {"drop", "lifecycle", "tcp", "softirq", "reclaim"}


def ctypes_value(rec, raw: bytes, name: str):
    """What a field holds, read through ctypes: the reference."""
    t = dict(rec._fields_)[name]
    if issubclass(t, ctypes.Array):
        if t._type_ in (ctypes.c_uint8, ctypes.c_char):
            f = getattr(type(rec), name)
            return raw[f.offset:f.offset + f.size]  # all bytes (ctypes cuts a char array at NUL)
        return tuple(getattr(rec, name))
    return getattr(rec, name)


def random_record(T, rnd: random.Random) -> bytes:
    return bytes(rnd.getrandbits(8) for _ in range(ctypes.sizeof(T)))


@pytest.mark.parametrize("header,struct_name", ALL)
def test_reader_equals_ctypes_field_by_field(header, struct_name):
    T = records.record_type(header, struct_name)
    lay = records.layout(header, struct_name)
    assert lay.size == ctypes.sizeof(T) and lay.names == tuple(n for n, _t in T._fields_)
    rnd = random.Random(f"{header}.{struct_name}")
    names = lay.names
    shuffled = list(names)
    rnd.shuffle(shuffled)
    subset = shuffled[: max(1, len(shuffled) // 3)]
    read_all, read_shuffled, read_subset = lay.reader(*names), lay.reader(*shuffled), lay.reader(*subset)
    for _ in range(50):
        raw = random_record(T, rnd)
        rec = T.from_buffer_copy(raw)
        longer = raw + b"\xaa" * 24  # a reader reads the start of a longer buffer
        for reader, asked in ((read_all, names), (read_shuffled, shuffled), (read_subset, subset)):
            got = reader(longer)
            assert len(got) == len(asked)
            for name, value in zip(asked, got):
                assert value == ctypes_value(rec, raw, name), f"{struct_name}.{name}"
    with pytest.raises(struct.error):
        read_all(raw[:-1])


def test_reader_refuses_unknown_or_repeated_fields():
    lay = records.layout("drop", "kn_drop_event")
    with pytest.raises(records.HeaderError):
        lay.reader("ts_ns", "no_such_field")
    with pytest.raises(ValueError):
        lay.reader("ts_ns", "ts_ns")
    assert lay.reader("reason")(bytes(32) + struct.pack("=I", 7) + bytes(100)) == (7,)


def test_cstr_cuts_at_nul_and_replaces_bad_utf8():
    assert records.cstr(b"swapper/1\0junk\0\0") == "swapper/1"
    assert records.cstr(b"\xffab\0") == "\ufffdab"
    assert records.cstr(b"x" * 16) == "x" * 16


# --- every family's decoder against a ctypes reference decode ----------------------------
def _flag_fields(defs: dict[str, int], prefix: str, mapping: dict[str, str]) -> dict[str, int]:
    return {field: defs[prefix + bit] for field, bit in mapping.items()}


FAMILIES = {
    # module, record, flag booleans of the event (field -> bit), how to make a record valid
    "drop": (drop, "kn_drop_event", _flag_fields(drop.FLAGS, "KN_DROP_F_", {
        "has_sk": "HAS_SK", "has_addr": "ADDR", "ipv6": "IPV6", "has_dev": "DEV", "owner_sk": "OWNER_SK"}), None),
    "lifecycle": (lifecycle, "kn_life_event", {}, None),
    "tcp": (tcp, "kn_tcp_event", _flag_fields(tcp.DEFS, "KN_TCP_F_", {
        "has_addr": "ADDR", "ipv6": "IPV6", "has_ca_state": "CA_STATE", "has_reason": "REASON", "has_err": "ERR"}),
        ("type", sorted(tcp.KINDS))),
    "softirq": (softirq, "kn_softirq_event", {}, None),
    "reclaim": (reclaim, "kn_reclaim_event", {}, ("type", sorted(reclaim.TYPES))),
}


def reference(mod, T, raw: bytes, flag_fields: dict[str, int]):
    """The event a ctypes decode gives, as {field: value}, for every field of the event."""
    rec = T.from_buffer_copy(raw)
    fields = dict(T._fields_)
    out = {}
    for f in dataclasses.fields(type(mod.decode(raw))):
        name = f.name
        if name in flag_fields:
            out[name] = bool(rec.flags & flag_fields[name])
        elif name == "culprits":
            comms = ctypes_value(rec, raw, "culprit_comm")
            cs = [softirq.Culprit(rec.culprit_pid[i], rec.culprit_tid[i], records.cstr(comms[16 * i:16 * i + 16]),
                                  rec.culprit_cgroup[i], rec.culprit_ns[i])
                  for i in range(softirq.CULPRITS) if rec.culprit_ns[i]]
            out[name] = tuple(sorted(cs, key=lambda c: (-c.ns, c.tid)))
        elif fields[name] is not None and issubclass(fields[name], ctypes.Array) and fields[name]._type_ is ctypes.c_char:
            out[name] = bytes(getattr(rec, name)).decode("utf-8", "replace")  # ctypes cuts at the NUL
        else:
            out[name] = ctypes_value(rec, raw, name)
    return out


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_decoder_equals_the_ctypes_decode(family):
    mod, struct_name, flag_fields, valid = FAMILIES[family]
    T = mod.RECORD
    assert T is records.record_type(family, struct_name)
    rnd = random.Random(family)
    for k in range(200):
        rec = T.from_buffer_copy(random_record(T, rnd))
        if valid:
            setattr(rec, valid[0], valid[1][k % len(valid[1])])
        if family == "lifecycle":
            rec.t_arrival, rec.t_end = rec.t_arrival or 1, rec.t_end or 1
        for name, t in T._fields_:  # C strings: printable text, NUL-terminated at a random length
            if issubclass(t, ctypes.Array) and t._type_ is ctypes.c_char:
                size = ctypes.sizeof(t)
                per = 16 if size > 16 else size
                text = b"".join(bytes(rnd.choice(b"abcdefgh/-0123456789") for _ in range(rnd.randrange(per)))
                                .ljust(per, b"\0") for _ in range(size // per))
                ctypes.memmove(ctypes.addressof(rec) + getattr(T, name).offset, text, size)
        raw = bytes(rec)
        ev = mod.decode(raw)
        want = reference(mod, T, raw, flag_fields)
        got = {f.name: getattr(ev, f.name) for f in dataclasses.fields(ev)}
        for name in want:
            assert got[name] == want[name], f"{family}: {name}"


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_decoder_refuses_a_short_record(family):
    mod = FAMILIES[family][0]
    with pytest.raises(ValueError):
        mod.decode(bytes(ctypes.sizeof(mod.RECORD) - 1))


def test_decoders_refuse_invalid_types_as_before():
    for mod in (tcp, reclaim):
        raw = bytearray(ctypes.sizeof(mod.RECORD))
        off = mod.RECORD.type.offset
        raw[off] = 0xEE  # not a known type
        with pytest.raises(ValueError, match="unknown type"):
            mod.decode(bytes(raw))
    with pytest.raises(ValueError, match="arrival or end"):
        lifecycle.decode(bytes(ctypes.sizeof(lifecycle.RECORD)))


# --- ids ----------------------------------------------------------------------------------
def test_random_ids_are_w3c_valid_and_distinct():
    ids = spans.RandomIds()
    traces = [ids.trace_id() for _ in range(2000)]
    sids = [ids.span_id() for _ in range(2000)]
    assert all(len(t) == 16 and any(t) for t in traces) and all(len(s) == 8 and any(s) for s in sids)
    assert len(set(traces)) == 2000 and len(set(sids)) == 2000
    other = spans.RandomIds()  # seeded from os.urandom: not the same sequence
    assert other.trace_id() not in traces


def test_random_ids_never_zero_even_if_the_generator_says_so():
    ids = spans.RandomIds()
    seq = iter([0, 0, 5])
    ids._bits = lambda _n: next(seq)
    assert ids.trace_id() == (5).to_bytes(16, "big")
    seq = iter([0, 9])
    assert ids.span_id() == (9).to_bytes(8, "big")


def test_random_ids_reseed_in_a_forked_child():
    ids = spans.RandomIds()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report its next ids and leave without running pytest's teardown
        try:
            os.write(w, ids.trace_id() + ids.span_id())
        finally:
            os._exit(0)
    os.close(w)
    child = b""
    while len(child) < 24:
        chunk = os.read(r, 24 - len(child))
        if not chunk:
            break
        child += chunk
    os.close(r)
    os.waitpid(pid, 0)
    assert len(child) == 24
    # without the reseed the child would have drawn exactly what the parent draws next
    assert child != ids.trace_id() + ids.span_id()


# --- address text ---------------------------------------------------------------------------
def test_ip_text_is_ipaddress_text():
    rnd = random.Random(4)
    cases = [bytes(16), bytes(15) + b"\x01", bytes(10) + b"\xff\xff" + bytes([10, 0, 0, 1]),
             bytes(12) + bytes([1, 2, 3, 4]), bytes([0xfe, 0x80]) + bytes(6) + bytes(range(1, 9))]
    cases += [bytes(rnd.choice((0, 0, 0, 1, 0xff, 0x20)) for _ in range(16)) for _ in range(3000)]
    for raw in cases:
        assert spans.ip_text(raw, True) == str(ipaddress.IPv6Address(raw))
        assert spans.ip_text(raw, False) == str(ipaddress.IPv4Address(raw[:4]))
        assert spans.ip_text(raw, True) == str(ipaddress.IPv6Address(raw))  # from the cache
    assert all(len(c) <= spans.IP_TEXT_CACHE_MAX for c in spans._IP_TEXT)


# --- the queue ------------------------------------------------------------------------------
class _Collect:
    description = "collect"

    def __init__(self):
        self.batches = []
        self.got = threading.Event()

    def write(self, batch):
        self.batches.append(len(batch))
        self.got.set()
        return True

    def close(self):
        pass


def test_a_full_batch_wakes_the_sleeping_export_thread():
    sink = _Collect()
    p = ExportPipeline(sink, max_queue=100, max_batch=8, max_delay_s=3600)  # age alone would never flush
    try:
        for _ in range(3):  # the thread is asleep before each batch fills
            sink.got.clear()
            for i in range(8):
                p.submit(i)
            assert sink.got.wait(30), "a full batch was not delivered: lost wake-up"
        assert sink.batches == [8, 8, 8]
    finally:
        p.close(timeout_s=5)
    assert p.exported == 24 and p.dropped_queue_full == 0 and p.failed == 0


def test_submit_from_several_threads_loses_nothing_it_accepted():
    sink = _Collect()
    p = ExportPipeline(sink, max_queue=500, max_batch=64, max_delay_s=0.01)
    threads = [threading.Thread(target=lambda: [p.submit(i) for i in range(5000)]) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    p.close(timeout_s=30)
    assert p.exported + p.dropped_queue_full + p.failed == 20000
    assert p.failed == 0 and sum(sink.batches) == p.exported


def test_per_record_classes_are_slotted_not_frozen():
    """Built once per kernel record or span: a frozen dataclass sets each field through
    object.__setattr__ (a 30-field LifeEvent took ~5.7 us to build, slotted ~0.3 us;
    docs/benchmarks.md section 6). A class turned frozen or dict-backed again fails here."""
    from otel_kernelnet import spans
    from otel_kernelnet.probes import lifecycle, reclaim, softirq, tcp
    classes = (spans.DropEvent, lifecycle.LifeEvent, softirq.SoftirqEvent, softirq.Culprit, tcp.TcpEvent,
               reclaim.ReclaimEvent, spans.KernelSpan, spans.SpanEvent, spans.SpanLink)
    for cls in classes:
        assert "__slots__" in cls.__dict__, f"{cls.__name__} has no __slots__"
        assert not cls.__dataclass_params__.frozen, f"{cls.__name__} is frozen"
