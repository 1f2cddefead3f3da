"""The compiler's complete output pinned on mid-size inputs, so that optimising it (indexing,
sharing work between nodes) cannot change a byte.

Two inputs: a seeded random-ish cluster (6 nodes, 60 pods in 4 namespaces, 40 policies mixing
every selector, peer and port form, pods without IP or interface, a namespace no policy
isolates) and every upstream e2e case's
policies on netpol-xyz. Each is reduced to one SHA-256 over every node's text, rule count,
endpoints and chains. When the output changes on purpose, check the new text (e.g. with
tests/unit/test_policy_compile.py) and pin the digest the failure prints.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from labctl.k8s.manifests import Document, parse_objects
from labctl.policy.compile import compile_all
from labctl.policy.model import NamedPort, NetworkPolicy, PodInfo
from labctl.topology import load_topology
from tests.netpol_cases import CASES, Apply, Delete, materialize

RANDOM_DIGEST = "6f33474292315b5300cac1a412634441aaa0be880e1b58d63a5c75c58acf49fa"
UPSTREAM_DIGEST = "4bb938c78e80095a90f4a1a867d5ff5861264f14ada3fdb02c3f8c63597f203e"

NODES = tuple(f"n{i}" for i in range(6))
NAMESPACES: dict[str, dict[str, str]] = {
    "default": {"kubernetes.io/metadata.name": "default"},
    "prod": {"kubernetes.io/metadata.name": "prod", "env": "prod", "team": "a"},
    "dev": {"kubernetes.io/metadata.name": "dev", "env": "dev", "team": "a"},
    "ops": {"kubernetes.io/metadata.name": "ops", "team": "b"},
}
LABELS = {"app": ("web", "db", "cache"), "tier": ("front", "back"), "role": ("x", "y")}
PORTS = (
    NamedPort("http", 80, "TCP"),
    NamedPort("http", 8080, "TCP"),  # the same name on another port: resolves per pod
    NamedPort("dns", 53, "UDP"),
    NamedPort("sig", 9000, "SCTP"),
    NamedPort(None, 443, "TCP"),
)


def digest(
    nodes: Sequence[str],
    policies: Sequence[NetworkPolicy],
    pods: Sequence[PodInfo],
    namespaces: Mapping[str, Mapping[str, str]],
) -> str:
    h = hashlib.sha256()
    for node, rs in compile_all(nodes, policies, namespaces, pods).items():
        h.update(repr((node, rs.text, rs.rules, rs.endpoints, rs.chains)).encode())
    return h.hexdigest()


def _labels(rnd: random.Random) -> dict[str, str]:
    return {k: rnd.choice(v) for k, v in LABELS.items() if rnd.random() < 0.7}


def _selector(rnd: random.Random, labels: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    kind = rnd.randrange(4)
    if kind == 0:
        return {}
    key = rnd.choice(sorted(labels))
    if kind == 1:
        return {"matchLabels": {key: rnd.choice(labels[key])}}
    op = rnd.choice(("In", "NotIn", "Exists", "DoesNotExist"))
    expr: dict[str, Any] = {"key": key, "operator": op}
    if op in ("In", "NotIn"):
        expr["values"] = rnd.sample(list(labels[key]), rnd.randint(1, len(labels[key])))
    return (
        {"matchExpressions": [expr]}
        if kind == 2
        else {"matchLabels": {}, "matchExpressions": [expr]}
    )


def _peer(rnd: random.Random) -> dict[str, Any]:
    ns_labels = {"env": ("prod", "dev"), "team": ("a", "b")}
    kind = rnd.randrange(4)
    if kind == 0:
        return {"podSelector": _selector(rnd, LABELS)}
    if kind == 1:
        return {"namespaceSelector": _selector(rnd, ns_labels)}
    if kind == 2:
        return {
            "namespaceSelector": _selector(rnd, ns_labels),
            "podSelector": _selector(rnd, LABELS),
        }
    octet = rnd.randrange(6)
    return {
        "ipBlock": {
            "cidr": "10.244.0.0/16",
            "except": [f"10.244.{octet}.0/24", f"10.244.{octet}.128/25"][: rnd.randint(0, 2)],
        }
    }


def _port(rnd: random.Random) -> dict[str, Any]:
    return rnd.choice(
        (
            {"port": 80},
            {"port": 80 + rnd.randrange(3), "endPort": 90},
            {"protocol": "UDP", "port": "dns"},
            {"port": "http"},
            {"protocol": "SCTP", "port": "sig"},
            {"protocol": "SCTP"},
            {},
        )
    )


def _rules(rnd: random.Random, key: str) -> list[dict[str, Any]]:
    return [
        {
            key: [_peer(rnd) for _ in range(rnd.randrange(3))],
            "ports": [_port(rnd) for _ in range(rnd.randrange(3))],
        }
        for _ in range(rnd.randrange(3))
    ]


def random_cluster(seed: int = 2024) -> tuple[list[PodInfo], list[NetworkPolicy]]:
    """Pods and policies that exercise every compiler path, the same on every run."""
    rnd = random.Random(seed)
    pods = []
    for i in range(60):
        node = i % len(NODES)
        pods.append(
            PodInfo(
                namespace=rnd.choice(sorted(NAMESPACES)),
                name=f"pod{i}",
                # Every 17th pod has no IP yet, every 13th no host interface.
                ip="" if i % 17 == 16 else f"10.244.{node}.{i // len(NODES) + 2}",
                node=NODES[node],
                labels=_labels(rnd),
                ports=tuple(rnd.sample(PORTS, rnd.randint(0, 3))),
                iface=""
                if i % 13 == 12
                else f"cali{hashlib.sha1(str(i).encode()).hexdigest()[:11]}",
            )
        )
    docs = []
    for i in range(40):
        spec: dict[str, Any] = {"podSelector": _selector(rnd, LABELS)}
        types = rnd.choice((None, ["Ingress"], ["Egress"], ["Ingress", "Egress"]))
        if types is not None:
            spec["policyTypes"] = types
        if rnd.random() < 0.8:
            spec["ingress"] = _rules(rnd, "from")
        if rnd.random() < 0.5:
            spec["egress"] = _rules(rnd, "to")
        docs.append(
            {
                "apiVersion": "networking.k8s.io/v1",
                "kind": "NetworkPolicy",
                # ops gets no policy: its pods stay with their namespace profile.
                "metadata": {"name": f"p{i}", "namespace": rnd.choice(("default", "dev", "prod"))},
                "spec": spec,
            }
        )
    policies = parse_objects([Document("<golden>", i, d) for i, d in enumerate(docs, 1)])
    return pods, [p for p in policies if isinstance(p, NetworkPolicy)]


def test_random_cluster_output_is_pinned() -> None:
    pods, policies = random_cluster()
    got = digest(NODES, policies, pods, NAMESPACES)
    assert got == RANDOM_DIGEST, f"compiled output changed: digest {got}"


def test_upstream_cases_output_is_pinned() -> None:
    """Every upstream case's policies, as applied after its last step, compiled for netpol-xyz."""
    topo = load_topology("netpol-xyz")
    ips = {k: str(v) for k, v in topo.pod_ips.items()}
    pods = [
        PodInfo(
            namespace=p.namespace,
            name=p.name,
            ip=ips[p.key],
            node=p.node,
            labels=dict(p.labels),
            ports=tuple(NamedPort(x.name, x.containerPort, x.protocol) for x in p.ports),
            iface=f"cali{hashlib.sha1(p.key.encode()).hexdigest()[:11]}",
        )
        for p in topo.pods
    ]
    namespaces = {ns: topo.namespace_labels(ns) for ns in "xyz"}
    h = hashlib.sha256()
    for case in CASES:
        live: dict[str, NetworkPolicy] = {}
        for step in case.steps:
            if isinstance(step, Apply | Delete):
                data = [d for d in yaml.safe_load_all(materialize(step.yaml, ips)) if d]
                objs = parse_objects([Document("<case>", i, d) for i, d in enumerate(data, 1)])
                for obj in objs:
                    assert isinstance(obj, NetworkPolicy)
                    if isinstance(step, Apply):
                        live[obj.key] = obj
                    else:
                        live.pop(obj.key, None)
        h.update(digest(tuple(topo.nodes), list(live.values()), pods, namespaces).encode())
    assert h.hexdigest() == UPSTREAM_DIGEST, f"compiled output changed: digest {h.hexdigest()}"
