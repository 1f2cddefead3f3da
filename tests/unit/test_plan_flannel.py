"""Unit tests for the flannel planner: what each node, pod and router should hold.

Expected values come from shared/cni-dataplane-reference.md (sections 2, 4, 5, 8), not from
the planner's code: flannel.1 is VNI 1 on port 8472 without learning, <lease>.0/32 on the
VTEP, .1/24 on cni0, one neighbour + FDB + onlink route per peer, host-gw routes via the peer
node IP on eth0 without onlink, and so on.
"""

from __future__ import annotations

import json
from functools import cache
from ipaddress import IPv4Network

import pytest
from pydantic import TypeAdapter

from labctl.modes import get_mode
from labctl.plan import Link, NamespacePlan, Plan
from labctl.topology import Topology, load_topology

from .plan_helpers import addrs, link, route_to, topology_flows

VXLAN = "flannel-vxlan"
DIRECT = "flannel-vxlan-directrouting"
HOSTGW = "flannel-host-gw"
FLANNEL_MODES = (VXLAN, DIRECT, HOSTGW)
TOPOLOGIES = ("default", "cross-subnet", "two-node")


@cache
def topo(name: str) -> Topology:
    return load_topology(name)


@cache
def plan(mode: str, topology: str) -> Plan:
    return get_mode(mode).plan(topo(topology))


def links(ns: NamespacePlan, kind: str) -> list[Link]:
    return [link for link in ns.links if link.kind == kind]


def peer_names(t: Topology, node: str) -> list[str]:
    return [n for n in t.nodes if n != node]


def lease(t: Topology, node: str) -> IPv4Network:
    return t.node_pod_cidrs[node]


def attachment_mac(p: Plan, ns: str, ifname: str = "eth0") -> str:
    (mac,) = [a.mac for a in p.attachments if a.ns == ns and a.ifname == ifname]
    return mac


# ---------------------------------------------------------------- catalogue


def test_modes_registered_with_reference_overheads() -> None:
    assert get_mode(VXLAN).pod_mtu() == 1450
    assert get_mode(DIRECT).pod_mtu() == 1450
    assert get_mode(HOSTGW).pod_mtu() == 1500
    for name in FLANNEL_MODES:
        assert get_mode(name).cni == "flannel"
        assert get_mode(name).enforces_policy is False


def test_unknown_mode_is_a_clear_error() -> None:
    with pytest.raises(KeyError) as info:
        get_mode("flannel-udpp")
    assert "unknown mode 'flannel-udpp'" in str(info.value)


# ---------------------------------------------------------------- flannel-vxlan


@pytest.mark.parametrize("node", ["master", "node1", "node2"])
def test_vxlan_device(node: str) -> None:
    t = topo("default")
    ns = plan(VXLAN, "default").namespaces[node]
    (vx,) = links(ns, "vxlan")
    assert vx.name == "flannel.1"
    assert vx.vni == 1
    assert vx.port == 8472  # kernel default, not IANA 4789
    assert vx.learning is False
    assert vx.local == str(t.nodes[node].ip)
    assert vx.underlay == "eth0"
    assert vx.mtu == 1450
    # <lease network address>/32 and nothing else: no connected route into the overlay.
    assert addrs(ns, "flannel.1") == [f"{lease(t, node).network_address}/32"]


@pytest.mark.parametrize("node", ["master", "node1", "node2"])
def test_vxlan_bridge(node: str) -> None:
    t = topo("default")
    ns = plan(VXLAN, "default").namespaces[node]
    (br,) = links(ns, "bridge")
    assert br.name == "cni0"
    assert br.mtu == 1450
    gw = lease(t, node).network_address + 1
    assert addrs(ns, "cni0") == [f"{gw}/24"]


def test_vxlan_node1_addresses_exactly() -> None:
    ns = plan(VXLAN, "default").namespaces["node1"]
    assert sorted((a.dev, a.cidr) for a in ns.addresses) == [
        ("cni0", "10.244.1.1/24"),
        ("eth0", "10.0.0.32/24"),
        ("flannel.1", "10.244.1.0/32"),
    ]


@pytest.mark.parametrize("node", ["master", "node1", "node2"])
def test_vxlan_per_peer_triplet(node: str) -> None:
    t = topo("default")
    p = plan(VXLAN, "default")
    ns = p.namespaces[node]
    peers = peer_names(t, node)
    assert len(ns.neighbours) == len(peers)
    assert len(ns.fdb) == len(peers)
    for peer in peers:
        peer_lease = lease(t, peer)
        gw = str(peer_lease.network_address)
        peer_vtep_mac = link(p.namespaces[peer], "flannel.1").mac
        assert peer_vtep_mac is not None
        # Neighbour: overlay next hop (peer .0) -> the peer's actual flannel.1 MAC.
        neighs = [n for n in ns.neighbours if n.ip == gw]
        assert [(n.dev, n.mac) for n in neighs] == [("flannel.1", peer_vtep_mac)]
        # FDB: that MAC -> the peer's underlay IP (not the overlay address).
        fdbs = [f for f in ns.fdb if f.mac == peer_vtep_mac]
        assert [(f.dev, f.dst) for f in fdbs] == [("flannel.1", str(t.nodes[peer].ip))]
        # Route: peer lease via peer .0 dev flannel.1 onlink.
        r = route_to(ns, str(peer_lease))
        assert (r.via, r.dev, r.onlink, r.type) == (gw, "flannel.1", True, "unicast")
        assert r.best_effort is False


def test_vxlan_node1_routes_exactly() -> None:
    ns = plan(VXLAN, "default").namespaces["node1"]
    assert sorted((r.dst, r.via, r.dev, r.onlink) for r in ns.routes) == [
        ("10.244.0.0/24", "10.244.0.0", "flannel.1", True),
        ("10.244.2.0/24", "10.244.2.0", "flannel.1", True),
    ]


@pytest.mark.parametrize("mode", FLANNEL_MODES)
def test_no_route_for_whole_cluster_cidr_or_own_lease_on_nodes(mode: str) -> None:
    for tname in TOPOLOGIES:
        t = topo(tname)
        for node in t.nodes:
            dsts = [r.dst for r in plan(mode, tname).namespaces[node].routes]
            assert str(t.cluster.podCIDR) not in dsts
            # The own lease is reached through cni0's connected route, never a planned one.
            assert str(lease(t, node)) not in dsts
            assert len(dsts) == len(set(dsts)), f"duplicate route destinations on {node}"


@pytest.mark.parametrize("mode", FLANNEL_MODES)
def test_ip_forward_on_nodes(mode: str) -> None:
    for ns in plan(mode, "default").node_ns():
        assert ns.sysctls["net.ipv4.ip_forward"] == "1"


@pytest.mark.parametrize(("mode", "mtu"), [(VXLAN, 1450), (DIRECT, 1450), (HOSTGW, 1500)])
def test_pod_veths_and_pod_side(mode: str, mtu: int) -> None:
    t = topo("default")
    p = plan(mode, "default")
    assert p.pod_mtu == mtu
    for node in t.nodes:
        ns = p.namespaces[node]
        veths = links(ns, "veth")
        pods = t.pods_on(node)
        assert [v.peer_ns for v in veths] == [pod.key for pod in pods]
        assert len({v.name for v in veths}) == len(veths)
        gw = str(lease(t, node).network_address + 1)
        for v, pod in zip(veths, pods, strict=True):
            assert v.name.startswith("veth") and len(v.name) <= 15  # IFNAMSIZ
            assert v.master == "cni0"
            assert v.hairpin is True
            assert v.mtu == mtu
            assert v.peer_name == "eth0"
            assert v.peer_mtu == mtu
            pod_ns = p.namespaces[pod.key]
            assert pod_ns.role == "pod" and pod_ns.node == node
            assert addrs(pod_ns, "eth0") == [f"{t.pod_ips[pod.key]}/24"]
            assert sorted((r.dst, r.via, r.dev) for r in pod_ns.routes) == [
                ("10.244.0.0/16", gw, "eth0"),
                ("default", gw, "eth0"),
            ]
            assert not any(r.onlink for r in pod_ns.routes)
        assert link(ns, "cni0").mtu == mtu


def test_pod_web2_exactly() -> None:
    p = plan(VXLAN, "default")
    pod_ns = p.namespaces["default/web-2"]
    assert addrs(pod_ns, "eth0") == ["10.244.1.2/24"]
    assert route_to(pod_ns, "default").via == "10.244.1.1"
    assert route_to(pod_ns, "10.244.0.0/16").via == "10.244.1.1"
    assert addrs(p.namespaces["test/db-2"], "eth0") == ["10.244.1.3/24"]


def test_subnet_env_node1_exact_lines() -> None:
    files = plan(VXLAN, "default").namespaces["node1"].files
    assert files["/run/flannel/subnet.env"].splitlines() == [
        "FLANNEL_NETWORK=10.244.0.0/16",
        "FLANNEL_SUBNET=10.244.1.1/24",
        "FLANNEL_MTU=1450",
        "FLANNEL_IPMASQ=true",
    ]


@pytest.mark.parametrize(
    ("mode", "topology", "node", "lines"),
    [
        (HOSTGW, "default", "master", ["10.244.0.0/16", "10.244.0.1/24", "1500"]),
        (DIRECT, "cross-subnet", "node3", ["10.244.0.0/16", "10.244.2.1/24", "1450"]),
        (VXLAN, "two-node", "host2", ["10.1.0.0/16", "10.1.20.1/24", "1450"]),
    ],
)
def test_subnet_env_other_nodes(mode: str, topology: str, node: str, lines: list[str]) -> None:
    env = plan(mode, topology).namespaces[node].files["/run/flannel/subnet.env"]
    network, subnet, mtu = lines
    assert env == (
        f"FLANNEL_NETWORK={network}\nFLANNEL_SUBNET={subnet}\n"
        f"FLANNEL_MTU={mtu}\nFLANNEL_IPMASQ=true\n"
    )


@pytest.mark.parametrize("mode", FLANNEL_MODES)
def test_cni_conflist(mode: str) -> None:
    ns = plan(mode, "default").namespaces["node2"]
    conf = json.loads(ns.files["/etc/cni/net.d/10-flannel.conflist"])
    assert conf["name"] == "cbr0"
    assert conf["cniVersion"] == "0.3.1"
    assert [pl["type"] for pl in conf["plugins"]] == ["flannel", "portmap"]
    assert conf["plugins"][0]["delegate"] == {"hairpinMode": True, "isDefaultGateway": True}
    assert conf["plugins"][1]["capabilities"] == {"portMappings": True}
    assert set(ns.private_dirs) >= {"/run/flannel", "/etc/cni/net.d", "/etc/kube-flannel"}


@pytest.mark.parametrize(
    ("mode", "backend"),
    [
        (VXLAN, {"Type": "vxlan", "VNI": 1, "Port": 8472}),
        (DIRECT, {"Type": "vxlan", "VNI": 1, "Port": 8472, "DirectRouting": True}),
        (HOSTGW, {"Type": "host-gw"}),
    ],
)
def test_net_conf_json(mode: str, backend: dict[str, object]) -> None:
    for node in topo("default").nodes:
        files = plan(mode, "default").namespaces[node].files
        conf = json.loads(files["/etc/kube-flannel/net-conf.json"])
        assert conf == {"Network": "10.244.0.0/16", "Backend": backend}


# ---------------------------------------------------------------- flannel-host-gw


@pytest.mark.parametrize("tname", TOPOLOGIES)
def test_hostgw_has_no_vxlan_state(tname: str) -> None:
    for ns in plan(HOSTGW, tname).node_ns():
        assert links(ns, "vxlan") == []
        assert ns.neighbours == [] and ns.fdb == []
        assert addrs(ns, "flannel.1") == []
        assert link(ns, "cni0").mtu == 1500


@pytest.mark.parametrize("tname", ["default", "cross-subnet"])
def test_hostgw_per_peer_route(tname: str) -> None:
    t = topo(tname)
    p = plan(HOSTGW, tname)
    for node in t.nodes:
        ns = p.namespaces[node]
        peer_routes = [r for r in ns.routes if r.dst != "default"]
        assert len(peer_routes) == len(t.nodes) - 1
        for peer in peer_names(t, node):
            r = route_to(ns, str(lease(t, peer)))
            assert r.via == str(t.nodes[peer].ip)
            assert r.dev == "eth0"
            assert r.onlink is False
            assert r.best_effort is True


def test_hostgw_cross_subnet_still_plans_offlink_routes() -> None:
    # node1 -> node3 (behind r1): planned anyway; the kernel refuses it at apply time, as it
    # refuses flanneld's, and that failure is the lesson. No encap fallback, no onlink.
    ns = plan(HOSTGW, "cross-subnet").namespaces["node1"]
    r = route_to(ns, "10.244.2.0/24")
    assert (r.via, r.dev, r.onlink, r.best_effort) == ("10.0.1.33", "eth0", False, True)
    assert "node3" in r.why
    # ... and the same-segment peer is a normal route.
    r2 = route_to(ns, "10.244.1.0/24")
    assert (r2.via, r2.dev, r2.onlink) == ("10.0.0.32", "eth0", False)
    # node3's routes to both lan1 peers are off-link too.
    ns3 = plan(HOSTGW, "cross-subnet").namespaces["node3"]
    assert route_to(ns3, "10.244.0.0/24").via == "10.0.0.31"
    assert route_to(ns3, "10.244.1.0/24").via == "10.0.0.32"


# ---------------------------------------------------------------- directrouting


def test_directrouting_cross_subnet_node1() -> None:
    p = plan(DIRECT, "cross-subnet")
    ns = p.namespaces["node1"]
    # node2 shares lan1: a plain route via its node IP, no device, no onlink.
    r = route_to(ns, "10.244.1.0/24")
    assert (r.via, r.dev, r.onlink, r.best_effort) == ("10.0.0.32", None, False, False)
    assert not any(n.ip == "10.244.1.0" for n in ns.neighbours)
    node2_mac = link(p.namespaces["node2"], "flannel.1").mac
    assert not any(f.mac == node2_mac for f in ns.fdb)
    # node3 is behind r1: the full VXLAN triplet.
    node3_mac = link(p.namespaces["node3"], "flannel.1").mac
    assert [(n.dev, n.ip, n.mac) for n in ns.neighbours] == [("flannel.1", "10.244.2.0", node3_mac)]
    assert [(f.dev, f.mac, f.dst) for f in ns.fdb] == [("flannel.1", node3_mac, "10.0.1.33")]
    r3 = route_to(ns, "10.244.2.0/24")
    assert (r3.via, r3.dev, r3.onlink) == ("10.244.2.0", "flannel.1", True)
    # The VTEP still exists (it is needed for node3).
    assert link(ns, "flannel.1").vni == 1


def test_directrouting_cross_subnet_node3_all_vxlan() -> None:
    p = plan(DIRECT, "cross-subnet")
    ns = p.namespaces["node3"]
    assert sorted(n.ip for n in ns.neighbours) == ["10.244.0.0", "10.244.1.0"]
    assert sorted(f.dst for f in ns.fdb) == ["10.0.0.31", "10.0.0.32"]
    for dst in ("10.244.0.0/24", "10.244.1.0/24"):
        r = route_to(ns, dst)
        assert r.dev == "flannel.1" and r.onlink is True


def test_directrouting_on_one_segment_has_no_vxlan_entries() -> None:
    for ns in plan(DIRECT, "default").node_ns():
        assert ns.neighbours == [] and ns.fdb == []
        for r in ns.routes:
            assert r.dev is None and r.onlink is False


# ---------------------------------------------------------------- flows


def expected_pairs(t: Topology) -> list[tuple[str, str]]:
    return [(a.key, b.key) for a in t.pods for b in t.pods if a.node != b.node]


@pytest.mark.parametrize("mode", FLANNEL_MODES)
@pytest.mark.parametrize("tname", TOPOLOGIES)
def test_one_flow_per_cross_node_ordered_pair(mode: str, tname: str) -> None:
    t = topo(tname)
    flows = topology_flows(plan(mode, tname), t)
    assert [(f.src_pod, f.dst_pod) for f in flows] == expected_pairs(t)
    for f in flows:
        assert f.src_node != f.dst_node
        assert f.src_pod_ip == str(t.pod_ips[f.src_pod])
        assert f.dst_pod_ip == str(t.pod_ips[f.dst_pod])
        assert f.src_node_ip == str(t.nodes[f.src_node].ip)
        assert f.dst_node_ip == str(t.nodes[f.dst_node].ip)


def test_flow_count_default() -> None:
    # 6 pods, 2 per node: each pod talks to the 4 pods on the other nodes.
    flows = topology_flows(plan(VXLAN, "default"), topo("default"))
    assert len(flows) == 24
    assert not any(f.src_pod == "default/web-1" and f.dst_pod == "test/db-1" for f in flows)


def test_vxlan_flows() -> None:
    for f in topology_flows(plan(VXLAN, "default"), topo("default")):
        assert (f.encap, f.port, f.vni, f.next_hop_mac) == ("vxlan", 8472, 1, None)


@pytest.mark.parametrize("tname", ["default", "two-node"])
def test_hostgw_flows_next_hop_is_peer_eth0_mac(tname: str) -> None:
    p = plan(HOSTGW, tname)
    for f in topology_flows(p, topo(tname)):
        assert f.encap == "bare"
        assert f.port is None and f.vni is None
        assert f.next_hop_mac == attachment_mac(p, f.dst_node)
        assert f.next_hop_mac != attachment_mac(p, f.src_node)


def test_directrouting_flows_cross_subnet() -> None:
    p = plan(DIRECT, "cross-subnet")
    by_nodes = {(f.src_node, f.dst_node): f for f in topology_flows(p, topo("cross-subnet"))}
    assert set(by_nodes) == {
        (a, b) for a in ("node1", "node2", "node3") for b in ("node1", "node2", "node3") if a != b
    }
    for (src, dst), f in by_nodes.items():
        if {src, dst} == {"node1", "node2"}:
            assert (f.encap, f.next_hop_mac) == ("bare", attachment_mac(p, dst))
            assert f.port is None and f.vni is None
        else:
            assert (f.encap, f.port, f.vni, f.next_hop_mac) == ("vxlan", 8472, 1, None)


def test_wire_specs_per_mode() -> None:
    assert {(w.encap, w.port, w.vni) for w in plan(VXLAN, "default").wire} == {("vxlan", 8472, 1)}
    assert {w.encap for w in plan(DIRECT, "default").wire} == {"vxlan", "bare"}
    assert {w.encap for w in plan(HOSTGW, "default").wire} == {"bare"}


# ---------------------------------------------------------------- determinism, MACs


@pytest.mark.parametrize("mode", FLANNEL_MODES)
@pytest.mark.parametrize("tname", TOPOLOGIES)
def test_plans_are_deterministic(mode: str, tname: str) -> None:
    plan = get_mode(mode).plan(load_topology(tname))
    assert plan.to_dict() == get_mode(mode).plan(load_topology(tname)).to_dict()
    # What `up` records is what every later command reads back: nothing lost on the way.
    recorded: TypeAdapter[Plan] = TypeAdapter(Plan)
    assert recorded.validate_json(recorded.dump_json(plan)) == plan


def all_macs(p: Plan) -> list[str]:
    macs = [a.mac for a in p.attachments]
    for ns in p.namespaces.values():
        for x in ns.links:
            macs += [m for m in (x.mac, x.peer_mac) if m is not None]
        macs += [n.mac for n in ns.neighbours] + [f.mac for f in ns.fdb]
    return macs


@pytest.mark.parametrize("mode", FLANNEL_MODES)
@pytest.mark.parametrize("tname", TOPOLOGIES)
def test_macs_locally_administered_unicast(mode: str, tname: str) -> None:
    macs = all_macs(plan(mode, tname))
    assert macs
    for mac in macs:
        octets = mac.split(":")
        assert len(octets) == 6 and all(len(o) == 2 for o in octets), mac
        first = int(octets[0], 16)
        assert first & 0x02, f"{mac} is not locally administered"
        assert not first & 0x01, f"{mac} is multicast"


@pytest.mark.parametrize("tname", TOPOLOGIES)
def test_device_macs_unique(tname: str) -> None:
    p = plan(VXLAN, tname)
    owned = [a.mac for a in p.attachments]
    for ns in p.namespaces.values():
        for x in ns.links:
            owned += [m for m in (x.mac, x.peer_mac) if m is not None]
    assert len(owned) == len(set(owned))


# ---------------------------------------------------------------- underlay


@pytest.mark.parametrize("mode", FLANNEL_MODES)
def test_underlay_cross_subnet(mode: str) -> None:
    p = plan(mode, "cross-subnet")
    assert sorted((a.ns, a.ifname, a.segment) for a in p.attachments) == [
        ("node1", "eth0", "lan1"),
        ("node2", "eth0", "lan1"),
        ("node3", "eth0", "lan2"),
        ("r1", "eth0", "lan1"),
        ("r1", "eth1", "lan2"),
    ]
    r1 = p.namespaces["r1"]
    assert r1.role == "router"
    assert r1.sysctls == {"net.ipv4.ip_forward": "1"}
    assert sorted((a.dev, a.cidr) for a in r1.addresses) == [
        ("eth0", "10.0.0.1/24"),
        ("eth1", "10.0.1.1/24"),
    ]
    # Routers carry no CNI state.
    assert r1.links == [] and r1.files == {}
    for node, gw in (("node1", "10.0.0.1"), ("node2", "10.0.0.1"), ("node3", "10.0.1.1")):
        ns = p.namespaces[node]
        r = route_to(ns, "default")
        assert (r.via, r.dev) == (gw, "eth0")
        assert addrs(ns, "eth0") == [f"{topo('cross-subnet').nodes[node].ip}/24"]


def test_underlay_default_has_no_gateway() -> None:
    p = plan(VXLAN, "default")
    assert sorted((a.ns, a.ifname, a.segment) for a in p.attachments) == [
        ("master", "eth0", "lan1"),
        ("node1", "eth0", "lan1"),
        ("node2", "eth0", "lan1"),
    ]
    for ns in p.node_ns():
        assert not any(r.dst == "default" for r in ns.routes)
    assert {n.name for n in p.node_ns()} == {"master", "node1", "node2"}
    assert {k for k, v in p.namespaces.items() if v.role == "pod"} == set(topo("default").pod_ips)


def test_plan_header() -> None:
    p = plan(DIRECT, "cross-subnet")
    assert (p.mode, p.topology, p.pod_mtu) == (DIRECT, "cross-subnet", 1450)


def test_vxlan_mtu_follows_segment_mtu() -> None:
    from labctl.topology import parse_topology

    t = parse_topology(
        {
            "name": "jumbo",
            "segments": {"lan1": {"cidr": "10.0.0.0/24", "mtu": 9000}},
            "nodes": {
                "a": {"segment": "lan1", "ip": "10.0.0.11"},
                "b": {"segment": "lan1", "ip": "10.0.0.12"},
            },
        },
        "jumbo.yaml",
    )
    p = get_mode(VXLAN).plan(t)
    assert link(p.namespaces["a"], "flannel.1").mtu == 8950
    assert "FLANNEL_MTU=8950" in p.namespaces["a"].files["/run/flannel/subnet.env"]
