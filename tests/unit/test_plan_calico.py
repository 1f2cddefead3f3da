"""Unit tests for the Calico planner.

Expected values come from shared/cni-dataplane-reference.md sections 10-14, not from the
planner's code: cali + 11 hex of sha1("<ns>.<pod>"), host end ee:ee:ee:ee:ee:ee with no
address and no master, pod /32 with 169.254.1.1 as its link-scope next hop, proxy ARP sysctls,
a /32 route and a permanent neighbour per pod, a blackholed /26 block, tunl0 at 1480 with
``via <node IP> dev tunl0 onlink proto 80`` routes, vxlan.calico VNI 4096 port 4789 at 1450
with neighbour + FDB + ``via <tunnel IP> onlink`` per peer, BGP full mesh or reflectors.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from typing import Any

import pytest

from labctl import bgp
from labctl.modes import calico, get_mode
from labctl.plan import Plan
from labctl.topology import TopologyError, parse_topology

from .plan_helpers import addrs, block, link, plan, route_to, topo, topology_flows

BGP = "calico-bgp"
IPIP = "calico-ipip"
IPIP_CS = "calico-ipip-crosssubnet"
VXLAN = "calico-vxlan"
VXLAN_CS = "calico-vxlan-crosssubnet"
MODES = (BGP, IPIP, IPIP_CS, VXLAN, VXLAN_CS)
FELIX_MODES = (IPIP, IPIP_CS, VXLAN, VXLAN_CS)
TOPOLOGIES = ("default", "cross-subnet", "leaf-spine", "leaf-spine-no-bgp", "route-reflector")


# ---------------------------------------------------------------- catalogue


@pytest.mark.parametrize(
    ("mode", "mtu", "feature"),
    [
        (BGP, 1500, None),
        (IPIP, 1480, "ipip"),
        (IPIP_CS, 1480, "ipip"),
        (VXLAN, 1450, None),
        (VXLAN_CS, 1450, None),
    ],
)
def test_modes_registered(mode: str, mtu: int, feature: str | None) -> None:
    m = get_mode(mode)
    assert m.cni == "calico"
    assert m.pod_mtu() == mtu
    assert m.enforces_policy is True
    assert m.kernel_feature == feature
    assert m.checks is not None


# ---------------------------------------------------------------- pod model


def test_cali_names_pinned() -> None:
    p = plan(BGP, "default")
    names = [x.name for x in p.namespaces["master"].links if x.kind == "veth"]
    # sha1("default.web-1") = 0761ccbeace..., sha1("test.db-1") = 44b4014db40...
    assert names == ["cali0761ccbeace", "cali44b4014db40"]
    assert all(len(n) == 15 for n in names)  # IFNAMSIZ - 1


@pytest.mark.parametrize("mode", MODES)
def test_pod_model(mode: str) -> None:
    t = topo("default")
    p = plan(mode, "default")
    mtu = get_mode(mode).pod_mtu()
    for node in t.nodes:
        ns = p.namespaces[node]
        veths = [x for x in ns.links if x.kind == "veth"]
        assert [v.peer_ns for v in veths] == [pod.key for pod in t.pods_on(node)]
        for v, pod in zip(veths, t.pods_on(node), strict=True):
            ip = str(t.pod_ips[pod.key])
            assert v.mac == "ee:ee:ee:ee:ee:ee"
            assert v.master is None and v.hairpin is False
            assert addrs(ns, v.name) == []
            assert (v.mtu, v.peer_mtu, v.peer_name) == (mtu, mtu, "eth0")
            r = route_to(ns, f"{ip}/32")
            assert (r.dev, r.scope, r.via, r.proto) == (v.name, "link", None, None)
            (neigh,) = [n for n in ns.neighbours if n.dev == v.name]
            assert (neigh.ip, neigh.mac) == (ip, v.peer_mac)
            assert {k: val for k, val in ns.sysctls.items() if v.name in k} == {
                f"net.ipv4.conf.{v.name}.proxy_arp": "1",
                f"net.ipv4.neigh.{v.name}.proxy_delay": "0",
                f"net.ipv4.conf.{v.name}.forwarding": "1",
                f"net.ipv4.conf.{v.name}.route_localnet": "1",
            }
            pod_ns = p.namespaces[pod.key]
            assert addrs(pod_ns, "eth0") == [f"{ip}/32"]
            assert [(r.dst, r.via, r.dev, r.scope) for r in pod_ns.routes] == [
                ("169.254.1.1", None, "eth0", "link"),
                ("default", "169.254.1.1", "eth0", None),
            ]
        assert ns.sysctls["net.ipv4.ip_forward"] == "1"
        assert not [x for x in ns.links if x.kind == "bridge"]


def test_pod_ips_exactly() -> None:
    p = plan(BGP, "default")
    assert addrs(p.namespaces["default/web-2"], "eth0") == ["10.244.1.2/32"]
    assert addrs(p.namespaces["test/db-2"], "eth0") == ["10.244.1.3/32"]


def test_link_local_gateway_route_only_without_default_route() -> None:
    # default.yaml has no router: proxy ARP needs 169.254.1.1 routed out of eth0.
    for ns in plan(BGP, "default").node_ns():
        r = route_to(ns, "169.254.1.1")
        assert (r.dev, r.scope, r.via) == ("eth0", "link", None)
    assert any("169.254.1.1 dev eth0 scope link" in n for n in plan(BGP, "default").notes)
    # Behind a router the default route is enough.
    for ns in plan(BGP, "cross-subnet").node_ns():
        assert "169.254.1.1" not in [r.dst for r in ns.routes]
        assert route_to(ns, "default").via is not None
    assert not any("169.254.1.1" in n for n in plan(BGP, "cross-subnet").notes)


def test_blocks_are_first_26_of_each_pod_cidr() -> None:
    t = topo("default")
    assert {n: str(calico.ipam_block(t, n)) for n in t.nodes} == {
        "master": "10.244.0.0/26",
        "node1": "10.244.1.0/26",
        "node2": "10.244.2.0/26",
    }


def test_too_many_pods_for_a_block_is_a_clear_error() -> None:
    pods = [{"name": f"p{i}", "node": "a"} for i in range(63)]
    t = parse_topology(
        {
            "name": "big",
            "segments": {"lan": {"cidr": "10.0.0.0/24"}},
            "nodes": {"a": {"segment": "lan", "ip": "10.0.0.2"}},
            "pods": pods,
        }
    )
    with pytest.raises(TopologyError) as info:
        get_mode(BGP).plan(t)
    msg = str(info.value)
    assert "nodes.a" in msg and "10.244.0.0/26" in msg and "at most 62" in msg
    # 62 pods fit exactly (.2 to .63).
    t62 = parse_topology({**t.model_dump(mode="json"), "pods": pods[:62]})
    get_mode(BGP).plan(t62)


# ---------------------------------------------------------------- blackhole


def test_bgp_mode_blackhole_comes_from_frr() -> None:
    t = topo("default")
    for ns in plan(BGP, "default").node_ns():
        assert not [r for r in ns.routes if r.type == "blackhole"]
        assert ns.bgp is not None
        # FRR's staticd writes "blackhole <block>" and bgpd announces it.
        assert [str(n) for n in ns.bgp.networks] == [block(t, ns.name)]
        assert "ip route " + block(t, ns.name) + " blackhole" in bgp.render(ns.bgp)


@pytest.mark.parametrize("mode", FELIX_MODES)
def test_felix_modes_blackhole_proto_80(mode: str) -> None:
    t = topo("cross-subnet")
    for ns in plan(mode, "cross-subnet").node_ns():
        (bh,) = [r for r in ns.routes if r.type == "blackhole"]
        assert (bh.dst, bh.proto) == (block(t, ns.name), 80)


# ---------------------------------------------------------------- ipip


@pytest.mark.parametrize("mode", [IPIP, IPIP_CS])
def test_tunl0_userspace(mode: str) -> None:
    t = topo("cross-subnet")
    ns = plan(mode, "cross-subnet", "userspace").namespaces["node1"]
    tun = link(ns, "tunl0")
    assert (tun.kind, tun.mtu) == ("tun", 1480)
    assert addrs(ns, "tunl0") == ["10.244.0.1/32"]  # block network + 1
    (d, agent) = ns.daemons
    assert (d.kind, agent.kind) == ("ipip", "calico-node")
    assert d.config["tun"] == "tunl0" and d.config["local_ip"] == "10.0.0.31"
    assert d.config["routes"] == [
        {"subnet": block(t, "node2"), "node_ip": "10.0.0.32"},
        {"subnet": block(t, "node3"), "node_ip": "10.0.1.33"},
    ]


def test_tunl0_kernel() -> None:
    ns = plan(IPIP, "cross-subnet", "kernel").namespaces["node3"]
    tun = link(ns, "tunl0")
    assert (tun.kind, tun.mtu) == ("ipip", 1480)
    assert addrs(ns, "tunl0") == ["10.244.2.1/32"]
    assert [d.kind for d in ns.daemons] == ["calico-node"]  # no datapath daemon
    assert not any("userspace" in n for n in plan(IPIP, "cross-subnet", "kernel").notes)
    assert any("userspace" in n for n in plan(IPIP, "cross-subnet", "userspace").notes)


def test_ipip_routes_exactly() -> None:
    ns = plan(IPIP, "cross-subnet").namespaces["node1"]
    felix = [r for r in ns.routes if r.dst.endswith("/26") and r.type == "unicast"]
    assert [(r.dst, r.via, r.dev, r.onlink, r.proto) for r in felix] == [
        ("10.244.1.0/26", "10.0.0.32", "tunl0", True, 80),
        ("10.244.2.0/26", "10.0.1.33", "tunl0", True, 80),
    ]


def test_ipip_crosssubnet_routes_per_peer() -> None:
    ns = plan(IPIP_CS, "cross-subnet").namespaces["node1"]
    felix = [r for r in ns.routes if r.dst.endswith("/26") and r.type == "unicast"]
    assert [(r.dst, r.via, r.dev, r.onlink, r.proto) for r in felix] == [
        ("10.244.1.0/26", "10.0.0.32", "eth0", True, 80),  # node2: same subnet, no tunnel
        ("10.244.2.0/26", "10.0.1.33", "tunl0", True, 80),  # node3: behind r1
    ]


@pytest.mark.parametrize("mode", [IPIP, IPIP_CS])
def test_ipip_bgp_announces_but_installs_nothing(mode: str) -> None:
    p = plan(mode, "cross-subnet")
    for ns in p.node_ns():
        assert ns.bgp is not None and ns.bgp.install_routes is False
        assert "bgp no-rib" in bgp.render(ns.bgp)
    assert any("no-rib" in n and "proto 80" in n for n in p.notes)


# ---------------------------------------------------------------- vxlan


@pytest.mark.parametrize("mode", [VXLAN, VXLAN_CS])
def test_vxlan_device_and_vteps(mode: str) -> None:
    t = topo("cross-subnet")
    p = plan(mode, "cross-subnet")
    ns = p.namespaces["node1"]
    vx = link(ns, "vxlan.calico")
    assert (vx.kind, vx.vni, vx.port, vx.learning, vx.mtu) == ("vxlan", 4096, 4789, False, 1450)
    assert (vx.local, vx.underlay) == ("10.0.0.31", "eth0")
    assert addrs(ns, "vxlan.calico") == ["10.244.0.1/32"]
    # Every remote VTEP gets a neighbour and an FDB entry, whatever the route.
    for peer in ("node2", "node3"):
        mac = link(p.namespaces[peer], "vxlan.calico").mac
        tunnel = str(IPv4Network(block(t, peer)).network_address + 1)
        assert [
            (n.ip, n.mac) for n in ns.neighbours if n.dev == "vxlan.calico" and n.mac == mac
        ] == [(tunnel, mac)]
        assert [(f.dev, f.dst) for f in ns.fdb if f.mac == mac] == [
            ("vxlan.calico", str(t.nodes[peer].ip))
        ]
    assert ns.bgp is None and [d.kind for d in ns.daemons] == ["calico-node"]
    # Felix programs the VTEPs from the Node records: the engine leaves them to it.
    assert all(n.agent for n in ns.neighbours if n.dev == "vxlan.calico")
    assert all(f.agent for f in ns.fdb)


def test_vxlan_routes_exactly() -> None:
    ns = plan(VXLAN, "cross-subnet").namespaces["node1"]
    felix = [r for r in ns.routes if r.dst.endswith("/26") and r.type == "unicast"]
    # The VXLAN route target sets no protocol: boot (None here).
    assert [(r.dst, r.via, r.dev, r.onlink, r.proto) for r in felix] == [
        ("10.244.1.0/26", "10.244.1.1", "vxlan.calico", True, None),
        ("10.244.2.0/26", "10.244.2.1", "vxlan.calico", True, None),
    ]


def test_vxlan_crosssubnet_routes_per_peer() -> None:
    ns = plan(VXLAN_CS, "cross-subnet").namespaces["node3"]
    felix = [r for r in ns.routes if r.dst.endswith("/26") and r.type == "unicast"]
    assert [(r.dst, r.via, r.dev, r.onlink, r.proto) for r in felix] == [
        ("10.244.0.0/26", "10.244.0.1", "vxlan.calico", True, None),
        ("10.244.1.0/26", "10.244.1.1", "vxlan.calico", True, None),
    ]
    ns1 = plan(VXLAN_CS, "cross-subnet").namespaces["node1"]
    r = route_to(ns1, "10.244.1.0/26")
    assert (r.via, r.dev, r.onlink, r.proto) == ("10.0.0.32", "eth0", True, 80)


# ---------------------------------------------------------------- flows


def _flow_encaps(p: Plan) -> dict[tuple[str, str], tuple[Any, ...]]:
    return {
        (f.src_node, f.dst_node): (f.encap, f.port, f.vni, f.next_hop_mac)
        for f in topology_flows(p, topo(p.topology))
    }


def test_flows_per_pair() -> None:
    mac2 = plan(BGP, "cross-subnet").attachments
    eth0 = {a.ns: a.mac for a in mac2 if a.ifname == "eth0"}
    bare = _flow_encaps(plan(BGP, "cross-subnet"))
    assert bare[("node1", "node2")] == ("bare", None, None, eth0["node2"])
    assert bare[("node1", "node3")] == ("bare", None, None, None)  # first hop is r1
    ipip_cs = _flow_encaps(plan(IPIP_CS, "cross-subnet"))
    assert ipip_cs[("node2", "node1")] == ("bare", None, None, eth0["node1"])
    assert ipip_cs[("node3", "node2")] == ("ipip", None, None, None)
    vxlan_cs = _flow_encaps(plan(VXLAN_CS, "cross-subnet"))
    assert vxlan_cs[("node1", "node2")][0] == "bare"
    assert vxlan_cs[("node1", "node3")] == ("vxlan", 4789, 4096, None)
    assert set(_flow_encaps(plan(IPIP, "cross-subnet")).values()) == {("ipip", None, None, None)}
    assert set(_flow_encaps(plan(VXLAN, "cross-subnet")).values()) == {("vxlan", 4789, 4096, None)}
    # One flow per ordered pair of pods on different nodes.
    assert len(topology_flows(plan(BGP, "default"), topo("default"))) == 6 * 4


# ---------------------------------------------------------------- BGP speakers


def _neighbors(p: Plan) -> dict[str, list[str]]:
    return {n: [str(x.ip) for x in ns.bgp.neighbors] for n, ns in p.namespaces.items() if ns.bgp}


def test_full_mesh_on_one_segment() -> None:
    p = plan(BGP, "default")
    assert _neighbors(p) == {
        "master": ["10.0.0.32", "10.0.0.33"],
        "node1": ["10.0.0.31", "10.0.0.33"],
        "node2": ["10.0.0.31", "10.0.0.32"],
    }
    for ns in p.node_ns():
        assert ns.bgp is not None
        assert ns.bgp.asn == 64512 and ns.bgp.install_routes is True
        assert str(ns.bgp.router_id) == str(topo("default").nodes[ns.name].ip)


def test_route_reflector_design() -> None:
    p = plan(BGP, "route-reflector")
    got = _neighbors(p)
    assert got["node1"] == ["10.0.0.12", "10.0.0.13", "10.0.0.14"]  # n-1 clients
    assert got["node2"] == got["node3"] == got["node4"] == ["10.0.0.11"]
    rr = p.namespaces["node1"].bgp
    assert rr is not None and rr.rr_cluster_id == IPv4Address("244.0.0.1")
    assert all(n.rr_client for n in rr.neighbors)
    assert calico.expected_node_sessions(topo("route-reflector")) == 3


def test_leaf_spine_as_per_rack() -> None:
    p = plan(BGP, "leaf-spine")
    got = _neighbors(p)
    # Every node has a BGP router in its rack: mesh off, one session to the leaf.
    assert got["node1"] == got["node2"] == ["10.0.1.1"]
    assert got["node3"] == got["node4"] == ["10.0.2.1"]
    assert got["leaf1"] == ["10.0.1.11", "10.0.1.12", "10.0.254.1"]
    assert got["leaf2"] == ["10.0.2.13", "10.0.2.14", "10.0.254.5"]
    assert got["spine"] == ["10.0.254.2", "10.0.254.6"]
    leaf1 = p.namespaces["leaf1"].bgp
    assert leaf1 is not None and leaf1.asn == 65001
    # as-override towards nodes (they all share AS 64512), plain eBGP towards the spine.
    assert [n.as_override for n in leaf1.neighbors] == [True, True, False]
    assert [n.remote_asn for n in leaf1.neighbors] == [64512, 64512, 65000]
    node1 = p.namespaces["node1"].bgp
    assert node1 is not None
    assert [(n.remote_asn, n.description) for n in node1.neighbors] == [(65001, "Node_10_0_1_1")]
    assert calico.expected_node_sessions(topo("leaf-spine")) == 0


def test_leaf_spine_routers_peer_each_other_without_node_bgp() -> None:
    got = _neighbors(plan(VXLAN, "leaf-spine"))
    assert got == {
        "spine": ["10.0.254.2", "10.0.254.6"],
        "leaf1": ["10.0.254.1"],
        "leaf2": ["10.0.254.5"],
    }


def test_static_routers_keep_mesh_and_get_no_frr() -> None:
    p = plan(BGP, "leaf-spine-no-bgp")
    got = _neighbors(p)
    assert set(got) == {"node1", "node2", "node3", "node4"}
    assert all(len(v) == 3 for v in got.values())  # full mesh across the routers
    assert calico.expected_node_sessions(topo("leaf-spine-no-bgp")) == 6
    assert [r.dst for r in p.namespaces["leaf1"].routes] == ["10.0.2.0/24"]
    assert any("leaf1" in n and "no asn" in n for n in p.notes)


@pytest.mark.parametrize("mode", [VXLAN, VXLAN_CS])
def test_vxlan_has_no_node_bgp(mode: str) -> None:
    assert _neighbors(plan(mode, "route-reflector")) == {}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_every_plan_is_consistent(mode: str, topology: str) -> None:
    p = plan(mode, topology)
    for ns in p.node_ns():
        keys = [(r.dst, r.type) for r in ns.routes]
        assert len(keys) == len(set(keys)), f"duplicate routes on {ns.name}"
    for ns in p.namespaces.values():
        if ns.bgp is not None:
            bgp.render(ns.bgp)  # renders
