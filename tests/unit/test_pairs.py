"""Unit tests for labctl.pairs: which pod pairs verify probes. The sample must cover every pod
both ways, every segment pair and every policy class pair, stay linear in pods, and reproduce
the exact policy truth table; each property has a case that breaks it."""

from __future__ import annotations

import random
from typing import Any

import pytest

from labctl import pairs as pairs_mod
from labctl.pairs import ALL_PAIRS_UP_TO, covering_sample, policy_classes, select
from labctl.policy.evaluate import allowed
from labctl.policy.model import NetworkPolicy
from labctl.store import PodRecord
from labctl.topology import PodPort, Topology, parse_topology

NS_LABELS = {n: {"kubernetes.io/metadata.name": n} for n in ("x", "y")}


def topology(nodes_per_segment: int, segments: int = 3) -> Topology:
    """`segments` /24s joined by one router, `nodes_per_segment` nodes on each."""
    segs = {f"lan{s}": {"cidr": f"10.0.{s}.0/24"} for s in range(segments)}
    nodes = {
        f"n{s}-{i}": {"segment": f"lan{s}", "ip": f"10.0.{s}.{i + 10}"}
        for s in range(segments)
        for i in range(nodes_per_segment)
    }
    return parse_topology(
        {
            "name": "pairs",
            "cluster": {"podCIDR": "10.244.0.0/16", "nodeCIDRSize": 24},
            "segments": segs,
            "routers": {"r1": {"interfaces": {f"lan{s}": f"10.0.{s}.1" for s in range(segments)}}},
            "nodes": nodes,
        }
    )


def pods_for(topo: Topology, per_node: int, labels: Any = None) -> list[PodRecord]:
    """`per_node` pods on every node; `labels(i)` gives the i-th pod's labels."""
    out: list[PodRecord] = []
    for n, node in enumerate(topo.nodes):
        for j in range(per_node):
            i = len(out)
            out.append(
                PodRecord(
                    name=f"p{i}",
                    namespace="x" if i % 3 else "y",
                    node=node,
                    ip=f"10.244.{n}.{j + 2}",
                    labels=labels(i) if labels else {"app": f"a{i % 2}", "uniq": str(i)},
                    ports=[PodPort(name="http", containerPort=80)],
                    iface=f"veth{i}",
                )
            )
    return out


def pol(name: str, ns: str, spec: dict[str, Any]) -> NetworkPolicy:
    return NetworkPolicy.model_validate(
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": ns},
            "spec": spec,
        }
    )


POLICIES = [
    # x's a0 pods take traffic only from a1 pods in y, on 80.
    pol(
        "a0-from-y",
        "x",
        {
            "podSelector": {"matchLabels": {"app": "a0"}},
            "ingress": [
                {
                    "from": [
                        {
                            "namespaceSelector": {
                                "matchLabels": {"kubernetes.io/metadata.name": "y"}
                            },
                            "podSelector": {
                                "matchExpressions": [
                                    {"key": "app", "operator": "In", "values": ["a1"]}
                                ]
                            },
                        }
                    ],
                    "ports": [{"port": "http"}],
                }
            ],
        },
    ),
    # y's pods may only talk to 10.244.0.0/18 except one node's block.
    pol(
        "y-egress",
        "y",
        {
            "podSelector": {},
            "policyTypes": ["Egress"],
            "egress": [
                {"to": [{"ipBlock": {"cidr": "10.244.0.0/18", "except": ["10.244.3.0/24"]}}]}
            ],
        },
    ),
]


def truth(
    pairs: list[tuple[PodRecord, PodRecord]],
    policies: list[NetworkPolicy],
    pods: list[PodRecord],
) -> dict:
    """Policy verdicts per pair of `pods`' policy classes, over `pairs`."""
    cls = {p.key: i for i, group in enumerate(policy_classes(pods, policies)) for p in group}
    out: dict[tuple[int, int], set[bool]] = {}
    for s, d in pairs:
        ok = allowed(policies, NS_LABELS, s.info(), d.info(), 80, "TCP")
        out.setdefault((cls[s.key], cls[d.key]), set()).add(ok)
    return out


def all_pairs(pods: list[PodRecord]) -> list[tuple[PodRecord, PodRecord]]:
    return [(s, d) for s in pods for d in pods if s.key != d.key]


def test_small_lab_probes_every_pair() -> None:
    topo = topology(1)
    pods = pods_for(topo, 2)
    sel = select(pods, topo)
    assert not sel.sampled and len(sel.pairs) == sel.total == 30
    assert "all 30" in sel.note("TCP")


def test_all_forces_every_pair_and_sample_forces_the_sample() -> None:
    topo = topology(1)
    pods = pods_for(topo, 2)
    assert select(pods, topo, how="sample").sampled
    big = pods_for(topology(12), 1)
    assert len(big) * (len(big) - 1) > ALL_PAIRS_UP_TO
    assert not select(big, topology(12), how="all").sampled
    assert select(big, topology(12)).sampled


def test_sample_uses_every_pod_both_ways_and_every_node_and_segment_pair_kind() -> None:
    topo = topology(10)
    pods = pods_for(topo, 3)
    sel = select(pods, topo)
    assert sel.sampled and "`verify --pairs all`" in sel.note("TCP")
    srcs = {s.key for s, _ in sel.pairs}
    dsts = {d.key for _, d in sel.pairs}
    assert srcs == dsts == {p.key for p in pods}
    seg = {n: topo.nodes[n].segment for n in topo.nodes}
    kinds = {(seg[s.node], seg[d.node]) for s, d in sel.pairs if s.node != d.node}
    assert kinds == {(a, b) for a in topo.segments for b in topo.segments}
    # Pods on one node reach each other, on every node.
    assert {s.node for s, d in sel.pairs if s.node == d.node} == set(topo.nodes)
    assert len({(s.key, d.key) for s, d in sel.pairs}) == len(sel.pairs)


def test_a_ring_alone_misses_segment_pairs() -> None:
    """The segment part is needed: the ring of nodes only crosses between neighbouring
    segments in one direction."""
    topo = topology(10)
    pods = pods_for(topo, 1)
    seg = {n: topo.nodes[n].segment for n in topo.nodes}
    ring = [(pods[i], pods[(i + 1) % len(pods)]) for i in range(len(pods))]
    kinds = {(seg[s.node], seg[d.node]) for s, d in ring}
    assert ("lan0", "lan2") not in kinds
    sample = covering_sample(pods, topo)
    assert ("lan0", "lan2") in {(seg[s.node], seg[d.node]) for s, d in sample}


def test_sample_grows_linearly_with_pods() -> None:
    sizes = {}
    for n in (5, 50):
        topo = topology(n)
        pods = pods_for(topo, 3)
        sel = select(pods, topo, POLICIES)
        sizes[n] = len(sel.pairs)
        # A ring and a ring within each node, the segment pairs and the class pairs.
        assert sizes[n] <= 2 * len(pods) + 3 * 3 + sel.classes**2
    # 10x the pods: about 10x the pairs (all pairs would be 100x).
    assert sizes[50] <= 11 * sizes[5]


def test_policy_classes_ignore_labels_no_selector_reads() -> None:
    topo = topology(2)
    pods = pods_for(topo, 3)
    classes = policy_classes(pods, POLICIES)
    # namespace (x, y) x app (a0, a1) x ipBlock (in /18 outside the except, or not): "uniq"
    # differs on every pod and must not split them.
    assert len(classes) <= 8 < len(pods)


def test_sample_reproduces_the_whole_truth_table() -> None:
    """Every class pair the full matrix has is in the sample, and a class pair's verdict is
    the same for all its pod pairs, so the sample's verdicts are the matrix's."""
    topo = topology(4)
    pods = pods_for(topo, 3)
    full = truth(all_pairs(pods), POLICIES, pods)
    assert all(len(v) == 1 for v in full.values()), "a class pair with two verdicts"
    assert {True} in full.values() and {False} in full.values()
    sample = truth(select(pods, topo, POLICIES, how="sample").pairs, POLICIES, pods)
    assert sample == full


def test_truth_table_check_fails_without_the_class_pairs() -> None:
    topo = topology(4)
    pods = pods_for(topo, 3)
    full = truth(all_pairs(pods), POLICIES, pods)
    assert truth(covering_sample(pods, topo), POLICIES, pods) != full


def test_classes_blind_to_a_selector_key_give_mixed_verdicts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The negative of the equivalence: forget the `app` key and one class holds pods the
    policy treats differently."""
    topo = topology(4)
    pods = pods_for(topo, 3)
    monkeypatch.setattr(pairs_mod, "_selector_keys", lambda policies: set())
    full = truth(all_pairs(pods), POLICIES, pods)
    assert any(len(v) == 2 for v in full.values())


@pytest.mark.parametrize("seed", range(5))
def test_random_policies_keep_the_truth_table(seed: int) -> None:
    rng = random.Random(seed)
    topo = topology(3)
    apps = ["a0", "a1", "a2"]
    pods = pods_for(topo, 3, lambda i: {"app": rng.choice(apps), "tier": rng.choice("fb")})
    policies = []
    for k in range(3):
        sel = {"matchLabels": {rng.choice(["app", "tier"]): rng.choice([*apps, "f", "b"])}}
        peer: dict[str, Any] = rng.choice(
            [
                {"podSelector": {"matchLabels": {"tier": rng.choice("fb")}}},
                {"ipBlock": {"cidr": f"10.244.{rng.randrange(8)}.0/24"}},
                {"namespaceSelector": {}},
            ]
        )
        rule = {"from" if k % 2 == 0 else "to": [peer]}
        direction = "ingress" if k % 2 == 0 else "egress"
        types = ["Ingress"] if k % 2 == 0 else ["Egress"]
        ns = rng.choice(["x", "y"])
        policies.append(
            pol(f"p{k}", ns, {"podSelector": sel, "policyTypes": types, direction: [rule]})
        )
    full = truth(all_pairs(pods), policies, pods)
    assert all(len(v) == 1 for v in full.values())
    assert truth(select(pods, topo, policies, how="sample").pairs, policies, pods) == full
