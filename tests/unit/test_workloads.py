"""Pods and Deployments: validation, scheduling, IPAM, the controllers and one pod's CNI ADD
plan (no root)."""

from __future__ import annotations

import io
from collections import Counter
from ipaddress import IPv4Address, IPv4Network
from typing import Any

import pytest

from labctl import store
from labctl.k8s.manifests import ManifestError, parse_objects, read_documents
from labctl.modes import get_mode
from labctl.plan import pod_ns_name
from labctl.topology import Topology, load_topology
from labctl.workloads import controller
from labctl.workloads.cni import plan_pod
from labctl.workloads.model import Deployment, Pod
from labctl.workloads.schedule import (
    SAFE_ALPHABET,
    SchedulingError,
    allocate_ip,
    pod_names,
    spread,
    template_hash,
)

DEPLOY = """\
apiVersion: apps/v1
kind: Deployment
metadata: {{name: demo2}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: myapp}}}}
  template:
    metadata: {{labels: {{app: {label}}}}}
    spec:
      containers:
      - name: myapp
        image: ikubernetes/myapp:{tag}
        resources: {{limits: {{cpu: 100m}}}}
        ports: [{{containerPort: 80}}]
"""

GOOD = DEPLOY.format(replicas=2, label="myapp", tag="v1")


def deployment(replicas: int = 2, label: str = "myapp", tag: str = "v1") -> Deployment:
    (obj,) = parse(DEPLOY.format(replicas=replicas, label=label, tag=tag))
    assert isinstance(obj, Deployment)
    return obj


def parse(text: str) -> list[Any]:
    return parse_objects(read_documents("-", io.StringIO(text)))


def pod(name: str = "solo", node: str | None = None, ports: str = "") -> Pod:
    spec = f"nodeName: {node}, " if node else ""
    (obj,) = parse(
        f"apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: test}}\n"
        f"spec: {{{spec}containers: [{{name: c{ports}}}]}}\n"
    )
    assert isinstance(obj, Pod)
    return obj


@pytest.fixture(scope="module")
def topo() -> Topology:
    return load_topology("default")


def fresh(topo: Topology, mode: str = "flannel-vxlan") -> store.Store:
    return store.from_topology(topo, get_mode(mode).network)


# ---- validation ----


def test_a_real_deployment_parses_with_ignored_fields() -> None:
    d = deployment()
    assert d.spec.replicas == 2 and d.spec.template.spec.containers[0].image.endswith(":v1")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (DEPLOY.format(replicas=2, label="other", tag="v1"), "selector` does not match template"),
        (DEPLOY.format(replicas=-1, label="myapp", tag="v1"), "replicas"),
        (GOOD.replace("selector: {matchLabels: {app: myapp}}", "selector: {}"), "empty"),
        (GOOD.replace("- name: myapp", "- name: My_App"), "not a DNS-1123 label"),
        (GOOD.replace("containerPort: 80", "containerPort: 70000"), "containerPort"),
        (GOOD.replace("containerPort: 80", "containerPort: 80, name: web_http"), "port name"),
    ],
)
def test_bad_deployments_are_refused_with_the_field(text: str, message: str) -> None:
    assert text != GOOD
    with pytest.raises(ManifestError, match=message):
        parse(text)


def test_bad_pods_are_refused() -> None:
    with pytest.raises(ManifestError, match="at least one container"):
        parse("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: []}\n")
    with pytest.raises(ManifestError, match="Duplicate value: container name"):
        parse(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n"
            "spec: {containers: [{name: a}, {name: a}]}\n"
        )
    with pytest.raises(ManifestError, match="Duplicate value: containerPort 80/TCP"):
        pod(ports=", ports: [{containerPort: 80}, {containerPort: 80}]")
    assert pod(ports=", ports: [{containerPort: 80}, {containerPort: 80, protocol: UDP}]")


# ---- scheduling and IPAM ----


def test_spread_fills_the_emptiest_node_first() -> None:
    assert spread(["a", "b", "c"], Counter({"a": 2, "b": 1}), 4) == ["c", "b", "c", "a"]
    assert spread(["a", "b"], Counter(), 3) == ["a", "b", "a"]


def test_allocate_ip_goes_round_robin_and_says_when_full() -> None:
    pool = IPv4Network("10.244.1.0/29")
    assert allocate_ip("n", pool, set()) == IPv4Address("10.244.1.2")
    assert allocate_ip("n", pool, {"10.244.1.2", "10.244.1.4"}) == IPv4Address("10.244.1.3")
    # After .3 comes .4 even though .2 is free again; after the last (.6) it wraps to .2.
    assert allocate_ip("n", pool, set(), last="10.244.1.3") == IPv4Address("10.244.1.4")
    assert allocate_ip("n", pool, {"10.244.1.4"}, last="10.244.1.3") == IPv4Address("10.244.1.5")
    assert allocate_ip("n", pool, set(), last="10.244.1.6") == IPv4Address("10.244.1.2")
    full = {f"10.244.1.{i}" for i in range(2, 7)}
    with pytest.raises(SchedulingError, match=r"no free pod address left in 10\.244\.1\.0/29"):
        allocate_ip("n", pool, full)


def test_template_hash_follows_the_template_only() -> None:
    h = template_hash(deployment())
    assert h == template_hash(deployment(replicas=5))  # replicas are not the template
    assert h != template_hash(deployment(tag="v2"))
    assert set(h) <= set(SAFE_ALPHABET)


def test_pod_names_are_unique_and_kubernetes_shaped() -> None:
    names = pod_names("demo2-abc", 50, {"demo2-abc-bbbbb"})
    assert len(set(names)) == 50 and "demo2-abc-bbbbb" not in names
    assert all(n.startswith("demo2-abc-") and set(n[-5:]) <= set(SAFE_ALPHABET) for n in names)


# ---- controllers ----


def test_deployment_pods_are_spread_addressed_and_labelled(topo: Topology) -> None:
    objects = fresh(topo)
    mode = get_mode("flannel-vxlan")
    line = controller.apply_deployment(objects, topo, mode, deployment(replicas=3), "1")
    assert line == "deployment.apps/demo2 created"
    pods = [p for p in objects.pods.values() if p.owner]
    assert sorted(p.node for p in pods) == ["master", "node1", "node2"]
    # .2 and .3 of every lease are the topology's pods: the next free address is .4.
    assert {p.ip for p in pods} == {"10.244.0.4", "10.244.1.4", "10.244.2.4"}
    rs = f"demo2-{template_hash(deployment())}"
    assert {p.owner for p in pods} == {rs}
    assert all(p.labels == {"app": "myapp", "pod-template-hash": rs.split("-")[1]} for p in pods)
    assert all(p.iface.startswith("veth") for p in pods)
    assert controller.ready(objects, objects.deployments["default/demo2"]) == 3
    unchanged = controller.apply_deployment(objects, topo, mode, deployment(replicas=3), "2")
    assert unchanged == "deployment.apps/demo2 unchanged"


def test_scale_down_then_a_new_template_replaces_every_pod(topo: Topology) -> None:
    objects = fresh(topo, "calico-bgp")
    mode = get_mode("calico-bgp")
    controller.apply_deployment(objects, topo, mode, deployment(replicas=4), "1")
    assert controller.scale(objects, topo, mode, "default/demo2", 1)
    assert not controller.scale(objects, topo, mode, "default/demo2", 1)
    (left,) = [p for p in objects.pods.values() if p.owner]
    assert left.iface.startswith("cali")
    controller.apply_deployment(objects, topo, mode, deployment(replicas=2, tag="v2"), "2")
    now = [p for p in objects.pods.values() if p.owner]
    assert len(now) == 2 and left.key not in {p.key for p in now}
    assert objects.deployments["default/demo2"].metadata.generation == 3


def test_a_deleted_replicas_address_is_not_reused_at_once(topo: Topology) -> None:
    objects = fresh(topo)
    mode = get_mode("flannel-vxlan")
    controller.apply_deployment(objects, topo, mode, deployment(replicas=1), "1")
    (first,) = [p for p in objects.pods.values() if p.owner]
    del objects.pods[first.key]
    controller.reconcile(objects, topo, mode)
    (second,) = [p for p in objects.pods.values() if p.owner]
    # host-local hands out the next address, not the one just released.
    assert second.key != first.key and second.node == first.node
    assert IPv4Address(second.ip) == IPv4Address(first.ip) + 1


def test_pods_keep_their_spec_but_take_new_labels(topo: Topology) -> None:
    objects = fresh(topo)
    mode = get_mode("flannel-vxlan")
    assert controller.apply_pod(objects, topo, mode, pod(node="node2")) == "pod/solo created"
    rec = objects.pods["test/solo"]
    assert rec.node == "node2" and rec.ip == "10.244.2.4"
    # No declared port: the pod server answers on 80 (TCP and UDP), as the seed's image does.
    assert {(p.containerPort, p.protocol) for p in rec.ports} == {(80, "TCP"), (80, "UDP")}
    assert controller.apply_pod(objects, topo, mode, pod(node="node2")) == "pod/solo unchanged"
    with pytest.raises(controller.WorkloadError, match="pod updates may not change"):
        controller.apply_pod(objects, topo, mode, pod(node="node1"))
    with pytest.raises(controller.WorkloadError, match=r"spec\.nodeName: Invalid value: 'nodeX'"):
        controller.apply_pod(objects, topo, mode, pod(name="other", node="nodeX"))
    manifest = rec.manifest("10.0.0.33")
    assert manifest["status"]["podIP"] == "10.244.2.4"
    assert manifest["spec"]["nodeName"] == "node2" and manifest["status"]["hostIP"] == "10.0.0.33"


# ---- CNI ADD ----


@pytest.mark.parametrize("mode_name", ["flannel-vxlan", "calico-bgp", "canal"])
def test_plan_pod_is_what_up_plans_for_the_same_pod(topo: Topology, mode_name: str) -> None:
    """A pod added later is wired exactly as a pod from the topology: the single-pod plan
    equals that pod's share of the whole lab's plan."""
    mode = get_mode(mode_name)
    plan = mode.plan(topo)
    target = topo.pods[2]  # default/web-2 on node1
    node_ns, pod_ns = plan_pod(mode, topo, plan, target, topo.pod_ips[target.key])
    full_node = plan.namespaces["node1"]
    full_pod = plan.namespaces[pod_ns_name(target.namespace, target.name)]
    iface = mode.network.iface(target)
    assert [link.name for link in node_ns.links] == [iface]
    assert node_ns.links == [link for link in full_node.links if link.name == iface]
    assert node_ns.routes == [r for r in full_node.routes if r.dev == iface]
    assert node_ns.neighbours == [n for n in full_node.neighbours if n.dev == iface]
    assert node_ns.sysctls == {k: v for k, v in full_node.sysctls.items() if iface in k}
    assert (pod_ns.addresses, pod_ns.routes) == (full_pod.addresses, full_pod.routes)
