"""The join, as a pure object: fixed ids, fixed times, a fake clock.

Each test checks the exported kernel spans completely where it matters: trace id,
parent span id, kernelnet.join, links; and that every kernel span leaves exactly once.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from otel_kernelnet.join import AppSpan, Join
from otel_kernelnet.spans import KernelSpan

MS = 1_000_000
T0 = 1_700_000_000_000_000_000


def tid(n: int) -> bytes:
    return n.to_bytes(16, "big")


def sid(n: int) -> bytes:
    return n.to_bytes(8, "big")


def kspan(n: int, start_ms: float, end_ms: float | None = None, cookie: int | None = 7, **attrs) -> KernelSpan:
    a = dict(attrs)
    if cookie is not None:
        a["kernelnet.socket.cookie"] = cookie
    s = T0 + int(start_ms * MS)
    return KernelSpan(name="kernel.tcp", trace_id=tid(1000 + n), span_id=sid(1000 + n), start_ns=s,
                      end_ns=T0 + int((start_ms if end_ms is None else end_ms) * MS), attributes=a)


def app(n: int, start_ms: float, end_ms: float, cookie: int | None = 7, trace: int | None = None, tup=None) -> AppSpan:
    return AppSpan(tid(trace or n), sid(n), T0 + int(start_ms * MS), T0 + int(end_ms * MS), cookie, tup, f"app{n}")


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> int:
        return self.t

    def advance_ms(self, ms: float) -> None:
        self.t += int(ms * MS)


def make(**kw):
    out: list[KernelSpan] = []
    clock = Clock()
    j = Join(out.append, now_ns=clock, **kw)
    return j, out, clock


def test_kernel_span_during_an_app_span_becomes_its_child():
    j, out, _ = make()
    j.add_app_spans([app(1, 0, 100)])
    k = kspan(1, 50)
    j.add_kernel(k)
    assert out == [k]
    assert (k.trace_id, k.parent_span_id) == (tid(1), sid(1))
    assert k.attributes["kernelnet.join"] == "cookie"
    assert k.links == []
    assert j.stats.joined_cookie == 1


def test_kernel_spans_that_arrive_first_wait_for_their_app_span():
    j, out, _ = make()
    j.add_app_spans([app(9, 0, 1, cookie=99)])  # another app is talking: the join is active
    early = kspan(1, 50)
    j.add_kernel(early)
    assert out == [] and j.pending == 1
    j.add_app_spans([app(1, 0, 100)])
    assert out == [early] and j.pending == 0
    assert (early.trace_id, early.parent_span_id) == (tid(1), sid(1))


def test_keep_alive_each_kernel_span_lands_under_the_request_it_overlaps():
    """Three sequential requests on one connection (one cookie); kernel spans in each."""
    j, out, _ = make(slack_ns=0)
    j.add_app_spans([app(100, -10, -9, cookie=5)])  # activate
    ks = [kspan(1, 15), kspan(2, 25, 28), kspan(3, 41), kspan(4, 44)]
    for k in ks:
        j.add_kernel(k)
    j.add_app_spans([app(1, 10, 20), app(2, 22, 30), app(3, 40, 50)])
    assert len(out) == 4
    assert [k.parent_span_id for k in ks] == [sid(1), sid(2), sid(3), sid(3)]
    assert [k.trace_id for k in ks] == [tid(1), tid(2), tid(3), tid(3)]


def test_packet_that_arrived_before_the_handler_and_was_read_during_it_counts():
    j, out, _ = make(slack_ns=0)
    j.add_app_spans([app(1, 10, 20)])
    k = kspan(1, 8, 12)  # arrival 2 ms before the span started, read during it
    j.add_kernel(k)
    assert k.parent_span_id == sid(1)


def test_innermost_overlapping_app_span_is_parent_and_the_others_are_links():
    j, out, _ = make()
    outer, inner = app(1, 0, 100, trace=1), app(2, 20, 60, trace=1)
    j.add_app_spans([outer, inner])
    k = kspan(1, 30)
    j.add_kernel(k)
    assert k.parent_span_id == sid(2)
    assert [(lk.trace_id, lk.span_id) for lk in k.links] == [(tid(1), sid(1))]
    assert k.links[0].attributes == {"kernelnet.join": "cookie"}


def test_no_cookie_on_the_app_span_joins_by_4_tuple_marked_inferred():
    j, out, _ = make()
    j.add_app_spans([app(1, 0, 100, cookie=None, tup=("10.0.0.2", 40000, 8080))])
    k = kspan(1, 50, cookie=11, **{"network.peer.address": "10.0.0.2", "network.peer.port": 40000,
                                  "network.local.address": "10.0.0.1", "network.local.port": 8080})
    j.add_kernel(k)
    assert k.parent_span_id == sid(1) and k.trace_id == tid(1)
    assert k.attributes["kernelnet.join"] == "inferred"
    # a received packet: the peer is the source, the local side the destination
    p = kspan(2, 60, cookie=None, **{"source.address": "10.0.0.2", "source.port": 40000,
                                    "destination.address": "10.0.0.1", "destination.port": 8080})
    j.add_kernel(p)
    assert p.parent_span_id == sid(1) and p.attributes["kernelnet.join"] == "inferred"
    assert j.stats.joined_inferred == 2


def test_a_different_cookie_or_no_overlap_does_not_join_and_is_exported_unjoined_after_the_ttl():
    j, out, clock = make(buffer_ttl_ns=1000 * MS, slack_ns=0)
    j.add_app_spans([app(1, 0, 100)])
    other = kspan(1, 50, cookie=8)
    later = kspan(2, 150)
    j.add_kernel(other)
    j.add_kernel(later)
    assert out == [] and j.pending == 2
    clock.advance_ms(999)
    j.tick()
    assert out == []
    clock.advance_ms(2)
    j.tick()
    assert out == [other, later]
    assert other.parent_span_id == b"" and other.trace_id == tid(1001)
    assert "kernelnet.join" not in later.attributes
    assert j.stats.unjoined == 2


def test_slack_takes_the_nearest_app_span_when_none_overlaps():
    j, out, _ = make(slack_ns=2 * MS)
    j.add_app_spans([app(1, 0, 10), app(2, 13, 20)])
    k = kspan(1, 11)  # 1 ms after app1, 2 ms before app2
    j.add_kernel(k)
    assert k.parent_span_id == sid(1) and k.links == []


def test_inactive_join_passes_kernel_spans_through_at_once():
    j, out, clock = make(app_ttl_ns=1000 * MS)
    k = kspan(1, 0)
    j.add_kernel(k)
    assert out == [k] and k.parent_span_id == b""
    j.add_app_spans([app(1, 0, 1, cookie=3)])
    assert j.active
    clock.advance_ms(1001)
    assert not j.active


def test_spans_without_socket_key_pass_through():
    j, out, _ = make()
    j.add_app_spans([app(1, 0, 100)])
    k = kspan(1, 50, cookie=None)  # e.g. a softirq span
    j.add_kernel(k)
    assert out == [k] and k.parent_span_id == b""


def test_buffer_cap_sheds_the_oldest_unjoined_and_counts_it():
    j, out, _ = make(buffer_max=3)
    j.add_app_spans([app(1, 0, 1, cookie=1)])
    ks = [kspan(i, 100 + i, cookie=50 + i) for i in range(5)]
    for k in ks:
        j.add_kernel(k)
    assert out == ks[:2] and j.pending == 3
    assert j.stats.buffer_shed == 2
    j.flush()
    assert out == ks and j.pending == 0


def test_index_cap_forgets_the_oldest_app_span_and_counts_it():
    j, out, _ = make(index_max=2, slack_ns=0)
    j.add_app_spans([app(1, 0, 10, cookie=1), app(2, 0, 10, cookie=2), app(3, 0, 10, cookie=3)])
    assert j.indexed == 2 and j.stats.index_shed == 1
    k = kspan(1, 5, cookie=1)
    j.add_kernel(k)
    assert out == [] and j.pending == 1  # app1 was forgotten: it waits (and would leave unjoined)


def test_app_spans_expire_after_their_ttl_and_the_watch_list_follows():
    watched: list[tuple[str, int]] = []
    j, out, clock = make(app_ttl_ns=500 * MS)
    j.on_watch = lambda c: watched.append(("watch", c))
    j.on_unwatch = lambda c: watched.append(("unwatch", c))
    j.add_app_spans([app(1, 0, 10, cookie=4), app(2, 20, 30, cookie=4), app(3, 0, 10, cookie=None)])
    assert watched == []  # applied from tick(), on the collector's thread
    j.tick()
    assert watched == [("watch", 4)]
    clock.advance_ms(600)
    j.tick()
    assert watched == [("watch", 4), ("unwatch", 4)]
    assert j.indexed == 0
    assert j.stats.app_without_key == 1


@settings(max_examples=60, deadline=None)
@given(apps=st.lists(st.tuples(st.integers(1, 3), st.integers(0, 100), st.integers(0, 30)), max_size=12),
       kern=st.lists(st.tuples(st.sampled_from([None, 1, 2, 3, 4]), st.integers(0, 140), st.integers(0, 5),
                               st.booleans()), max_size=25),
       cap=st.integers(1, 8))
def test_property_every_kernel_span_leaves_exactly_once_and_joins_only_to_an_overlapping_span_of_its_cookie(apps, kern, cap):
    j, out, clock = make(buffer_max=cap, slack_ns=0)
    app_spans = [app(i + 1, s, s + d, cookie=c) for i, (c, s, d) in enumerate(apps)]
    by_id = {a.span_id: a for a in app_spans}
    half = len(app_spans) // 2
    j.add_app_spans(app_spans[:half])
    sent = []
    for i, (c, s, d, before) in enumerate(kern):
        k = kspan(i, s, s + d, cookie=c)
        sent.append((k, c))
        j.add_kernel(k)
        if before:
            clock.advance_ms(1)
            j.tick()
    j.add_app_spans(app_spans[half:])
    j.tick()
    j.flush()
    assert sorted(id(k) for k in out) == sorted(id(k) for k, _ in sent)
    for k, c in sent:
        if k.parent_span_id:
            parent = by_id[k.parent_span_id]
            assert parent.cookie == c and k.trace_id == parent.trace_id
            assert parent.start_ns <= k.end_ns and parent.end_ns >= k.start_ns


@settings(max_examples=300, deadline=None)
@given(spans=st.lists(st.tuples(st.integers(0, 1000), st.integers(-5, 300), st.booleans()), max_size=40),
       queries=st.lists(st.tuples(st.integers(-100, 1400), st.integers(0, 50), st.integers(0, 30)),
                        min_size=1, max_size=8))
def test_the_app_index_finds_what_a_full_scan_finds(spans, queries):
    """A lookup reads only the spans of its key that started within the longest span
    of the key before its interval; it must find exactly what reading all of them
    finds, after removals too (the longest is never lowered, so it stays an upper bound)."""
    from otel_kernelnet.join import _Index
    ix = _Index()
    live: list[tuple[int, AppSpan]] = []
    for seq, (start, length, drop_later) in enumerate(spans):
        s = AppSpan(tid(seq + 1), sid(seq + 1), start, start + length, cookie=7)
        ix.add(7, s, seq, 0)
        live.append((seq, s))
        if drop_later and len(live) > 1:  # forget an earlier one, as expiry or the bound does
            gone_seq, gone = live.pop(len(live) // 2)
            assert ix.remove(7, gone_seq, gone) is (not live)
            assert ix.remove(7, gone_seq, gone) is False  # not indexed any more: nothing else goes
    for q_start, q_len, slack in queries:
        got = ix.candidates(7, q_start, q_start + q_len, slack)
        want = sorted((s for _, s in live if s.start_ns <= q_start + q_len + slack and s.end_ns >= q_start - slack),
                      key=lambda s: (s.start_ns, int.from_bytes(s.span_id, "big")))
        assert got == want
