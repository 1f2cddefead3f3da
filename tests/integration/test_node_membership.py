"""Nodes joining and leaving running labs (`labctl node add|remove`): one lab per mode family,
shared by its tests, which run in file order.

flannel-vxlan (default.yaml) carries the whole story: a node joins, a Deployment's pod lands
on it and reaches the others, verify passes; bad input is refused with nothing changed; the
node leaves (its pod replaced elsewhere), its routes and lease are gone, verify passes; down
leaves the host as it was. calico-bgp on route-reflector.yaml: a client joins through the
reflector, the only reflector cannot leave, the client leaves. The other flannel backends join
and leave on two-node.yaml (verified on the wire where a datapath daemon, not the kernel, holds
the peers). The calico-node modes and canal: one lab per mode, a node joins, takes a pod,
verify passes (and fails when one peer's route to it is tampered with), the node leaves
without a trace in any other node or in etcd."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Network
from pathlib import Path

import pytest

from labctl import state
from labctl.nsutil import nsenter_argv
from labctl.probe import http_get

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
    "mode", ["flannel-host-gw", "flannel-vxlan-directrouting", "flannel-udp", "flannel-ipip"]
)
def test_flannel_backend_join_and_leave(lab: list[str], mode: str) -> None:
    """Each backend's join and leave, proved by its peer state (routes; udp: the proxy's
    table) and by a full verify after each: the probes, and on the wire the new node's
    traffic in the backend's carrier both ways (host-gw and DirectRouting: bare)."""
    lab.append("nm-fl")
    labctl("up", mode, "-t", "two-node", "-n", "nm-fl")
    labctl("node", "add", "-n", "nm-fl", "host3", "--segment", "lan", "--ip", "192.168.0.50")
    # udp has one route into flannel0 and keeps the peers in its proxy's table.
    table = Path(state.lab_dir(run_name("nm-fl")), "daemons", "host1-udpproxy.json")
    if mode == "flannel-udp":
        assert "192.168.0.50" in table.read_text()
    else:
        assert "10.1.0.0/24 via 192.168.0.50" in _routes("nm-fl", "host1")
    labctl("apply", "-n", "nm-fl", "-f", "-", stdin=POD.format(node="host3"))
    _verified("nm-fl", "host3")
    labctl("node", "remove", "-n", "nm-fl", "host3", "--force")
    assert "10.1.0.0-24" not in _leases("nm-fl")
    for node in ("host1", "host2"):
        assert "10.1.0.0/24" not in _routes("nm-fl", node)
    if mode == "flannel-udp":
        assert "192.168.0.50" not in table.read_text()
    report = labctl_json("verify", "-n", "nm-fl")
    assert report["passed"], [c for c in report["checks"] if not c["passed"]]
    assert not any("host3" in c["name"] for c in report["checks"])
    labctl("down", "-n", "nm-fl")
    assert_gone("nm-fl")


# ---- the calico-node modes and canal: one lab per mode ----


@dataclass(frozen=True)
class Join:
    """A mode's join: the lab, the node that joins, what the others route to it."""

    mode: str
    topology: str
    node: str
    segment: str
    ip: str
    block: str  # what the others route to it: its Calico block, or canal's flannel lease
    dev: str  # the tunnel device those routes use
    #: Old nodes in the new node's subnet: CrossSubnet routes them bare, via eth0.
    bare: tuple[str, ...] = ()

    @property
    def agent(self) -> str:
        return "flannel-agent" if self.mode == "canal" else "calico-node"

    @property
    def records(self) -> list[str]:
        """The node's etcd records: its lease, or its Node, block affinity and block."""
        key = self.block.replace("/", "-")
        if self.mode == "canal":
            return [f"/coreos.com/network/subnets/{key}"]
        return [
            f"/calico/resources/v3/projectcalico.org/nodes/{self.node}",
            f"/calico/ipam/v2/host/{self.node}/ipv4/block/{key}",
            f"/calico/ipam/v2/assignment/ipv4/block/{key}",
        ]


_TWO = ("two-node", "host3", "lan", "192.168.0.50")
_CROSS = ("cross-subnet", "node4", "lan2", "10.0.1.34")
JOINS = {
    j.mode: j
    for j in (
        Join("calico-vxlan", *_TWO, "10.1.0.0/26", "vxlan.calico"),
        Join("calico-ipip", *_TWO, "10.1.0.0/26", "tunl0"),
        Join("canal", *_TWO, "10.1.0.0/24", "flannel.1"),
        Join("calico-vxlan-crosssubnet", *_CROSS, "10.244.3.0/26", "vxlan.calico", ("node3",)),
        Join("calico-ipip-crosssubnet", *_CROSS, "10.244.3.0/26", "tunl0", ("node3",)),
    )
}
JL = "nm-j"
#: The mechanism `node add` names: canal's routes are flanneld's; calico-node's watch
#: programs the others, with BGP sessions announcing the blocks in the IPIP modes.
BY = {
    "canal": "flannel lease watch",
    "calico-vxlan": "calico-node watch",
    "calico-ipip": "calico-node watch; BGP announces",
}
#: canal: the pod on the new node admits pods of host1's CIDR no more (Felix's rules on the
#: new node enforce that), host2's still.
CANAL_POLICY = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: joiner-in, namespace: default}
spec:
  podSelector: {matchLabels: {app: joiner}}
  policyTypes: [Ingress]
  ingress:
    - from: [{ipBlock: {cidr: 10.1.0.0/16, except: [10.1.15.0/24]}}]
"""


@pytest.fixture(scope="module", params=list(JOINS))
def joined(request: pytest.FixtureRequest) -> Iterator[tuple[Join, dict[str, str]]]:
    """One lab per mode, shared by its join, tamper and leave tests (in that order)."""
    join = JOINS[request.param]
    labctl("down", "-n", JL, check=False)
    before = host_snapshot()
    labctl("up", join.mode, "-t", join.topology, "-n", JL)
    yield join, before
    labctl("down", "-n", JL, check=False)


def _node_names(lab: str) -> list[str]:
    """The lab's nodes as its state records them (no CLI round trip)."""
    return [n for n, r in state.load(run_name(lab)).namespaces.items() if r.role == "node"]


def _in(lab: str, node: str, *argv: str, mount: bool = False) -> str:
    pid = state.load(run_name(lab)).namespaces[node].pid
    cmd = nsenter_argv(pid, list(argv), mount=mount)
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout


def _route(lab: str, node: str, dst: str) -> str:
    return _in(lab, node, "ip", "route", "show", "exact", dst).strip()


def _records(lab: str, keys: list[str]) -> list[str]:
    argv = ["nsenter", f"--net=/run/netns/labctl-{run_name(lab)}", "etcdctl", "get"]
    argv += ["--prefix", "--keys-only", "/"]
    held = subprocess.run(argv, capture_output=True, text=True, check=True).stdout.split()
    return [k for k in keys if k in held]


def _touches(line: str, join: Join) -> bool:
    """Whether `line` names the joined node's address or an address or range in its block."""
    block = IPv4Network(join.block)
    for token in line.split():
        try:
            net = IPv4Network(token, strict=False)
        except ValueError:
            continue
        if str(net.network_address) == join.ip or net.subnet_of(block):
            return True
    return False


def _traces(lab: str, node: str, join: Join) -> list[str]:
    """What `node` still holds of the joined node: routes into its block or via its address,
    neighbours (its VTEP) and FDB entries, its address in a datapath's peer table or as a BGP
    neighbour. (The kernel's own ARP entry for its address on eth0 is not the agents': it
    ages out, as on any host.)"""
    routes = [f"route {r}" for r in _in(lab, node, "ip", "route").splitlines()]
    neigh = [
        f"neigh {n}"
        for n in _in(lab, node, "ip", "neigh", "show").splitlines()
        if not (" dev eth0 " in n and "PERMANENT" not in n)
    ]
    fdb = [f"fdb {f}" for f in _in(lab, node, "bridge", "fdb", "show").splitlines()]
    out = [x for x in routes + neigh + fdb if _touches(x, join)]
    daemons = Path(state.lab_dir(run_name(lab)), "daemons")
    for table in daemons.glob(f"{node}-*.json"):
        agent = table.name.endswith(("-calico-node.json", "-flannel-agent.json"))
        if not agent and f'"{join.ip}"' in table.read_text():
            out.append(f"peer table {table.name}")
    if "ipip" in join.mode:  # BIRD's part: its BGP sessions (announcing the blocks)
        conf = _in(lab, node, "cat", "/etc/frr/frr.conf", mount=True)
        out += [f"frr.conf {x.strip()}" for x in conf.splitlines() if f" {join.ip} " in x]
    return out


def test_node_joins_live(joined: tuple[Join, dict[str, str]]) -> None:
    join, _ = joined
    args = ["node", "add", "-n", JL, join.node, "--segment", join.segment, "--ip", join.ip]
    reply = labctl_json(*args)
    assert reply["by"] == BY[join.mode.removesuffix("-crosssubnet")]
    # Its records in etcd, and every other node routes its block the mode's way.
    assert _records(JL, join.records) == join.records
    old = [n for n in _node_names(JL) if n != join.node]
    for node in old:
        route = _route(JL, node, join.block)
        dev = "eth0" if node in join.bare else join.dev
        assert f" dev {dev} " in f"{route} ", (node, route)
        if join.dev == "vxlan.calico" and node not in join.bare:  # its VTEP, from its Node
            vtep = str(IPv4Network(join.block).network_address + 1)
            assert "PERMANENT" in _in(JL, node, "ip", "neigh", "show", vtep, "dev", join.dev)
    # The new node's tunnel device routes every old node's block but those CrossSubnet
    # sends bare.
    own = _in(JL, join.node, "ip", "route").splitlines()
    tunnelled = [r for r in own if f" dev {join.dev} " in f"{r} "]
    assert len(tunnelled) == len([n for n in old if n not in join.bare]), own
    labctl("apply", "-n", JL, "-f", "-", stdin=POD.format(node=join.node))
    report = labctl_json("verify", "-n", JL)
    assert report["passed"], [c for c in report["checks"] if not c["passed"]]
    checks = {c["name"]: c["detail"] for c in report["checks"]}
    # The wire between the new node and every old one, both ways, as the mode encapsulates.
    for node in old:
        for name in (f"wire {node} -> {join.node}", f"wire {join.node} -> {node}"):
            bare = node in join.bare
            want = "bare packets" if bare else ("IPIP" if join.dev == "tunl0" else "VXLAN")
            assert want in checks[name], (name, checks[name])
    # The new node's Felix part (every Calico mode and canal): its nft table as compiled...
    assert "as compiled" in checks[f"policy table {join.node}"]
    if join.mode == "canal":
        # ...and it enforces: a policy for its pod shuts out host1's pods (which reached it
        # in the verify above), not host2's.
        labctl("apply", "-n", JL, "-f", "-", stdin=CANAL_POLICY)
        try:
            ips = {p["name"]: p["ip"] for p in labctl_json("status", "-n", JL)["pods"]}
            pods = state.load(run_name(JL)).namespaces
            target = ips[f"on-{join.node}"]
            assert http_get(pods["default/pod-b"].pid, target, 80, 2.0)
            with pytest.raises(OSError):
                http_get(pods["default/pod-a"].pid, target, 80, 1.0)
        finally:
            labctl("delete", "-n", JL, "-f", "-", stdin=CANAL_POLICY)


def test_tampered_route_to_the_new_node_fails_verify(joined: tuple[Join, dict[str, str]]) -> None:
    """The negative: one peer's route to the new node goes the other way (bare where the
    mode encapsulates, encapsulated where CrossSubnet goes bare); verify's wire check fails."""
    join, _ = joined
    peer = join.bare[0] if join.bare else _node_names(JL)[0]
    procs = state.load(run_name(JL)).processes
    agent = procs[f"{peer}:{join.agent}"]
    route = _route(JL, peer, join.block)
    if join.bare:  # CrossSubnet: the encapsulated route of a node in another subnet
        donor = next(n for n in _node_names(JL) if n not in (*join.bare, join.node))
        wrong = _route(JL, donor, join.block)
    else:
        wrong = f"{join.block} via {join.ip} dev eth0 onlink"
    os.kill(agent, signal.SIGSTOP)  # its periodic resync would repair the route meanwhile
    try:
        _in(JL, peer, "ip", "route", "replace", *wrong.split())
        report = labctl_json("verify", "-n", JL, "--no-mtu", check=1)
    finally:
        _in(JL, peer, "ip", "route", "replace", *route.split())
        os.kill(agent, signal.SIGCONT)
    failed = {c["name"]: c["detail"] for c in report["checks"] if not c["passed"]}
    assert f"wire {peer} -> {join.node}" in failed, failed
    assert _route(JL, peer, join.block) == route


def test_node_leaves_without_a_trace(joined: tuple[Join, dict[str, str]]) -> None:
    join, before = joined
    others = [n for n in _node_names(JL) if n != join.node]
    # What the checks below look for is there while the node is (they can fail).
    assert all(_traces(JL, n, join) for n in others)
    labctl("node", "remove", "-n", JL, join.node, "--force")
    assert join.node not in _node_names(JL)
    assert _records(JL, join.records) == []
    for node in others:
        assert _traces(JL, node, join) == [], node
    report = labctl_json("verify", "-n", JL)
    assert report["passed"], [c for c in report["checks"] if not c["passed"]]
    labctl("down", "-n", JL)
    assert_gone(JL)
    assert host_snapshot() == before
