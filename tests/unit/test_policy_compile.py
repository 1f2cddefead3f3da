"""Unit tests for labctl.policy.compile: NetworkPolicies to a Felix-style nftables table.

Pure text tests (no root): a 3-node cluster with pods a/b/c in namespaces x/y/z, as the
upstream netpol e2e suite lays it out (reference Part III, 12). Kernel acceptance of the
same rulesets is tested in tests/integration/test_policy_nft.py.
"""

from __future__ import annotations

import ipaddress
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from labctl.policy.compile import (
    ACCEPT_MARK,
    MAX_NAME,
    PASS_MARK,
    TABLE,
    NodeRuleset,
    compile_all,
    compile_node,
    endpoint_chain,
    policy_chain,
    profile_chain,
    teardown_text,
)
from labctl.policy.model import NamedPort, NetworkPolicy, PodInfo

NODES = ("n1", "n2", "n3")
NAMESPACES: dict[str, dict[str, str]] = {
    "x": {"kubernetes.io/metadata.name": "x", "team": "blue"},
    "y": {"kubernetes.io/metadata.name": "y", "team": "blue"},
    "z": {"kubernetes.io/metadata.name": "z"},
}
SET_ACCEPT = "meta mark set meta mark | 0x00010000 return"


def make_pod(ns: str, name: str, node: int, host: int, **kw: Any) -> PodInfo:
    """Pod `ns/name` on node n<node> with IP 10.244.<node>.<host> and labels pod=<name>."""
    return PodInfo(
        namespace=ns,
        name=name,
        ip=kw.pop("ip", f"10.244.{node}.{host}"),
        node=f"n{node}",
        labels=kw.pop("labels", {"pod": name}),
        ports=kw.pop("ports", ()),
        iface=kw.pop("iface", f"cali{ns}{name}{node:02d}{host:03d}"),
    )


def cluster() -> list[PodInfo]:
    """x/a on n1, x/b on n2, x/c on n3; y's and z's pods rotated by one node each."""
    pods = []
    for i, ns in enumerate(("x", "y", "z")):
        for j, name in enumerate(("a", "b", "c")):
            node = (i + j) % 3 + 1
            ports = (NamedPort("serve-80", 80, "TCP"), NamedPort("serve-81", 81, "UDP"))
            pods.append(make_pod(ns, name, node, 10 * i + j + 2, ports=ports))
    return pods


PODS = cluster()


def ip_of(key: str, pods: Sequence[PodInfo] = PODS) -> str:
    return next(p.ip for p in pods if p.key == key)


def pod_of(key: str, pods: Sequence[PodInfo] = PODS) -> PodInfo:
    return next(p for p in pods if p.key == key)


def policy(name: str, ns: str = "x", **spec: Any) -> NetworkPolicy:
    spec.setdefault("podSelector", {})
    return NetworkPolicy.model_validate(
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": ns},
            "spec": spec,
        }
    )


@dataclass
class Parsed:
    """A ruleset as text blocks: chain -> rule lines, set/map -> elements."""

    chains: dict[str, list[str]]
    sets: dict[str, list[str]]
    set_types: dict[str, str]
    maps: dict[str, list[str]]


def parse(text: str) -> Parsed:
    """Split the rendered table into its blocks (only what the template emits)."""
    chains: dict[str, list[str]] = {}
    sets: dict[str, list[str]] = {}
    set_types: dict[str, str] = {}
    maps: dict[str, list[str]] = {}
    kind, name, in_elements = "", "", False
    elements: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if m := re.match(r"(chain|set|map) (\S+) \{$", line):
            kind, name, in_elements, elements = m[1], m[2], False, []
            if kind == "chain":
                chains[name] = []
            continue
        if not kind:
            continue
        if line == "elements = {":
            in_elements = True
        elif line == "}" and in_elements:
            in_elements = False
        elif line == "}":
            if kind == "set":
                sets[name] = elements
            elif kind == "map":
                maps[name] = elements
            kind = ""
        elif in_elements:
            elements += [e.strip() for e in line.rstrip(",").split(", ")]
        elif kind == "chain" and not line.startswith("type "):
            chains[name].append(line)
        elif kind == "set" and line.startswith("type "):
            set_types[name] = line[5:]
    return Parsed(chains, sets, set_types, maps)


def compiled(
    node: str,
    policies: Sequence[NetworkPolicy] = (),
    pods: Sequence[PodInfo] = PODS,
    namespaces: Mapping[str, Mapping[str, str]] = NAMESPACES,
) -> tuple[NodeRuleset, Parsed]:
    rs = compile_node(node, policies, namespaces, pods)
    return rs, parse(rs.text)


def set_in(rule: str) -> str:
    """The name of the selector set a rule matches on."""
    m = re.search(r"@(cali40s-\w+)", rule)
    assert m, rule
    return m[1]


def local_pods(node: str, pods: Sequence[PodInfo] = PODS) -> list[PodInfo]:
    return [p for p in pods if p.node == node]


# --- layout ----------------------------------------------------------------------------------


def test_constants_are_felix_marks() -> None:
    assert TABLE == "calico"
    assert (ACCEPT_MARK, PASS_MARK) == (0x10000, 0x20000)
    # Clear of kube-proxy's masquerade and drop marks.
    assert (ACCEPT_MARK | PASS_MARK) & (0x4000 | 0x8000) == 0


def test_text_replaces_the_table_atomically() -> None:
    rs, _ = compiled("n1")
    body = [x for x in rs.text.splitlines() if x and not x.startswith("#")]
    assert body[:3] == ["table ip calico {}", "delete table ip calico", "table ip calico {"]
    assert body[-1] == "}"
    assert rs.text.count("delete table") == 1


def test_no_policies_every_local_endpoint_dispatched_and_profile_allowed() -> None:
    for node in NODES:
        rs, p = compiled(node)
        local = local_pods(node)
        assert rs.node == node
        assert rs.endpoints == tuple(sorted(x.iface for x in local))
        assert len(rs.endpoints) == 3
        # Only this node's interfaces are in the maps.
        assert p.maps["filter-cali-from-wl-dispatch"] == [
            f'"{i}" : goto filter-cali-fw-{i}' for i in rs.endpoints
        ]
        assert p.maps["filter-cali-to-wl-dispatch"] == [
            f'"{i}" : goto filter-cali-tw-{i}' for i in rs.endpoints
        ]
        remote = [x.iface for x in PODS if x.node != node]
        assert not any(i in rs.text for i in remote)
        for pod in local:
            tw = p.chains[f"filter-cali-tw-{pod.iface}"]
            fw = p.chains[f"filter-cali-fw-{pod.iface}"]
            assert tw[3] == f"jump filter-cali-pri-kns.{pod.namespace}"
            assert fw[3] == f"jump filter-cali-pro-kns.{pod.namespace}"
            assert tw[-1] == fw[-1] == 'drop comment "Drop if no profiles matched"'
            assert p.chains[f"filter-cali-pri-kns.{pod.namespace}"] == [SET_ACCEPT]
            assert p.chains[f"filter-cali-pro-kns.{pod.namespace}"] == [SET_ACCEPT]
        assert not [c for c in rs.chains if c.startswith(("filter-cali-pi-", "filter-cali-po-"))]
        assert p.sets == {}


def test_endpoint_chain_starts_with_conntrack_then_clears_marks() -> None:
    _, p = compiled("n1")
    pod = pod_of("x/a")
    assert pod.node == "n1"
    for chain in (f"filter-cali-tw-{pod.iface}", f"filter-cali-fw-{pod.iface}"):
        rules = p.chains[chain]
        # Replies must pass before any policy (reference mistake 8).
        assert rules[0] == 'ct state established,related accept comment "pod x/a"'
        assert rules[1] == "ct state invalid drop"
        assert rules[2] == "meta mark set meta mark & 0xfffcffff"


def test_forward_hook_and_dispatch() -> None:
    _, p = compiled("n2")
    assert p.chains["filter-FORWARD"] == ["jump filter-cali-FORWARD"]
    assert p.chains["filter-cali-FORWARD"] == [
        "meta mark set meta mark & 0xfffcffff",
        'iifname "cali*" jump filter-cali-from-wl-dispatch',
        'oifname "cali*" jump filter-cali-to-wl-dispatch',
    ]
    assert p.chains["filter-cali-from-wl-dispatch"] == [
        "iifname vmap @filter-cali-from-wl-dispatch",
        'drop comment "Unknown interface"',
    ]
    assert p.chains["filter-cali-to-wl-dispatch"] == [
        "oifname vmap @filter-cali-to-wl-dispatch",
        'drop comment "Unknown interface"',
    ]
    rs, _ = compiled("n2")
    assert "type filter hook forward priority filter; policy accept;" in rs.text
    # The forward hook only: host -> pod (OUTPUT) and pod -> host (INPUT) are not policed.
    assert "hook output" not in rs.text and "hook input" not in rs.text


def test_node_without_pods_has_empty_maps() -> None:
    rs, p = compiled("n9", [policy("deny")])
    assert rs.endpoints == ()
    assert p.maps == {"filter-cali-from-wl-dispatch": [], "filter-cali-to-wl-dispatch": []}
    assert "elements = { }" not in rs.text
    assert not [c for c in rs.chains if c.startswith("filter-cali-pi-")]


def test_pod_without_interface_is_not_dispatched() -> None:
    pods = [*PODS, make_pod("x", "pending", 1, 99, iface="")]
    rs, _ = compiled("n1", pods=pods)
    assert len(rs.endpoints) == 3 and "" not in rs.endpoints


def test_chains_are_declared_in_packet_order() -> None:
    rs, _ = compiled("n1", [policy("deny")])
    order = {name: i for i, name in enumerate(rs.chains)}
    pod = pod_of("x/a")
    assert rs.chains[:4] == (
        "filter-FORWARD",
        "filter-cali-FORWARD",
        "filter-cali-from-wl-dispatch",
        "filter-cali-to-wl-dispatch",
    )
    assert order[f"filter-cali-tw-{pod.iface}"] < order["filter-cali-pi-_knp.x.deny"]
    assert order["filter-cali-pi-_knp.x.deny"] < order["filter-cali-pro-kns.x"]


# --- isolation ------------------------------------------------------------------------------


def test_default_deny_ingress_isolates_only_selected_pods_ingress() -> None:
    deny = policy("default-deny")  # policyTypes defaults to [Ingress]
    rs, p = compiled("n1", [deny])
    xa, yc = pod_of("x/a"), pod_of("y/c")
    assert xa.node == yc.node == "n1"
    tw = p.chains[f"filter-cali-tw-{xa.iface}"]
    assert tw[3:] == [
        "jump filter-cali-pi-_knp.x.default-deny",
        'meta mark & 0x00010000 == 0x00010000 return comment "Return if policy accepted"',
        'drop comment "End of tier default: drop if no policies passed packet"',
    ]
    # `ingress` empty: the policy chain has no rules, so the tier drop applies.
    assert p.chains["filter-cali-pi-_knp.x.default-deny"] == []
    # Egress of the same pod is not isolated.
    assert p.chains[f"filter-cali-fw-{xa.iface}"][3] == "jump filter-cali-pro-kns.x"
    assert "filter-cali-po-_knp.x.default-deny" not in rs.chains
    # Another namespace is not selected (policies never reach across namespaces).
    assert p.chains[f"filter-cali-tw-{yc.iface}"][3] == "jump filter-cali-pri-kns.y"


def test_policy_chain_only_on_nodes_with_selected_pods() -> None:
    only_b = policy("b", podSelector={"matchLabels": {"pod": "b"}})
    rulesets = compile_all(NODES, [only_b], NAMESPACES, PODS)
    assert set(rulesets) == set(NODES)
    where = pod_of("x/b").node
    for node, rs in rulesets.items():
        assert ("filter-cali-pi-_knp.x.b" in rs.chains) == (node == where)


def test_egress_policy_po_chain_on_source_node_only() -> None:
    egress = policy(
        "egress-a",
        podSelector={"matchLabels": {"pod": "a"}},
        policyTypes=["Egress"],
        egress=[{"to": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}],
    )
    rulesets = compile_all(NODES, [egress], NAMESPACES, PODS)
    src = pod_of("x/a")
    for node, rs in rulesets.items():
        p = parse(rs.text)
        assert ("filter-cali-po-_knp.x.egress-a" in rs.chains) == (node == src.node)
        # Egress-only: ingress stays with the profile everywhere.
        assert not [c for c in rs.chains if c.startswith("filter-cali-pi-")]
        if node == src.node:
            fw = p.chains[f"filter-cali-fw-{src.iface}"]
            assert fw[3] == "jump filter-cali-po-_knp.x.egress-a"
            assert fw[-1].startswith("drop comment")
            (rule,) = p.chains["filter-cali-po-_knp.x.egress-a"]
            assert rule.startswith("ip daddr @cali40s-")
            assert p.sets[set_in(rule)] == [ip_of("x/b")]


def test_egress_defaulting_adds_egress_only_with_egress_rules() -> None:
    both = policy("both", egress=[{}])  # policyTypes absent, egress present: both types
    rs, p = compiled("n1", [both])
    assert "filter-cali-pi-_knp.x.both" in rs.chains
    assert p.chains["filter-cali-po-_knp.x.both"] == [SET_ACCEPT + ' comment "egress[0]"']
    ingress_only = policy("in", egress=[{}], policyTypes=["Ingress"])
    rs, _ = compiled("n1", [ingress_only])
    assert "filter-cali-po-_knp.x.in" not in rs.chains


def test_allow_all_rule_vs_deny_all() -> None:
    _, p = compiled("n1", [policy("allow", ingress=[{}])])
    assert p.chains["filter-cali-pi-_knp.x.allow"] == [SET_ACCEPT + ' comment "ingress[0]"']
    _, p = compiled("n1", [policy("deny", ingress=[])])
    assert p.chains["filter-cali-pi-_knp.x.deny"] == []


def test_policies_jumped_in_namespace_name_order() -> None:
    pols = [policy("zz"), policy("aa"), policy("mm")]
    _, p = compiled("n1", pols)
    tw = p.chains[f"filter-cali-tw-{pod_of('x/a').iface}"]
    jumps = [r for r in tw if r.startswith("jump ")]
    assert jumps == [f"jump filter-cali-pi-_knp.x.{n}" for n in ("aa", "mm", "zz")]
    # Each jump is followed by its return-if-accepted.
    for i, rule in enumerate(tw):
        if rule.startswith("jump "):
            assert tw[i + 1].startswith("meta mark & 0x00010000 == 0x00010000 return")


# --- peers and sets -------------------------------------------------------------------------


def peer_sets(rs: NodeRuleset, chain: str) -> list[list[str]]:
    p = parse(rs.text)
    return [sorted(p.sets[set_in(r)]) for r in p.chains[chain]]


def test_pod_selector_peer_is_confined_to_policy_namespace() -> None:
    pol = policy("from-b", ingress=[{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}])
    rs, _ = compiled("n1", [pol])
    assert peer_sets(rs, "filter-cali-pi-_knp.x.from-b") == [[ip_of("x/b")]]
    assert ip_of("y/b") not in rs.text and ip_of("z/b") not in rs.text


def test_namespace_selector_peer_takes_all_pods_of_matching_namespaces() -> None:
    pol = policy(
        "from-blue", ingress=[{"from": [{"namespaceSelector": {"matchLabels": {"team": "blue"}}}]}]
    )
    rs, _ = compiled("n1", [pol])
    want = sorted(ip_of(f"{ns}/{n}") for ns in "xy" for n in "abc")
    assert peer_sets(rs, "filter-cali-pi-_knp.x.from-blue") == [want]
    assert not any(ip_of(f"z/{n}") in rs.text for n in "abc")


def test_namespace_and_pod_selector_in_one_peer_is_and_two_peers_or() -> None:
    ns_y = {"matchLabels": {"kubernetes.io/metadata.name": "y"}}
    pod_b = {"matchLabels": {"pod": "b"}}
    and_ = policy("and", ingress=[{"from": [{"namespaceSelector": ns_y, "podSelector": pod_b}]}])
    or_ = policy("or", ingress=[{"from": [{"namespaceSelector": ns_y}, {"podSelector": pod_b}]}])
    rs, _ = compiled("n1", [and_, or_])
    assert peer_sets(rs, "filter-cali-pi-_knp.x.and") == [[ip_of("y/b")]]
    assert peer_sets(rs, "filter-cali-pi-_knp.x.or") == [
        sorted(ip_of(f"y/{n}") for n in "abc"),
        [ip_of("x/b")],
    ]


def test_match_expressions_and_empty_selectors() -> None:
    not_a = {"matchExpressions": [{"key": "pod", "operator": "NotIn", "values": ["a"]}]}
    pol = policy(
        "expr",
        ingress=[
            {"from": [{"podSelector": not_a}]},
            {"from": [{"namespaceSelector": {}}]},
            {"from": [{"podSelector": {}}]},
        ],
    )
    rs, _ = compiled("n1", [pol])
    sets = peer_sets(rs, "filter-cali-pi-_knp.x.expr")
    assert sets[0] == sorted([ip_of("x/b"), ip_of("x/c")])
    assert sets[1] == sorted(p.ip for p in PODS)  # every namespace
    assert sets[2] == sorted(ip_of(f"x/{n}") for n in "abc")  # every pod of x only


def test_namespace_missing_from_mapping_still_has_its_name_label() -> None:
    ns_z = {"matchLabels": {"kubernetes.io/metadata.name": "z"}}
    pol = policy("z", ingress=[{"from": [{"namespaceSelector": ns_z}]}])
    namespaces = {k: v for k, v in NAMESPACES.items() if k != "z"}
    rs, _ = compiled("n1", [pol], namespaces=namespaces)
    assert peer_sets(rs, "filter-cali-pi-_knp.x.z") == [sorted(ip_of(f"z/{n}") for n in "abc")]


def test_identical_selectors_share_one_set_and_different_scopes_do_not() -> None:
    peer = {"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}
    p1, p2 = policy("p1", ingress=[peer]), policy("p2", ingress=[peer])
    p3 = policy("p3", ns="y", ingress=[peer])
    _, p = compiled("n1", [p1, p2, p3])
    (r1,), (r2,) = p.chains["filter-cali-pi-_knp.x.p1"], p.chains["filter-cali-pi-_knp.x.p2"]
    (r3,) = p.chains["filter-cali-pi-_knp.y.p3"]
    assert set_in(r1) == set_in(r2)
    assert set_in(r3) != set_in(r1)  # same selector, other namespace
    assert p.sets[set_in(r3)] == [ip_of("y/b")]
    assert len(p.sets) == 2


def test_empty_set_is_declared_without_elements() -> None:
    pol = policy("none", ingress=[{"from": [{"podSelector": {"matchLabels": {"pod": "nope"}}}]}])
    rs, p = compiled("n1", [pol])
    (rule,) = p.chains["filter-cali-pi-_knp.x.none"]
    assert p.sets[set_in(rule)] == []
    assert p.set_types[set_in(rule)] == "ipv4_addr"
    assert "elements = { }" not in rs.text and "elements = {\n\t\t}" not in rs.text


def test_pod_without_ip_is_left_out_of_sets() -> None:
    pods = [*PODS, make_pod("x", "pending", 1, 99, ip="", labels={"pod": "b"}, iface="calipending")]
    pol = policy("from-b", ingress=[{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}])
    rs, _ = compiled("n1", [pol], pods=pods)
    assert peer_sets(rs, "filter-cali-pi-_knp.x.from-b") == [[ip_of("x/b")]]


def test_ip_block_with_except_inline() -> None:
    pol = policy(
        "cidr",
        ingress=[{"from": [{"ipBlock": {"cidr": "10.0.0.0/24", "except": ["10.0.0.128/25"]}}]}],
        egress=[{"to": [{"ipBlock": {"cidr": "192.168.1.7/32"}}]}],
    )
    _, p = compiled("n1", [pol])
    assert p.chains["filter-cali-pi-_knp.x.cidr"] == [
        f'ip saddr 10.0.0.0/24 ip saddr != {{ 10.0.0.128/25 }} {SET_ACCEPT} comment "ingress[0]"'
    ]
    # Egress matches the destination; no except, no `!=`.
    assert p.chains["filter-cali-po-_knp.x.cidr"] == [
        f'ip daddr 192.168.1.7/32 {SET_ACCEPT} comment "egress[0]"'
    ]


def test_ip_block_overlapping_excepts_are_merged() -> None:
    block = {"cidr": "10.0.0.0/16", "except": ["10.0.1.0/24", "10.0.0.0/24", "10.0.1.128/25"]}
    _, p = compiled("n1", [policy("cidr", ingress=[{"from": [{"ipBlock": block}]}])])
    (rule,) = p.chains["filter-cali-pi-_knp.x.cidr"]
    assert "ip saddr != { 10.0.0.0/23 }" in rule


# --- ports ----------------------------------------------------------------------------------


def only_rule(ports: list[dict[str, Any]], direction: str = "ingress") -> list[str]:
    if direction == "ingress":
        pol = policy("ports", ingress=[{"ports": ports}])
        chain = "filter-cali-pi-_knp.x.ports"
    else:
        pol = policy("ports", policyTypes=["Egress"], egress=[{"ports": ports}])
        chain = "filter-cali-po-_knp.x.ports"
    _, p = compiled("n1", [pol])
    return [r.removesuffix(f' comment "{direction}[0]"') for r in p.chains[chain]]


def test_numeric_ports_and_end_port_range() -> None:
    assert only_rule([{"port": 80}, {"port": 8000, "endPort": 8080}, {"port": 81}]) == [
        f"meta l4proto tcp th dport {{ 80-81, 8000-8080 }} {SET_ACCEPT}"
    ]
    assert only_rule([{"port": 80}]) == [f"meta l4proto tcp th dport 80 {SET_ACCEPT}"]
    assert only_rule([{"port": 80, "endPort": 80}]) == [
        f"meta l4proto tcp th dport 80 {SET_ACCEPT}"
    ]
    # Overlapping ranges merge (an anonymous interval set must not overlap).
    assert only_rule([{"port": 10, "endPort": 20}, {"port": 15, "endPort": 30}]) == [
        f"meta l4proto tcp th dport 10-30 {SET_ACCEPT}"
    ]


def test_protocols_default_tcp_and_sctp_is_not_tcp() -> None:
    assert only_rule([{"protocol": "SCTP", "port": 80}]) == [
        f"meta l4proto sctp th dport 80 {SET_ACCEPT}"
    ]
    rules = only_rule([{"port": 80}, {"protocol": "UDP", "port": 80}])
    assert rules == [
        f"meta l4proto tcp th dport 80 {SET_ACCEPT}",
        f"meta l4proto udp th dport 80 {SET_ACCEPT}",
    ]
    assert not any("sctp" in r for r in rules)


def test_protocol_only_port_matches_all_ports_of_it() -> None:
    assert only_rule([{"protocol": "UDP"}, {"protocol": "UDP", "port": 53}]) == [
        f"meta l4proto udp {SET_ACCEPT}"
    ]
    # No ports at all: every protocol, ICMP included, so no l4proto match.
    assert only_rule([]) == [SET_ACCEPT]


def test_named_ports_use_ip_proto_port_sets() -> None:
    _, p = compiled("n1", [policy("named", ingress=[{"ports": [{"port": "serve-80"}]}])])
    (rule,) = p.chains["filter-cali-pi-_knp.x.named"]
    m = re.match(r"ip daddr \. meta l4proto \. th dport @(cali40n-\w+) ", rule)
    assert m, rule
    assert p.set_types[m[1]] == "ipv4_addr . inet_proto . inet_service"
    # Every pod of the cluster with a TCP port named serve-80.
    ips = sorted(PODS, key=lambda x: ipaddress.IPv4Address(x.ip))
    assert p.sets[m[1]] == [f"{x.ip} . tcp . 80" for x in ips]
    # serve-81 is a UDP port: a TCP named-port rule finds no pod.
    _, p = compiled("n1", [policy("named", ingress=[{"ports": [{"port": "serve-81"}]}])])
    (rule,) = p.chains["filter-cali-pi-_knp.x.named"]
    assert p.sets[re.findall(r"@(cali40n-\w+)", rule)[0]] == []


def test_named_port_resolves_per_pod_and_protocol() -> None:
    pods = [
        make_pod("x", "a", 1, 2, ports=(NamedPort("web", 80, "TCP"),)),
        make_pod("x", "b", 2, 2, ports=(NamedPort("web", 8080, "TCP"),)),
        make_pod("x", "c", 3, 2, ports=(NamedPort("web", 53, "UDP"), NamedPort(None, 9, "TCP"))),
    ]
    pol = policy(
        "web",
        policyTypes=["Egress"],
        egress=[{"ports": [{"port": "web"}, {"protocol": "UDP", "port": "web"}]}],
    )
    _, p = compiled("n1", [pol], pods=pods)
    rules = p.chains["filter-cali-po-_knp.x.web"]
    assert len(rules) == 2
    tcp_set, udp_set = (re.findall(r"@(cali40n-\w+)", r)[0] for r in rules)
    assert p.sets[tcp_set] == ["10.244.1.2 . tcp . 80", "10.244.2.2 . tcp . 8080"]
    assert p.sets[udp_set] == ["10.244.3.2 . udp . 53"]


def test_peers_times_ports() -> None:
    pol = policy(
        "mix",
        ingress=[
            {
                "from": [
                    {"podSelector": {"matchLabels": {"pod": "b"}}},
                    {"ipBlock": {"cidr": "172.16.0.0/12"}},
                ],
                "ports": [{"port": 80}, {"protocol": "UDP", "port": 53}, {"port": "serve-80"}],
            },
            {"ports": [{"protocol": "SCTP"}]},
        ],
    )
    _, p = compiled("n1", [pol])
    rules = p.chains["filter-cali-pi-_knp.x.mix"]
    assert len(rules) == 2 * 3 + 1
    assert all(r.endswith(f'{SET_ACCEPT} comment "ingress[0]"') for r in rules[:6])
    assert rules[6] == f'meta l4proto sctp {SET_ACCEPT} comment "ingress[1]"'


# --- scale, names, determinism --------------------------------------------------------------


def spread(n: int) -> list[PodInfo]:
    """`n` pods in x, over the three nodes, half labelled role=client."""
    return [
        make_pod(
            "x",
            f"p{i}",
            i % 3 + 1,
            i // 3 + 2,
            labels={"role": "client" if i % 2 else "server"},
        )
        for i in range(n)
    ]


def policy_rules(rs: NodeRuleset) -> int:
    p = parse(rs.text)
    return sum(len(p.chains[c]) for c in rs.chains if c.startswith("filter-cali-p"))


def test_rules_grow_with_policies_not_with_pod_pairs() -> None:
    pol = policy(
        "servers",
        podSelector={"matchLabels": {"role": "server"}},
        ingress=[{"from": [{"podSelector": {"matchLabels": {"role": "client"}}}]}],
    )
    small, large = (
        compile_node("n1", [pol], NAMESPACES, spread(50)),
        compile_node("n1", [pol], NAMESPACES, spread(100)),
    )
    assert policy_rules(small) == policy_rules(large) == 3  # the pi rule, the pri and pro profiles
    # The set grows instead.
    assert len(parse(large.text).sets.popitem()[1]) == 50
    # Total rules grow linearly with local pods (their endpoint chains), not quadratically.
    per_pod = 2 * 6
    growth = len(large.endpoints) - len(small.endpoints)
    assert large.rules - small.rules == per_pod * growth
    # More policies: more rules.
    more = [pol, policy("other", ingress=[{"ports": [{"port": 80}]}])]
    assert compile_node("n1", more, NAMESPACES, spread(50)).rules > small.rules


def test_rule_count_matches_text() -> None:
    pols = [policy("a", ingress=[{}]), policy("b", egress=[{"ports": [{"port": 1}]}])]
    for node in NODES:
        rs, p = compiled(node, pols)
        assert rs.rules == sum(len(r) for r in p.chains.values())
        assert rs.chains == tuple(p.chains)


def test_output_is_deterministic_whatever_the_input_order() -> None:
    pols = [
        policy("a", ingress=[{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]),
        policy("b", ns="y", policyTypes=["Egress"], egress=[{"ports": [{"port": "serve-80"}]}]),
        policy("c", ns="z", ingress=[{"from": [{"namespaceSelector": {}}]}]),
    ]
    first = compile_all(NODES, pols, NAMESPACES, PODS)
    rnd = random.Random(7)
    for _ in range(5):
        pods, shuffled = list(PODS), list(pols)
        rnd.shuffle(pods)
        rnd.shuffle(shuffled)
        namespaces = dict(reversed(list(NAMESPACES.items())))
        assert compile_all(NODES, shuffled, namespaces, pods) == first


def test_set_name_ignores_selector_term_order() -> None:
    e1 = {"key": "pod", "operator": "In", "values": ["a", "b"]}
    e2 = {"key": "tier", "operator": "Exists"}
    s1 = {"matchExpressions": [e1, e2]}
    s2 = {"matchExpressions": [e2, {**e1, "values": ["b", "a"]}]}
    _, p1 = compiled("n1", [policy("s", ingress=[{"from": [{"podSelector": s1}]}])])
    _, p2 = compiled("n1", [policy("s", ingress=[{"from": [{"podSelector": s2}]}])])
    assert list(p1.sets) == list(p2.sets)
    # An empty podSelector next to a namespaceSelector is the namespaceSelector alone.
    ns = {"matchLabels": {"team": "blue"}}
    _, p3 = compiled("n1", [policy("s", ingress=[{"from": [{"namespaceSelector": ns}]}])])
    _, p4 = compiled(
        "n1", [policy("s", ingress=[{"from": [{"namespaceSelector": ns, "podSelector": {}}]}])]
    )
    assert list(p3.sets) == list(p4.sets)
    assert list(p3.sets) != list(p1.sets)


def test_chain_names() -> None:
    pol = policy("allow.web-1", ns="prod")
    assert policy_chain(pol, "ingress") == "filter-cali-pi-_knp.prod.allow.web-1"
    assert policy_chain(pol, "egress") == "filter-cali-po-_knp.prod.allow.web-1"
    assert profile_chain("prod", "ingress") == "filter-cali-pri-kns.prod"
    assert profile_chain("prod", "egress") == "filter-cali-pro-kns.prod"
    assert endpoint_chain("cali1a2b", "ingress") == "filter-cali-tw-cali1a2b"
    assert endpoint_chain("cali1a2b", "egress") == "filter-cali-fw-cali1a2b"


@pytest.mark.parametrize("length", [230, 253])
def test_long_policy_names_are_shortened_with_a_hash(length: int) -> None:
    name = ("a" * 60 + ".") * 4
    name = (name + "b" * 253)[: length - 1] + "z"
    ns = "n" * 63
    long1 = policy_chain(policy(name, ns=ns), "ingress")
    long2 = policy_chain(policy(name[:-1] + "y", ns=ns), "ingress")
    assert len(long1) <= MAX_NAME and len(long2) <= MAX_NAME
    assert long1 != long2
    assert long1.startswith(f"filter-cali-pi-_knp.{ns}.aaaa")
    short = policy_chain(policy("web", ns=ns), "ingress")
    assert short == f"filter-cali-pi-_knp.{ns}.web"  # short names stay readable


def test_comments_are_quoted_and_short() -> None:
    rs, _ = compiled("n1")
    for comment in re.findall(r'comment ("[^"]*")', rs.text):
        assert len(comment) - 2 < 128


def test_teardown_text() -> None:
    assert teardown_text() == "table ip calico {}\ndelete table ip calico\n"


@pytest.mark.parametrize(
    ("ifaces", "error"),
    [
        (["veth1234"], "cannot be policed"),  # outside `cali*`: would bypass the dispatch
        (["cali0123456789ab"], "cannot be policed"),  # 16 characters: not a Linux name
        (['cali"x'], "cannot be policed"),
        (["cali1", "cali1"], "both use interface cali1"),
    ],
)
def test_bad_local_interfaces_are_refused(ifaces: list[str], error: str) -> None:
    pods = [make_pod("x", f"p{i}", 1, i + 2, iface=iface) for i, iface in enumerate(ifaces)]
    with pytest.raises(ValueError, match=error):
        compile_node("n1", [], NAMESPACES, pods)
    # The same pods on another node are only peers: nothing to dispatch, no error.
    assert compile_node("n2", [], NAMESPACES, pods).endpoints == ()
