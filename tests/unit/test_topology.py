"""Unit tests for labctl.topology: loading, derived addressing and one-line rejections."""

from __future__ import annotations

import copy
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import pytest

from labctl.topology import (
    TOPOLOGY_DIR,
    TopologyError,
    load_topology,
    parse_topology,
    resolve_path,
)

SHIPPED = sorted(p.stem for p in TOPOLOGY_DIR.glob("*.yaml"))

# Two segments joined by a router; n1/n2 on lan1, n3 behind r1 on lan2.
BASE: dict[str, Any] = {
    "name": "t",
    "cluster": {"podCIDR": "10.244.0.0/16", "nodeCIDRSize": 24},
    "segments": {"lan1": {"cidr": "10.0.0.0/24"}, "lan2": {"cidr": "10.0.1.0/24"}},
    "routers": {"r1": {"interfaces": {"lan1": "10.0.0.1", "lan2": "10.0.1.1"}}},
    "nodes": {
        "n1": {"segment": "lan1", "ip": "10.0.0.11"},
        "n2": {"segment": "lan1", "ip": "10.0.0.12"},
        "n3": {"segment": "lan2", "ip": "10.0.1.13"},
    },
    "namespaces": {"test": {"labels": {"project": "test"}}},
    "pods": [
        {"name": "a", "node": "n1"},
        {"name": "b", "node": "n2"},
        {"name": "c", "node": "n1", "namespace": "test"},
    ],
}


def base() -> dict[str, Any]:
    return copy.deepcopy(BASE)


def reject(data: Any, *fragments: str, source: str = "t.yaml") -> str:
    """Parse `data`, expect a TopologyError naming `source`; return the message."""
    with pytest.raises(TopologyError) as info:
        parse_topology(data, source)
    msg = str(info.value)
    assert "\n" not in msg, f"message is not one line: {msg!r}"
    assert msg.startswith(f"{source}: "), msg
    for fragment in fragments:
        assert fragment in msg, f"{fragment!r} not in {msg!r}"
    return msg


def mutated(fn: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    d = base()
    fn(d)
    return d


# ---------------------------------------------------------------- shipped topologies


def test_shipped_topologies_are_the_expected_ones() -> None:
    assert SHIPPED == [
        "cross-subnet",
        "default",
        "leaf-spine",
        "leaf-spine-no-bgp",
        "netpol-seed",
        "netpol-xyz",
        "route-reflector",
        "services",
        "two-node",
    ]


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_topology_loads(name: str) -> None:
    topo = load_topology(name)
    assert topo.name == name
    assert topo.nodes
    # Derived addressing is total: every node has a CIDR, every pod an IP inside its node's.
    assert set(topo.node_pod_cidrs) == set(topo.nodes)
    for pod in topo.pods:
        assert topo.pod_ips[pod.key] in topo.node_pod_cidrs[pod.node]


def test_default_topology_addressing() -> None:
    topo = load_topology("default")
    assert topo.node_pod_cidrs == {
        "master": IPv4Network("10.244.0.0/24"),
        "node1": IPv4Network("10.244.1.0/24"),
        "node2": IPv4Network("10.244.2.0/24"),
    }
    assert {k: str(v) for k, v in topo.pod_ips.items()} == {
        "default/web-1": "10.244.0.2",
        "test/db-1": "10.244.0.3",
        "default/web-2": "10.244.1.2",
        "test/db-2": "10.244.1.3",
        "default/web-3": "10.244.2.2",
        "test/db-3": "10.244.2.3",
    }
    assert [p.key for p in topo.pods_on("node1")] == ["default/web-2", "test/db-2"]
    # One segment, no router: no gateway.
    assert all(topo.node_gateway(n) is None for n in topo.nodes)


def test_cross_subnet_allocates_from_start_and_uses_router_as_gateway() -> None:
    topo = load_topology("cross-subnet")
    # No explicit podCIDRs: allocated in file order from the first /24 (kube-controller-manager
    # style, which does not skip the first subnet the way flannel's etcd allocator does).
    assert [str(c) for c in topo.node_pod_cidrs.values()] == [
        "10.244.0.0/24",
        "10.244.1.0/24",
        "10.244.2.0/24",
    ]
    assert list(topo.node_pod_cidrs) == ["node1", "node2", "node3"]
    assert topo.node_gateway("node1") == IPv4Address("10.0.0.1")
    assert topo.node_gateway("node2") == IPv4Address("10.0.0.1")
    assert topo.node_gateway("node3") == IPv4Address("10.0.1.1")


def test_two_node_keeps_explicit_cidrs_outside_first_subnet() -> None:
    topo = load_topology("two-node")
    assert topo.node_pod_cidrs == {
        "host1": IPv4Network("10.1.15.0/24"),
        "host2": IPv4Network("10.1.20.0/24"),
    }
    assert str(topo.pod_ips["default/pod-a"]) == "10.1.15.2"
    assert str(topo.pod_ips["default/pod-b"]) == "10.1.20.2"


def test_load_by_path_and_resolve_path(tmp_path: Path) -> None:
    assert resolve_path("default") == TOPOLOGY_DIR / "default.yaml"
    f = tmp_path / "mine.yaml"
    f.write_text((TOPOLOGY_DIR / "two-node.yaml").read_text())
    assert resolve_path(f) == f
    assert load_topology(str(f)).name == "two-node"


# ---------------------------------------------------------------- derived addressing


def test_explicit_cidrs_kept_and_others_allocated_around_them() -> None:
    d = base()
    d["nodes"]["n2"]["podCIDR"] = "10.244.0.0/24"  # explicit, later in the file than n1
    topo = parse_topology(d, "t.yaml")
    # n1 must skip the first /24 because n2 holds it explicitly.
    assert topo.node_pod_cidrs == {
        "n1": IPv4Network("10.244.1.0/24"),
        "n2": IPv4Network("10.244.0.0/24"),
        "n3": IPv4Network("10.244.2.0/24"),
    }


def test_explicit_larger_cidr_is_skipped_whole_by_allocator() -> None:
    d = base()
    d["nodes"]["n3"]["podCIDR"] = "10.244.0.0/23"
    topo = parse_topology(d, "t.yaml")
    assert str(topo.node_pod_cidrs["n1"]) == "10.244.2.0/24"
    assert str(topo.node_pod_cidrs["n2"]) == "10.244.3.0/24"
    cidrs = list(topo.node_pod_cidrs.values())
    assert not any(a.overlaps(b) for i, a in enumerate(cidrs) for b in cidrs[:i])


def test_node_cidr_size_and_pod_ips_in_file_order() -> None:
    d = base()
    d["cluster"] = {"podCIDR": "10.200.0.0/20", "nodeCIDRSize": 26}
    topo = parse_topology(d, "t.yaml")
    assert [str(c) for c in topo.node_pod_cidrs.values()] == [
        "10.200.0.0/26",
        "10.200.0.64/26",
        "10.200.0.128/26",
    ]
    # n1 has pods a (first) and test/c (third): .2 and .3 of its CIDR, in file order.
    assert str(topo.pod_ips["default/a"]) == "10.200.0.2"
    assert str(topo.pod_ips["test/c"]) == "10.200.0.3"
    assert str(topo.pod_ips["default/b"]) == "10.200.0.66"


def test_pod_ips_fill_a_28_exactly() -> None:
    d = base()
    d["nodes"]["n1"]["podCIDR"] = "10.244.9.0/28"
    d["pods"] = [{"name": f"p{i}", "node": "n1"} for i in range(13)]  # .2 .. .14
    topo = parse_topology(d, "t.yaml")
    assert str(topo.pod_ips["default/p0"]) == "10.244.9.2"
    assert str(topo.pod_ips["default/p12"]) == "10.244.9.14"


def test_explicit_gateway_wins_over_router() -> None:
    d = base()
    d["routers"]["r2"] = {"interfaces": {"lan1": "10.0.0.254"}}
    d["nodes"]["n2"]["gateway"] = "10.0.0.254"
    topo = parse_topology(d, "t.yaml")
    assert topo.node_gateway("n1") == IPv4Address("10.0.0.1")
    assert topo.node_gateway("n2") == IPv4Address("10.0.0.254")


def test_namespace_labels_and_defaults() -> None:
    topo = parse_topology(base(), "t.yaml")
    assert topo.namespace_labels("test") == {
        "project": "test",
        "kubernetes.io/metadata.name": "test",
    }
    assert topo.namespace_labels("default") == {"kubernetes.io/metadata.name": "default"}
    pod = topo.pods[0]
    assert pod.namespace == "default"
    assert [(p.containerPort, p.protocol) for p in pod.ports] == [(80, "TCP"), (80, "UDP")]


def test_valid_labels_accepted() -> None:
    d = base()
    d["pods"][0]["labels"] = {
        "app.kubernetes.io/name": "web",
        "tier": "",
        "Version_2": "v1.2-rc_3",
        "x" * 63: "y" * 63,
    }
    assert parse_topology(d, "t.yaml").pods[0].labels["tier"] == ""


# ---------------------------------------------------------------- rejections


def test_unknown_top_level_key() -> None:
    reject(mutated(lambda d: d.update(podes=[])), "podes: unknown key", "check the spelling")


@pytest.mark.parametrize(
    ("fn", "path"),
    [
        (lambda d: d["nodes"]["n1"].update(ipaddr="10.0.0.5"), "nodes.n1.ipaddr"),
        (lambda d: d["segments"]["lan1"].update(vlan=3), "segments.lan1.vlan"),
        (lambda d: d["cluster"].update(serviceCidr="10.96.0.0/12"), "cluster.serviceCidr"),
        (lambda d: d["pods"][1].update(image="nginx"), "pods[1].image"),
        (
            lambda d: d["pods"][0].update(ports=[{"containerPort": 80, "hostPort": 8}]),
            "pods[0].ports[0].hostPort",
        ),
        (lambda d: d["routers"]["r1"].update(gw="x"), "routers.r1.gw"),
        (lambda d: d.update(bgp={"asn": 1, "rr": []}), "bgp.rr"),
    ],
)
def test_unknown_nested_keys(fn: Callable[[dict[str, Any]], None], path: str) -> None:
    reject(mutated(fn), f"{path}: unknown key", "check the spelling")


DNS_HINT = "lowercase letters, digits and '-'"


@pytest.mark.parametrize(
    ("fn", "path", "bad"),
    [
        (
            lambda d: d["nodes"].update(Node_4={"segment": "lan1", "ip": "10.0.0.14"}),
            "nodes.Node_4",
            "Node_4",
        ),
        (
            lambda d: d["segments"].update({"lan-": {"cidr": "10.0.5.0/24"}}),
            "segments.lan-",
            "lan-",
        ),
        (
            lambda d: d["routers"].update(R2={"interfaces": {"lan1": "10.0.0.2"}}),
            "routers.R2",
            "R2",
        ),
        (lambda d: d["namespaces"].update(Prod={}), "namespaces.Prod", "Prod"),
        (lambda d: d["pods"][0].update(name="Web.1"), "pods[0].name", "Web.1"),
        (lambda d: d["pods"][0].update(namespace="my_ns"), "pods[0].namespace", "my_ns"),
        (lambda d: d.update(name="My Lab"), "name", "My Lab"),
        (lambda d: d.update(name="a" * 64), "name", "a" * 64),
    ],
)
def test_non_dns1123_names(fn: Callable[[dict[str, Any]], None], path: str, bad: str) -> None:
    msg = reject(mutated(fn), f"{path}: ", repr(bad), "DNS-1123", DNS_HINT)
    assert msg.startswith(f"t.yaml: {path}: ")


@pytest.mark.parametrize(
    ("fn", "path"),
    [
        (lambda d: d["segments"]["lan1"].update(cidr="10.0.0.0/33"), "segments.lan1.cidr"),
        (lambda d: d["segments"]["lan1"].update(cidr="10.0.0.5/24"), "segments.lan1.cidr"),
        (lambda d: d["segments"]["lan1"].update(cidr="lan"), "segments.lan1.cidr"),
        (lambda d: d["cluster"].update(podCIDR="10.244.0.0/8"), "cluster.podCIDR"),
        (lambda d: d["nodes"]["n1"].update(podCIDR="10.244.1.1/24"), "nodes.n1.podCIDR"),
    ],
)
def test_malformed_cidr(fn: Callable[[dict[str, Any]], None], path: str) -> None:
    msg = reject(mutated(fn), "is not an IPv4 network", "no host bits", "10.0.0.0/24")
    assert msg.startswith(f"t.yaml: {path}: ")


def test_cluster_pod_cidr_as_bare_address_is_a_32() -> None:
    # A bare address parses as a /32: then no /24 fits in it.
    reject(
        mutated(lambda d: d["cluster"].update(podCIDR="10.244.0.0")),
        "cluster.nodeCIDRSize: /24 is larger than cluster.podCIDR 10.244.0.0/32",
    )


def test_malformed_address() -> None:
    reject(
        mutated(lambda d: d["nodes"]["n1"].update(ip="10.0.0.300")),
        "t.yaml: nodes.n1.ip: '10.0.0.300' is not an IPv4 address",
    )


def test_overlapping_segments() -> None:
    reject(
        mutated(lambda d: d["segments"].update(lan3={"cidr": "10.0.0.128/25"})),
        "segments.lan3.cidr: 10.0.0.128/25 overlaps segments.lan1 (10.0.0.0/24)",
        "disjoint",
    )


def test_segment_overlapping_pod_cidr() -> None:
    reject(
        mutated(lambda d: d["segments"].update(pods={"cidr": "10.244.3.0/24"})),
        "segments.pods.cidr: 10.244.3.0/24 overlaps cluster.podCIDR 10.244.0.0/16",
        "disjoint",
    )


def test_segment_too_small() -> None:
    reject(
        mutated(lambda d: d["segments"].update(p2p={"cidr": "10.0.9.0/31"})),
        "segments.p2p.cidr: 10.0.9.0/31 is too small; use /30 or larger",
    )


@pytest.mark.parametrize("ip", ["10.0.1.11", "10.0.0.0", "10.0.0.255", "192.168.0.1"])
def test_node_ip_not_a_host_of_its_segment(ip: str) -> None:
    reject(
        mutated(lambda d: d["nodes"]["n1"].update(ip=ip)),
        f"t.yaml: nodes.n1.ip: {ip} is not a host address of segment lan1 (10.0.0.0/24)",
    )


def test_node_on_unknown_segment() -> None:
    reject(
        mutated(lambda d: d["nodes"]["n1"].update(segment="lan9")),
        "nodes.n1.ip: unknown segment 'lan9'; known segments: lan1, lan2",
    )


def test_router_interface_on_unknown_segment_and_off_segment() -> None:
    reject(
        mutated(lambda d: d["routers"]["r1"]["interfaces"].update(lan7="10.7.0.1")),
        "routers.r1.interfaces.lan7: unknown segment 'lan7'; known segments: lan1, lan2",
    )
    reject(
        mutated(lambda d: d["routers"]["r1"]["interfaces"].update(lan2="10.0.0.9")),
        "routers.r1.interfaces.lan2: 10.0.0.9 is not a host address of segment lan2",
    )


def test_router_static_route_via_off_segment() -> None:
    reject(
        mutated(
            lambda d: d["routers"]["r1"].update(routes=[{"to": "172.16.0.0/16", "via": "10.9.9.9"}])
        ),
        "routers.r1.routes[0].via: 10.9.9.9 is not on any of the router's segments",
    )


def test_pod_on_unknown_node() -> None:
    reject(
        mutated(lambda d: d["pods"][1].update(node="n9")),
        "pods[1].node: unknown node 'n9'; known nodes: n1, n2, n3",
    )


def test_pod_in_undeclared_namespace() -> None:
    reject(
        mutated(lambda d: d["pods"][2].update(namespace="prod")),
        "pods[2].namespace: unknown namespace 'prod'; declare it under namespaces:",
    )


def test_duplicate_pod() -> None:
    msg = reject(
        mutated(lambda d: d["pods"].append({"name": "c", "namespace": "test", "node": "n2"})),
        "pods[3].name: duplicate pod test/c",
    )
    assert msg == "t.yaml: pods[3].name: duplicate pod test/c"


def test_same_pod_name_in_two_namespaces_is_fine() -> None:
    d = mutated(lambda d: d["pods"].append({"name": "a", "namespace": "test", "node": "n2"}))
    topo = parse_topology(d, "t.yaml")
    assert {"default/a", "test/a"} <= set(topo.pod_ips)


def test_node_address_used_by_router() -> None:
    reject(
        mutated(lambda d: d["nodes"]["n1"].update(ip="10.0.0.1")),
        "nodes.n1.ip: address 10.0.0.1 is already used by routers.r1.interfaces.lan1",
    )


def test_two_nodes_same_address() -> None:
    reject(
        mutated(lambda d: d["nodes"]["n2"].update(ip="10.0.0.11")),
        "nodes.n2.ip: address 10.0.0.11 is already used by nodes.n1.ip",
    )


def test_node_and_segment_share_a_name() -> None:
    reject(
        mutated(lambda d: d["nodes"].update(lan2={"segment": "lan1", "ip": "10.0.0.20"})),
        "nodes.lan2: name 'lan2' is already used by segments.lan2",
    )


def test_gateway_off_segment_or_not_a_host() -> None:
    reject(
        mutated(lambda d: d["nodes"]["n1"].update(gateway="10.0.1.1")),
        "nodes.n1.gateway: 10.0.1.1 is not a host address of segment lan1 (10.0.0.0/24)",
    )
    reject(
        mutated(lambda d: d["nodes"]["n1"].update(gateway="10.0.0.255")),
        "nodes.n1.gateway: 10.0.0.255 is not a host address of segment lan1",
    )
    reject(
        mutated(lambda d: d["nodes"]["n1"].update(gateway="10.0.0.11")),
        "nodes.n1.gateway: 10.0.0.11 is the node's own address",
    )


def test_node_pod_cidr_outside_cluster() -> None:
    reject(
        mutated(lambda d: d["nodes"]["n1"].update(podCIDR="10.245.0.0/24")),
        "nodes.n1.podCIDR: 10.245.0.0/24 does not fit in cluster.podCIDR 10.244.0.0/16",
    )


def test_node_pod_cidr_too_small() -> None:
    reject(
        mutated(lambda d: d["nodes"]["n1"].update(podCIDR="10.244.5.0/29")),
        "nodes.n1.podCIDR: 10.244.5.0/29 is too small; use /28 or larger",
    )


def test_overlapping_explicit_node_pod_cidrs() -> None:
    def fn(d: dict[str, Any]) -> None:
        d["nodes"]["n1"]["podCIDR"] = "10.244.0.0/23"
        d["nodes"]["n3"]["podCIDR"] = "10.244.1.0/24"

    reject(
        mutated(fn),
        "nodes.n3.podCIDR: 10.244.1.0/24 overlaps nodes.n1.podCIDR (10.244.0.0/23)",
        "disjoint",
    )


def test_explicit_and_allocated_cidrs_never_overlap() -> None:
    # The allocator skips every explicit CIDR, whichever node holds it and wherever it is.
    d = base()
    d["nodes"]["n2"]["podCIDR"] = "10.244.1.0/24"
    d["nodes"]["n3"]["podCIDR"] = "10.244.0.0/25"
    topo = parse_topology(d, "t.yaml")
    assert str(topo.node_pod_cidrs["n1"]) == "10.244.2.0/24"


def test_pod_cidr_exhaustion() -> None:
    msg = reject(
        mutated(lambda d: d.update(cluster={"podCIDR": "10.244.0.0/24", "nodeCIDRSize": 25})),
        "nodes.n3.podCIDR: cluster.podCIDR 10.244.0.0/24 has no free /25 left",
        "widen cluster.podCIDR or lower nodeCIDRSize",
    )
    assert msg.count("t.yaml") == 1


def test_node_cidr_size_larger_than_cluster() -> None:
    reject(
        mutated(lambda d: d.update(cluster={"podCIDR": "10.244.0.0/24", "nodeCIDRSize": 16})),
        "cluster.nodeCIDRSize: /16 is larger than cluster.podCIDR 10.244.0.0/24",
        "from 24 to 28",
    )


@pytest.mark.parametrize("size", [7, 29])
def test_node_cidr_size_bounds(size: int) -> None:
    reject(
        mutated(lambda d: d["cluster"].update(nodeCIDRSize=size)),
        "t.yaml: cluster.nodeCIDRSize: Input should be",
    )


def test_too_many_pods_for_node_cidr() -> None:
    def fn(d: dict[str, Any]) -> None:
        d["nodes"]["n2"]["podCIDR"] = "10.244.9.0/28"
        d["pods"] = [{"name": f"p{i}", "node": "n2"} for i in range(14)]

    reject(
        mutated(fn),
        "pods[13].node: node n2 has more pods than its pod CIDR 10.244.9.0/28 can address",
        "at most 13",
    )


def test_route_reflector_unknown_node() -> None:
    reject(
        mutated(lambda d: d.update(bgp={"routeReflectors": ["n1", "rr9"]})),
        "bgp.routeReflectors[1]: unknown node 'rr9'; known nodes: n1, n2, n3",
    )


def test_no_nodes_and_missing_fields() -> None:
    reject(mutated(lambda d: d.update(nodes={})), "nodes: ", "at least one node")
    reject(mutated(lambda d: d.pop("segments")), "t.yaml: segments: required field is missing")
    reject(mutated(lambda d: d["pods"][0].pop("node")), "t.yaml: pods[0].node: required field")


@pytest.mark.parametrize(
    "labels",
    [
        {"bad key": "x"},
        {"-app": "x"},
        {"Example.com/app": "x"},  # prefix must be lowercase DNS
        {"a/b/c": "x"},
        {"x" * 64: "y"},
        {("p" * 254) + "/app": "y"},
    ],
)
def test_bad_label_keys(labels: dict[str, str]) -> None:
    reject(
        mutated(lambda d: d["pods"][0].update(labels=labels)),
        "t.yaml: pods[0].labels: label key",
        "is not a valid Kubernetes label key",
        "1-63 letters, digits",
    )


@pytest.mark.parametrize("value", ["has space", "-lead", "trail.", "v" * 64, "a/b"])
def test_bad_label_values(value: str) -> None:
    reject(
        mutated(lambda d: d["pods"][0].update(labels={"app": value})),
        "t.yaml: pods[0].labels: label app=",
        "a Kubernetes label value is empty or 1-63 letters",
    )


def test_bad_namespace_label() -> None:
    reject(
        mutated(lambda d: d["namespaces"]["test"].update(labels={"env": "a b"})),
        "t.yaml: namespaces.test.labels: label env='a b'",
    )


def test_non_string_label_value() -> None:
    reject(
        mutated(lambda d: d["pods"][0].update(labels={"replicas": 3})),
        "t.yaml: pods[0].labels.replicas: Input should be a valid string",
    )


def test_duplicate_ports() -> None:
    ports = [
        {"name": "http", "containerPort": 8080},
        {"name": "dns", "containerPort": 8080, "protocol": "UDP"},  # other protocol: fine
        {"name": "alt", "containerPort": 8080, "protocol": "TCP"},
    ]
    reject(
        mutated(lambda d: d["pods"][1].update(ports=ports)),
        "t.yaml: pods[1].ports[2]: duplicate TCP port 8080",
    )


@pytest.mark.parametrize(
    ("port", "fragment"),
    [
        ({"containerPort": 0}, "pods[0].ports[0].containerPort: Input should be greater"),
        ({"containerPort": 70000}, "pods[0].ports[0].containerPort: Input should be less"),
        ({"containerPort": 80, "protocol": "SCTP"}, "pods[0].ports[0].protocol: Input should"),
    ],
)
def test_bad_ports(port: dict[str, Any], fragment: str) -> None:
    reject(mutated(lambda d: d["pods"][0].update(ports=[port])), fragment)


@pytest.mark.parametrize("data", [None, [], ["a"], "name: x", 3])
def test_top_level_not_a_mapping(data: Any) -> None:
    reject(data, "the top level must be a mapping with name, segments, nodes")


def test_int_dict_key_path_is_readable() -> None:
    msg = reject(mutated(lambda d: d["segments"].update({1: {"cidr": "10.0.9.0/24"}})))
    assert "[key]" not in msg
    assert msg.startswith("t.yaml: segments[1]: ")


# ---------------------------------------------------------------- files


def load_error(path: Path | str) -> str:
    with pytest.raises(TopologyError) as info:
        load_topology(path)
    msg = str(info.value)
    assert "\n" not in msg, msg
    return msg


def test_invalid_yaml_names_line(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("name: t\nsegments: {lan1: {cidr: 10.0.0.0/24}\nnodes: {}\n")
    msg = load_error(f)
    assert msg.startswith(f"{f}:3: not valid YAML (")


def test_tab_indentation_names_line(tmp_path: Path) -> None:
    f = tmp_path / "tab.yaml"
    f.write_text("name: t\n\tsegments: {}\n")
    assert load_error(f).startswith(f"{f}:2: not valid YAML")


def test_duplicate_yaml_key_is_rejected_not_merged(tmp_path: Path) -> None:
    f = tmp_path / "dup.yaml"
    f.write_text(
        "name: t\n"
        "segments: {lan1: {cidr: 10.0.0.0/24}}\n"
        "nodes:\n"
        "  n1: {segment: lan1, ip: 10.0.0.11}\n"
        "  n1: {segment: lan1, ip: 10.0.0.12}\n"
    )
    msg = load_error(f)
    assert msg == f"{f}:5: not valid YAML (duplicate key 'n1' (first defined on line 4))"


def test_yaml_merge_keys_still_work(tmp_path: Path) -> None:
    f = tmp_path / "merge.yaml"
    f.write_text(
        "name: t\n"
        "segments: {lan1: {cidr: 10.0.0.0/24}}\n"
        "x-node: &n {segment: lan1}\n"
        "nodes:\n"
        "  n1: {<<: *n, ip: 10.0.0.11}\n"
    )
    # The anchor's carrier key is then an unknown top-level key: merge itself worked.
    assert load_error(f) == f"{f}: x-node: unknown key " + (
        "(check the spelling; see topologies/default.yaml for the format)"
    )


def test_not_utf8(tmp_path: Path) -> None:
    f = tmp_path / "bin.yaml"
    f.write_bytes(b"name: t\nx: \xff\xfe\x00\n")
    assert load_error(f).startswith(f"{f}: not valid YAML (")


def test_empty_file_and_list_file(tmp_path: Path) -> None:
    f = tmp_path / "empty.yaml"
    f.write_text("")
    assert load_error(f) == f"{f}: the top level must be a mapping with name, segments, nodes"
    g = tmp_path / "list.yaml"
    g.write_text("- name: t\n")
    assert load_error(g) == f"{g}: the top level must be a mapping with name, segments, nodes"


def test_validation_error_names_the_file(tmp_path: Path) -> None:
    f = tmp_path / "lab.yaml"
    f.write_text(
        "name: t\nsegments: {lan1: {cidr: 10.0.0.0/24}}\n"
        "nodes: {n1: {segment: lan1, ip: 10.0.0.11}}\n"
        "pods: [{name: a, node: n2}]\n"
    )
    assert load_error(f) == f"{f}: pods[0].node: unknown node 'n2'; known nodes: n1"


def test_missing_file_lists_shipped(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    assert load_error(missing) == (
        f"{missing}: no such topology file; shipped topologies: "
        "cross-subnet, default, leaf-spine, leaf-spine-no-bgp, netpol-seed, netpol-xyz, "
        "route-reflector, services, two-node"
    )
    assert load_error("defualt") == (
        "defualt: no such topology file; shipped topologies: "
        "cross-subnet, default, leaf-spine, leaf-spine-no-bgp, netpol-seed, netpol-xyz, "
        "route-reflector, services, two-node"
    )


def test_unreadable_path_is_one_line(tmp_path: Path) -> None:
    assert load_error(tmp_path) == f"{tmp_path}: cannot read (Is a directory)"


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(d: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        for p in parents:
            d = d[p]
        d[last] = value

    return change


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_set("cluster.podCIDR", "169.254.0.0/16"), "cluster.podCIDR: 169.254.0.0/16 overlaps"),
        (_set("cluster.podCIDR", "127.0.0.0/16"), "which is loopback"),
        (_set("cluster.podCIDR", "224.1.0.0/16"), "which is multicast"),
        (_set("cluster.podCIDR", "0.0.0.0/16"), "'this network'"),
        (_set("segments.lan2.cidr", "127.0.1.0/24"), "segments.lan2.cidr: 127.0.1.0/24 overlaps"),
        (_set("nodes.n2.gateway", "10.0.0.11"), "is node n1's address"),
        (
            _set("routers.r1.routes", [{"to": "10.244.5.0/24", "via": "10.0.0.11"}]),
            "routes[0].to: 10.244.5.0/24 overlaps cluster.podCIDR",
        ),
        (
            _set("routers.r1.routes", [{"to": "192.168.0.0/24", "via": "10.0.0.1"}]),
            "routes[0].via: 10.0.0.1 is the router's own address",
        ),
        (_set("routers.r1.asn", 64512), "is the cluster's bgp.asn"),
        (
            _set("bgp", {"routeReflectors": ["n1", "n1"]}),
            "routeReflectors[1]: 'n1' is listed twice",
        ),
        (_set("routers", {}), "segments.lan2: its nodes cannot reach the nodes on lan1"),
    ],
)
def test_topologies_that_cannot_work_are_refused(
    change: Callable[[dict[str, Any]], None], message: str
) -> None:
    reject(mutated(change), message)


def test_the_refusals_above_start_from_a_valid_topology() -> None:
    data = copy.deepcopy(BASE)
    data["routers"]["r1"]["asn"] = 65001
    data["routers"]["r1"]["routes"] = [{"to": "192.168.0.0/24", "via": "10.0.0.11"}]
    data["bgp"] = {"routeReflectors": ["n1"]}
    assert parse_topology(data).routers["r1"].asn == 65001
