"""Nodes joining and leaving running labs (`labctl node add|remove`): one lab per mode family,
shared by its tests, which run in file order.

flannel-vxlan (default.yaml) carries the whole story: a node joins, a Deployment's pod lands
on it and reaches the others, verify passes; bad input is refused with nothing changed; the
node leaves (its pod replaced elsewhere), its routes and lease are gone, verify passes; down
leaves the host as it was. calico-bgp on route-reflector.yaml: a client joins through the
reflector, the only reflector cannot leave, the client leaves. The other flannel backends join
and leave on two-node.yaml (traffic probed where a datapath daemon, not the kernel, holds the
peers)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from labctl import state
from labctl.nsutil import nsenter_argv

from .conftest import host_snapshot, labctl, labctl_json, run_name
from .test_lab import assert_gone

pytestmark = pytest.mark.root

DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: joiner, namespace: default}
spec:
  replicas: 1
  selector: {matchLabels: {app: joiner}}
  template:
    metadata: {labels: {app: joiner}}
    spec:
      containers: [{name: app, image: nginx}]
"""
POD = """
apiVersion: v1
kind: Pod
metadata: {{name: on-{node}, namespace: default, labels: {{app: joiner}}}}
spec:
  nodeName: {node}
  containers: [{{name: app, image: nginx}}]
"""


def _routes(lab: str, node: str) -> str:
    pid = state.load(run_name(lab)).namespaces[node].pid
    argv = nsenter_argv(pid, ["ip", "route"], mount=False)
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


def _nodes(lab: str) -> list[str]:
    return [n["name"] for n in labctl_json("status", "-n", lab)["nodes"]]


def _leases(lab: str) -> str:
    argv = ["nsenter", f"--net=/run/netns/labctl-{run_name(lab)}", "etcdctl", "get"]
    argv += ["--prefix", "--keys-only", "/coreos.com/network/subnets"]
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


def _verified(lab: str, node: str) -> None:
    """verify passes, and checked the wire between a pod on `node` and the other nodes."""
    report = labctl_json("verify", "-n", lab)
    assert report["passed"], [c for c in report["checks"] if not c["passed"]]
    wire = [c["name"] for c in report["checks"] if c["name"].startswith("wire ")]
    assert f"wire {node} -> " in " ".join(wire) and f" -> {node}" in " ".join(wire), wire


# ---- flannel-vxlan: the whole story ----

VX = "nm-vx"


@pytest.fixture(scope="module")
def vx() -> Iterator[dict[str, str]]:
    labctl("down", "-n", VX, check=False)
    before = host_snapshot()
    labctl("up", "flannel-vxlan", "-n", VX)
    yield before
    labctl("down", "-n", VX, check=False)


def test_vxlan_node_joins_and_takes_pods(vx: dict[str, str]) -> None:
    reply = labctl_json("node", "add", "-n", VX, "node3", "--segment", "lan1", "--ip", "10.0.0.34")
    assert reply["podCIDR"] == "10.244.3.0/24" and reply["by"] == "flannel lease watch"
    # The real join: the new agent's lease, and every other agent programmed it.
    assert "10.244.3.0-24" in _leases(VX)
    for node in ("master", "node1", "node2"):
        assert "10.244.3.0/24 via 10.244.3.0 dev flannel.1 onlink" in _routes(VX, node)
    assert "10.244.0.0/24 via 10.244.0.0 dev flannel.1 onlink" in _routes(VX, "node3")
    # The scheduler sees the node (it has the fewest pods): the replica lands there.
    labctl("apply", "-n", VX, "-f", "-", stdin=DEPLOYMENT)
    pods = labctl_json("status", "-n", VX)["pods"]
    assert [p["node"] for p in pods if p["name"].startswith("joiner-")] == ["node3"]
    _verified(VX, "node3")


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["node4", "--segment", "lan9", "--ip", "10.0.0.40"], "--segment 'lan9'"),
        (["node4", "--segment", "lan1", "--ip", "10.0.1.40"], "--ip 10.0.1.40: not a host"),
        (["node4", "--segment", "lan1", "--ip", "10.0.0.32"], "already used by nodes.node1"),
        (["node1", "--segment", "lan1", "--ip", "10.0.0.40"], "NAME 'node1' is already used"),
        (["Node4", "--segment", "lan1", "--ip", "10.0.0.40"], "DNS-1123"),
        (
            ["node4", "--segment", "lan1", "--ip", "10.0.0.40", "--pod-cidr", "10.244.1.0/24"],
            "overlaps node node1's",
        ),
    ],
)
def test_bad_node_add_is_refused_and_changes_nothing(
    vx: dict[str, str], args: list[str], says: str
) -> None:
    lab = state.lab_dir(run_name(VX))
    records = {f: (lab / f).read_bytes() for f in ("topology.yaml", "plan.json", "store.json")}
    routes = _routes(VX, "master")
    proc = labctl("node", "add", "-n", VX, *args, check=2)
    assert says in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert {f: (lab / f).read_bytes() for f in records} == records
    assert _routes(VX, "master") == routes


def test_bad_node_remove_is_refused(vx: dict[str, str]) -> None:
    proc = labctl("node", "remove", "-n", VX, "node9", check=2)
    assert "NAME 'node9' is not a node" in proc.stderr
    # kubectl drain's habit: pods no controller manages make it refuse without --force.
    proc = labctl("node", "remove", "-n", VX, "node2", check=2)
    assert "default/web-3" in proc.stderr and "--force" in proc.stderr
    assert "node2" in _nodes(VX) and "10.244.2.0/24" in _routes(VX, "master")


def test_vxlan_node_leaves(vx: dict[str, str]) -> None:
    # Only a Deployment's pod runs there: the drain needs no --force and replaces it.
    proc = labctl("node", "remove", "-n", VX, "node3")
    assert "evicted" in proc.stdout and "replaces an evicted pod" in proc.stdout
    pods = labctl_json("status", "-n", VX)["pods"]
    assert [p["node"] for p in pods if p["name"].startswith("joiner-")] == ["master"]
    assert "node3" not in _nodes(VX) and "10.244.3.0-24" not in _leases(VX)
    for node in ("master", "node1", "node2"):
        assert "10.244.3.0/24" not in _routes(VX, node)
    report = labctl_json("verify", "-n", VX)
    assert report["passed"], [c for c in report["checks"] if not c["passed"]]


def test_vxlan_down_leaves_nothing(vx: dict[str, str]) -> None:
    labctl("down", "-n", VX)
    assert_gone(VX)
    assert host_snapshot() == vx


# ---- calico-bgp with a route reflector ----

BGP = "nm-bgp"


@pytest.fixture(scope="module")
def bgp() -> Iterator[str]:
    labctl("down", "-n", BGP, check=False)
    labctl("up", "calico-bgp", "-t", "route-reflector", "-n", BGP)
    yield BGP
    labctl("down", "-n", BGP, check=False)


def _vtysh(lab: str, node: str, cmd: str) -> str:
    return labctl("exec", "-n", lab, node, "--", "vtysh", "-c", cmd).stdout


def test_bgp_client_joins_through_the_reflector(bgp: str) -> None:
    reply = labctl_json("node", "add", "-n", bgp, "node5", "--segment", "lan1", "--ip", "10.0.0.15")
    assert reply["by"] == "BGP" and reply["podCIDR"] == "10.244.4.0/24"
    peers = json.loads(_vtysh(bgp, "node1", "show bgp summary json"))["ipv4Unicast"]["peers"]
    assert peers["10.0.0.15"]["state"] == "Established"
    for node in ("node1", "node2", "node3", "node4"):
        (line,) = [x for x in _routes(bgp, node).splitlines() if x.startswith("10.244.4.0/26")]
        assert "via 10.0.0.15 dev eth0 proto bgp" in line
    labctl("apply", "-n", bgp, "-f", "-", stdin=POD.format(node="node5"))
    # verify's BGP checks count the sessions the design now calls for (one more client).
    _verified(bgp, "node5")


def test_only_reflector_cannot_leave(bgp: str) -> None:
    proc = labctl("node", "remove", "-n", bgp, "node1", "--force", check=2)
    assert "only BGP route reflector" in proc.stderr
    assert "node1" in _nodes(bgp)


def test_bgp_client_leaves(bgp: str) -> None:
    labctl("node", "remove", "-n", bgp, "node5", "--force")
    for node in ("node1", "node2", "node3", "node4"):
        assert "10.244.4.0/26" not in _routes(bgp, node)
    peers = json.loads(_vtysh(bgp, "node1", "show bgp summary json"))["ipv4Unicast"]["peers"]
    assert "10.0.0.15" not in peers
    conf = labctl("exec", "-n", bgp, "node1", "--", "cat", "/etc/frr/frr.conf").stdout
    assert "10.0.0.15" not in conf
    report = labctl_json("verify", "-n", bgp)
    assert report["passed"], [c for c in report["checks"] if not c["passed"]]


# ---- the other flannel backends ----


@pytest.mark.parametrize(
    ("mode", "traffic"),
    [
        # The agents' own per-peer routes, as vxlan above: the routes are the proof.
        ("flannel-host-gw", False),
        ("flannel-vxlan-directrouting", False),
        # Peer tables in userspace and BPF datapaths re-read on SIGHUP: proved by traffic,
        # a full verify (probes and the wire) with a pod on the new node.
        ("flannel-udp", True),
        ("flannel-ipip", True),
    ],
)
def test_flannel_backend_join_and_leave(lab: list[str], mode: str, traffic: bool) -> None:
    lab.append("nm-fl")
    labctl("up", mode, "-t", "two-node", "-n", "nm-fl")
    labctl("node", "add", "-n", "nm-fl", "host3", "--segment", "lan", "--ip", "192.168.0.50")
    # udp has one route into flannel0 and keeps the peers in its proxy's table.
    table = Path(state.lab_dir(run_name("nm-fl")), "daemons", "host1-udpproxy.json")
    if mode == "flannel-udp":
        assert "192.168.0.50" in table.read_text()
    else:
        assert "10.1.0.0/24 via 192.168.0.50" in _routes("nm-fl", "host1")
    if traffic:
        # verify: the probe matrix, and on the wire the new node's traffic in flannel's
        # encapsulation (UDP 8285 / IPIP) both ways.
        labctl("apply", "-n", "nm-fl", "-f", "-", stdin=POD.format(node="host3"))
        _verified("nm-fl", "host3")
    labctl("node", "remove", "-n", "nm-fl", "host3", "--force")
    assert "10.1.0.0-24" not in _leases("nm-fl")
    for node in ("host1", "host2"):
        assert "10.1.0.0/24" not in _routes("nm-fl", node)
    if mode == "flannel-udp":
        assert "192.168.0.50" not in table.read_text()
    labctl("down", "-n", "nm-fl")
    assert_gone("nm-fl")
