"""Unit tests for labctl.policy.model and labctl.k8s.meta: API-server validation, defaulting,
selectors and kubectl label arguments."""

from __future__ import annotations

from ipaddress import IPv4Network
from typing import Any

import pytest

from labctl.k8s.manifests import Document, ManifestError, parse_objects
from labctl.k8s.meta import (
    LabelSelector,
    check_label_key,
    check_label_value,
    parse_label_args,
)
from labctl.policy.model import IPBlock, NetworkPolicy, PodInfo


def policy_data(spec: dict[str, Any] | None = None, **meta: Any) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "p", "namespace": "x", **meta},
        "spec": {"podSelector": {}, **(spec or {})},
    }


def parse(spec: dict[str, Any] | None = None, **meta: Any) -> NetworkPolicy:
    obj = parse_objects([Document("t.yaml", 1, policy_data(spec, **meta))])[0]
    assert isinstance(obj, NetworkPolicy)
    return obj


def reject(path: str, *fragments: str, spec: dict[str, Any] | None = None, **meta: Any) -> str:
    """Parse, expect a ManifestError at `path`, and check it mentions every fragment."""
    with pytest.raises(ManifestError) as e:
        parse(spec, **meta)
    msg = str(e.value)
    assert "\n" not in msg
    assert f"): {path}: " in msg, msg
    for fragment in fragments:
        assert fragment in msg, msg
    return msg


def ingress_port(**port: Any) -> dict[str, Any]:
    return {"ingress": [{"ports": [port]}]}


def ingress_peer(**peer: Any) -> dict[str, Any]:
    return {"ingress": [{"from": [{"podSelector": {}}, peer]}]}


# --- metadata ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["p", "allow-web", "a.b-c.d", "x" * 253])
def test_name_dns1123_subdomain_ok(name: str) -> None:
    assert parse(name=name).metadata.name == name


@pytest.mark.parametrize("name", ["Allow", "a_b", "-a", "a.", "x" * 254, ""])
def test_name_dns1123_subdomain_rejected(name: str) -> None:
    reject("metadata.name", "not a DNS-1123 subdomain", "lowercase", name=name)


def test_namespace_is_a_dns1123_label() -> None:
    assert parse(namespace="team-1").key == "team-1/p"
    data = {**policy_data(), "metadata": {"name": "p"}}
    assert NetworkPolicy.model_validate(data).key == "default/p"
    reject("metadata.namespace", "not a DNS-1123 label", namespace="a.b")


def test_metadata_labels_and_annotations() -> None:
    assert parse(labels={"example.com/tier": "db", "empty": ""}).metadata.labels["empty"] == ""
    reject("metadata.labels", "not a valid label value", labels={"app": "-web"})
    reject("metadata.labels", "not a valid label key", labels={"a/b/c": "x"})
    assert parse(annotations={"note": "any text: at all"}).metadata.annotations
    reject("metadata.annotations", "not a valid label key", annotations={"bad key": "x"})
    reject("metadata.annotations", "more than the 262144 allowed", annotations={"a": "x" * 262144})


def test_server_set_fields_accepted_unknown_rejected() -> None:
    p = parse(uid="u", resourceVersion="7", generation=2, creationTimestamp="2024-01-01T00:00:00Z")
    assert p.metadata.generation == 2
    reject("metadata.owner", "unknown field", owner="me")


def test_unknown_spec_field_rejected() -> None:
    reject("spec.ingres", "unknown field", "fields here: podSelector", spec={"ingres": []})


def test_pod_selector_required() -> None:
    data = policy_data()
    del data["spec"]["podSelector"]
    with pytest.raises(ManifestError, match=r"spec\.podSelector: required field is missing"):
        parse_objects([Document("t", 1, data)])


# --- ports ------------------------------------------------------------------------------------


@pytest.mark.parametrize("port", [1, 80, 65535, "http", "a", "web-8080", "abcdefghijklmno"])
def test_port_ok(port: int | str) -> None:
    assert parse(ingress_port(port=port)).spec.ingress[0].ports[0].port == port


@pytest.mark.parametrize(
    ("port", "problem"),
    [
        (0, "must be between 1 and 65535, inclusive"),
        (65536, "must be between 1 and 65535, inclusive"),
        ("abcdefghijklmnop", "must be no more than 15 characters"),
        ("Http", "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)"),
        ("a_b", "must contain only alpha-numeric characters"),
        ("a--b", "must not contain consecutive hyphens"),
        ("80", "must contain at least one letter (a-z)"),
        ("-http", "must not begin or end with a hyphen"),
        ("http-", "must not begin or end with a hyphen"),
        (True, "is not a port"),
        (80.5, "is not a port"),
    ],
)
def test_port_rejected(port: Any, problem: str) -> None:
    reject("spec.ingress[0].ports[0].port", problem, spec=ingress_port(port=port))


def test_protocol() -> None:
    assert parse(ingress_port(port=80)).spec.ingress[0].ports[0].protocol == "TCP"
    assert parse(ingress_port(protocol="SCTP")).spec.ingress[0].ports[0].protocol == "SCTP"
    reject(
        "spec.ingress[0].ports[0].protocol",
        "'tcp' is not supported; use 'TCP', 'UDP' or 'SCTP'",
        spec=ingress_port(protocol="tcp"),
    )


def test_end_port_ok() -> None:
    p = parse(ingress_port(port=80, endPort=90)).spec.ingress[0].ports[0]
    assert (p.port, p.endPort) == (80, 90)
    assert parse(ingress_port(port=80, endPort=80)).spec.ingress[0].ports[0].endPort == 80


@pytest.mark.parametrize(
    ("port", "problem"),
    [
        ({"port": 90, "endPort": 80}, "must be greater than or equal to `port`"),
        ({"port": 80, "endPort": 65536}, "must be between 1 and 65535"),
        ({"port": "http", "endPort": 90}, "may not be specified when `port` is non-numeric"),
        ({"endPort": 90}, "may not be specified when `port` is not specified"),
        ({"port": 80, "endPort": "90"}, "is not a port number"),
    ],
)
def test_end_port_rejected(port: dict[str, Any], problem: str) -> None:
    reject("spec.ingress[0].ports[0].endPort", problem, spec=ingress_port(**port))


# --- peers and ipBlock ------------------------------------------------------------------------


def test_peer_combinations() -> None:
    both: dict[str, Any] = {"podSelector": {}, "namespaceSelector": {}}
    assert parse(ingress_peer(**both)).spec.ingress[0].from_[1].namespaceSelector is not None
    reject("spec.ingress[0].from[1]", "must specify a peer", "podSelector", spec=ingress_peer())
    ip = {"cidr": "10.0.0.0/8"}
    for other in ("podSelector", "namespaceSelector"):
        reject(
            "spec.ingress[0].from[1]",
            "may not specify both ipBlock and another peer",
            "own list item",
            spec=ingress_peer(ipBlock=ip, **{other: {}}),
        )
    egress = {"egress": [{"to": [{"ipBlock": ip, "podSelector": {}}]}]}
    reject("spec.egress[0].to[0]", "may not specify both ipBlock", spec=egress)


def test_ip_block_ok() -> None:
    peer = parse(ingress_peer(ipBlock={"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}))
    block = peer.spec.ingress[0].from_[1].ipBlock
    assert block is not None
    assert block.network() == IPv4Network("10.0.0.0/8")
    assert block.excepts() == [IPv4Network("10.1.0.0/16")]
    assert IPBlock(cidr="10.0.0.5/32").network().num_addresses == 1
    by_field_name = IPBlock.model_validate({"cidr": "0.0.0.0/0", "except_": ["10.0.0.0/8"]})
    assert by_field_name.excepts() == [IPv4Network("10.0.0.0/8")]


@pytest.mark.parametrize(
    ("cidr", "problem"),
    [
        ("10.0.0.1/8", "'10.0.0.1/8' has host bits set; write the network 10.0.0.0/8"),
        ("10.0.0.1", "is not a CIDR; write address/prefix"),
        ("10.0.0.0/33", "is not a valid CIDR"),
        ("banana/8", "is not a valid CIDR"),
        ("fd00::/64", "is IPv6 and this lab is IPv4-only; use an IPv4 CIDR"),
    ],
)
def test_ip_block_cidr_rejected(cidr: str, problem: str) -> None:
    path = "spec.ingress[0].from[1].ipBlock.cidr"
    reject(path, problem, spec=ingress_peer(ipBlock={"cidr": cidr}))


@pytest.mark.parametrize(
    ("exc", "problem"),
    [
        ("11.0.0.0/16", "must be a strict subset of `cidr`"),
        ("10.0.0.0/8", "must be a strict subset of `cidr`"),
        ("0.0.0.0/0", "must be a strict subset of `cidr`"),
        ("10.1.0.1/16", "has host bits set; write the network 10.1.0.0/16"),
        ("fd00::/64", "IPv4-only"),
    ],
)
def test_ip_block_except_rejected(exc: str, problem: str) -> None:
    block = {"cidr": "10.0.0.0/8", "except": ["10.2.0.0/16", exc]}
    reject("spec.ingress[0].from[1].ipBlock.except[1]", problem, spec=ingress_peer(ipBlock=block))


# --- policyTypes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "types"),
    [
        ({}, {"Ingress"}),
        ({"egress": [{}]}, {"Ingress", "Egress"}),
        ({"egress": []}, {"Ingress"}),
        ({"policyTypes": []}, {"Ingress"}),
        ({"policyTypes": ["Egress"]}, {"Egress"}),
        ({"policyTypes": ["Egress"], "ingress": [{}]}, {"Egress"}),
        ({"policyTypes": ["Ingress"], "egress": [{}]}, {"Ingress"}),
        ({"policyTypes": ["Egress", "Ingress"]}, {"Ingress", "Egress"}),
    ],
)
def test_policy_types_defaulting(spec: dict[str, Any], types: set[str]) -> None:
    assert parse(spec).spec.effective_types() == types


def test_policy_types_rejected() -> None:
    three = {"policyTypes": ["Ingress", "Egress", "Ingress"]}
    reject("spec.policyTypes", "may not specify more than two policyTypes", spec=three)
    dup = {"policyTypes": ["Egress", "Egress"]}
    reject("spec.policyTypes", "lists a type twice", spec=dup)
    reject("spec.policyTypes[0]", "'Both' is not supported", spec={"policyTypes": ["Both"]})


def test_manifest_shows_defaults_and_omits_empty() -> None:
    spec = {
        "podSelector": {"matchLabels": {}},
        "ingress": [{}, {"from": [{"podSelector": {}}], "ports": [{"port": 80}]}],
        "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}]}],
    }
    assert parse(spec).manifest()["spec"] == {
        "podSelector": {},
        "policyTypes": ["Ingress", "Egress"],
        "ingress": [
            {},
            {"from": [{"podSelector": {}}], "ports": [{"protocol": "TCP", "port": 80}]},
        ],
        "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}]}],
    }
    assert parse({"policyTypes": ["Egress", "Ingress"]}).manifest()["spec"]["policyTypes"] == [
        "Egress",
        "Ingress",
    ]
    assert parse().manifest()["metadata"] == {"name": "p", "namespace": "x"}


# --- selectors --------------------------------------------------------------------------------


def sel(**data: Any) -> LabelSelector:
    return LabelSelector.model_validate(data)


def expr(key: str, operator: str, *values: str) -> dict[str, Any]:
    return {"key": key, "operator": operator, "values": list(values)}


def test_empty_selector_matches_everything() -> None:
    assert sel().is_empty() and sel().matches({}) and sel().matches({"a": "b"})
    assert not sel(matchLabels={"a": "b"}).is_empty()
    assert sel().describe() == ""


def test_match_labels() -> None:
    s = sel(matchLabels={"app": "web", "tier": "fe"})
    assert s.matches({"app": "web", "tier": "fe", "extra": "x"})
    assert not s.matches({"app": "web"})
    assert not s.matches({"app": "db", "tier": "fe"})


@pytest.mark.parametrize(
    ("requirement", "yes", "no"),
    [
        (expr("t", "In", "a", "b"), [{"t": "a"}, {"t": "b"}], [{"t": "c"}, {}]),
        (expr("t", "NotIn", "a"), [{"t": "b"}, {}], [{"t": "a"}]),
        (expr("t", "Exists"), [{"t": ""}, {"t": "a"}], [{}, {"u": "a"}]),
        (expr("t", "DoesNotExist"), [{}, {"u": "a"}], [{"t": ""}]),
    ],
)
def test_expression_operators(
    requirement: dict[str, Any], yes: list[dict[str, str]], no: list[dict[str, str]]
) -> None:
    s = sel(matchExpressions=[requirement])
    assert all(s.matches(labels) for labels in yes)
    assert not any(s.matches(labels) for labels in no)


def test_terms_are_anded() -> None:
    s = sel(matchLabels={"app": "web"}, matchExpressions=[expr("env", "NotIn", "prod")])
    assert s.matches({"app": "web"}) and s.matches({"app": "web", "env": "dev"})
    assert not s.matches({"app": "web", "env": "prod"}) and not s.matches({"env": "dev"})


def test_describe_like_kubectl() -> None:
    s = sel(
        matchLabels={"app": "web"},
        matchExpressions=[
            expr("tier", "In", "b", "a"),
            expr("foo", "DoesNotExist"),
            expr("env", "NotIn", "prod"),
            expr("zone", "Exists"),
        ],
    )
    assert s.describe() == "app=web,env notin (prod),!foo,tier in (a,b),zone"


@pytest.mark.parametrize(
    ("requirement", "problem"),
    [
        (expr("t", "In"), "must be specified when `operator` is 'In' or 'NotIn'"),
        (expr("t", "NotIn"), "must be specified when `operator` is 'In' or 'NotIn'"),
        (expr("t", "Exists", "a"), "may not be specified when `operator` is 'Exists'"),
        (expr("t", "DoesNotExist", "a"), "may not be specified when `operator` is 'Exists'"),
        (expr("t", "In", "bad value"), "not a valid label value"),
    ],
)
def test_expression_values_validated(requirement: dict[str, Any], problem: str) -> None:
    spec = {"podSelector": {"matchExpressions": [requirement]}}
    reject("spec.podSelector.matchExpressions[0].values", problem, spec=spec)


def test_expression_operator_and_key_validated() -> None:
    spec = {"podSelector": {"matchExpressions": [expr("t", "in", "a")]}}
    reject("spec.podSelector.matchExpressions[0].operator", "'in' is not supported", spec=spec)
    spec = {"podSelector": {"matchExpressions": [{"key": "t"}]}}
    reject("spec.podSelector.matchExpressions[0].operator", "required field", spec=spec)
    spec = {"podSelector": {"matchExpressions": [expr("-t", "Exists")]}}
    reject("spec.podSelector.matchExpressions[0].key", "not a valid label key", spec=spec)


def test_peer_selectors_validated() -> None:
    spec = ingress_peer(namespaceSelector={"matchLabels": {"a": "b c"}})
    reject("spec.ingress[0].from[1].namespaceSelector.matchLabels", "a='b c'", spec=spec)


# --- labels -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key", ["app", "a.b_c-d", "example.com/app", "kubernetes.io/metadata.name"]
)
def test_label_key_ok(key: str) -> None:
    check_label_key(key)


@pytest.mark.parametrize("key", ["", "-app", "app-", "a/b/c", "Example.com/a", "x" * 64, "a b"])
def test_label_key_rejected(key: str) -> None:
    with pytest.raises(ValueError, match="not a valid label key; write"):
        check_label_key(key)


def test_label_value() -> None:
    check_label_value("k", "")
    check_label_value("k", "A.b_c-9")
    for bad in ("-a", "a-", "a b", "x" * 64):
        with pytest.raises(ValueError, match=r"^k='.*': not a valid label value; write"):
            check_label_value("k", bad)


def test_parse_label_args() -> None:
    assert parse_label_args(["app=web", "tier-", "empty=", "app=web"]) == (
        {"app": "web", "empty": ""},
        ["tier"],
    )
    assert parse_label_args([]) == ({}, [])


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["app"], "'app': not a label change; write key=value to set, key- to remove"),
        (["a=b=c"], "'a=b=c': one '=' per label"),
        (["=x"], "'' is not a valid label key"),
        (["app=-x"], "app='-x': not a valid label value"),
        (["-a-"], "'-a' is not a valid label key"),
        (["app=a", "app=b"], "'app=b': label app is already set to 'a'"),
        (["app=a", "app-"], "label app is both set and removed"),
    ],
)
def test_parse_label_args_rejected(args: list[str], problem: str) -> None:
    with pytest.raises(ValueError) as e:
        parse_label_args(args)
    assert problem in str(e.value)


def test_pod_info_key() -> None:
    assert PodInfo("x", "a", "10.0.0.1", "n1", {}).key == "x/a"
