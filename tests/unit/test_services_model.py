"""Unit tests for labctl.services.model (Service validation as the API server does it, defaults,
manifests, ClusterIP/NodePort allocation) and labctl.services.endpoints (EndpointSlices,
named target ports, what a node's proxy uses)."""

from __future__ import annotations

import re
from ipaddress import IPv4Network
from typing import Any

import pytest

from labctl.k8s.manifests import KINDS, Document, ManifestError, parse_objects
from labctl.policy.model import NamedPort, PodInfo
from labctl.services.endpoints import (
    MANAGED_BY,
    MANAGED_BY_LABEL,
    SERVICE_NAME_LABEL,
    compute_slices,
    port_plans,
    slices_for,
)
from labctl.services.model import Service, ServiceError, allocate

CIDR = IPv4Network("10.96.0.0/12")


def service_data(spec: dict[str, Any] | None = None, **meta: Any) -> dict[str, Any]:
    meta.setdefault("name", "web")
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta,
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}], **(spec or {})},
    }


def parse(spec: dict[str, Any] | None = None, **meta: Any) -> Service:
    obj = parse_objects([Document("s.yaml", 1, service_data(spec, **meta))])[0]
    assert isinstance(obj, Service)
    return obj


def reject(path: str, *fragments: str, spec: dict[str, Any] | None = None, **meta: Any) -> str:
    """Parse, expect a one-line ManifestError at `path` mentioning every fragment."""
    with pytest.raises(ManifestError) as e:
        parse(spec, **meta)
    msg = str(e.value)
    assert "\n" not in msg
    assert f"): {path}: " in msg, msg
    for fragment in fragments:
        assert fragment in msg, msg
    return msg


def ports(*items: dict[str, Any]) -> dict[str, Any]:
    return {"ports": list(items)}


# --- metadata and type --------------------------------------------------------------------------


def test_kind_is_registered() -> None:
    assert KINDS[("v1", "Service")] is Service


@pytest.mark.parametrize("name", ["web", "a-1", "x" * 63])
def test_name_dns1035_label_ok(name: str) -> None:
    assert parse(name=name).key == f"default/{name}"


@pytest.mark.parametrize("name", ["1web", "a.b", "Web", "web-", "x" * 64])
def test_name_dns1035_label_rejected(name: str) -> None:
    reject("metadata.name", "DNS-1035 label", "start with an alphabetic character", name=name)


def test_types() -> None:
    assert parse().spec.type == "ClusterIP"
    assert parse({"type": "NodePort"}).spec.type == "NodePort"
    reject(
        "spec.type",
        '"LoadBalancer"',
        "no cloud controller",
        "NodePort",
        spec={"type": "LoadBalancer"},
    )
    reject("spec.type", '"ExternalName"', "DNS alias", spec={"type": "ExternalName"})
    reject("spec.type", 'Unsupported value: "Magic"', spec={"type": "Magic"})


def test_unknown_field_rejected() -> None:
    assert parse({"sessionAffinity": "None"})
    reject("spec.portz", "unknown field", "ports", spec={"portz": []})


# --- ports --------------------------------------------------------------------------------------


def test_ports_required() -> None:
    reject("spec.ports", "Required value", spec={"ports": []})


def test_port_names_required_and_unique_when_several() -> None:
    ok = parse(ports({"name": "http", "port": 80}, {"name": "https", "port": 443}))
    assert [p.name for p in ok.spec.ports] == ["http", "https"]
    assert parse(ports({"port": 80})).spec.ports[0].name is None  # one port: no name needed
    reject(
        "spec.ports[1].name", "Required value", spec=ports({"name": "a", "port": 80}, {"port": 81})
    )
    reject(
        "spec.ports[1].name",
        'Duplicate value: "a"',
        spec=ports({"name": "a", "port": 80}, {"name": "a", "port": 81}),
    )
    reject("spec.ports[0].name", "RFC 1123 label", spec=ports({"name": "Http", "port": 80}))


def test_duplicate_port_and_protocol() -> None:
    dns = parse(ports({"name": "u", "port": 53, "protocol": "UDP"}, {"name": "t", "port": 53}))
    assert [p.protocol for p in dns.spec.ports] == ["UDP", "TCP"]
    reject(
        "spec.ports[1]",
        "Duplicate value: 53/TCP",
        spec=ports({"name": "a", "port": 53}, {"name": "b", "port": 53, "targetPort": 5353}),
    )
    reject("spec.ports[0].protocol", "'SCTP'", spec=ports({"port": 80, "protocol": "SCTP"}))


@pytest.mark.parametrize("bad", [0, 65536, -1])
def test_port_range(bad: int) -> None:
    assert parse(ports({"port": 65535})).spec.ports[0].port == 65535
    reject(
        "spec.ports[0].port",
        f"Invalid value: {bad}",
        "between 1 and 65535",
        spec=ports({"port": bad}),
    )


def test_port_must_be_an_integer() -> None:
    reject("spec.ports[0].port", "not an integer", spec=ports({"port": True}))
    reject("spec.ports[0].port", "not an integer", spec=ports({"port": "80"}))


def test_target_port_defaults_and_names() -> None:
    assert parse(ports({"port": 80})).spec.ports[0].targetPort == 80
    assert parse(ports({"port": 80, "targetPort": 8080})).spec.ports[0].target == 8080
    assert parse(ports({"port": 80, "targetPort": "http"})).spec.ports[0].target == "http"
    reject(
        "spec.ports[0].targetPort",
        "consecutive hyphens",
        spec=ports({"port": 80, "targetPort": "a--b"}),
    )
    reject(
        "spec.ports[0].targetPort",
        "at least one letter",
        spec=ports({"port": 80, "targetPort": "8080"}),
    )
    reject(
        "spec.ports[0].targetPort",
        "between 1 and 65535",
        spec=ports({"port": 80, "targetPort": 70000}),
    )


def test_node_port_range_and_type() -> None:
    for good in (30000, 32767):
        spec = {"type": "NodePort", **ports({"port": 80, "nodePort": good})}
        assert parse(spec).spec.ports[0].nodePort == good
    for bad in (29999, 32768):
        reject(
            "spec.ports[0].nodePort",
            f"Invalid value: {bad}: provided port is not in the valid range",
            "30000-32767",
            spec={"type": "NodePort", **ports({"port": 80, "nodePort": bad})},
        )
    reject(
        "spec.ports[0].nodePort",
        "Forbidden: may not be used when `type` is 'ClusterIP'",
        spec=ports({"port": 80, "nodePort": 30080}),
    )


def test_duplicate_node_port_only_within_a_protocol() -> None:
    spec = {
        "type": "NodePort",
        **ports(
            {"name": "u", "port": 53, "protocol": "UDP", "nodePort": 30053},
            {"name": "t", "port": 53, "nodePort": 30053},
        ),
    }
    assert {p.nodePort for p in parse(spec).spec.ports} == {30053}
    reject(
        "spec.ports[1].nodePort",
        "Duplicate value: 30080",
        spec={
            "type": "NodePort",
            **ports(
                {"name": "a", "port": 80, "nodePort": 30080},
                {"name": "b", "port": 81, "nodePort": 30080},
            ),
        },
    )


# --- addresses ----------------------------------------------------------------------------------


def test_cluster_ip_values() -> None:
    assert parse({"clusterIP": "10.96.0.10"}).spec.clusterIP == "10.96.0.10"
    assert parse({"clusterIP": ""}).spec.clusterIP is None
    reject("spec.clusterIP", "headless Services are not supported", spec={"clusterIP": "None"})
    reject(
        "spec.clusterIP",
        'must be empty, "None", or a valid IP address',
        spec={"clusterIP": "10.96.0"},
    )
    reject("spec.clusterIP", "IPv4-only", spec={"clusterIP": "fd00::10"})


def test_cluster_ips_must_match() -> None:
    svc = parse({"clusterIPs": ["10.96.0.10"]})
    assert svc.spec.clusterIP == "10.96.0.10"
    assert parse({"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"]}).spec.clusterIP
    reject(
        "spec.clusterIPs[0]",
        "must be same as `clusterIP`",
        spec={"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.11"]},
    )
    reject("spec.ipFamilies", "IPv4-only", spec={"ipFamilies": ["IPv6"]})
    reject("spec.ipFamilyPolicy", "IPv4-only", spec={"ipFamilyPolicy": "RequireDualStack"})


@pytest.mark.parametrize(
    ("ip", "problem"),
    [
        ("127.0.0.1", "loopback"),
        ("0.0.0.0", "unspecified"),
        ("169.254.1.1", "link-local range"),
        ("224.0.0.5", "link-local multicast"),
        ("2001:db8::1", "IPv4-only"),
        ("10.0.0.0/24", "valid IP address"),
    ],
)
def test_external_ips(ip: str, problem: str) -> None:
    assert parse({"externalIPs": ["192.0.2.10"]}).spec.externalIPs == ["192.0.2.10"]
    reject("spec.externalIPs[1]", problem, spec={"externalIPs": ["192.0.2.10", ip]})


# --- affinity and traffic policies --------------------------------------------------------------


def test_client_ip_affinity_defaults_and_range() -> None:
    svc = parse({"sessionAffinity": "ClientIP"})
    assert svc.spec.affinity_seconds == 10800
    assert svc.manifest()["spec"]["sessionAffinityConfig"] == {
        "clientIP": {"timeoutSeconds": 10800}
    }
    timeout = {
        "sessionAffinity": "ClientIP",
        "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 86400}},
    }
    assert parse(timeout).spec.affinity_seconds == 86400
    for bad in (0, 86401):
        reject(
            "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
            f"Invalid value: {bad}",
            "greater than 0",
            spec={
                "sessionAffinity": "ClientIP",
                "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": bad}},
            },
        )
    assert "sessionAffinityConfig" not in parse().manifest()["spec"]
    reject(
        "spec.sessionAffinityConfig",
        "Forbidden: must not be set when session affinity is None",
        spec={"sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 10}}},
    )


def test_external_traffic_policy_only_when_externally_accessible() -> None:
    assert parse({"type": "NodePort"}).spec.externalTrafficPolicy == "Cluster"  # defaulted
    assert (
        parse(
            {"externalIPs": ["192.0.2.10"], "externalTrafficPolicy": "Local"}
        ).spec.externalTrafficPolicy
        == "Local"
    )
    assert parse().spec.externalTrafficPolicy is None
    reject(
        "spec.externalTrafficPolicy",
        'Invalid value: "Local": may only be set for externally-accessible services',
        spec={"externalTrafficPolicy": "Local"},
    )
    reject(
        "spec.externalTrafficPolicy",
        "'Both'",
        spec={"type": "NodePort", "externalTrafficPolicy": "Both"},
    )


def test_internal_traffic_policy() -> None:
    assert parse().spec.internalTrafficPolicy == "Cluster"
    assert parse({"internalTrafficPolicy": "Local"}).spec.internalTrafficPolicy == "Local"
    reject("spec.internalTrafficPolicy", "'Node'", spec={"internalTrafficPolicy": "Node"})


def test_selector_labels_validated() -> None:
    assert parse({"selector": {"app": "web", "example.com/tier": "front"}}).spec.selector
    reject("spec.selector", "not a valid label value", spec={"selector": {"app": "-web"}})


# --- manifest -----------------------------------------------------------------------------------


def test_manifest_is_kubectl_shaped_and_applies_again() -> None:
    svc = allocate(
        parse({"type": "NodePort", **ports({"name": "http", "port": 80, "targetPort": "http"})}),
        {},
        CIDR,
    )
    data = svc.manifest()
    assert data["apiVersion"] == "v1" and data["kind"] == "Service"
    assert data["metadata"] == {"name": "web", "namespace": "default"}  # no empty maps
    assert data["status"] == {"loadBalancer": {}}
    spec = data["spec"]
    assert spec["clusterIP"] == "10.96.0.2" and spec["clusterIPs"] == ["10.96.0.2"]
    assert spec["ipFamilies"] == ["IPv4"] and spec["ipFamilyPolicy"] == "SingleStack"
    assert spec["ports"] == [
        {"name": "http", "protocol": "TCP", "port": 80, "targetPort": "http", "nodePort": 30000}
    ]
    assert spec["sessionAffinity"] == "None" and spec["internalTrafficPolicy"] == "Cluster"
    assert spec["externalTrafficPolicy"] == "Cluster"
    assert "externalIPs" not in spec
    # `get -o yaml | apply -f -`: the output is accepted and means the same Service.
    again = Service.model_validate(data)
    assert again.manifest() == data
    assert parse().manifest()["spec"].get("clusterIP") is None  # not allocated yet


# --- allocation ---------------------------------------------------------------------------------


def store(*services: Service) -> dict[str, Service]:
    out: dict[str, Service] = {}
    for svc in services:
        out[svc.key] = allocate(svc, out, CIDR)
    return out


def test_cluster_ip_first_free_skipping_network_and_kubernetes_ip() -> None:
    stored = store(parse(name="a"), parse(name="b"))
    assert [s.spec.clusterIP for s in stored.values()] == ["10.96.0.2", "10.96.0.3"]
    kube = allocate(parse(name="kubernetes"), {}, CIDR)
    assert kube.spec.clusterIP == "10.96.0.2"  # .1 only when asked for, by that Service


def test_allocate_is_pure() -> None:
    svc = parse({"type": "NodePort"})
    out = allocate(svc, {}, CIDR)
    assert svc.spec.clusterIP is None and svc.spec.ports[0].nodePort is None
    assert out.spec.clusterIP == "10.96.0.2" and out.spec.ports[0].nodePort == 30000


def test_given_cluster_ip_outside_the_range() -> None:
    with pytest.raises(ServiceError) as e:
        allocate(parse({"clusterIP": "10.0.0.1"}), {}, CIDR)
    assert str(e.value).startswith(
        'spec.clusterIP: Invalid value: "10.0.0.1": provided IP is not in the valid range. '
        "The range of valid IPs is 10.96.0.0/12"
    )
    assert e.value.exit_code == 2
    for edge in ("10.96.0.0", "10.111.255.255"):  # network and broadcast address
        with pytest.raises(ServiceError, match="not in the valid range"):
            allocate(parse({"clusterIP": edge}), {}, CIDR)
    assert (
        allocate(parse({"clusterIP": "10.111.255.254"}), {}, CIDR).spec.clusterIP
        == "10.111.255.254"
    )


def test_given_cluster_ip_taken() -> None:
    stored = store(parse({"clusterIP": "10.96.0.10"}, name="dns"))
    with pytest.raises(ServiceError, match="provided IP is already allocated \\(to default/dns\\)"):
        allocate(parse({"clusterIP": "10.96.0.10"}), stored, CIDR)
    with pytest.raises(ServiceError, match="already allocated \\(to default/kubernetes\\)"):
        allocate(parse({"clusterIP": "10.96.0.1"}), {}, CIDR)
    assert (
        allocate(parse({"clusterIP": "10.96.0.1"}, name="kubernetes"), {}, CIDR).spec.clusterIP
        == "10.96.0.1"
    )
    # The first free one skips the taken one.
    assert (
        allocate(parse(), store(parse({"clusterIP": "10.96.0.2"}, name="x")), CIDR).spec.clusterIP
        == "10.96.0.3"
    )


def test_update_keeps_cluster_ip_and_refuses_a_change() -> None:
    stored = store(parse(name="a"), parse())
    ip = stored["default/web"].spec.clusterIP
    updated = allocate(parse({"selector": {"app": "v2"}}), stored, CIDR)
    assert updated.spec.clusterIP == ip and updated.spec.selector == {"app": "v2"}
    assert allocate(parse({"clusterIP": ip}), stored, CIDR).spec.clusterIP == ip
    with pytest.raises(
        ServiceError,
        match=re.escape('spec.clusterIP: Invalid value: "10.96.0.9": field is immutable'),
    ):
        allocate(parse({"clusterIP": "10.96.0.9"}), stored, CIDR)


def test_range_full() -> None:
    tiny = IPv4Network("10.96.0.0/29")  # hosts .1-.6, .1 reserved
    stored: dict[str, Service] = {}
    for i in range(5):
        svc = parse(name=f"s{i}")
        stored[svc.key] = allocate(svc, stored, tiny)
    with pytest.raises(ServiceError, match="range is full"):
        allocate(parse(name="one-more"), stored, tiny)


def test_node_ports_first_free_kept_and_taken() -> None:
    node_port = {"type": "NodePort"}
    stored = store(
        parse({**node_port, **ports({"port": 80, "nodePort": 30000})}, name="a"), parse(node_port)
    )
    assert stored["default/web"].spec.ports[0].nodePort == 30001
    assert allocate(parse(), stored, CIDR).spec.ports[0].nodePort is None  # ClusterIP: none
    # Update without a nodePort keeps the one it had (matched by port name).
    assert allocate(parse(node_port), stored, CIDR).spec.ports[0].nodePort == 30001
    with pytest.raises(ServiceError) as e:
        allocate(parse({**node_port, **ports({"port": 80, "nodePort": 30000})}), stored, CIDR)
    assert str(e.value).startswith(
        "spec.ports[0].nodePort: Invalid value: 30000: provided port is already allocated"
    )
    assert e.value.exit_code == 2


def test_node_port_shared_by_one_port_number_over_protocols() -> None:
    dns = parse(
        {
            "type": "NodePort",
            **ports(
                {"name": "u", "port": 53, "protocol": "UDP"},
                {"name": "t", "port": 53},
                {"name": "m", "port": 9153},
            ),
        }
    )
    out = allocate(dns, {}, CIDR)
    assert [p.nodePort for p in out.spec.ports] == [30000, 30000, 30001]


# --- endpoint slices ----------------------------------------------------------------------------


def pod(
    name: str, ip: str, node: str = "n1", ns: str = "default", app: str = "web", **named: int
) -> PodInfo:
    return PodInfo(
        ns, name, ip, node, {"app": app}, tuple(NamedPort(k, v, "TCP") for k, v in named.items())
    )


def test_selector_picks_ready_pods_of_the_namespace() -> None:
    svc = parse()
    pods = [
        pod("web-1", "10.244.1.2"),
        pod("web-2", "10.244.2.2", node="n2"),
        pod("other-ns", "10.244.1.3", ns="test"),
        pod("db", "10.244.1.4", app="db"),
        pod("pending", ""),
    ]
    (slice_,) = slices_for(svc, pods)
    assert [e.pod for e in slice_.endpoints] == ["web-1", "web-2"]
    assert [e.node for e in slice_.endpoints] == ["n1", "n2"]
    assert slice_.ports[0].port == 80  # numeric targetPort, whatever the pod declares


def test_no_selector_no_slice_and_no_pods_an_empty_slice() -> None:
    assert slices_for(parse({"selector": None}), [pod("web-1", "10.244.1.2")]) == []
    assert slices_for(parse({"selector": {}}), [pod("web-1", "10.244.1.2")]) == []
    (empty,) = slices_for(parse(), [])
    assert empty.endpoints == () and empty.manifest()["endpoints"] == []


def test_named_target_port_resolved_per_pod() -> None:
    svc = parse(ports({"name": "http", "port": 80, "targetPort": "http"}))
    pods = [
        pod("a", "10.244.1.2", http=8080),
        pod("b", "10.244.1.3", http=8080),
        pod("c", "10.244.2.2", node="n2", http=9090),
        pod("d", "10.244.2.3", node="n2", metrics=9100),  # no port named http
    ]
    slices = slices_for(svc, pods)
    by_port = {s.ports: [e.pod for e in s.endpoints] for s in slices}
    assert [(p.name, p.port) for p in slices[0].ports] == [("http", 8080)]
    assert {ps[0].port if ps else None: names for ps, names in by_port.items()} == {
        8080: ["a", "b"],
        9090: ["c"],
        None: ["d"],
    }
    (plan,) = port_plans("n1", [allocate(svc, {}, CIDR)], compute_slices([svc], pods))
    assert [e.text for e in plan.cluster] == [
        "10.244.1.2:8080",
        "10.244.1.3:8080",
        "10.244.2.2:9090",
    ]


def test_named_port_must_match_the_protocol() -> None:
    svc = parse(ports({"port": 53, "protocol": "UDP", "targetPort": "dns"}))
    tcp_only = PodInfo(
        "default", "a", "10.244.1.2", "n1", {"app": "web"}, (NamedPort("dns", 53, "TCP"),)
    )
    udp = PodInfo(
        "default", "b", "10.244.1.3", "n1", {"app": "web"}, (NamedPort("dns", 5353, "UDP"),)
    )
    ports_of = {e.pod: s.ports for s in slices_for(svc, [tcp_only, udp]) for e in s.endpoints}
    assert ports_of["a"] == ()
    assert [(p.port, p.protocol) for p in ports_of["b"]] == [(5353, "UDP")]


def test_slice_manifest_and_stable_name() -> None:
    svc = parse(ports({"name": "http", "port": 80, "targetPort": 8080}), labels={"team": "a"})
    (slice_,) = slices_for(svc, [pod("web-1", "10.244.1.2")])
    data = slice_.manifest()
    assert data["apiVersion"] == "discovery.k8s.io/v1" and data["kind"] == "EndpointSlice"
    assert data["addressType"] == "IPv4"
    meta = data["metadata"]
    assert meta["labels"] == {"team": "a", SERVICE_NAME_LABEL: "web", MANAGED_BY_LABEL: MANAGED_BY}
    assert MANAGED_BY == "endpointslice-controller.k8s.io"
    assert meta["generateName"] == "web-" and meta["ownerReferences"][0]["kind"] == "Service"
    name = meta["name"]
    assert name.startswith("web-") and len(name) == len("web-") + 5
    assert set(name[4:]) <= set("bcdfghjklmnpqrstvwxz2456789")
    assert data["endpoints"] == [
        {
            "addresses": ["10.244.1.2"],
            "conditions": {"ready": True, "serving": True, "terminating": False},
            "nodeName": "n1",
            "targetRef": {"kind": "Pod", "namespace": "default", "name": "web-1"},
        }
    ]
    assert data["ports"] == [{"name": "http", "port": 8080, "protocol": "TCP"}]
    # Pods coming and going keep the name; another Service gets another one.
    (later,) = slices_for(svc, [pod("web-1", "10.244.1.2"), pod("web-2", "10.244.1.3")])
    assert later.name == name
    (other,) = slices_for(parse(name="api"), [])
    assert other.name != name and other.name.startswith("api-")


def test_slices_hold_at_most_100_endpoints() -> None:
    pods = [pod(f"web-{i}", f"10.244.{i // 200}.{i % 200 + 2}") for i in range(150)]
    slices = slices_for(parse(), pods)
    assert [len(s.endpoints) for s in slices] == [100, 50]
    assert len({s.name for s in slices}) == 2
    assert set(compute_slices([parse()], pods)) == {s.key for s in slices}


def test_port_plans_split_by_traffic_policy() -> None:
    pods = [pod("web-1", "10.244.1.2"), pod("web-2", "10.244.2.2", node="n2")]

    def plan(**spec: Any) -> Any:
        svc = allocate(parse(spec), {}, CIDR)
        (p,) = port_plans("n1", [svc], compute_slices([svc], pods))
        return p

    cluster = plan()
    assert [e.ip for e in cluster.cluster] == ["10.244.1.2", "10.244.2.2"] and cluster.local == ()
    assert cluster.name == "default/web" and cluster.has_internal
    local = plan(internalTrafficPolicy="Local")
    assert local.cluster == () and [e.ip for e in local.local] == ["10.244.1.2"]
    assert local.reachable == local.local
    # externalTrafficPolicy Local keeps Cluster endpoints too, for the short-circuit.
    ext = plan(type="NodePort", externalTrafficPolicy="Local")
    assert len(ext.cluster) == 2 and len(ext.local) == 1 and ext.has_external
    # Unallocated Services are not proxied.
    assert port_plans("n1", [parse()], {}) == []
