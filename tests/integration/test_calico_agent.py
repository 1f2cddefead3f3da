"""Calico's datastore in the lab's etcd and the calico-node agent per node: its records, the
routes it (not the engine) programs, a pod's allocation following the kubelet, a killed agent
restarted with nothing lost, and down.

One lab per mode (calico-vxlan, calico-ipip with whatever datapath `auto` picks), shared by
the file; the tests run in order per lab and each leaves it as `up` made it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest

from labctl import state
from labctl.nsutil import nsenter_argv

from .conftest import labctl, labctl_json, run_name
from .test_lab import assert_gone

pytestmark = pytest.mark.root

MODES = {"calico-vxlan": "flx-vx", "calico-ipip": "flx-ip"}
NODE2_BLOCK = "10.244.2.0/26"
BLOCK_KEY = "/calico/ipam/v2/assignment/ipv4/block/10.244.2.0-26"
POD = """\
apiVersion: v1
kind: Pod
metadata: {name: solo, namespace: test}
spec:
  nodeName: node2
  containers: [{name: c, image: busybox}]
"""


@pytest.fixture(scope="module", params=list(MODES))
def lab(request: pytest.FixtureRequest) -> Iterator[str]:
    name = MODES[request.param]
    labctl("down", "-n", name, check=False)
    labctl("up", request.param, "-n", name)
    try:
        yield name
    finally:
        labctl("down", "-n", name, check=False)


def _routes(lab: str, node: str) -> str:
    # nsenter straight, not `labctl exec`: polling must be cheap.
    pid = state.load(run_name(lab)).namespaces[node].pid
    argv = nsenter_argv(pid, ["ip", "route"])
    return subprocess.run(argv, capture_output=True, text=True).stdout


def _etcd(lab: str, *args: str) -> str:
    argv = ["nsenter", f"--net=/run/netns/labctl-{run_name(lab)}", "etcdctl", *args]
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


def _wait(what: str, cond: object, timeout: float = 30.0) -> None:
    started = time.monotonic()
    while not cond():  # type: ignore[operator]
        assert time.monotonic() - started < timeout, f"timed out waiting for {what}"
        time.sleep(0.1)


def _has_block(lab: str, node: str) -> bool:
    return any(line.startswith(NODE2_BLOCK + " via") for line in _routes(lab, node).splitlines())


def test_records_in_etcd_and_verify(lab: str) -> None:
    out = labctl("exec", "-n", lab, "etcd", "--", "etcdctl", "get", "--prefix", "/calico")
    lines = out.stdout.splitlines()
    records = dict(zip(lines[0::2], lines[1::2], strict=True))
    for node, block in (("master", "10.244.0.0-26"), ("node1", "10.244.1.0-26")):
        assert f"/calico/ipam/v2/host/{node}/ipv4/block/{block}" in records
        doc = json.loads(records[f"/calico/ipam/v2/assignment/ipv4/block/{block}"])
        assert doc["affinity"] == f"host:{node}"
    node2 = json.loads(records["/calico/resources/v3/projectcalico.org/nodes/node2"])
    assert node2["spec"]["bgp"]["ipv4Address"] == "10.0.0.33/24"
    pool = records["/calico/resources/v3/projectcalico.org/ippools/default-ipv4-ippool"]
    vxlan = lab == MODES["calico-vxlan"]
    if vxlan:
        assert node2["spec"]["ipv4VXLANTunnelAddr"] == "10.244.2.1"
        assert json.loads(pool)["spec"]["vxlanMode"] == "Always"
    else:
        assert node2["spec"]["bgp"]["ipv4IPIPTunnelAddr"] == "10.244.2.1"
        assert json.loads(pool)["spec"]["ipipMode"] == "Always"
    report = labctl_json("verify", "-n", lab)
    assert report["passed"], [c for c in report["checks"] if not c["passed"]]


def test_deleting_a_block_record_drops_its_route(lab: str) -> None:
    value = _etcd(lab, "get", BLOCK_KEY, "--print-value-only").strip()
    assert _has_block(lab, "node1") and _has_block(lab, "master")
    _etcd(lab, "del", BLOCK_KEY)
    # The engine programmed nothing of this: the agents take it away.
    _wait("node1 and master drop node2's block", lambda: not _has_block(lab, "node1"))
    _wait("master drops node2's block", lambda: not _has_block(lab, "master"))
    _etcd(lab, "put", BLOCK_KEY, value)
    _wait("the route back", lambda: _has_block(lab, "node1") and _has_block(lab, "master"))


def test_pod_allocations_follow_the_kubelet(lab: str) -> None:
    if lab != MODES["calico-vxlan"]:
        pytest.skip("the same supervisor code in every Calico mode: one lab is enough")

    def handles() -> list[str]:
        block = json.loads(_etcd(lab, "get", BLOCK_KEY, "--print-value-only"))
        return [a["handle_id"] for a in block["attributes"]]

    assert "k8s-pod-network.test.solo" not in handles()
    labctl("apply", "-n", lab, "-f", "-", stdin=POD)
    assert "k8s-pod-network.test.solo" in handles()
    labctl("delete", "-n", lab, "-f", "-", stdin=POD)
    assert "k8s-pod-network.test.solo" not in handles()
    assert "vxlan-tunnel-addr-node2" in handles()


def test_killed_agent_is_restarted_with_nothing_lost(lab: str) -> None:
    before = labctl_json("status", "-n", lab)["processes"]["node1:calico-node"]
    os.kill(before, signal.SIGKILL)
    # Killing Felix takes nothing out of the kernel.
    assert _has_block(lab, "node1")
    _wait(
        "the agent restarted",
        lambda: labctl_json("status", "-n", lab)["processes"]["node1:calico-node"] != before,
    )
    # The new agent works: it follows a deletion again.
    value = _etcd(lab, "get", BLOCK_KEY, "--print-value-only").strip()
    _etcd(lab, "del", BLOCK_KEY)
    _wait("node1 drops node2's block", lambda: not _has_block(lab, "node1"))
    _etcd(lab, "put", BLOCK_KEY, value)
    _wait("the route back", lambda: _has_block(lab, "node1"))
    report = labctl_json("verify", "-n", lab)
    assert report["passed"], [c for c in report["checks"] if not c["passed"]]


def test_down_leaves_nothing(lab: str) -> None:
    labctl("down", "-n", lab)
    assert_gone(lab)
