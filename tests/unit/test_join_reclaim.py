"""The reclaim join (issue 4): stalls of an app's own task or cgroup under its spans.

Pure tests with a fake clock and an injected pid -> cgroup map, plus the receiver's
extraction of ``process.pid`` / ``thread.id`` from real OTLP protobuf and the /proc
reader on this process.
"""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2

from otel_kernelnet.join import AppSpan, Join, ProcCgroups, cgroup_path_of, reclaim_keys
from otel_kernelnet.kernel import cgroups
from otel_kernelnet.receiver.ingest import Ingest
from otel_kernelnet.spans import KernelSpan, SpanLink
from tests.unit.test_join import MS, T0, Clock
CGROUPS = {10: "/app", 11: "/app", 99: "/app", 20: "/other", 30: "/"}


def tid(n: int) -> bytes:
    return n.to_bytes(16, "big")


def sid(n: int) -> bytes:
    return n.to_bytes(8, "big")


def app(n: int, start_ms: float, end_ms: float, pid: int | None = 10, thread: int | None = None,
        cookie: int | None = None, trace: int | None = None) -> AppSpan:
    return AppSpan(tid(trace or n), sid(n), T0 + int(start_ms * MS), T0 + int(end_ms * MS), cookie, None, f"app{n}",
                   pid, thread)


def stall(n: int, start_ms: float, end_ms: float, pid: int = 10, thread: int | None = None, typ: str = "memcg",
          cgroup: str | None = None) -> KernelSpan:
    a = {"kernelnet.kind": "reclaim", "kernelnet.reclaim.type": typ, "process.pid": pid,
         "thread.id": thread if thread is not None else pid}
    cg = cgroup if cgroup is not None else CGROUPS.get(pid)
    if cg is not None:
        a["kernelnet.cgroup.path"] = cg
    return KernelSpan(name="kernel.reclaim", trace_id=tid(1000 + n), span_id=sid(1000 + n),
                      start_ns=T0 + int(start_ms * MS), end_ns=T0 + int(end_ms * MS), attributes=a)


def make(**kw):
    out: list[KernelSpan] = []
    clock = Clock()
    looked_up: list[int] = []

    def cgroup_of(pid: int) -> str | None:
        looked_up.append(pid)
        return CGROUPS.get(pid)
    j = Join(out.append, now_ns=clock, cgroup_of=cgroup_of, **kw)
    j.looked_up = looked_up  # type: ignore[attr-defined]
    return j, out, clock


def conserved(j: Join) -> bool:
    s = j.stats
    return s.kernel_spans == (s.joined_cookie + s.joined_inferred + s.joined_task + s.joined_cgroup + s.unjoined
                              + j.pending)


# --- task ------------------------------------------------------------------------------------
def test_stall_of_the_app_process_during_its_span_becomes_its_child():
    j, out, _ = make()
    j.add_app_spans([app(1, 0, 100)])
    k = stall(1, 40, 60)
    j.add_kernel(k)
    assert out == [k]
    assert (k.trace_id, k.parent_span_id) == (tid(1), sid(1))
    assert k.attributes["kernelnet.join"] == "task" and k.links == []
    assert j.stats.joined_task == 1 and conserved(j)


def test_stall_waits_for_the_app_span_of_a_known_process_then_joins():
    j, out, _ = make()
    j.add_app_spans([app(9, 0, 1)])  # the process is known from an earlier request
    k = stall(1, 50, 70)
    j.add_kernel(k)
    assert out == [] and j.pending == 1  # its request has not ended yet
    j.add_app_spans([app(2, 45, 90, pid=11)])  # another process of the cgroup: no cgroup join before the end
    assert out == [] and j.pending == 1
    j.add_app_spans([app(1, 40, 100)])
    assert out == [k] and j.pending == 0
    assert k.parent_span_id == sid(1) and k.attributes["kernelnet.join"] == "task"
    assert conserved(j)


def test_stall_of_an_unknown_task_passes_at_once_unjoined():
    j, out, _ = make()
    j.add_app_spans([app(1, 0, 100)])
    k = stall(1, 40, 60, pid=20)  # another process, another cgroup
    j.add_kernel(k)
    assert out == [k] and j.pending == 0
    assert k.parent_span_id == b"" and "kernelnet.join" not in k.attributes
    assert j.stats.unjoined == 1 and conserved(j)


def test_kswapd_and_zone_samples_are_not_task_stalls():
    j, out, _ = make()
    j.add_app_spans([app(1, 0, 100)])
    ks = [stall(1, 40, 60, typ="kswapd"), stall(2, 50, 50, typ="zone_below_min")]
    for k in ks:
        j.add_kernel(k)
    assert out == ks and all(k.parent_span_id == b"" for k in ks)


def test_no_overlap_no_join_and_no_slack_for_stalls():
    j, out, clock = make(buffer_ttl_ns=1000 * MS, slack_ns=5 * MS)
    j.add_app_spans([app(1, 0, 100)])
    k = stall(1, 100.5, 102)  # 0.5 ms after the span ended: a socket span would take it (slack), a stall not
    j.add_kernel(k)
    assert out == [] and j.pending == 1
    clock.advance_ms(1001)
    j.tick()
    assert out == [k] and k.parent_span_id == b""
    assert j.stats.unjoined == 1 and conserved(j)


def test_innermost_span_of_the_process_is_parent_others_are_links():
    j, out, _ = make()
    outer, inner = app(1, 0, 100, trace=1), app(2, 20, 80, trace=1)
    j.add_app_spans([outer, inner, app(3, 0, 100, pid=20)])  # pid 20's span overlaps too: not a candidate
    k = stall(1, 30, 40)
    j.add_kernel(k)
    assert k.parent_span_id == sid(2)
    assert [(lk.trace_id, lk.span_id, lk.attributes) for lk in k.links] == [(tid(1), sid(1), {"kernelnet.join": "task"})]


def test_thread_id_picks_the_request_of_the_stalled_thread():
    """Two concurrent requests of one process on two threads (the SDK set thread.id)."""
    j, out, _ = make()
    a, b = app(1, 0, 100, thread=101), app(2, 10, 90, thread=102)
    j.add_app_spans([a, b])
    k = stall(1, 30, 40, thread=101)
    j.add_kernel(k)
    assert k.parent_span_id == sid(1) and k.links == []  # not the innermost b: another thread
    other = stall(2, 30, 40, thread=103)  # a thread with no span of its own (a GC thread...)
    j.add_kernel(other)
    assert other.parent_span_id == b"" and j.pending == 1


# --- cgroup ----------------------------------------------------------------------------------
def test_stall_of_another_task_of_the_cgroup_joins_marked_cgroup():
    j, out, _ = make()
    j.add_app_spans([app(1, 0, 100, pid=10)])
    k = stall(1, 40, 60, pid=99)  # a batch job in the app's cgroup, no spans of its own
    j.add_kernel(k)
    assert out == [k]
    assert (k.trace_id, k.parent_span_id) == (tid(1), sid(1))
    assert k.attributes["kernelnet.join"] == "cgroup"
    assert j.stats.joined_cgroup == 1 and conserved(j)


def test_own_task_match_is_not_preempted_by_a_cgroup_neighbour_but_cgroup_is_the_last_try():
    j, out, clock = make(buffer_ttl_ns=1000 * MS)
    j.add_app_spans([app(9, 0, 1, pid=10), app(2, 0, 100, pid=11)])
    k = stall(1, 40, 60, pid=10)
    j.add_kernel(k)
    assert out == [] and j.pending == 1  # pid 10's own request may still come
    clock.advance_ms(1001)
    j.tick()  # it did not: the neighbour's overlapping span is taken
    assert out == [k] and k.parent_span_id == sid(2) and k.attributes["kernelnet.join"] == "cgroup"
    assert j.stats.joined_cgroup == 1 and j.stats.unjoined == 0 and conserved(j)


def test_root_cgroup_never_joins():
    j, out, _ = make()
    j.add_app_spans([app(1, 0, 100, pid=30)])  # an app in the root cgroup
    k = stall(1, 40, 60, pid=31, cgroup="/")
    j.add_kernel(k)
    assert out == [k] and k.parent_span_id == b""


def test_cgroup_of_each_app_process_is_read_once_while_it_is_indexed():
    j, out, clock = make(app_ttl_ns=100 * MS)
    j.add_app_spans([app(1, 0, 1, pid=10), app(2, 0, 1, pid=10)])
    j.add_app_spans([app(3, 0, 1, pid=10), app(4, 0, 1, pid=20)])
    assert j.looked_up == [10, 20]
    clock.advance_ms(200)
    j.tick()  # expired: forgotten (a reused pid is read again)
    j.add_app_spans([app(5, 0, 1, pid=10)])
    assert j.looked_up == [10, 20, 10]


# --- ids: links to a stall stay valid -----------------------------------------------------------
def test_stall_already_linked_by_an_exported_span_keeps_its_ids_and_links_to_the_app_span():
    j, out, _ = make()
    j.add_app_spans([app(9, 0, 1)])
    k = stall(1, 40, 60)
    j.add_kernel(k)
    drop = KernelSpan(name="kernel.skb.drop", trace_id=tid(5000), span_id=sid(5000), start_ns=T0 + 61 * MS,
                      end_ns=T0 + 61 * MS, attributes={"kernelnet.kind": "drop"},
                      links=[SpanLink(tid(1001), sid(1001), {"kernelnet.kind": "reclaim"})])
    j.add_kernel(drop)  # a PFMEMALLOC drop links to the stall: exported now, with the stall's ids
    assert out == [drop]
    j.add_app_spans([app(1, 0, 100)])
    assert out == [drop, k]
    assert (k.trace_id, k.span_id, k.parent_span_id) == (tid(1001), sid(1001), b"")
    assert [(lk.trace_id, lk.span_id) for lk in k.links] == [(tid(1), sid(1))]
    assert k.attributes["kernelnet.join"] == "task"
    assert drop.links[0].trace_id == tid(1001)
    assert j.stats.joined_task == 1 and j.stats.joined_by_link == 1 and conserved(j)


def test_links_of_later_spans_to_a_moved_stall_get_its_new_trace_id():
    j, out, _ = make()
    j.add_app_spans([app(1, 0, 100)])
    k = stall(1, 40, 60)
    j.add_kernel(k)
    assert k.trace_id == tid(1)
    later = KernelSpan(name="kernel.skb.drop", trace_id=tid(5000), span_id=sid(5000), start_ns=T0 + 61 * MS,
                       end_ns=T0 + 61 * MS, attributes={"kernelnet.kind": "drop"},
                       links=[SpanLink(tid(1001), sid(1001), {"kernelnet.kind": "reclaim"})])
    j.add_kernel(later)
    assert (later.links[0].trace_id, later.links[0].span_id) == (tid(1), sid(1001))
    assert j.stats.relinked == 1


# --- bounds ------------------------------------------------------------------------------------
def test_flush_gives_buffered_stalls_their_cgroup_try_and_releases_the_rest():
    j, out, _ = make()
    j.add_app_spans([app(9, 0, 1, pid=10), app(2, 0, 100, pid=11)])
    a, b = stall(1, 40, 60, pid=10), stall(2, 400, 410, pid=10)
    j.add_kernel(a)
    j.add_kernel(b)
    assert out == []
    j.flush()
    assert out == [a, b] and j.pending == 0
    assert a.attributes["kernelnet.join"] == "cgroup" and b.parent_span_id == b""
    assert conserved(j)


def test_pid_index_is_capped():
    j, out, _ = make(index_max=2)
    j.add_app_spans([app(1, 0, 10, pid=10), app(2, 0, 10, pid=10), app(3, 0, 10, pid=10)])
    assert j.stats.index_shed == 1 and j.stats.app_by_pid == 3
    k = stall(1, 5, 6)
    j.add_kernel(k)
    assert k.parent_span_id in (sid(2), sid(3))  # app1 was forgotten


@settings(max_examples=80, deadline=None)
@given(apps=st.lists(st.tuples(st.sampled_from([10, 11, 20]), st.integers(0, 100), st.integers(0, 30),
                               st.sampled_from([None, 101, 102])), max_size=10),
       kern=st.lists(st.tuples(st.sampled_from([10, 11, 20, 99, 31]), st.integers(0, 140), st.integers(0, 5),
                               st.sampled_from([None, 101, 102]), st.integers(0, 3)), max_size=20),
       cap=st.integers(1, 6))
def test_property_every_stall_leaves_once_under_an_overlapping_span_of_its_task_or_cgroup(apps, kern, cap):
    j, out, clock = make(buffer_max=cap, buffer_ttl_ns=5 * MS)
    app_spans = [app(i + 1, s, s + d, pid=p, thread=t) for i, (p, s, d, t) in enumerate(apps)]
    by_id = {a.span_id: a for a in app_spans}
    j.add_app_spans(app_spans[: len(app_spans) // 2])
    sent = []
    for i, (pid, s, d, t, step) in enumerate(kern):
        k = stall(i, s, s + d, pid=pid, thread=t)
        sent.append(k)
        j.add_kernel(k)
        clock.advance_ms(step)
        j.tick()
    j.add_app_spans(app_spans[len(app_spans) // 2:])
    j.tick()
    j.flush()
    assert sorted(id(k) for k in out) == sorted(id(k) for k in sent)  # each exactly once
    assert conserved(j) and j.pending == 0
    for k in sent:
        how = k.attributes.get("kernelnet.join")
        if not k.parent_span_id:
            assert how is None
            continue
        parent = by_id[k.parent_span_id]
        assert k.trace_id == parent.trace_id
        assert parent.start_ns <= k.end_ns and parent.end_ns >= k.start_ns
        pid = k.attributes["process.pid"]
        if how == "task":
            assert parent.pid == pid
            assert parent.thread_id in (None, k.attributes["thread.id"])
        else:
            assert how == "cgroup" and parent.pid != pid
            assert CGROUPS[parent.pid] == CGROUPS[pid] not in (None, "/")


# --- pieces -----------------------------------------------------------------------------------
def test_reclaim_keys():
    assert reclaim_keys(stall(1, 0, 1, pid=10, thread=12)) == (10, 12, "/app")
    assert reclaim_keys(stall(1, 0, 1, pid=30, cgroup="/")) == (30, 30, None)
    assert reclaim_keys(stall(1, 0, 1, typ="kswapd")) is None
    s = stall(1, 0, 1)
    s.attributes["process.pid"] = 0
    assert reclaim_keys(s) is None


def test_cgroup_path_of_real_proc_self_cgroup():
    setup = cgroups.detect()
    text = open("/proc/self/cgroup").read()
    want = None
    for line in text.splitlines():
        hid, ctrls, path = line.split(":", 2)
        if (setup.mode == 0 and hid == "0") or (setup.mode == 1 and "memory" in ctrls.split(",")):
            want = path
    assert want is not None
    assert cgroup_path_of(text, setup) == want
    assert ProcCgroups(setup)(os.getpid()) == want
    assert ProcCgroups(setup)(2 ** 31 - 1) is None  # no such process


def _kv(key, **v):
    return common_pb2.KeyValue(key=key, value=common_pb2.AnyValue(**v))


def test_ingest_takes_process_pid_from_the_resource_and_thread_id_from_the_span():
    got: list[AppSpan] = []
    ing = Ingest(1 << 20, forward=lambda req, n: True, add_app_spans=got.extend)
    req = trace_service_pb2.ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.extend([_kv("service.name", string_value="api"), _kv("process.pid", int_value=4242)])
    ss = rs.scope_spans.add()
    for i, attrs in enumerate(([], [_kv("thread.id", int_value=77)], [_kv("process.pid", string_value="55")])):
        s = ss.spans.add(trace_id=tid(1), span_id=sid(i + 1), name=f"s{i}", start_time_unix_nano=T0,
                         end_time_unix_nano=T0 + MS)
        s.attributes.extend(attrs)
    rs2 = req.resource_spans.add()  # no process.pid, no cookie, no tuple: not for the join
    rs2.scope_spans.add().spans.add(trace_id=tid(2), span_id=sid(9), name="x", start_time_unix_nano=T0,
                                    end_time_unix_nano=T0 + MS)
    ing.accept(req)
    assert [(a.span_id, a.pid, a.thread_id, a.cookie) for a in got] == [
        (sid(1), 4242, None, None), (sid(2), 4242, 77, None), (sid(3), 55, None, None)]
    assert ing.stats.spans == 4


def test_join_module_examples_run():
    import doctest

    import otel_kernelnet.join
    import otel_kernelnet.receiver.ingest
    for mod in (otel_kernelnet.join, otel_kernelnet.receiver.ingest):
        r = doctest.testmod(mod)
        assert r.attempted > 0 and r.failed == 0, mod.__name__
