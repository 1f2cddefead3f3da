"""Compile Kubernetes NetworkPolicies into one nftables ruleset per node, in Felix's layout.

The table mirrors what Calico's Felix programs in its nftables dataplane (reference section 15),
so `nft list ruleset` on a lab node reads like Calico's documentation:

* `filter-FORWARD` (base chain, hook forward) jumps to `filter-cali-FORWARD`, which sends traffic
  from a pod interface to `filter-cali-from-wl-dispatch` and traffic to one to
  `filter-cali-to-wl-dispatch`. Only routed traffic is policed: host -> local pod goes through
  OUTPUT and stays allowed, as Kubernetes requires.
* The dispatch chains look the interface up in a verdict map of the same name and `goto` the
  endpoint chain `filter-cali-fw-<iface>` (from workload: the pod's egress, on the source's
  node) or `filter-cali-tw-<iface>` (to workload: the pod's ingress, on the destination's node).
  An unknown `cali*` interface is dropped.
* An endpoint chain accepts established traffic, then jumps to each policy chain that selects
  the pod (`filter-cali-pi-_knp.<ns>.<name>` / `filter-cali-po-...`) and returns as soon as one
  set the accept mark; otherwise the tier drops the packet. A pod no policy selects in that
  direction goes to its namespace profile (`filter-cali-pri-kns.<ns>` / `-pro-`), which allows
  everything: Kubernetes' "not isolated" default.
* Selector peers become named sets `cali40s-<hash>` of pod IPs (Felix: ipsets `cali40s:<hash>`),
  named ports become `cali40n-<hash>` sets of `ip . proto . port` (Felix's named-port ipsets).

Rules grow with policies (and with local pods times the policies selecting them), never with
pod pairs: peers live in sets, not in rules.

Everything here is pure: no processes, no kernel; output is sorted so it can be pinned by tests.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, collapse_addresses
from typing import Any, Literal

from labctl.k8s.meta import LabelSelector
from labctl.policy.model import (
    NetworkPolicy,
    NetworkPolicyPeer,
    NetworkPolicyPort,
    PodInfo,
)
from labctl.render import render

TABLE = "calico"
TEMPLATE = "calico-policy.nft.j2"
# Felix's mark bits (IptablesMarkMask 0xffff0000, lowest first); clear of kube-proxy's
# 0x4000 (masquerade) and 0x8000 (drop).
ACCEPT_MARK = 0x10000
PASS_MARK = 0x20000
CLEAR_MARKS = 0xFFFFFFFF & ~(ACCEPT_MARK | PASS_MARK)

FORWARD = "filter-FORWARD"
CALI_FORWARD = "filter-cali-FORWARD"
FROM_DISPATCH = "filter-cali-from-wl-dispatch"
TO_DISPATCH = "filter-cali-to-wl-dispatch"
IFACE_PREFIX = "cali"
# The kernel's NFT_CHAIN_MAXNAMELEN is 256 bytes including the NUL.
MAX_NAME = 255
# What nft's scanner reads as one bare name: ({letter}|[_.])({letter}|{digit}|[/\-_.])*.
# Kubernetes names (DNS subdomains and labels) always fit; anything else gets hashed.
_NFT_IDENT = re.compile(r"[A-Za-z_.][A-Za-z0-9/_.-]*\Z")
# Felix's pod interfaces: `cali` + 11 hex digits; Linux caps names at 15 characters.
_IFACE = re.compile(IFACE_PREFIX + r"[A-Za-z0-9_.-]{1,11}\Z")
# Userdata comments are capped at 128 bytes including the NUL.
_MAX_COMMENT = 127

Direction = Literal["ingress", "egress"]
DIRECTIONS: tuple[Direction, ...] = ("ingress", "egress")
_PROTOCOLS = ("TCP", "UDP", "SCTP")

_SET_ACCEPT = f"meta mark set meta mark | 0x{ACCEPT_MARK:08x} return"
_CLEAR = f"meta mark set meta mark & 0x{CLEAR_MARKS:08x}"
_IF_ACCEPTED = f"meta mark & 0x{ACCEPT_MARK:08x} == 0x{ACCEPT_MARK:08x} return"
# Per direction: its dispatch chain (and verdict map of the same name) and the interface that
# names the pod, in the order filter-cali-FORWARD consults them (the source's egress first).
_DISPATCH: tuple[tuple[Direction, str, str], ...] = (
    ("egress", FROM_DISPATCH, "iifname"),
    ("ingress", TO_DISPATCH, "oifname"),
)


@dataclass(frozen=True)
class NodeRuleset:
    """The compiled policy table of one node."""

    node: str
    text: str  # complete `nft -f` input; replaces `table ip calico` in one transaction
    rules: int  # rules in all chains (set and map elements not counted)
    endpoints: tuple[str, ...]  # pod interfaces in the dispatch maps
    chains: tuple[str, ...]  # chain names, in the order they are declared


@dataclass(frozen=True)
class Rule:
    """One nft rule: match and statements, as text, plus an optional comment."""

    body: str
    comment: str = ""

    @property
    def text(self) -> str:
        """The rule line as nft reads it."""
        return f"{self.body} comment {_quote(self.comment)}" if self.comment else self.body


@dataclass(frozen=True)
class Chain:
    """A regular chain, or a base chain when `hook` holds its `type ... hook ...;` line."""

    name: str
    rules: tuple[Rule, ...]
    hook: str = ""


@dataclass(frozen=True)
class NftSet:
    """A named set (or a verdict map when `type` contains ': verdict')."""

    name: str
    type: str
    elements: tuple[str, ...]
    interval: bool = False
    comment: str = ""

    @property
    def quoted_comment(self) -> str:
        """The comment as an nft string literal."""
        return _quote(self.comment)


def _quote(text: str) -> str:
    # nft strings cannot escape a double quote; comments are informational, so swap it.
    return '"' + text.replace('"', "'")[:_MAX_COMMENT] + '"'


def _digest(text: str, length: int = 16) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def _name(prefix: str, suffix: str) -> str:
    """`prefix + suffix`, or a shortened, hashed form if nft could not take it as a name."""
    name = prefix + suffix
    if len(name) <= MAX_NAME and _NFT_IDENT.match(name):
        return name
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", suffix)
    digest = _digest(suffix)
    return f"{prefix}{safe[: MAX_NAME - len(prefix) - len(digest) - 1]}-{digest}"


def policy_chain(policy: NetworkPolicy, direction: Direction) -> str:
    """Felix's chain for a policy's rules: `filter-cali-pi-` (ingress) / `-po-` (egress)."""
    prefix = "filter-cali-pi-" if direction == "ingress" else "filter-cali-po-"
    return _name(prefix, f"_knp.{policy.metadata.namespace}.{policy.metadata.name}")


def profile_chain(namespace: str, direction: Direction) -> str:
    """The namespace profile chain: `filter-cali-pri-kns.<ns>` / `filter-cali-pro-kns.<ns>`."""
    prefix = "filter-cali-pri-" if direction == "ingress" else "filter-cali-pro-"
    return _name(prefix, f"kns.{namespace}")


def endpoint_chain(iface: str, direction: Direction) -> str:
    """`filter-cali-tw-<iface>` (to workload, ingress) / `filter-cali-fw-<iface>` (egress)."""
    return _name("filter-cali-tw-" if direction == "ingress" else "filter-cali-fw-", iface)


def _canonical(data: Any) -> Any:
    """`data` with every list sorted, so equal selectors hash equally whatever their order."""
    if isinstance(data, dict):
        return {k: _canonical(v) for k, v in sorted(data.items())}
    if isinstance(data, list):
        items = [_canonical(x) for x in data]
        return sorted(items, key=lambda x: json.dumps(x, sort_keys=True))
    return data


def _selector_key(selector: LabelSelector | None) -> Any:
    # None and {} both select everything, so they must share a set.
    if selector is None or selector.is_empty():
        return "all"
    return _canonical(selector.model_dump(mode="json"))


def namespace_labels(namespaces: Mapping[str, Mapping[str, str]], ns: str) -> dict[str, str]:
    """A namespace's labels, with the immutable `kubernetes.io/metadata.name` always present."""
    return {"kubernetes.io/metadata.name": ns, **namespaces.get(ns, {})}


class _Cluster:
    """The objects every node's table is compiled from, and the work all nodes share.

    Peer sets, named-port sets and policy chains are the same on every node, so each is built
    once per compile, not once per node. Selectors are matched once per group of pods with the
    same namespace and labels (the replicas of one app share theirs), not once per pod.
    """

    def __init__(
        self,
        policies: Sequence[NetworkPolicy],
        namespaces: Mapping[str, Mapping[str, str]],
        pods: Sequence[PodInfo],
    ) -> None:
        self.policies = sorted(policies, key=lambda p: (p.metadata.namespace, p.metadata.name))
        self.pods = sorted(pods, key=lambda p: (p.namespace, p.name))
        self.namespaces = namespaces
        groups: dict[tuple[str, tuple[tuple[str, str], ...]], list[PodInfo]] = {}
        for pod in self.pods:
            groups.setdefault((pod.namespace, tuple(sorted(pod.labels.items()))), []).append(pod)
        self._groups: dict[str, list[list[PodInfo]]] = {}
        for (ns, _), group in groups.items():
            self._groups.setdefault(ns, []).append(group)
        self._addresses = {p.ip: IPv4Address(p.ip) for p in self.pods if p.ip}
        self._sets: dict[str, NftSet] = {}
        self._chains: dict[tuple[int, Direction], tuple[Chain, dict[str, NftSet]]] = {}
        #: Per direction: pod key -> indexes into `policies` of the policies isolating the pod.
        self.isolating = {d: self._isolating(d) for d in DIRECTIONS}

    def _isolating(self, direction: Direction) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for index, policy in enumerate(self.policies):
            if direction.capitalize() not in policy.spec.effective_types():
                continue
            for group in self._groups.get(policy.metadata.namespace, []):
                if policy.spec.podSelector.matches(group[0].labels):
                    for pod in group:
                        out.setdefault(pod.key, []).append(index)
        return out

    def peer_pods(self, peer: NetworkPolicyPeer, policy_ns: str) -> list[PodInfo]:
        """The pods a selector peer matches: podSelector alone is confined to the policy's
        namespace, namespaceSelector alone takes every pod of the matching namespaces, both
        together AND."""
        if peer.namespaceSelector is None:
            groups = self._groups.get(policy_ns, [])
        else:
            selector = peer.namespaceSelector
            groups = [
                group
                for ns, in_ns in self._groups.items()
                if selector.matches(namespace_labels(self.namespaces, ns))
                for group in in_ns
            ]
        return [
            pod
            for group in groups
            if peer.podSelector is None or peer.podSelector.matches(group[0].labels)
            for pod in group
        ]

    def selector_set(self, peer: NetworkPolicyPeer, policy_ns: str) -> NftSet:
        """The set of pod IPs a selector peer matches, shared by every peer selecting alike."""
        if peer.namespaceSelector is None:
            scope: Any = {"namespace": policy_ns}
            where = f"ns {policy_ns}"
        else:
            scope = {"namespaces": _selector_key(peer.namespaceSelector)}
            where = f"ns [{peer.namespaceSelector.describe() or 'all'}]"
        key = json.dumps({**scope, "pods": _selector_key(peer.podSelector)}, sort_keys=True)
        name = f"cali40s-{_digest(key)}"
        if name not in self._sets:
            what = peer.podSelector.describe() if peer.podSelector is not None else ""
            ips = {self._addresses[p.ip] for p in self.peer_pods(peer, policy_ns) if p.ip}
            self._sets[name] = NftSet(
                name=name,
                type="ipv4_addr",
                elements=tuple(str(ip) for ip in sorted(ips)),
                interval=True,
                comment=f"{where} pods [{what or 'all'}]",
            )
        return self._sets[name]

    def named_port_set(self, port_name: str, protocol: str) -> NftSet:
        """Every pod's `ip . proto . port` for its container port `port_name`/`protocol`."""
        name = f"cali40n-{_digest(json.dumps([port_name, protocol]))}"
        if name not in self._sets:
            elements = {
                (self._addresses[pod.ip], p.port)
                for pod in self.pods
                if pod.ip
                for p in pod.ports
                if p.name == port_name and p.protocol.upper() == protocol
            }
            proto = protocol.lower()
            self._sets[name] = NftSet(
                name=name,
                type="ipv4_addr . inet_proto . inet_service",
                elements=tuple(f"{ip} . {proto} . {port}" for ip, port in sorted(elements)),
                comment=f"named port {proto}/{port_name}",
            )
        return self._sets[name]

    def policy_chain(self, index: int, direction: Direction) -> tuple[Chain, dict[str, NftSet]]:
        """The chain of `policies[index]` in `direction`, and the named sets its rules use."""
        if (index, direction) not in self._chains:
            policy = self.policies[index]
            used: dict[str, NftSet] = {}
            rules = _policy_rules(policy, direction, self, used)
            self._chains[(index, direction)] = (Chain(policy_chain(policy, direction), rules), used)
        return self._chains[(index, direction)]


def _elements(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else "{ " + ", ".join(items) + " }"


def _peer_matches(
    peers: Sequence[NetworkPolicyPeer],
    direction: Direction,
    policy_ns: str,
    cluster: _Cluster,
    used: dict[str, NftSet],
) -> list[str]:
    """One match per peer (ORed by being separate rules); [""] (any) for an empty list."""
    if not peers:
        return [""]
    addr = "ip saddr" if direction == "ingress" else "ip daddr"
    out = []
    for peer in peers:
        if peer.ipBlock is not None:
            net = peer.ipBlock.network()
            match = f"{addr} {net}"
            # Overlapping intervals in one anonymous set are an nft error: merge them first.
            excepts = [str(n) for n in collapse_addresses(peer.ipBlock.excepts())]
            if excepts:
                match += f" {addr} != {{ {', '.join(excepts)} }}"
        else:
            s = cluster.selector_set(peer, policy_ns)
            used[s.name] = s
            match = f"{addr} @{s.name}"
        if match not in out:
            out.append(match)
    return out


def _merge_ranges(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return merged


def _port_matches(
    ports: Sequence[NetworkPolicyPort], cluster: _Cluster, used: dict[str, NftSet]
) -> list[str]:
    """Matches for a rule's port list, one per protocol (numbers and ranges merged into one
    anonymous set) plus one per named port; [""] (any protocol, any port) for an empty list."""
    if not ports:
        return [""]
    all_ports: set[str] = set()
    numeric: dict[str, list[tuple[int, int]]] = {}
    named: set[tuple[str, str]] = set()
    for p in ports:
        if p.port is None:
            all_ports.add(p.protocol)
        elif isinstance(p.port, str):
            named.add((p.port, p.protocol))
        else:
            numeric.setdefault(p.protocol, []).append((p.port, p.endPort or p.port))
    out = []
    for proto in _PROTOCOLS:
        if proto in all_ports:
            out.append(f"meta l4proto {proto.lower()}")
        elif proto in numeric:
            items = [
                str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in _merge_ranges(numeric[proto])
            ]
            out.append(f"meta l4proto {proto.lower()} th dport {_elements(items)}")
    for name, proto in sorted(named, key=lambda n: (_PROTOCOLS.index(n[1]), n[0])):
        if proto in all_ports:
            continue  # already allowed by the protocol-only entry
        s = cluster.named_port_set(name, proto)
        used[s.name] = s
        # Named ports resolve on the destination pod, in both directions.
        out.append(f"ip daddr . meta l4proto . th dport @{s.name}")
    return out


def _policy_rules(
    policy: NetworkPolicy, direction: Direction, cluster: _Cluster, used: dict[str, NftSet]
) -> tuple[Rule, ...]:
    """The rules of a policy chain: every (peer, port) pair of every Kubernetes rule sets the
    accept mark and returns. No rules (e.g. `ingress: []`) leaves the pod to the tier drop."""
    ns = policy.metadata.namespace
    if direction == "ingress":
        k8s_rules = [(r.from_, r.ports) for r in policy.spec.ingress]
    else:
        k8s_rules = [(r.to, r.ports) for r in policy.spec.egress]
    out: list[Rule] = []
    seen: set[str] = set()
    for index, (peers, ports) in enumerate(k8s_rules):
        peer_matches = _peer_matches(peers, direction, ns, cluster, used)
        port_matches = _port_matches(ports, cluster, used)
        for peer in peer_matches:
            for port in port_matches:
                body = " ".join(x for x in (peer, port, _SET_ACCEPT) if x)
                if body not in seen:  # the same match twice adds nothing
                    seen.add(body)
                    out.append(Rule(body, f"{direction}[{index}]"))
    return tuple(out)


def _endpoint_rules(
    pod: PodInfo, direction: Direction, chosen: Sequence[NetworkPolicy]
) -> tuple[Rule, ...]:
    """A pod's endpoint chain: the policies isolating it in `direction`, else its profile."""
    rules = [
        Rule("ct state established,related accept", f"pod {pod.key}"),
        Rule("ct state invalid drop"),
        Rule(_CLEAR),
    ]
    if chosen:
        for policy in chosen:
            rules.append(Rule(f"jump {policy_chain(policy, direction)}"))
            rules.append(Rule(_IF_ACCEPTED, "Return if policy accepted"))
        rules.append(Rule("drop", "End of tier default: drop if no policies passed packet"))
    else:
        rules.append(Rule(f"jump {profile_chain(pod.namespace, direction)}"))
        rules.append(Rule(_IF_ACCEPTED, "Return if profile accepted"))
        rules.append(Rule("drop", "Drop if no profiles matched"))
    return tuple(rules)


def local_endpoints(node: str, pods: Iterable[PodInfo]) -> list[PodInfo]:
    """The pods of `node` that have a host interface, sorted by it.

    Raises ValueError for an interface the dispatch could not police: one whose name does not
    start with `cali` (Felix only looks at `cali*`; such a pod would bypass policy) or is not a
    valid Linux name, or one that two pods share.
    """
    local = sorted((p for p in pods if p.node == node and p.iface), key=lambda p: p.iface)
    owner: dict[str, str] = {}
    for pod in local:
        if not _IFACE.match(pod.iface):
            raise ValueError(
                f"pod {pod.key}: interface {pod.iface!r} cannot be policed; name it "
                f"{IFACE_PREFIX} plus 1-11 letters, digits, '_', '.' or '-' (e.g. cali1a2b3c4d5e6)"
            )
        if pod.iface in owner:
            raise ValueError(
                f"pods {owner[pod.iface]} and {pod.key} both use interface {pod.iface} on node "
                f"{node}; give each pod its own"
            )
        owner[pod.iface] = pod.key
    return local


def _compile(node: str, cluster: _Cluster) -> NodeRuleset:
    local = local_endpoints(node, cluster.pods)
    sets: dict[str, NftSet] = {}
    profiles: list[Chain] = []
    policy_chains: list[Chain] = []
    endpoints: list[Chain] = []
    for direction in DIRECTIONS:
        isolating = cluster.isolating[direction]
        unisolated = {p.namespace for p in local if p.key not in isolating}
        profiles += [
            # The Kubernetes default for a pod no policy isolates: allow everything.
            Chain(profile_chain(ns, direction), (Rule(_SET_ACCEPT),))
            for ns in sorted(unisolated)
        ]
        # Only the policies that isolate a local pod; by index, i.e. in namespace/name order.
        for index in sorted({i for p in local for i in isolating.get(p.key, ())}):
            chain, used = cluster.policy_chain(index, direction)
            policy_chains.append(chain)
            sets.update(used)
    for pod in local:
        for direction in DIRECTIONS:
            chosen = [cluster.policies[i] for i in cluster.isolating[direction].get(pod.key, ())]
            rules = _endpoint_rules(pod, direction, chosen)
            endpoints.append(Chain(endpoint_chain(pod.iface, direction), rules))

    maps = [
        NftSet(
            name=dispatch,
            type="ifname : verdict",
            elements=tuple(
                f'"{p.iface}" : goto {endpoint_chain(p.iface, direction)}' for p in local
            ),
        )
        for direction, dispatch, _ in _DISPATCH
    ]
    plumbing = [
        Chain(
            FORWARD,
            (Rule(f"jump {CALI_FORWARD}"),),
            hook="type filter hook forward priority filter; policy accept;",
        ),
        Chain(
            CALI_FORWARD,
            (
                Rule(_CLEAR),
                *(Rule(f'{iface} "{IFACE_PREFIX}*" jump {d}') for _, d, iface in _DISPATCH),
            ),
        ),
        *(
            Chain(d, (Rule(f"{iface} vmap @{d}"), Rule("drop", "Unknown interface")))
            for _, d, iface in _DISPATCH
        ),
    ]
    # In packet order, as a student follows it (nft resolves forward references in one file).
    chains = [*plumbing, *endpoints, *policy_chains, *profiles]
    text = render(
        TEMPLATE,
        node=node,
        table=TABLE,
        sets=[sets[n] for n in sorted(sets)],
        maps=maps,
        chains=chains,
    )
    return NodeRuleset(
        node=node,
        text=text,
        rules=sum(len(c.rules) for c in chains),
        endpoints=tuple(p.iface for p in local),
        chains=tuple(c.name for c in chains),
    )


def compile_node(
    node: str,
    policies: Sequence[NetworkPolicy],
    namespaces: Mapping[str, Mapping[str, str]],
    pods: Sequence[PodInfo],
) -> NodeRuleset:
    """Compile the policy table of `node`.

    `pods` are all pods of the cluster (peer sets look at remote pods too); only pods on `node`
    with a host interface get endpoint chains. `namespaces` maps a name to its labels.
    """
    return _compile(node, _Cluster(policies, namespaces, pods))


def compile_all(
    nodes: Sequence[str],
    policies: Sequence[NetworkPolicy],
    namespaces: Mapping[str, Mapping[str, str]],
    pods: Sequence[PodInfo],
) -> dict[str, NodeRuleset]:
    """`compile_node` for every node, keyed by node name (what the nodes share is built once)."""
    cluster = _Cluster(policies, namespaces, pods)
    return {node: _compile(node, cluster) for node in nodes}


def teardown_text() -> str:
    """nft input that removes the policy table, whether or not it exists."""
    # Declaring the (empty) table first makes the delete valid when it is absent.
    return f"table ip {TABLE} {{}}\ndelete table ip {TABLE}\n"
