"""The reference evaluator: Kubernetes NetworkPolicy semantics, with no dataplane.

This is the oracle that tests and `labctl probe` compare the real lab with, so it follows the
specification (reference Part III) as literally as possible and stays free of optimisations.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from ipaddress import IPv4Address
from typing import Literal

from labctl.policy.model import (
    NetworkPolicy,
    NetworkPolicyEgressRule,
    NetworkPolicyIngressRule,
    NetworkPolicyPeer,
    NetworkPolicyPort,
    PodInfo,
)

Protocol = Literal["TCP", "UDP", "SCTP", "ICMP"]
Direction = Literal["Ingress", "Egress"]
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


def selecting(
    policies: Sequence[NetworkPolicy], pod: PodInfo, direction: Direction
) -> list[NetworkPolicy]:
    """The policies that select `pod` (same namespace, podSelector) and carry `direction`."""
    return [
        p
        for p in policies
        if p.metadata.namespace == pod.namespace
        and p.spec.podSelector.matches(pod.labels)
        and direction in p.spec.effective_types()
    ]


def isolated(policies: Sequence[NetworkPolicy], pod: PodInfo, direction: Direction) -> bool:
    """Whether `pod` is isolated in `direction` (some policy selects it for that direction)."""
    return bool(selecting(policies, pod, direction))


def allowed(
    policies: Sequence[NetworkPolicy],
    namespaces: Mapping[str, Mapping[str, str]],
    src: PodInfo,
    dst: PodInfo,
    port: int,
    protocol: Protocol,
) -> bool:
    """Whether a connection from `src` to `dst` on `port`/`protocol` is allowed: src's egress
    (if egress-isolated) and dst's ingress (if ingress-isolated) must both allow it.

    `namespaces` maps a namespace to its labels, `kubernetes.io/metadata.name` included.
    """
    egress_ok = not isolated(policies, src, "Egress") or any(
        _rule_matches(rule, policy, namespaces, src, dst, port, protocol)
        for policy in selecting(policies, src, "Egress")
        for rule in policy.spec.egress
    )
    ingress_ok = not isolated(policies, dst, "Ingress") or any(
        _rule_matches(rule, policy, namespaces, dst, src, port, protocol)
        for policy in selecting(policies, dst, "Ingress")
        for rule in policy.spec.ingress
    )
    return egress_ok and ingress_ok


def matrix(
    policies: Sequence[NetworkPolicy],
    namespaces: Mapping[str, Mapping[str, str]],
    pods: Sequence[PodInfo],
    port: int,
    protocol: Protocol,
) -> dict[str, dict[str, bool]]:
    """`matrix[src.key][dst.key]` for every ordered pair of distinct pods (a pod's traffic to
    itself is never subject to policy, so it is left out)."""
    return {
        src.key: {
            dst.key: allowed(policies, namespaces, src, dst, port, protocol)
            for dst in pods
            if dst.key != src.key
        }
        for src in pods
    }


def _rule_matches(
    rule: NetworkPolicyIngressRule | NetworkPolicyEgressRule,
    policy: NetworkPolicy,
    namespaces: Mapping[str, Mapping[str, str]],
    subject: PodInfo,
    remote: PodInfo,
    port: int,
    protocol: Protocol,
) -> bool:
    """A rule matches when some peer matches the remote pod (or it lists none) and some port
    matches (or it lists none, which also admits ICMP)."""
    peers = rule.from_ if isinstance(rule, NetworkPolicyIngressRule) else rule.to
    # Named ports always resolve on the destination: the subject for ingress, the remote for
    # egress.
    dst = subject if isinstance(rule, NetworkPolicyIngressRule) else remote
    peer_ok = not peers or any(
        _peer_matches(peer, policy.metadata.namespace, namespaces, remote) for peer in peers
    )
    port_ok = not rule.ports or any(_port_matches(p, dst, port, protocol) for p in rule.ports)
    return peer_ok and port_ok


def _peer_matches(
    peer: NetworkPolicyPeer,
    policy_ns: str,
    namespaces: Mapping[str, Mapping[str, str]],
    remote: PodInfo,
) -> bool:
    if peer.ipBlock is not None:
        # Matched against the remote pod's own IP, as Calico does for pod addresses.
        ip = IPv4Address(remote.ip)
        return ip in peer.ipBlock.network() and not any(ip in e for e in peer.ipBlock.excepts())
    if peer.namespaceSelector is None:
        ns_ok = remote.namespace == policy_ns
    else:
        # Every namespace carries its name label, even one missing from `namespaces`.
        ns_labels = namespaces.get(remote.namespace, {NAMESPACE_NAME_LABEL: remote.namespace})
        ns_ok = peer.namespaceSelector.matches(ns_labels)
    pod_ok = peer.podSelector is None or peer.podSelector.matches(remote.labels)
    return ns_ok and pod_ok


def _port_matches(p: NetworkPolicyPort, dst: PodInfo, port: int, protocol: Protocol) -> bool:
    if p.protocol != protocol:
        return False
    if p.port is None:
        return True
    if isinstance(p.port, str):
        return any(
            np.name == p.port and np.protocol == p.protocol and np.port == port for np in dst.ports
        )
    return p.port <= port <= (p.endPort if p.endPort is not None else p.port)
