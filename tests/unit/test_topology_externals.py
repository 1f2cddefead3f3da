"""Unit tests for `cluster.serviceCIDR` and `externals:` (hosts outside the cluster): each
rejection as a one-line message naming the field and the fix, next to an accepted variant,
and the namespace base_plan gives an external host."""

from __future__ import annotations

import copy
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import pytest

from labctl import state
from labctl.modes import MODES, get_mode
from labctl.plan import Address, Attachment, NamespacePlan, Route, underlay_mac
from labctl.topology import TopologyError, load_topology, parse_topology

# Nodes on lan1; r1 joins lan1 and wan, where the "internet" host lives; a laptop on lan1.
BASE: dict[str, Any] = {
    "name": "t",
    "cluster": {"podCIDR": "10.244.0.0/16"},
    "segments": {"lan1": {"cidr": "10.0.0.0/24"}, "wan": {"cidr": "192.168.100.0/24"}},
    "routers": {"r1": {"interfaces": {"lan1": "10.0.0.1", "wan": "192.168.100.1"}}},
    "nodes": {
        "n1": {"segment": "lan1", "ip": "10.0.0.11"},
        "n2": {"segment": "lan1", "ip": "10.0.0.12"},
    },
    "externals": {
        "laptop": {"segment": "lan1", "ip": "10.0.0.100"},
        "internet": {"segment": "wan", "ip": "192.168.100.10"},
    },
    "pods": [{"name": "a", "node": "n1"}],
}

Mutation = Callable[[dict[str, Any]], None]


def mutated(fn: Mutation) -> dict[str, Any]:
    d = copy.deepcopy(BASE)
    fn(d)
    return d


def reject(fn: Mutation, message: str) -> None:
    """`fn` applied to BASE must be refused with exactly `message` (after the file name)."""
    with pytest.raises(TopologyError) as info:
        parse_topology(mutated(fn), "t.yaml")
    assert str(info.value) == f"t.yaml: {message}"


def accept(fn: Mutation) -> None:
    parse_topology(mutated(fn), "t.yaml")


def ext(name: str, **fields: Any) -> Mutation:
    """A mutation that updates (or adds) external `name`."""
    return lambda d: d["externals"].setdefault(name, {}).update(fields)


# ---------------------------------------------------------------- accepted shapes


def test_base_loads_with_defaults() -> None:
    topo = parse_topology(copy.deepcopy(BASE), "t.yaml")
    assert topo.cluster.serviceCIDR == IPv4Network("10.96.0.0/12")
    assert list(topo.externals) == ["laptop", "internet"]
    # Default gateway: the router interface on the external's segment, as for nodes.
    assert topo.external_gateway("laptop") == IPv4Address("10.0.0.1")
    assert topo.external_gateway("internet") == IPv4Address("192.168.100.1")
    assert topo.externals["laptop"].routes == []


def test_no_externals_is_the_default() -> None:
    d = mutated(lambda d: d.pop("externals"))
    assert parse_topology(d, "t.yaml").externals == {}


def test_explicit_gateway_and_routes() -> None:
    d = mutated(
        ext(
            "laptop",
            gateway="10.0.0.254",
            routes=[{"to": "203.0.113.0/24", "via": "10.0.0.11"}],
        )
    )
    d["routers"]["r2"] = {"interfaces": {"lan1": "10.0.0.254"}}
    topo = parse_topology(d, "t.yaml")
    assert topo.external_gateway("laptop") == IPv4Address("10.0.0.254")
    (route,) = topo.externals["laptop"].routes
    assert (route.to, route.via) == (IPv4Network("203.0.113.0/24"), IPv4Address("10.0.0.11"))


def test_no_router_on_the_segment_means_no_gateway() -> None:
    d = mutated(lambda d: d.update(routers={}))
    d["externals"].pop("internet")
    assert parse_topology(d, "t.yaml").external_gateway("laptop") is None


def test_services_topology() -> None:
    topo = load_topology("services")
    assert {n: str(x.ip) for n, x in topo.externals.items()} == {
        "laptop": "10.0.0.100",
        "internet": "192.168.100.10",
    }
    assert topo.external_gateway("laptop") == IPv4Address("10.0.0.1")
    assert topo.external_gateway("internet") == IPv4Address("192.168.100.1")
    # The default cluster, now with r1 as every node's gateway.
    default = load_topology("default")
    assert topo.nodes == default.nodes and topo.pods == default.pods
    assert topo.pod_ips == default.pod_ips
    assert all(topo.node_gateway(n) == IPv4Address("10.0.0.1") for n in topo.nodes)
    assert topo.cluster.serviceCIDR == IPv4Network("10.96.0.0/12")


# ---------------------------------------------------------------- cluster.serviceCIDR


def svc(cidr: str) -> Mutation:
    return lambda d: d["cluster"].update(serviceCIDR=cidr)


def test_service_cidr_overlapping_pod_cidr() -> None:
    reject(
        svc("10.244.128.0/20"),
        "cluster.serviceCIDR: 10.244.128.0/20 overlaps cluster.podCIDR (10.244.0.0/16); set "
        "cluster.serviceCIDR to a range disjoint from pods, segments and routes",
    )
    accept(svc("10.245.0.0/20"))


def test_default_service_cidr_overlapping_pod_cidr_says_it_is_the_default() -> None:
    # Every node pod CIDR lies inside cluster.podCIDR, so this also covers node pod CIDRs.
    reject(
        lambda d: d["cluster"].update(podCIDR="10.100.0.0/16"),
        "cluster.serviceCIDR: 10.96.0.0/12 (the default) overlaps cluster.podCIDR "
        "(10.100.0.0/16); set cluster.serviceCIDR to a range disjoint from pods, segments and "
        "routes",
    )
    accept(lambda d: d["cluster"].update(podCIDR="10.112.0.0/16"))


def test_service_cidr_overlapping_a_segment() -> None:
    reject(
        svc("192.168.0.0/16"),
        "cluster.serviceCIDR: 192.168.0.0/16 overlaps segments.wan (192.168.100.0/24); set "
        "cluster.serviceCIDR to a range disjoint from pods, segments and routes",
    )
    reject(
        lambda d: d["segments"].update(svc={"cidr": "10.111.255.0/24"}),
        "cluster.serviceCIDR: 10.96.0.0/12 (the default) overlaps segments.svc "
        "(10.111.255.0/24); set cluster.serviceCIDR to a range disjoint from pods, segments "
        "and routes",
    )
    accept(lambda d: d["segments"].update(svc={"cidr": "10.112.0.0/24"}))


def test_service_cidr_overlapping_a_router_route() -> None:
    def route(to: str) -> Mutation:
        return lambda d: d["routers"]["r1"].update(routes=[{"to": to, "via": "10.0.0.11"}])

    reject(
        route("10.100.0.0/16"),
        "cluster.serviceCIDR: 10.96.0.0/12 (the default) overlaps routers.r1.routes[0].to "
        "(10.100.0.0/16); set cluster.serviceCIDR to a range disjoint from pods, segments and "
        "routes",
    )
    accept(route("172.16.0.0/16"))


def test_service_cidr_larger_than_kubernetes_allows() -> None:
    reject(
        svc("172.0.0.0/11"),
        "cluster.serviceCIDR: 172.0.0.0/11 is larger than Kubernetes allows; use /12 or smaller",
    )
    accept(svc("172.16.0.0/12"))


def test_service_cidr_malformed() -> None:
    reject(
        svc("10.96.0.1/12"),
        "cluster.serviceCIDR: '10.96.0.1/12' is not an IPv4 network; write address/prefix with "
        "no host bits set, e.g. 10.0.0.0/24",
    )


# ---------------------------------------------------------------- externals


def test_external_name_not_dns1123() -> None:
    reject(
        ext("Laptop_1", segment="lan1", ip="10.0.0.101"),
        "externals.Laptop_1: name 'Laptop_1' is not a DNS-1123 label (use lowercase letters, "
        "digits and '-', at most 63, starting and ending alphanumeric)",
    )
    accept(ext("laptop-1", segment="lan1", ip="10.0.0.101"))


@pytest.mark.parametrize(
    ("name", "owner"),
    [("n1", "nodes.n1"), ("r1", "routers.r1"), ("lan1", "segments.lan1")],
)
def test_external_name_already_used(name: str, owner: str) -> None:
    reject(
        ext(name, segment="lan1", ip="10.0.0.101"),
        f"externals.{name}: name {name!r} is already used by {owner}",
    )


def test_external_unknown_key_and_missing_field() -> None:
    reject(
        ext("laptop", gw="10.0.0.1"),
        "externals.laptop.gw: unknown key (check the spelling; see topologies/default.yaml "
        "for the format)",
    )
    reject(
        lambda d: d["externals"].update(pc={"segment": "lan1"}),
        "externals.pc.ip: required field is missing",
    )


def test_external_on_unknown_segment() -> None:
    reject(
        ext("laptop", segment="lan9"),
        "externals.laptop.ip: unknown segment 'lan9'; known segments: lan1, wan",
    )


def test_external_ip_not_on_its_segment() -> None:
    reject(
        ext("laptop", ip="192.168.100.100"),
        "externals.laptop.ip: 192.168.100.100 is not a host address of segment lan1 (10.0.0.0/24)",
    )
    reject(
        ext("laptop", ip="10.0.0.255"),
        "externals.laptop.ip: 10.0.0.255 is not a host address of segment lan1 (10.0.0.0/24)",
    )
    accept(ext("laptop", ip="10.0.0.254"))


@pytest.mark.parametrize(
    ("ip", "owner"),
    [
        ("10.0.0.11", "nodes.n1.ip"),
        ("10.0.0.1", "routers.r1.interfaces.lan1"),
        ("10.0.0.100", "externals.laptop.ip"),
    ],
)
def test_external_ip_already_used(ip: str, owner: str) -> None:
    reject(
        ext("pc", segment="lan1", ip=ip),
        f"externals.pc.ip: address {ip} is already used by {owner}",
    )


def test_external_gateway_off_segment_or_own_address() -> None:
    reject(
        ext("laptop", gateway="192.168.100.1"),
        "externals.laptop.gateway: 192.168.100.1 is not a host address of segment lan1 "
        "(10.0.0.0/24)",
    )
    reject(
        ext("laptop", gateway="10.0.0.100"),
        "externals.laptop.gateway: 10.0.0.100 is the host's own address; use a router's or "
        "node's address on its segment",
    )
    # A node may be the gateway (a student routing through the cluster).
    accept(ext("laptop", gateway="10.0.0.11"))


def test_external_route_via_off_segment_or_own_address() -> None:
    def route(via: str, to: str = "10.96.0.0/12") -> Mutation:
        return ext("laptop", routes=[{"to": to, "via": via}])

    reject(
        route("192.168.100.1"),
        "externals.laptop.routes[0].via: 192.168.100.1 is not a host address of segment lan1 "
        "(10.0.0.0/24)",
    )
    reject(
        route("10.0.0.100"),
        "externals.laptop.routes[0].via: 10.0.0.100 is the host's own address; use another "
        "host on segment lan1, e.g. a node",
    )
    reject(
        route("10.0.0.11", to="203.0.113.7/24"),
        "externals.laptop.routes[0].to: '203.0.113.7/24' is not an IPv4 network; write "
        "address/prefix with no host bits set, e.g. 10.0.0.0/24",
    )
    # The Service CIDR routed via a node is a classic lab shortcut: allowed.
    accept(route("10.0.0.11"))


# ---------------------------------------------------------------- base_plan


def test_base_plan_external_namespaces() -> None:
    plan = get_mode("flannel-vxlan").plan(load_topology("services"))
    assert plan.namespaces["laptop"] == NamespacePlan(
        name="laptop",
        role="external",
        addresses=[Address("eth0", "10.0.0.100/24")],
        routes=[
            Route(dst="default", via="10.0.0.1", dev="eth0"),
            Route(dst="203.0.113.0/24", via="10.0.0.31", dev="eth0"),
        ],
    )
    assert plan.namespaces["internet"] == NamespacePlan(
        name="internet",
        role="external",
        addresses=[Address("eth0", "192.168.100.10/24")],
        routes=[Route(dst="default", via="192.168.100.1", dev="eth0")],
    )
    atts = [a for a in plan.attachments if a.ns in ("laptop", "internet")]
    assert atts == [
        Attachment("laptop", "eth0", "lan1", underlay_mac("laptop", "eth0"), 1500),
        Attachment("internet", "eth0", "wan", underlay_mac("internet", "eth0"), 1500),
    ]
    # Nodes use r1 now; externals are not nodes (no pods, no lease, no rules).
    assert [n.name for n in plan.node_ns()] == ["master", "node1", "node2"]
    for node in plan.node_ns():
        assert Route(dst="default", via="10.0.0.1", dev="eth0") in node.routes


def test_base_plan_external_routes_and_no_gateway() -> None:
    d = mutated(
        ext("laptop", routes=[{"to": "203.0.113.0/24", "via": "10.0.0.11"}], segment="lan1")
    )
    d["routers"] = {}
    topo = parse_topology(d, "t.yaml")
    ns = get_mode("flannel-host-gw").plan(topo).namespaces
    # No router on lan1 or wan: no default route, just the static one.
    assert ns["laptop"].routes == [Route(dst="203.0.113.0/24", via="10.0.0.11", dev="eth0")]
    assert ns["internet"].routes == []


@pytest.mark.parametrize("mode", list(MODES))
def test_every_mode_plans_services_with_externals(
    mode: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = get_mode(mode).plan(load_topology("services"))
    roles = {n: ns.role for n, ns in plan.namespaces.items()}
    assert roles["laptop"] == roles["internet"] == "external"
    assert roles["r1"] == "router"
    # Externals stay plain hosts whatever the mode.
    for name in ("laptop", "internet"):
        ns = plan.namespaces[name]
        assert not (ns.links or ns.daemons or ns.files or ns.netfilter or ns.bgp)
    # The plan `up` records and every later command reads keeps the new role.
    monkeypatch.setattr(state, "STATE_ROOT", tmp_path)
    state.write_plan("ext-t", plan)
    assert state.read_plan("ext-t") == plan
