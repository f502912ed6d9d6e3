"""The bounded index of node-level spans other families link to."""

from hypothesis import given, settings
from hypothesis import strategies as st

from otel_kernelnet.links import LinkIndex
from otel_kernelnet.spans import KernelSpan


def span(n: int, start: int, end: int, kind: str) -> KernelSpan:
    return KernelSpan("x", n.to_bytes(16, "big"), n.to_bytes(8, "big"), start, end, {"kernelnet.kind": kind})


def test_softirq_overlap_per_cpu():
    ix = LinkIndex()
    ix.add_softirq(span(1, 100, 200, "softirq"), cpu=1)
    ix.add_softirq(span(2, 300, 400, "softirq"), cpu=1)
    ix.add_softirq(span(3, 100, 400, "softirq"), cpu=0)
    got = ix.softirq_overlapping(1, 150, 310)
    assert [lk.span_id for lk in got] == [(1).to_bytes(8, "big"), (2).to_bytes(8, "big")]
    assert got[0].attributes == {"kernelnet.kind": "softirq"} and got[0].trace_id == (1).to_bytes(16, "big")
    assert ix.softirq_overlapping(1, 201, 299) == [] and ix.softirq_overlapping(5, 0, 10**9) == []
    assert [lk.span_id[-1] for lk in ix.softirq_overlapping(1, 200, 200)] == [1]  # touching counts


def test_reclaim_by_task_or_cgroup():
    ix = LinkIndex()
    ix.add_reclaim(span(1, 100, 200, "reclaim"), pid=10, cgroup=7, cgroup_path="/a")
    ix.add_reclaim(span(2, 150, 250, "reclaim"), pid=11, cgroup=8, cgroup_path="/b")
    ids = lambda links: [lk.span_id[-1] for lk in links]  # noqa: E731
    assert ids(ix.reclaim_overlapping(pid=10, start_ns=0, end_ns=1000)) == [1]
    assert ids(ix.reclaim_overlapping(cgroup=8, start_ns=0, end_ns=1000)) == [2]
    assert ids(ix.reclaim_overlapping(cgroup="/a", start_ns=0, end_ns=1000)) == [1]
    assert ids(ix.reclaim_overlapping(start_ns=210, end_ns=300)) == [2]
    assert ix.reclaim_overlapping(pid=10, start_ns=201, end_ns=300) == []


def test_bounded():
    ix = LinkIndex(per_cpu=3, reclaims=2, snapshots=2)
    for i in range(5):
        ix.add_softirq(span(i + 1, i * 10, i * 10 + 5, "softirq"), cpu=0)
        ix.add_reclaim(span(i + 1, i * 10, i * 10 + 5, "reclaim"), pid=1)
        ix.add_snapshot(i * 10, [], [])
    assert [lk.span_id[-1] for lk in ix.softirq_overlapping(0, 0, 100)] == [3, 4, 5]
    assert [lk.span_id[-1] for lk in ix.reclaim_overlapping(pid=1, start_ns=0, end_ns=100)] == [4, 5]
    assert ix.evicted == 2 + 3 + 3
    assert ix.memory_pressure_at(5) is None  # its snapshot was evicted
    assert ix.memory_pressure_at(35)["sampled_ns"] == 30


@settings(max_examples=300, deadline=None)
@given(spans=st.lists(st.tuples(st.integers(0, 1000), st.integers(0, 200)), max_size=40),
       queries=st.lists(st.tuples(st.integers(0, 1300), st.integers(0, 300)), min_size=1, max_size=10),
       limit=st.integers(1, 12))
def test_queries_match_a_full_scan_whatever_the_order_spans_come_in(spans, queries, limit):
    """The index keeps softirq and reclaim entries in order of end time and a query
    stops at the first that ended before its interval; spans that come out of order (a
    late record) must still be found, and eviction drops the earliest end first."""
    ix = LinkIndex(per_cpu=limit, reclaims=limit)
    ix.add_snapshot(0, [], [])
    kept: list[tuple[int, int, int]] = []  # the reference: (end, start, n) of what the index holds
    for n, (start, length) in enumerate(spans, 1):
        ix.add_softirq(span(n, start, start + length, "softirq"), cpu=3)
        ix.add_reclaim(span(n, start, start + length, "reclaim"), pid=7)
        if len(kept) >= limit:
            kept.pop(0)
        kept.append((start + length, start, n))
        kept.sort(key=lambda k: k[0])  # stable: equal ends stay in arrival order
    assert ix.evicted == 2 * max(0, len(spans) - limit)
    ids = lambda links: [int.from_bytes(lk.span_id, "big") for lk in links]  # noqa: E731
    for q_start, q_len in queries:
        want = [n for end, start, n in kept if start <= q_start + q_len and end >= q_start]
        assert ids(ix.softirq_overlapping(3, q_start, q_start + q_len)) == want
        assert ids(ix.reclaim_overlapping(pid=7, start_ns=q_start, end_ns=q_start + q_len)) == want
        # the reclaim activity within window_ns before a moment
        at = ix.memory_pressure_at(q_start + q_len, window_ns=q_len)
        assert ids(at["links"]) == want and at["reclaim_spans"] == len(want)
        # at most max_stalls links, to the ones that ended last; the count stays whole
        at = ix.memory_pressure_at(q_start + q_len, window_ns=q_len, max_stalls=2)
        assert ids(at["links"]) == want[-2:] and at["reclaim_spans"] == len(want)


def test_the_stall_count_skips_spans_that_start_after_the_drop_even_past_the_link_cap():
    """Ordered by end: O, X, L3, L2, L1. Reading back from L1 with two links taken, L3
    still ends after the drop (t=100), so X, which starts after it, must be found and
    left out of the count; O ends before it, and the reading stops there."""
    ix = LinkIndex()
    ix.add_snapshot(0, [], [])
    for n, (start, end) in enumerate([(10, 130), (20, 125), (30, 120), (105, 110), (40, 90)], 1):
        ix.add_reclaim(span(n, start, end, "reclaim"), pid=1)
    at = ix.memory_pressure_at(100, window_ns=100, max_stalls=2)
    assert at["reclaim_spans"] == 4  # all but X
    assert [lk.span_id[-1] for lk in at["links"]] == [2, 1]  # L2, L1: the two that ended last
