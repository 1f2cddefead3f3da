"""Which ordered pod pairs `verify` probes: every pair in a small lab, a covering sample in a
large one, so that verify grows linearly with pods instead of with their square.

The sample is built to miss nothing the dataplane or policy could get wrong per pair kind:
- every pod is a source and a destination at least once (its veth, routes, ARP);
- every node reaches the next node in a ring, and every node pair kind (same node, and each
  ordered pair of segments, which is where bare vs encapsulated and routers differ) is there;
- with NetworkPolicies, every ordered pair of *policy classes*. Pods in one class are
  indistinguishable to the Kubernetes semantics (same namespace, same values for every label
  key a selector reads, same ports, inside the same ipBlocks), so one pair per class pair
  reproduces the whole truth table (reference Part III; cyclonus probes the same way).
Per-peer kernel state the sample does not cross (the route to every other node) is still read
back, for every node, by the mode's state checks.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Literal

from labctl.k8s.meta import LabelSelector
from labctl.policy.model import IPBlock, NetworkPolicy, NetworkPolicyPeer
from labctl.store import PodRecord
from labctl.topology import Topology

Pair = tuple[PodRecord, PodRecord]
How = Literal["auto", "all", "sample"]
# Up to this many ordered pairs (about 32 pods) verify probes them all: a class lab gets the
# exact matrix, and it takes a few seconds.
ALL_PAIRS_UP_TO = 1000


@dataclass(frozen=True)
class Selection:
    """The pairs to probe, out of `total` ordered pairs, and whether that is all of them."""

    pairs: list[Pair]
    total: int
    sampled: bool
    classes: int = 0  # policy classes (0 without policies)

    def note(self, protocol: str) -> str:
        """One line for the report saying what was probed and why."""
        if not self.sampled:
            return f"{protocol}: probed all {self.total} ordered pod pairs"
        n = self.classes
        policy = f", each of {n}x{n} policy class pairs" if n else ""
        return (
            f"{protocol}: probed a covering sample of {len(self.pairs)} of {self.total} ordered "
            f"pod pairs (every pod both ways, a ring of nodes, every segment pair{policy}); "
            "`verify --pairs all` probes every pair"
        )


def select(
    pods: Sequence[PodRecord],
    topo: Topology,
    policies: Sequence[NetworkPolicy] = (),
    how: How = "auto",
) -> Selection:
    """The pod pairs to probe among `pods`: all of them (`all`, or `auto` up to
    ALL_PAIRS_UP_TO pairs), else the covering sample."""
    total = len(pods) * (len(pods) - 1)
    if how == "all" or (how == "auto" and total <= ALL_PAIRS_UP_TO):
        pairs = [(s, d) for s in pods for d in pods if s.key != d.key]
        return Selection(pairs, total, sampled=False)
    classes = policy_classes(pods, policies) if policies else []
    pairs = covering_sample(pods, topo, classes)
    return Selection(pairs, total, sampled=True, classes=len(classes))


def covering_sample(
    pods: Sequence[PodRecord], topo: Topology, classes: Sequence[Sequence[PodRecord]] = ()
) -> list[Pair]:
    """The sample described in the module docstring, without duplicates, in a stable order."""
    by_node: dict[str, list[PodRecord]] = {}
    for p in pods:
        by_node.setdefault(p.node, []).append(p)
    nodes = [n for n in topo.nodes if n in by_node]
    out: dict[tuple[str, str], Pair] = {}

    def add(pairs: Iterable[Pair]) -> None:
        for s, d in pairs:
            if s.key != d.key:
                out.setdefault((s.key, d.key), (s, d))

    # A ring of nodes: node i's pods to node i+1's, until every pod of both has been used.
    for i, node in enumerate(nodes):
        add(_zip_all(by_node[node], by_node[nodes[(i + 1) % len(nodes)]]))
    # Within each node (the bridge or the host's routes between local pods).
    for node in nodes:
        local = by_node[node]
        add((local[k], local[(k + 1) % len(local)]) for k in range(len(local)))
    # One pair per ordered pair of segments (same segment: two different nodes on it).
    seg_nodes: dict[str, list[str]] = {}
    for n in nodes:
        seg_nodes.setdefault(topo.nodes[n].segment, []).append(n)
    turn = 0
    for a_nodes in seg_nodes.values():
        for b_nodes in seg_nodes.values():
            cands = [(x, y) for x in a_nodes[:2] for y in b_nodes[:2] if x != y]
            if not cands:  # a segment with one node has no pair within itself
                continue
            x, y = cands[turn % len(cands)]
            add([(by_node[x][turn % len(by_node[x])], by_node[y][turn % len(by_node[y])])])
            turn += 1
    # Every ordered pair of policy classes, representatives taken in turn.
    for i, srcs in enumerate(classes):
        for j, dsts in enumerate(classes):
            src = srcs[(i + j) % len(srcs)]
            dst = dsts[(i + j + (i == j)) % len(dsts)]
            add([(src, dst)])
    return list(out.values())


def _zip_all(a: Sequence[PodRecord], b: Sequence[PodRecord]) -> Iterable[Pair]:
    """Pairs from `a` to `b` that use every pod of each at least once."""
    for k in range(max(len(a), len(b))):
        yield a[k % len(a)], b[k % len(b)]


def policy_classes(
    pods: Sequence[PodRecord], policies: Sequence[NetworkPolicy]
) -> list[list[PodRecord]]:
    """Pods grouped so that Kubernetes NetworkPolicy cannot tell two pods of a group apart:
    same namespace (hence namespace labels), same value (or absence) of every label key some
    podSelector reads, same ports (named ports and the probed port), and inside the same
    ipBlock ranges."""
    keys = sorted(_selector_keys(policies))
    blocks = _ip_blocks(policies)
    groups: dict[tuple[object, ...], list[PodRecord]] = {}
    for p in pods:
        ip = IPv4Address(p.ip)
        sig = (
            p.namespace,
            tuple(p.labels.get(k) for k in keys),
            tuple((x.name, x.containerPort, x.protocol) for x in p.ports),
            tuple(ip in b.network() and not any(ip in e for e in b.excepts()) for b in blocks),
        )
        groups.setdefault(sig, []).append(p)
    return list(groups.values())


def _peers(policies: Sequence[NetworkPolicy]) -> list[NetworkPolicyPeer]:
    """Every from/to peer of every rule."""
    out: list[NetworkPolicyPeer] = []
    for pol in policies:
        for rule in pol.spec.ingress:
            out += rule.from_
        for egress in pol.spec.egress:
            out += egress.to
    return out


def _selector_keys(policies: Sequence[NetworkPolicy]) -> set[str]:
    """Every pod label key a policy's selectors read (namespace selectors read namespace
    labels, which the namespace name already fixes)."""
    selectors: list[LabelSelector] = [pol.spec.podSelector for pol in policies]
    selectors += [p.podSelector for p in _peers(policies) if p.podSelector is not None]
    return {k for s in selectors for k in [*s.matchLabels, *(r.key for r in s.matchExpressions)]}


def _ip_blocks(policies: Sequence[NetworkPolicy]) -> list[IPBlock]:
    return [p.ipBlock for p in _peers(policies) if p.ipBlock is not None]
