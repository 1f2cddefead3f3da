"""What the scheduler, the ReplicaSet controller and host-local IPAM decide for new pods: pure
functions of the objects that exist, so `apply` can decide everything before anything changes.
"""

from __future__ import annotations

import json
import secrets
from collections import Counter
from collections.abc import Collection, Iterable
from ipaddress import IPv4Address, IPv4Network

from labctl.workloads.model import Deployment

# Kubernetes' rand.SafeEncodeString alphabet: no vowels, no look-alikes (0/o, 1/l, 3/e).
SAFE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


class SchedulingError(ValueError):
    """The pod cannot be placed (no such node, node's address range full); exit 2."""

    exit_code = 2


def _safe_encode(text: str) -> str:
    return "".join(SAFE_ALPHABET[ord(c) % len(SAFE_ALPHABET)] for c in text)


def template_hash(deploy: Deployment) -> str:
    """The `pod-template-hash` label: FNV-1a (32 bit) of the pod template, safe-encoded, as the
    Deployment controller derives it (it hashes Go's printout of the template; here its JSON)."""
    data = json.dumps(deploy.spec.template.model_dump(mode="json"), sort_keys=True).encode()
    h = 0x811C9DC5
    for b in data:
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return _safe_encode(str(h))


def pod_names(prefix: str, count: int, taken: Collection[str]) -> list[str]:
    """`count` new names `<prefix>-<5 random safe characters>` that are not `taken`."""
    names: list[str] = []
    while len(names) < count:
        name = f"{prefix}-{''.join(secrets.choice(SAFE_ALPHABET) for _ in range(5))}"
        if name not in taken and name not in names:
            names.append(name)
    return names


def spread(nodes: Iterable[str], load: Counter[str], count: int) -> list[str]:
    """Nodes for `count` new pods: each goes to the node with the fewest pods (ties: the first
    in topology order), as the scheduler's spreading score does when nothing else differs."""
    order = list(nodes)
    load = Counter(load)
    picks = []
    for _ in range(count):
        node = min(order, key=lambda n: (load[n], order.index(n)))
        load[node] += 1
        picks.append(node)
    return picks


def allocate_ip(
    node: str, pool: IPv4Network, used: Collection[str], last: str | None = None
) -> IPv4Address:
    """host-local IPAM: the next free address after the last one handed out on this node,
    wrapping round to .2 (.1 is the gateway or tunnel address; network and broadcast addresses
    are never handed out). Like the plugin's `last_reserved_ip`, this keeps a just-released
    address out of use as long as possible, so neighbours never meet it under a new MAC."""
    first, end = 2, pool.num_addresses - 1
    start = first
    if last is not None and IPv4Address(last) in pool:
        start = int(IPv4Address(last)) - int(pool.network_address) + 1
    span = end - first
    for step in range(span):
        offset = first + (start - first + step) % span
        ip = pool.network_address + offset
        if str(ip) not in used:
            return ip
    raise SchedulingError(
        f"node {node}: no free pod address left in {pool}; delete pods or scale down, "
        "or schedule on another node"
    )
