"""Pod attribution (otel_kernelnet/k8s.py) on a fixture node tree (tests/fixtures/k8s, see its README)."""

import doctest
import os
import shutil
from pathlib import Path

import pytest

from otel_kernelnet import k8s
from otel_kernelnet.k8s import CgroupRef, OwnScope, PodResolver, describe_scope, own_scope, parse_cgroup_path, parse_proc_cgroup

NODE = Path(__file__).resolve().parents[1] / "fixtures" / "k8s" / "node"
UID1 = "2f0e8c1a-6b0d-4e4f-9d39-0c5f1b7a3e21"  # shop/web-0 (containerd): nginx + sidecar
UID2 = "7c1d2e3f-4a5b-4c6d-8e9f-0a1b2c3d4e5f"  # batch/worker-x (CRI-O), kubelet pod dir only
UID4 = "11111111-2222-4333-8444-555555555555"  # cgroupfs driver, no metadata
C1, C2, C3 = "a1" * 32, "b2" * 32, "d4" * 32
CG = NODE / "sys/fs/cgroup/kubepods.slice"
POD1_CG = CG / "kubepods-burstable.slice" / f"kubepods-burstable-pod{UID1.replace('-', '_')}.slice"
POD2_CG = CG / "kubepods-besteffort.slice" / f"kubepods-besteffort-pod{UID2.replace('-', '_')}.slice"
NS_POD1, NS_POD2, NS_HOST, NS_POD4 = 4026532001, 4026532002, 4026531840, 4026532004
MOUNTS_TEXT = f"cgroup2 {NODE / 'sys/fs/cgroup'} cgroup2 rw,nosuid 0 0\n"  # the fixture tree as the v2 mount


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def resolver(root: Path = NODE, **kw) -> PodResolver:
    kw.setdefault("environ", {"NODE_NAME": "node-1"})
    return PodResolver(proc_root=str(root / "proc"), cgroup_root=str(root / "sys/fs/cgroup"),
                       kubelet_root=str(root / "var/lib/kubelet"), log_root=str(root / "var/log"), **kw)


def cgid(path: Path) -> int:
    return os.stat(path).st_ino  # a cgroup v2 id is its directory's inode number


def test_fixture_tree_is_intact():
    assert (NODE / "proc/100/ns/net").is_symlink() and os.readlink(NODE / "proc/100/ns/net") == f"net:[{NS_POD1}]"
    assert (POD1_CG / f"cri-containerd-{C1}.scope").is_dir()


def test_module_doctests():
    r = doctest.testmod(k8s)
    assert r.attempted >= 5 and r.failed == 0


@pytest.mark.parametrize("path,expect", [
    # systemd driver, containerd, Burstable
    (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID1.replace('-', '_')}.slice/cri-containerd-{C1}.scope",
     CgroupRef(UID1, C1, "containerd")),
    # Guaranteed (no QoS level), CRI-O
    (f"/kubepods.slice/kubepods-pod{UID2.replace('-', '_')}.slice/crio-{C3}.scope", CgroupRef(UID2, C3, "cri-o")),
    # cri-dockerd
    (f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID1.replace('-', '_')}.slice/docker-{C2}.scope",
     CgroupRef(UID1, C2, "docker")),
    # cgroupfs driver (v1 or v2): dashes, bare id
    (f"/kubepods/besteffort/pod{UID4}/{C3}", CgroupRef(UID4, C3, None)),
    (f"/kubepods/pod{UID4}/{C3}", CgroupRef(UID4, C3, None)),
    # kind / nested kubelet
    (f"/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID1.replace('-', '_')}.slice/cri-containerd-{C1}.scope",
     CgroupRef(UID1, C1, "containerd")),
    # seen from inside a cgroup namespace
    (f"/../../kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID1.replace('-', '_')}.slice/cri-containerd-{C1}.scope",
     CgroupRef(UID1, C1, "containerd")),
    # pod level (memcg reclaim charged to the pod), CRI-O's monitor: a pod, no container
    (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID1.replace('-', '_')}.slice", CgroupRef(UID1)),
    (f"/kubepods.slice/kubepods-pod{UID2.replace('-', '_')}.slice/crio-conmon-{C3}.scope", CgroupRef(UID2)),
    # not a pod
    ("/kubepods.slice/kubepods-burstable.slice", None),
    ("/system.slice/containerd.service", None),
    (f"/user.slice/pod{UID1}/{C1}", None),
    ("/", None),
    ("", None),
])
def test_parse_cgroup_path(path, expect):
    assert parse_cgroup_path(path) == expect


def test_parse_proc_cgroup_prefers_v2_then_a_common_v1_controller():
    assert parse_proc_cgroup("0::/a/b\n") == "/a/b"
    assert parse_proc_cgroup("12:memory:/kubepods/x\n1:name=systemd:/other\n0::/\n") == "/"  # hybrid: the v2 line
    assert parse_proc_cgroup("3:devices:/d\n2:cpu,cpuacct:/c\n") == "/c"
    assert parse_proc_cgroup("garbage\n") is None


def test_pod_directory_reads_log_dirs_then_kubelet_pod_dirs():
    pods = k8s.PodDirectory(str(NODE / "var/lib/kubelet"), str(NODE / "var/log")).scan()
    web = pods[UID1]
    assert (web.namespace, web.name) == ("shop", "web-0")
    assert web.containers == {C1: "nginx", C2: "sidecar"} and web.container_names == ("nginx", "sidecar")
    worker = pods[UID2]  # no log directory: etc-hosts and the service-account volume
    assert (worker.namespace, worker.name, worker.containers, worker.container_names) == ("batch", "worker-x", {}, ("worker",))
    assert "not-a-uid" not in pods and set(pods) == {UID1, UID2, "99999999-8888-4777-8666-555555555555"}


def test_cgroup_id_names_pod_and_container():
    r = resolver()
    assert r.attributes_for(cgroup_id=cgid(POD1_CG / f"cri-containerd-{C1}.scope")) == {
        "k8s.pod.uid": UID1, "k8s.pod.name": "web-0", "k8s.namespace.name": "shop",
        "k8s.container.name": "nginx", "container.id": C1, "k8s.node.name": "node-1"}
    assert r.attributes_for(cgroup_id=cgid(POD1_CG / f"cri-containerd-{C2}.scope"))["k8s.container.name"] == "sidecar"
    # CRI-O pod known only from the kubelet pod directory: its one container
    assert r.attributes_for(cgroup_id=cgid(POD2_CG / f"crio-{C3}.scope")) == {
        "k8s.pod.uid": UID2, "k8s.pod.name": "worker-x", "k8s.namespace.name": "batch",
        "k8s.container.name": "worker", "container.id": C3, "k8s.node.name": "node-1"}
    # pod-level cgroup and CRI-O's monitor: the pod, no container
    assert r.attributes_for(cgroup_id=cgid(POD1_CG)) == {
        "k8s.pod.uid": UID1, "k8s.pod.name": "web-0", "k8s.namespace.name": "shop", "k8s.node.name": "node-1"}
    assert "k8s.container.name" not in r.attributes_for(cgroup_id=cgid(POD2_CG / f"crio-conmon-{C3}.scope"))
    st = r.stats()
    assert st["hits"] == 5 and st["misses"] == 0
    assert st["rescans"] == 2  # one walk of the cgroup tree, one scan of the pod directories, for five lookups


def test_cgroup_outside_kubepods_and_unknown_ids_are_counted_misses():
    r = resolver()
    assert r.attributes_for(cgroup_id=cgid(NODE / "sys/fs/cgroup/system.slice/containerd.service")) == {}
    assert r.stats()["miss_unknown_cgroup"] == 1  # the walk covers kubepods subtrees only
    assert r.attributes_for(cgroup_id=12345678901) == {}
    st = r.stats()
    assert st["misses"] == 2 and st["miss_unknown_cgroup"] == 2 and st["hits"] == 0


def test_netns_names_the_pod_and_the_container_only_when_unambiguous():
    r = resolver()
    # web-0: nginx and sidecar (and the pause container) share the namespace -> pod only
    assert r.attributes_for(netns_inode=NS_POD1) == {
        "k8s.pod.uid": UID1, "k8s.pod.name": "web-0", "k8s.namespace.name": "shop", "k8s.node.name": "node-1"}
    # worker-x: one container in the pod
    assert r.attributes_for(netns_inode=NS_POD2) == {
        "k8s.pod.uid": UID2, "k8s.pod.name": "worker-x", "k8s.namespace.name": "batch",
        "k8s.container.name": "worker", "k8s.node.name": "node-1"}
    assert r.stats()["hits"] == 2


def test_netns_misses_by_reason():
    r = resolver()
    assert r.attributes_for(netns_inode=NS_HOST) == {}  # host namespace (with a hostNetwork pod in it)
    assert r.attributes_for(netns_inode=NS_POD4) == {"k8s.pod.uid": UID4, "k8s.node.name": "node-1"}
    assert r.attributes_for(netns_inode=4026539999) == {}
    st = r.stats()
    assert (st["miss_not_a_pod"], st["miss_no_metadata"], st["miss_unknown_netns"], st["misses"], st["hits"]) == (1, 1, 1, 3, 0)


def test_cgroup_and_netns_together():
    r = resolver()
    c1 = cgid(POD1_CG / f"cri-containerd-{C1}.scope")
    assert r.attributes_for(netns_inode=NS_POD1, cgroup_id=c1)["k8s.container.name"] == "nginx"
    # a task of worker-x running in web-0's namespace: the cgroup (the task) wins
    both = r.attributes_for(netns_inode=NS_POD1, cgroup_id=cgid(POD2_CG / f"crio-{C3}.scope"))
    assert both["k8s.pod.name"] == "worker-x"
    # cgroup unknown: the namespace still names the pod
    assert r.attributes_for(netns_inode=NS_POD2, cgroup_id=1)["k8s.pod.name"] == "worker-x"


def test_no_keys_and_missing_roots_give_empty_results_not_errors(tmp_path):
    assert resolver().attributes_for() == {}
    assert resolver().attributes_for(netns_inode=0, cgroup_id=0) == {}
    r = resolver(tmp_path / "nothing")
    assert r.attributes_for(netns_inode=NS_POD1, cgroup_id=5) == {}
    assert r.stats()["misses"] == 2


def test_node_name_only_from_the_environment():
    attrs = resolver(environ={}).attributes_for(netns_inode=NS_POD1)
    assert "k8s.node.name" not in attrs and attrs["k8s.pod.name"] == "web-0"
    assert resolver(environ={"K8S_NODE_NAME": "a", "NODE_NAME": "b"}).attributes_for(netns_inode=NS_POD1)["k8s.node.name"] == "a"


def _new_pod(root: Path, uid: str, ns: int, cid: str, name: str, namespace: str) -> None:
    seg = f"kubepods-besteffort-pod{uid.replace('-', '_')}.slice"
    (root / f"sys/fs/cgroup/kubepods.slice/kubepods-besteffort.slice/{seg}/cri-containerd-{cid}.scope").mkdir(parents=True)
    (root / "proc/500/ns").mkdir(parents=True)
    os.symlink(f"net:[{ns}]", root / "proc/500/ns/net")
    (root / "proc/500/cgroup").write_text(f"0::/kubepods.slice/kubepods-besteffort.slice/{seg}/cri-containerd-{cid}.scope\n")
    (root / f"var/log/pods/{namespace}_{name}_{uid}/app").mkdir(parents=True)
    (root / f"var/log/containers/{name}_{namespace}_app-{cid}.log").write_text("")


def test_a_new_pod_is_found_after_the_rescan_interval_and_misses_do_not_rescan_every_event(tmp_path):
    root = tmp_path / "node"
    shutil.copytree(NODE, root, symlinks=True)
    clock = Clock()
    r = resolver(root, clock=clock, rescan_interval_s=5, ttl_s=60)
    assert r.attributes_for(netns_inode=4026532777) == {}
    scans = r.stats()["rescans"]
    uid = "abcdef01-2345-4678-89ab-cdef01234567"
    _new_pod(root, uid, 4026532777, "77" * 32, "late", "shop")
    for _ in range(100):  # a flood of events from the new namespace within the interval: cached miss, no scan
        assert r.attributes_for(netns_inode=4026532777) == {}
    assert r.stats()["rescans"] == scans and r.stats()["miss_unknown_netns"] == 101
    clock.t += 5.1
    assert r.attributes_for(netns_inode=4026532777) == {
        "k8s.pod.uid": uid, "k8s.pod.name": "late", "k8s.namespace.name": "shop",
        "k8s.container.name": "app", "container.id": "77" * 32, "k8s.node.name": "node-1"}


def test_positive_entries_expire_after_ttl(tmp_path):
    root = tmp_path / "node"
    shutil.copytree(NODE, root, symlinks=True)
    clock = Clock()
    r = resolver(root, clock=clock, rescan_interval_s=5, ttl_s=60)
    assert r.attributes_for(netns_inode=NS_POD2)["k8s.pod.name"] == "worker-x"
    shutil.rmtree(root / "proc/200")  # the pod went away (and its netns inode may be reused)
    clock.t += 30
    assert r.attributes_for(netns_inode=NS_POD2)["k8s.pod.name"] == "worker-x"  # still cached
    clock.t += 31
    assert r.attributes_for(netns_inode=NS_POD2) == {}
    assert r.stats()["miss_unknown_netns"] == 1


def test_cache_is_bounded_and_evictions_counted():
    r = resolver(max_entries=2)
    for ns in (NS_POD1, NS_POD2, NS_POD4, NS_POD1):
        r.attributes_for(netns_inode=ns)
    st = r.stats()
    assert st["evictions"] == 2 and len(r._cache) == 2 and st["cache_hits"] == 0


def test_scans_are_bounded_and_truncation_counted():
    r = resolver(max_pids=2)
    r.attributes_for(netns_inode=NS_POD4)
    assert r.stats()["truncated_scans"] == 1


def test_own_scope_reads_self():
    own = own_scope(str(NODE / "proc"))
    assert own == OwnScope(NS_POD1, f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID1.replace('-', '_')}.slice/cri-containerd-{C1}.scope",
                           UID1, False)
    assert own_scope(str(NODE / "nope")) == OwnScope(None, None, None, None)


@pytest.mark.parametrize("mode,own,pods,ok,needle", [
    ("node", OwnScope(1, "/", None, True), None, True, "node: every network namespace"),
    ("node", OwnScope(1, "/", None, False), None, True, "not in the host's network namespace"),
    ("sidecar", OwnScope(4026532001, "/x", UID1, False), None, True, f"only network namespace 4026532001 (this process's) (own cgroup /x) (pod {UID1})"),
    ("sidecar", OwnScope(1, "/", None, True), None, False, "the host's network namespace"),
    ("daemonset", OwnScope(1, "/", None, True), 3, True, "attributed to pods of node node-1 (3 pods on disk now)"),
    ("daemonset", OwnScope(1, "/", None, True), 0, False, "no pod found"),
])
def test_describe_scope(mode, own, pods, ok, needle):
    got_ok, detail, fix = describe_scope(mode, own, pods, node="node-1")
    assert got_ok is ok and needle in detail
    assert bool(fix) is (not ok)


def test_check_has_a_scope_line_per_mode():
    from otel_kernelnet.check import DEGRADED, OK, check_scope
    kw = dict(proc_root=str(NODE / "proc"), kubelet_root=str(NODE / "var/lib/kubelet"), log_root=str(NODE / "var/log"),
              environ={"NODE_NAME": "node-1"}, mounts_text=MOUNTS_TEXT)
    c = check_scope("daemonset", **kw)
    assert (c.name, c.status) == ("scope", OK) and "(3 pods on disk now)" in c.detail and "node-1" in c.detail
    assert "reclaim: every cgroup" in c.detail and "softirq: every CPU" in c.detail
    c = check_scope("sidecar", **kw)
    assert c.status == OK and f"only network namespace {NS_POD1}" in c.detail and UID1 in c.detail
    # per family: packets by namespace, reclaim by the pod's cgroup (the pod level of /proc/self/cgroup)
    pod_rel = "/" + str(POD1_CG.relative_to(NODE / "sys/fs/cgroup"))
    assert f"drop, tcp, lifecycle, netns_counters: network namespace(s) {NS_POD1} only" in c.detail
    assert f"reclaim: stalls of tasks in cgroup {pod_rel} (cgroup v2 id {cgid(POD1_CG)}, level 3; the pod of " in c.detail
    assert "softirq: only the softirq spans this scope's packets waited through" in c.detail
    # no v2 hierarchy (pure v1): reclaim is not scoped, and check says so (degraded, with the fix)
    c = check_scope("sidecar", **{**kw, "mounts_text": "cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n"})
    assert c.status == DEGRADED and "reclaim: not scoped: no cgroup v2 hierarchy is mounted (pure cgroup v1)" in c.detail
    assert "scope.cgroup" in c.fix
    c = check_scope("node", **{**kw, "cgroup": "/nope"})
    assert c.status == "fail" and "no such cgroup" in c.detail
    c = check_scope("daemonset", **{**kw, "kubelet_root": "/nonexistent", "log_root": "/nonexistent"})
    assert c.status == DEGRADED and "hostPID" in c.fix
    assert check_scope("node", **kw).detail.startswith("node: every network namespace")


def test_check_scope_with_explicit_namespaces(tmp_path):
    from otel_kernelnet.check import FAIL, OK, check_scope
    c = check_scope("sidecar", [4026532001, 4026532002], proc_root=str(NODE / "proc"), mounts_text=MOUNTS_TEXT)
    assert c.status == OK and "4026532001, 4026532002 only" in c.detail
    c = check_scope("node", [str(tmp_path / "missing")], proc_root=str(NODE / "proc"))
    assert c.status == FAIL and "cannot stat" in c.detail
