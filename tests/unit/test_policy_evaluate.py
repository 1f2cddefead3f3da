"""Unit tests for labctl.policy.evaluate, the reference evaluator: small hand-made tables, each
allowed case next to its denied counterpart."""

from __future__ import annotations

from typing import Any

from labctl.policy.evaluate import allowed, isolated, matrix, selecting
from labctl.policy.model import NamedPort, NetworkPolicy, PodInfo

NAME = "kubernetes.io/metadata.name"
NAMESPACES = {
    "x": {NAME: "x", "team": "red"},
    "y": {NAME: "y", "team": "blue"},
    "z": {NAME: "z"},
}
HTTP80 = (NamedPort("http", 80, "TCP"), NamedPort("dns", 53, "UDP"))
HTTP8080 = (NamedPort("http", 8080, "TCP"),)


def pod(key: str, ip: str, ports: tuple[NamedPort, ...] = HTTP80, **labels: str) -> PodInfo:
    ns, name = key.split("/")
    return PodInfo(ns, name, ip, "n1", {"pod": name, **labels}, ports)


XA = pod("x/a", "10.244.0.1")
XB = pod("x/b", "10.244.0.2", HTTP8080)
XC = pod("x/c", "10.244.0.3", env="prod")
YA = pod("y/a", "10.244.1.1")
YB = pod("y/b", "10.244.1.2")
ZA = pod("z/a", "10.244.2.1")
PODS = [XA, XB, XC, YA, YB, ZA]


def pol(ns: str, spec: dict[str, Any], name: str = "p") -> NetworkPolicy:
    return NetworkPolicy.model_validate(
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"podSelector": {}, **spec},
        }
    )


def ok(
    policies: list[NetworkPolicy],
    src: PodInfo,
    dst: PodInfo,
    port: int = 80,
    protocol: Any = "TCP",
) -> bool:
    return allowed(policies, NAMESPACES, src, dst, port, protocol)


def sources_allowed(policies: list[NetworkPolicy], dst: PodInfo, **kw: Any) -> set[str]:
    return {src.key for src in PODS if src is not dst and ok(policies, src, dst, **kw)}


EVERYONE_BUT = {p.key for p in PODS}.difference


def test_no_policy_everything_open() -> None:
    m = matrix([], NAMESPACES, PODS, 80, "TCP")
    assert set(m) == {p.key for p in PODS}
    for src, row in m.items():
        assert set(row) == EVERYONE_BUT({src}) and all(row.values())


def test_default_deny_ingress() -> None:
    deny = [pol("x", {})]
    for dst in (XA, XB, XC):
        assert sources_allowed(deny, dst) == set()
        assert isolated(deny, dst, "Ingress") and not isolated(deny, dst, "Egress")
    # Other namespaces stay open, and x's pods may still send.
    assert sources_allowed(deny, YA) == EVERYONE_BUT({"y/a"})
    assert ok(deny, XA, YA)


def test_default_deny_egress() -> None:
    deny = [pol("x", {"policyTypes": ["Egress"]})]
    assert not ok(deny, XA, YA) and not ok(deny, XA, XB)
    assert ok(deny, YA, XA)  # ingress into x is untouched


def test_allow_all_ingress_with_one_empty_rule() -> None:
    policies = [pol("x", {}, "deny"), pol("x", {"ingress": [{}]}, "allow")]
    assert sources_allowed(policies, XA) == EVERYONE_BUT({"x/a"})
    assert ok(policies, YA, XA, 0, "ICMP")
    assert sources_allowed(policies[:1], XA) == set()


def test_empty_from_means_any_peer() -> None:
    assert sources_allowed([pol("x", {"ingress": [{"from": []}]})], XA) == EVERYONE_BUT({"x/a"})
    assert sources_allowed([pol("x", {"ingress": []})], XA) == set()


def test_pod_selector_peer_is_confined_to_the_policy_namespace() -> None:
    policies = [pol("x", {"ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "a"}}}]}]})]
    assert sources_allowed(policies, XB) == {"x/a"}  # not y/a, z/a with the same label
    everyone_in_x = [pol("x", {"ingress": [{"from": [{"podSelector": {}}]}]})]
    assert sources_allowed(everyone_in_x, XA) == {"x/b", "x/c"}


def test_namespace_selector_peer_takes_all_pods_of_matching_namespaces() -> None:
    by_label = [
        pol(
            "x", {"ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "blue"}}}]}]}
        )
    ]
    assert sources_allowed(by_label, XA) == {"y/a", "y/b"}
    all_ns = [pol("x", {"ingress": [{"from": [{"namespaceSelector": {}}]}]})]
    assert sources_allowed(all_ns, XA) == EVERYONE_BUT({"x/a"})
    # A namespace missing from the table still carries its name label.
    only_z = [
        pol("x", {"ingress": [{"from": [{"namespaceSelector": {"matchLabels": {NAME: "z"}}}]}]})
    ]
    assert allowed(only_z, {}, ZA, XA, 80, "TCP") and not allowed(only_z, {}, YA, XA, 80, "TCP")


def test_and_in_one_peer_versus_or_in_two() -> None:
    ns_y = {"namespaceSelector": {"matchLabels": {NAME: "y"}}}
    pod_a = {"podSelector": {"matchLabels": {"pod": "a"}}}
    and_ = [pol("x", {"ingress": [{"from": [{**ns_y, **pod_a}]}]})]
    or_ = [pol("x", {"ingress": [{"from": [ns_y, pod_a]}]})]
    assert sources_allowed(and_, XB) == {"y/a"}
    assert sources_allowed(or_, XB) == {"y/a", "y/b", "x/a"}


def test_not_in_matches_a_missing_key() -> None:
    not_prod = {"matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["prod"]}]}
    policies = [pol("x", {"ingress": [{"from": [{"podSelector": not_prod}]}]})]
    assert sources_allowed(policies, XB) == {"x/a"}  # x/c is env=prod
    # As the policy's own podSelector: selects pods without the key, not x/c.
    isolate = [pol("x", {"podSelector": not_prod})]
    assert isolated(isolate, XA, "Ingress") and not isolated(isolate, XC, "Ingress")


def test_ip_block_with_except() -> None:
    block = {"cidr": "10.244.0.0/16", "except": ["10.244.1.0/24"]}
    policies = [pol("x", {"ingress": [{"from": [{"ipBlock": block}]}]})]
    assert sources_allowed(policies, XA) == {"x/b", "x/c", "z/a"}
    # Another policy may still allow an excepted address.
    one = {"cidr": "10.244.1.2/32"}
    policies.append(pol("x", {"ingress": [{"from": [{"ipBlock": one}]}]}, "one"))
    assert sources_allowed(policies, XA) == {"x/b", "x/c", "z/a", "y/b"}


def test_egress_ip_block() -> None:
    policies = [pol("x", {"egress": [{"to": [{"ipBlock": {"cidr": "10.244.1.1/32"}}]}]})]
    assert ok(policies, XA, YA) and not ok(policies, XA, YB)


def test_named_port_resolves_on_each_destination() -> None:
    policies = [pol("x", {"ingress": [{"ports": [{"port": "http"}]}]})]
    assert ok(policies, YA, XA, 80) and not ok(policies, YA, XA, 8080)
    assert ok(policies, YA, XB, 8080) and not ok(policies, YA, XB, 80)


def test_named_port_on_egress_resolves_on_the_remote_destination() -> None:
    policies = [pol("y", {"policyTypes": ["Egress"], "egress": [{"ports": [{"port": "http"}]}]})]
    assert ok(policies, YA, XB, 8080) and not ok(policies, YA, XB, 80)
    assert ok(policies, YA, XA, 80) and not ok(policies, YA, XA, 8080)


def test_named_port_needs_the_same_protocol() -> None:
    # x/a's "dns" is UDP 53: a TCP rule for it resolves to nothing.
    tcp = [pol("x", {"ingress": [{"ports": [{"port": "dns"}]}]})]
    assert not ok(tcp, YA, XA, 53, "TCP") and not ok(tcp, YA, XA, 53, "UDP")
    udp = [pol("x", {"ingress": [{"ports": [{"port": "dns", "protocol": "UDP"}]}]})]
    assert ok(udp, YA, XA, 53, "UDP") and not ok(udp, YA, XA, 53, "TCP")
    # A name the pod does not have matches nothing.
    assert not ok([pol("x", {"ingress": [{"ports": [{"port": "nope"}]}]})], YA, XA, 80)


def test_end_port_range_is_inclusive() -> None:
    policies = [pol("x", {"ingress": [{"ports": [{"port": 80, "endPort": 82}]}]})]
    assert [p for p in range(78, 85) if ok(policies, YA, XA, p)] == [80, 81, 82]
    single = [pol("x", {"ingress": [{"ports": [{"port": 81}]}]})]
    assert [p for p in range(78, 85) if ok(single, YA, XA, p)] == [81]


def test_sctp_rule_does_not_open_tcp() -> None:
    policies = [pol("x", {"ingress": [{"ports": [{"port": 80, "protocol": "SCTP"}]}]})]
    assert ok(policies, YA, XA, 80, "SCTP")
    assert not ok(policies, YA, XA, 80, "TCP") and not ok(policies, YA, XA, 80, "UDP")


def test_protocol_only_rule_opens_every_port_of_that_protocol() -> None:
    policies = [pol("x", {"ingress": [{"ports": [{"protocol": "UDP"}]}]})]
    assert ok(policies, YA, XA, 53, "UDP") and ok(policies, YA, XA, 65535, "UDP")
    assert not ok(policies, YA, XA, 53, "TCP")


def test_icmp_needs_a_rule_without_ports() -> None:
    with_ports = [pol("x", {"ingress": [{"ports": [{"port": 80}, {"protocol": "UDP"}]}]})]
    assert not ok(with_ports, YA, XA, 0, "ICMP") and ok(with_ports, YA, XA, 80)
    no_ports = [pol("x", {"ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]})]
    assert ok(no_ports, XB, XA, 0, "ICMP") and not ok(no_ports, XC, XA, 0, "ICMP")


def test_union_of_policies() -> None:
    from_a = {"from": [{"podSelector": {"matchLabels": {"pod": "a"}}}]}
    from_b_81 = {"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}], "ports": [{"port": 81}]}
    policies = [
        pol("x", {"podSelector": {"matchLabels": {"pod": "c"}}, "ingress": [from_a]}, "p1"),
        pol("x", {"podSelector": {"matchLabels": {"pod": "c"}}, "ingress": [from_b_81]}, "p2"),
    ]
    assert sources_allowed(policies, XC, port=80) == {"x/a"}
    assert sources_allowed(policies, XC, port=81) == {"x/a", "x/b"}
    assert [p.metadata.name for p in selecting(policies, XC, "Ingress")] == ["p1", "p2"]
    assert selecting(policies, XA, "Ingress") == []


def test_egress_and_ingress_must_both_allow() -> None:
    to_y = {"to": [{"namespaceSelector": {"matchLabels": {NAME: "y"}}}]}
    egress = pol("x", {"podSelector": {"matchLabels": {"pod": "a"}}, "egress": [to_y]}, "e")
    from_x = {
        "from": [{"namespaceSelector": {"matchLabels": {NAME: "x"}}}],
        "ports": [{"port": 80}],
    }
    ingress = pol("y", {"podSelector": {"matchLabels": {"pod": "b"}}, "ingress": [from_x]}, "i")
    both = [egress, ingress]
    assert ok(both, XA, YB, 80)
    assert not ok(both, XA, YB, 81)  # ingress refuses
    assert not ok(both, XA, XB, 80)  # egress refuses
    assert ok(both, XA, YA, 81)  # y/a is not ingress-isolated
    assert not ok(both, ZA, YB, 80)  # z/a is not egress-isolated, but y/b refuses it
    assert ok(both, XB, YB, 80)  # x/b is not egress-isolated


def test_policy_only_selects_pods_in_its_namespace() -> None:
    policies = [pol("x", {"podSelector": {"matchLabels": {"pod": "a"}}})]
    assert isolated(policies, XA, "Ingress")
    assert not isolated(policies, YA, "Ingress") and not isolated(policies, XB, "Ingress")
    assert sources_allowed(policies, YA) == EVERYONE_BUT({"y/a"})
    assert sources_allowed(policies, XB) == EVERYONE_BUT({"x/b"})


def test_selecting_respects_direction() -> None:
    egress_only = [pol("x", {"policyTypes": ["Egress"]})]
    assert selecting(egress_only, XA, "Egress") == egress_only
    assert selecting(egress_only, XA, "Ingress") == []


def test_matrix_matches_allowed_and_leaves_out_self() -> None:
    policies = [pol("x", {"ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "a"}}}]}]})]
    m = matrix(policies, NAMESPACES, PODS, 80, "TCP")
    assert all(src.key not in m[src.key] for src in PODS)
    assert sum(len(row) for row in m.values()) == len(PODS) * (len(PODS) - 1)
    for src in PODS:
        for dst in PODS:
            if src is not dst:
                assert m[src.key][dst.key] == ok(policies, src, dst)
    assert m["x/a"]["x/b"] and not m["y/a"]["x/b"]
