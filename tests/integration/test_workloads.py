"""Pods and Deployments applied to running labs (root): CNI ADD/DEL through the supervisor's
kubelet, HTTP answers, scaling, replacement, and nothing half-applied when wiring fails.

One lab per pod network (flannel's cni0 bridge, Calico's cali* veths) serves every test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from labctl import store
from labctl.modes.podnet import cali_name, veth_name
from labctl.topology import Pod

from .conftest import labctl, labctl_json, run_name

pytestmark = pytest.mark.root

MODES = {"flannel-vxlan": "wk-flannel", "calico-bgp": "wk-calico"}

DEMO = """\
apiVersion: apps/v1
kind: Deployment
metadata: {{name: demo2}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: myapp}}}}
  template:
    metadata: {{labels: {{app: myapp}}}}
    spec:
      containers:
      - {{name: myapp, image: "ikubernetes/myapp:v1", ports: [{{containerPort: 80}}]}}
"""
SOLO = """\
apiVersion: v1
kind: Pod
metadata: {name: solo, namespace: test, labels: {run: solo}}
spec:
  nodeName: node2
  containers: [{name: c, image: busybox, ports: [{name: web, containerPort: 8080}]}]
"""


@pytest.fixture(scope="module", params=list(MODES))
def lab(request: pytest.FixtureRequest) -> Iterator[str]:
    name = MODES[request.param]
    labctl("down", "-n", name, check=False)
    labctl("up", request.param, "-n", name)
    try:
        yield name
    finally:
        labctl("down", "-n", name, check=False)


def apply(lab: str, text: str, check: bool | int = True) -> str:
    return labctl("apply", "-n", lab, "-f", "-", stdin=text, check=check).stderr


def pods(lab: str) -> dict[str, dict]:
    items = labctl_json("get", "pods", "-n", lab, "-A")["items"]
    return {f"{i['metadata']['namespace']}/{i['metadata']['name']}": i for i in items}


def demo_pods(lab: str) -> dict[str, dict]:
    return {k: v for k, v in pods(lab).items() if k.startswith("default/demo2-")}


def curl(lab: str, src: str, url: str) -> str:
    return labctl("exec", "-n", lab, src, "--", "curl", "-s", "-m", "3", url).stdout


def links(lab: str, node: str) -> str:
    return labctl("exec", "-n", lab, node, "--", "ip", "-o", "link").stdout


def test_applied_pods_are_wired_and_answer_http(lab: str) -> None:
    apply(lab, DEMO.format(replicas=2) + "---\n" + SOLO)
    try:
        got = pods(lab)
        demo = demo_pods(lab)
        assert len(demo) == 2
        # Spread: the two replicas land on different nodes; kubectl's JSON shape.
        assert len({p["spec"]["nodeName"] for p in demo.values()}) == 2
        solo = got["test/solo"]
        assert solo["spec"]["nodeName"] == "node2" and solo["status"]["hostIP"] == "10.0.0.33"
        for key, item in [*demo.items(), ("test/solo", solo)]:
            port = 8080 if key == "test/solo" else 80
            body = curl(lab, "default/web-1", f"http://{item['status']['podIP']}:{port}/")
            assert body.splitlines()[0] == key
            # The pod saw the client's own address: no NAT between pods.
            client = got["default/web-1"]["status"]["podIP"]
            assert body.splitlines()[1].startswith(f"client {client}:")
        # Every pod reaches every pod, old and new, on its first TCP port (else probe exits 1).
        report = labctl_json("probe", "-n", lab)
        assert {"default/web-1", "test/solo", *demo} <= set(report["matrix"])
        status = labctl_json("status", "-n", lab)
        assert "solo" in {p["name"] for p in status["pods"]}
        # The node's side of the pod, as the mode's CNI plugin makes it.
        solo_pod = Pod(name="solo", namespace="test", node="node2")
        if lab == MODES["calico-bgp"]:
            iface = cali_name(solo_pod)
            routes = labctl("exec", "-n", lab, "node2", "--", "ip", "route").stdout
            assert f"{solo['status']['podIP']} dev {iface} scope link" in routes
        else:
            iface = veth_name(solo_pod)
            assert "master cni0" in next(x for x in links(lab, "node2").splitlines() if iface in x)
    finally:
        labctl("delete", "-n", lab, "-f", "-", stdin=DEMO.format(replicas=2) + "---\n" + SOLO)
    assert not demo_pods(lab) and "test/solo" not in pods(lab)
    assert iface not in links(lab, "node2")  # CNI DEL removed the host side too


def test_scale_replace_and_release(lab: str) -> None:
    apply(lab, DEMO.format(replicas=5))
    try:
        demo = demo_pods(lab)
        assert sorted(
            [p["spec"]["nodeName"] for p in demo.values()].count(n)
            for n in ("master", "node1", "node2")
        ) == [1, 2, 2]
        labctl("scale", "-n", lab, "deployment", "demo2", "--replicas", "1")
        (left,) = demo_pods(lab).values()
        # A deleted replica is replaced by its ReplicaSet, with a new name.
        name = left["metadata"]["name"]
        doc = f"apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\n"
        doc += "spec: {containers: [{name: c}]}\n"
        labctl("delete", "-n", lab, "-f", "-", stdin=doc)
        (new,) = demo_pods(lab).values()
        assert new["metadata"]["name"] != name
        body = curl(lab, "test/db-1", f"http://{new['status']['podIP']}/")
        assert body.startswith(f"default/{new['metadata']['name']}\n")
        deploys = labctl_json("get", "deployments", "-n", lab)["items"]
        assert [(d["metadata"]["name"], d["status"]["readyReplicas"]) for d in deploys] == [
            ("demo2", 1)
        ]
    finally:
        labctl("delete", "-n", lab, "-f", "-", stdin=DEMO.format(replicas=1))


def test_a_pod_that_cannot_be_wired_leaves_nothing_behind(lab: str) -> None:
    """The node already has an interface with the name the pod's veth needs: CNI ADD fails,
    apply exits 1 naming it, and the store, the namespaces and the rules are as before."""
    solo = Pod(name="solo", namespace="test", node="node2")
    iface = cali_name(solo) if lab == MODES["calico-bgp"] else veth_name(solo)
    labctl("exec", "-n", lab, "node2", "--", "ip", "link", "add", iface, "type", "bridge")
    try:
        before = store.load(run_name(lab))
        proc = labctl("apply", "-n", lab, "-f", "-", stdin=SOLO, check=1)
        assert "solo" in proc.stderr and "File exists" in proc.stderr
        assert store.load(run_name(lab)).pods.keys() == before.pods.keys()
        assert "test/solo" not in labctl_json("status", "-n", lab)["pods"]
    finally:
        labctl("exec", "-n", lab, "node2", "--", "ip", "link", "del", iface)
    # And the same pod applies cleanly once the name is free.
    apply(lab, SOLO)
    labctl("delete", "-n", lab, "-f", "-", stdin=SOLO)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (DEMO.format(replicas=2).replace("labels: {app: myapp}", "labels: {app: other}"),
         "does not match template"),
        (SOLO.replace("nodeName: node2", "nodeName: node9"), "spec.nodeName"),
        (SOLO.replace("namespace: test", "namespace: nowhere"), "does not exist"),
    ],
)  # fmt: skip
def test_bad_workloads_are_refused_and_change_nothing(lab: str, text: str, message: str) -> None:
    version = store.load(run_name(lab)).resourceVersion
    proc = labctl("apply", "-n", lab, "-f", "-", stdin=text, check=2)
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert store.load(run_name(lab)).resourceVersion == version
