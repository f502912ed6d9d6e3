"""kernel/cgroups.py: which hierarchy ids come from, id -> path, container ids."""

import os

from otel_kernelnet.kernel import cgroups

HYBRID = """cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
"""
PURE_V2 = "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec 0 0\n"


def test_choose_the_hierarchy():
    s = cgroups.choose(cgroups.parse_mounts(HYBRID), "hugetlb\n")
    assert (s.mode, s.root, s.subsys) == (1, "/sys/fs/cgroup/memory", "memory")
    s = cgroups.choose(cgroups.parse_mounts(HYBRID), "memory pids\n")  # memory moved to v2
    assert (s.mode, s.root) == (0, "/sys/fs/cgroup/unified")
    s = cgroups.choose(cgroups.parse_mounts(PURE_V2), None)
    assert (s.mode, s.root) == (0, "/sys/fs/cgroup")
    assert cgroups.choose([], None).root is None


def test_paths_by_inode_with_bounded_rescans(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    now = [0.0]
    paths = cgroups.CgroupPaths(str(tmp_path), rescan_s=10, clock=lambda: now[0])
    assert paths.path(os.stat(tmp_path / "a" / "b").st_ino) == "/a/b"
    assert paths.path(os.stat(tmp_path).st_ino) == "/"
    (tmp_path / "c").mkdir()
    ino_c = os.stat(tmp_path / "c").st_ino
    assert paths.path(ino_c) is None and paths.scans == 1  # not rescanned within rescan_s
    now[0] = 11
    assert paths.path(ino_c) == "/c" and paths.scans == 2
    assert paths.path(0) is None and cgroups.CgroupPaths(None).path(5) is None


def test_container_ids():
    cid = "0123456789abcdef" * 4
    assert cgroups.container_id(f"/kubepods.slice/kubepods-pod1.slice/cri-containerd-{cid}.scope") == cid
    assert cgroups.container_id(f"/kubepods/besteffort/pod1234/{cid}") == cid
    assert cgroups.container_id(f"/docker/{cid}") == cid
    assert cgroups.container_id("/system.slice/sshd.service") is None
