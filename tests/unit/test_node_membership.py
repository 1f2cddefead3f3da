"""`labctl node add|remove`, the pure part: a new node validated as the topology loader
validates one, the topology as it becomes, and the re-plan (no root, no lab)."""

from __future__ import annotations

import copy
import dataclasses
from ipaddress import IPv4Network
from typing import Any

import pytest

from labctl import frr
from labctl.controlplane import members
from labctl.controlplane.members import NodeChangeError
from labctl.modes import Mode, get_mode
from labctl.plan import Plan
from labctl.topology import Topology, load_topology, parse_topology, resolve_path


def _default(name: str = "default") -> tuple[dict[str, Any], Topology]:
    path = resolve_path(name)
    return members.read_raw(path), load_topology(path)


def test_added_node_gets_the_next_free_pod_cidr_and_everyone_is_pinned() -> None:
    raw, topo = _default("route-reflector")  # no explicit pod CIDRs in the file
    out, new = members.add_node(raw, topo, "node5", "lan1", "10.0.0.15")
    assert new.node_pod_cidrs["node5"] == IPv4Network("10.244.4.0/24")
    assert {n: x["podCIDR"] for n, x in out["nodes"].items()} == {
        "node1": "10.244.0.0/24",
        "node2": "10.244.1.0/24",
        "node3": "10.244.2.0/24",
        "node4": "10.244.3.0/24",
        "node5": "10.244.4.0/24",
    }
    assert "podCIDR" not in raw["nodes"]["node1"]  # the caller's data is left alone


def test_pinning_keeps_the_others_subnets_when_a_node_leaves() -> None:
    raw, topo = _default("route-reflector")
    out, new = members.remove_node(raw, topo, "node2", bgp=True)
    assert new.node_pod_cidrs["node3"] == topo.node_pod_cidrs["node3"]
    assert [p["node"] for p in out["pods"]] == ["node1", "node3", "node4"]
    # Negative: the file as it was, minus the node, would move node3 onto node2's subnet.
    unpinned = copy.deepcopy(raw)
    del unpinned["nodes"]["node2"]
    unpinned["pods"] = [p for p in unpinned["pods"] if p["node"] != "node2"]
    assert parse_topology(unpinned).node_pod_cidrs["node3"] == topo.node_pod_cidrs["node2"]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("Node3", "lan1", "10.0.0.40"), "NAME 'Node3': use a DNS-1123 label"),
        (("node1", "lan1", "10.0.0.40"), "NAME 'node1' is already used by nodes.node1"),
        (("lan1", "lan1", "10.0.0.40"), "NAME 'lan1' is already used by segments.lan1"),
        (("node3", "wan", "10.0.0.40"), "--segment 'wan': no such segment; use one of lan1"),
        (("node3", "lan1", "10.0.0.x"), "--ip '10.0.0.x': not an IPv4 address"),
        (("node3", "lan1", "10.0.1.4"), "--ip 10.0.1.4: not a host address of segment lan1"),
        (("node3", "lan1", "10.0.0.255"), "not a host address of segment lan1"),
        (("node3", "lan1", "10.0.0.33"), "--ip 10.0.0.33: already used by nodes.node2"),
        (("node3", "lan1", "10.0.0.40", "10.244.2.0/23"), "overlaps node node2's 10.244.2.0/24"),
        (("node3", "lan1", "10.0.0.40", "10.245.0.0/24"), "inside cluster.podCIDR"),
        (("node3", "lan1", "10.0.0.40", "10.244.9.0/29"), "/16-/28 range"),
        (("node3", "lan1", "10.0.0.40", "10.244.9.1/24"), "not an IPv4 network"),
    ],
)
def test_bad_node_add_is_one_line_naming_the_option(args: tuple[str, ...], says: str) -> None:
    raw, topo = _default()
    with pytest.raises(NodeChangeError) as e:
        members.add_node(raw, topo, *args)
    assert says in str(e.value) and "\n" not in str(e.value)
    assert e.value.exit_code == 2


def test_the_fix_offers_a_free_address_and_range() -> None:
    raw, topo = _default()
    with pytest.raises(NodeChangeError, match=r"e\.g\. 10\.0\.0\.1$"):
        members.add_node(raw, topo, "node3", "lan1", "10.0.0.31")
    with pytest.raises(NodeChangeError, match=r"e\.g\. 10\.244\.3\.0/24, or leave"):
        members.add_node(raw, topo, "node3", "lan1", "10.0.0.40", "10.244.0.0/24")


def test_full_cluster_cidr_is_refused() -> None:
    raw, _ = _default()
    raw["cluster"] = {"podCIDR": "10.244.0.0/22", "nodeCIDRSize": 24}
    raw["nodes"]["node3"] = {"segment": "lan1", "ip": "10.0.0.34"}
    topo = parse_topology(raw)
    with pytest.raises(NodeChangeError, match="has no free /24 left"):
        members.add_node(raw, topo, "node4", "lan1", "10.0.0.35")
    # One /24 less taken, and the same request goes through.
    del raw["nodes"]["node3"]
    members.add_node(raw, parse_topology(raw), "node4", "lan1", "10.0.0.35")


def test_remove_refuses_the_last_node_the_only_reflector_and_a_routed_through_node() -> None:
    raw, topo = _default("two-node")
    out, small = members.remove_node(raw, topo, "host2", bgp=False)
    with pytest.raises(NodeChangeError, match="the lab's last node"):
        members.remove_node(out, small, "host1", bgp=False)
    with pytest.raises(NodeChangeError, match="NAME 'host9' is not a node"):
        members.remove_node(raw, topo, "host9", bgp=False)
    raw, topo = _default("route-reflector")
    with pytest.raises(NodeChangeError, match="only BGP route reflector and nodes node2"):
        members.remove_node(raw, topo, "node1", bgp=True)
    # Without BGP nobody depends on it: it leaves the reflector list with the node.
    out, new = members.remove_node(raw, topo, "node1", bgp=False)
    assert new.bgp.routeReflectors == [] and "node1" not in new.nodes
    raw, topo = _default("services")
    with pytest.raises(NodeChangeError, match=r"externals\.laptop\.routes\[0\] routes via"):
        members.remove_node(raw, topo, "master", bgp=False)
    members.remove_node(raw, topo, "node1", bgp=False)


@pytest.mark.parametrize(
    ("mode", "topology", "by"),
    [
        ("flannel-vxlan", "default", "flannel lease watch"),
        ("flannel-udp", "default", "flannel lease watch"),
        # canal: flanneld's leases carry the routes; Felix only adds policy.
        ("canal", "default", "flannel lease watch"),
        ("calico-bgp", "route-reflector", "BGP"),
        # The routes are Felix's; FRR (BIRD's part) announces the blocks but installs nothing.
        ("calico-ipip", "default", "calico-node watch; BGP announces"),
        ("calico-ipip-crosssubnet", "cross-subnet", "calico-node watch; BGP announces"),
        ("calico-vxlan", "default", "calico-node watch"),
        ("calico-vxlan-crosssubnet", "cross-subnet", "calico-node watch"),
    ],
)
def test_the_mechanism_named_by_mode(mode: str, topology: str, by: str) -> None:
    plan = get_mode(mode).plan(load_topology(resolve_path(topology)))
    assert members.mechanism(plan) == by


def _join(mode: str, topology: str = "default", datapath: str = "kernel") -> members.Change:
    raw, topo = _default(topology)
    _, new = members.add_node(raw, topo, "node9", "lan1", "10.0.0.49")
    m = get_mode(mode)
    return members.replan(m, datapath, m.plan(topo, datapath), topo, new)


def test_flannel_join_adds_the_new_subnet_to_every_agent_and_nothing_else() -> None:
    change = _join("flannel-vxlan")
    assert change.joined and change.node == "node9"
    assert change.peers == {"master": 3, "node1": 3, "node2": 3}  # neighbour, FDB, route
    master = change.plan.namespaces["master"]
    (route,) = [r for r in master.routes if r.dst == "10.244.3.0/24"]
    assert route.agent and route.via == "10.244.3.0" and route.dev == "flannel.1"
    before = get_mode("flannel-vxlan").plan(load_topology(resolve_path("default")))
    assert [r for r in master.routes if not r.agent] == [
        r for r in before.namespaces["master"].routes if not r.agent
    ]
    assert change.plan.namespaces["node9"].role == "node"
    assert [a.ns for a in change.plan.attachments][-1] == "node9"
    assert change.plan.path("node9", "master") == change.plan.path("master", "node9")
    assert change.plan.node_pod_mtu["node9"] == 1450
    assert not change.daemons and not change.speakers


def test_flannel_leave_removes_the_node_its_pods_and_its_pairs() -> None:
    change = _join("flannel-vxlan")
    raw, _ = _default()
    joined_raw, joined = members.add_node(
        raw, load_topology(resolve_path("default")), "node9", "lan1", "10.0.0.49"
    )
    _, left = members.remove_node(joined_raw, joined, "node2", bgp=False)
    out = members.replan(get_mode("flannel-vxlan"), "kernel", change.plan, joined, left)
    assert not out.joined and out.peers == {"master": -3, "node1": -3, "node9": -3}
    assert "node2" not in out.plan.namespaces and "default/web-3" not in out.plan.namespaces
    assert "node2" not in out.plan.node_pod_mtu
    assert out.plan.path("master", "node9")["encap"] == "vxlan"
    with pytest.raises(KeyError):  # no way to a node that left
        out.plan.path("master", "node2")
    assert all(a.ns != "node2" for a in out.plan.attachments)
    assert not any(r.dst == "10.244.2.0/24" for r in out.plan.namespaces["master"].routes)


@pytest.mark.parametrize(
    ("mode", "datapath", "kind", "subnet"),
    [
        ("flannel-udp", "kernel", "udpproxy", "10.244.3.0/24"),
        ("flannel-ipip", "bpf", "ipip-bpf", "10.244.3.0/24"),
        # calico-ipip without the ipip module: the decap program's peer set follows too.
        ("calico-ipip", "bpf", "ipip-bpf", "10.244.3.0/26"),
        ("calico-ipip", "userspace", "ipip", "10.244.3.0/26"),
    ],
)
def test_datapath_peer_tables_follow(mode: str, datapath: str, kind: str, subnet: str) -> None:
    change = _join(mode, datapath=datapath)
    assert sorted(n for n, _ in change.daemons) == ["master", "node1", "node2"]
    for _, daemon in change.daemons:
        assert daemon.kind == kind
        assert {"subnet": subnet, "node_ip": "10.0.0.49"} in daemon.config["routes"]


def test_calico_bgp_join_changes_only_bgp_neighbours() -> None:
    change = _join("calico-bgp", "route-reflector")
    assert set(change.speakers) == {"node1", "node9"}  # the reflector and the new client
    before, after = change.speakers["node1"]
    assert before is not None and after is not None
    cmds = frr.neighbor_commands(before, after)
    assert cmds[:3] == [
        "configure terminal",
        "router bgp 64512",
        "neighbor 10.0.0.49 remote-as 64512",
    ]
    assert "neighbor 10.0.0.49 route-reflector-client" in cmds
    assert cmds.index("address-family ipv4 unicast") < cmds.index("neighbor 10.0.0.49 activate")
    # Back again: the neighbour goes; and no change, no commands.
    assert frr.neighbor_commands(after, before) == [
        "configure terminal",
        "router bgp 64512",
        "no neighbor 10.0.0.49",
        "end",
    ]
    assert frr.neighbor_commands(after, after) == []
    assert change.speakers["node9"][0] is None


def test_a_join_other_nodes_cannot_follow_is_refused() -> None:
    # A mode whose per-peer objects are planned at up, not programmed by an agent, would be
    # left stale by a live join: calico-vxlan with the agent marks taken off is one.
    calico = get_mode("calico-vxlan")

    def planned_at_up(topo: Topology, mode: Mode, datapath: str) -> Plan:
        plan = calico.planner(topo, mode, datapath)
        for ns in plan.node_ns():
            ns.routes = [dataclasses.replace(r, agent=False) for r in ns.routes]
            ns.neighbours = [dataclasses.replace(n, agent=False) for n in ns.neighbours]
            ns.fdb = [dataclasses.replace(f, agent=False) for f in ns.fdb]
        return plan

    fixed = dataclasses.replace(calico, planner=planned_at_up)
    raw, topo = _default()
    _, new = members.add_node(raw, topo, "node9", "lan1", "10.0.0.49")
    with pytest.raises(NodeChangeError, match="changes master's routes, neighbours, fdb"):
        members.replan(fixed, "kernel", fixed.plan(topo), topo, new)
    members.replan(calico, "kernel", calico.plan(topo), topo, new)  # with its agents: fine


def test_planner_notes_follow_the_node_list() -> None:
    change = _join("calico-bgp")
    (note,) = [n for n in change.plan.notes if "no default route" in n]
    assert "master, node1, node2, node9 have" in note  # replaced, not added beside the old one


@pytest.mark.parametrize(
    ("mode", "topology", "segment", "ip"),
    [
        ("calico-vxlan", "default", "lan1", "10.0.0.49"),
        ("calico-ipip", "default", "lan1", "10.0.0.49"),
        ("canal", "default", "lan1", "10.0.0.49"),
        ("calico-vxlan-crosssubnet", "cross-subnet", "lan2", "10.0.1.49"),
        ("calico-ipip-crosssubnet", "cross-subnet", "lan2", "10.0.1.49"),
    ],
)
def test_felix_modes_join_and_leave_through_their_agents(
    mode: str, topology: str, segment: str, ip: str
) -> None:
    """Every other node gains the new node's route (and VTEP) as agent objects, programmed
    live by calico-node / flanneld; nothing else of theirs changes; leaving takes it back."""
    raw, topo = _default(topology)
    m = get_mode(mode)
    joined_raw, joined = members.add_node(raw, topo, "node9", segment, ip)
    plan = m.plan(topo)
    change = members.replan(m, "kernel", plan, topo, joined)
    block = IPv4Network(joined.node_pod_cidrs["node9"])
    for name in topo.nodes:
        routes = [r for r in change.plan.namespaces[name].routes if r.agent]
        (new,) = [r for r in routes if IPv4Network(r.dst).subnet_of(block)]
        same = topo.nodes[name].segment == segment
        if mode.endswith("-crosssubnet") and same:
            assert new.dev == "eth0" and new.via == ip  # bare across its own subnet
        else:
            assert new.dev in ("vxlan.calico", "tunl0", "flannel.1"), new
        assert change.peers[name] >= 1
    assert change.plan.namespaces["node9"].role == "node"
    agents = [d.kind for d in change.plan.namespaces["node9"].daemons]
    assert ("flannel-agent" if mode == "canal" else "calico-node") in agents
    # And back: the recorded plan of every other node as before the join.
    _, left = members.remove_node(joined_raw, joined, "node9", bgp=False)
    back = members.replan(m, "kernel", change.plan, joined, left)
    assert "node9" not in back.plan.namespaces
    for name in topo.nodes:
        assert back.plan.namespaces[name].routes == plan.namespaces[name].routes
        assert back.plan.namespaces[name].neighbours == plan.namespaces[name].neighbours
        assert back.plan.namespaces[name].fdb == plan.namespaces[name].fdb
