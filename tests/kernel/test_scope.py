"""Scope (issue 8): two network namespaces with traffic and drops in each. A sidecar
collector running inside one reports only that one's events; a collector scoped by
``scope.netns`` likewise; an unscoped (node) collector reports both, each attributed
to its own namespace. Prime counts per namespace (7 and 11 drops) make a leak or a
misattribution visible as a wrong count.
"""

from __future__ import annotations

import sys
import uuid

import pytest

from tests.kernel.conftest import Netns, read_store

DROPS = r"""
import socket, sys
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(int(sys.argv[1])):
    u.sendto(b"x" * 16, ("127.0.0.1", 9))  # nobody listens: a NO_SOCKET drop each
"""


@pytest.fixture
def two_namespaces():
    made = []
    try:
        for _ in range(2):
            made.append(Netns(f"kn-s-{uuid.uuid4().hex[:8]}"))
        yield made
    finally:
        for ns in made:
            ns.delete()


def _drops_by_ns(spans, inodes):
    out = {i: 0 for i in inodes}
    other = 0
    for s in spans:
        if s["name"] != "kernel.skb.drop" or s["attributes"].get("destination.port") != 9:
            continue
        ns = s["attributes"].get("kernelnet.netns")
        if ns in out:
            out[ns] += 1
        else:
            other += 1
    return out, other


def test_scoped_collectors_report_only_their_namespace_and_node_mode_reports_both(two_namespaces, collector):
    ns1, ns2 = two_namespaces
    sidecar = collector(config={"scope": {"mode": "sidecar"}}, prefix=("ip", "netns", "exec", ns1.name))
    assert "scope (sidecar): network namespace(s) %d only" % ns1.inode in sidecar.text()
    listed = collector(config={"scope": {"netns": [f"/run/netns/{ns2.name}"]}})
    node = collector()
    ns1.exec(sys.executable, "-c", DROPS, "7")
    ns2.exec(sys.executable, "-c", DROPS, "11")
    for c in (sidecar, listed, node):
        assert c.stop() == 0, c.text()
    inodes = (ns1.inode, ns2.inode)

    by_ns, other = _drops_by_ns(read_store(sidecar.output), inodes)
    assert by_ns == {ns1.inode: 7, ns2.inode: 0}, sidecar.text()
    # nothing from any other namespace either (the host's own traffic is out of scope)
    assert all(s["attributes"].get("kernelnet.netns") == ns1.inode for s in read_store(sidecar.output)
               if "kernelnet.netns" in s["attributes"])

    by_ns, _ = _drops_by_ns(read_store(listed.output), inodes)
    assert by_ns == {ns1.inode: 0, ns2.inode: 11}, listed.text()

    by_ns, _ = _drops_by_ns(read_store(node.output), inodes)
    assert by_ns == {ns1.inode: 7, ns2.inode: 11}, node.text()
