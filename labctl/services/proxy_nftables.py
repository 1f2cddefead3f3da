"""Compile Services into kube-proxy's nftables mode for one node: an `nft -f` input.

The table is the one kube-proxy's nftables mode keeps (`pkg/proxy/nftables/proxier.go`), so
`nft list table ip kube-proxy` on a lab node reads like a real one:

* Base chains named `<type>-<hook>`: `nat-prerouting` and `nat-output` jump to `services`,
  `nat-postrouting` to `masquerading`; the filter chains run the no-endpoint checks on new
  connections (`filter-input`, `filter-forward`, `filter-output`) and, before DNAT, the
  LoadBalancer firewall (`filter-prerouting-pre-dnat`, `filter-output-pre-dnat`).
* `services` looks `ip daddr . meta l4proto . th dport` up in the verdict map `service-ips`
  (ClusterIPs and externalIPs) and, for the node's own address (`nodeport-ips`),
  `meta l4proto . th dport` in `service-nodeports`: one lookup instead of a rule per service.
* Per service port, chains named `service-<hash>-<ns>/<name>/<proto>/<port>` (Cluster policy),
  `local-...` (Local policy), `external-...` (NodePort/externalIP traffic) and per endpoint
  `endpoint-<hash>-<ns>/<name>/<proto>/<port>__<ip>/<port>`; the hash is base32(sha256(rest))
  cut to 8 characters, as upstream. A service chain picks an endpoint with
  `numgen random mod N vmap { 0 : goto endpoint-..., ... }`, after `affinity-...` set lookups
  for ClientIP affinity.
* `mark-for-masquerade` sets mark 0x4000; `masquerading` masquerades marked packets.
* Services without endpoints: `no-endpoint-services` / `no-endpoint-nodeports` map them to
  `goto reject-chain` (or `drop` when only Local endpoints are missing); `cluster-ips-check`
  rejects other ports of a ClusterIP.

The file deletes and re-creates `table ip kube-proxy` in one transaction (declaring it first so
the delete works on a node that has none), so a sync never leaves a half-written table.
NodePorts answer on the node IP (`nodeport-ips`), kube-proxy's default in nftables mode.

Pure: no processes.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Network

from labctl.render import render
from labctl.services.endpoints import EndpointSlice, PortPlan, ProxyEndpoint, port_plans
from labctl.services.model import Service

TEMPLATE = "kube-proxy.nft.j2"
TABLE = "kube-proxy"
MASQ_MARK = "0x4000"

# knftables.NameLengthMax (256) minus the longest prefix ("external-" and co., 16 at most).
_CHAIN_BASE_MAX = 256 - 16

CLUSTER_IPS = "cluster-ips"
NODEPORT_IPS = "nodeport-ips"
SERVICE_IPS = "service-ips"
SERVICE_NODEPORTS = "service-nodeports"
NO_ENDPOINT_SERVICES = "no-endpoint-services"
NO_ENDPOINT_NODEPORTS = "no-endpoint-nodeports"
FIREWALL_IPS = "firewall-ips"
MARK_MASQ = "mark-for-masquerade"
REJECT_CHAIN = "reject-chain"
_ADDR_PORT = "ipv4_addr . inet_proto . inet_service : verdict"
_PROTO_PORT = "inet_proto . inet_service : verdict"


def hash_and_truncate(name: str) -> str:
    """Upstream hashAndTruncate: `<8 chars of base32(sha256(name))>-<name>`, cut with `...`
    when longer than a chain name allows."""
    digest = base64.b32encode(hashlib.sha256(name.encode()).digest()).decode()
    out = f"{digest[:8]}-{name}"
    if len(out) > _CHAIN_BASE_MAX:
        out = out[: _CHAIN_BASE_MAX - 3] + "..."
    return out


def port_chain_base(plan: PortPlan) -> str:
    """`<hash>-<ns>/<name>/<proto>/<port name>` (upstream servicePortChainNameBase)."""
    svc = plan.service.metadata
    return hash_and_truncate(f"{svc.namespace}/{svc.name}/{plan.protocol}/{plan.port.name or ''}")


def endpoint_chain_base(plan: PortPlan, ep: ProxyEndpoint) -> str:
    """`<hash>-<ns>/<name>/<proto>/<port name>__<ip>/<port>`
    (upstream servicePortEndpointChainNameBase)."""
    svc = plan.service.metadata
    return hash_and_truncate(
        f"{svc.namespace}/{svc.name}/{plan.protocol}/{plan.port.name or ''}__{ep.ip}/{ep.port}"
    )


@dataclass(frozen=True)
class NftSet:
    """A named set, or a verdict map when `type` ends in `: verdict`."""

    name: str
    type: str
    elements: tuple[str, ...] = ()
    flags: str = ""
    timeout: str = ""
    comment: str = ""

    @property
    def kind(self) -> str:
        """`map` or `set`."""
        return "map" if ": verdict" in self.type else "set"


@dataclass(frozen=True)
class Chain:
    """A regular chain, or a base chain when `hook` holds its `type ... hook ...;` line."""

    name: str
    rules: tuple[str, ...]
    hook: str = ""
    comment: str = ""


@dataclass
class _Node:
    """What the service ports add up to on one node."""

    cluster_ips: list[str] = field(default_factory=list)
    maps: dict[str, dict[str, str]] = field(
        default_factory=lambda: {
            n: {}
            for n in (NO_ENDPOINT_SERVICES, NO_ENDPOINT_NODEPORTS, SERVICE_IPS, SERVICE_NODEPORTS)
        }
    )
    affinity: list[NftSet] = field(default_factory=list)
    chains: list[Chain] = field(default_factory=list)

    def element(self, map_name: str, key: str, verdict: str, comment: str = "") -> None:
        # The first service wins a key two of them claim (same externalIP and port), as a map
        # holds one verdict per key.
        note = f' comment "{comment}"' if comment else ""
        self.maps[map_name].setdefault(key, f"{key}{note} : {verdict}")


def _lb_rules(plan: PortPlan, endpoints: Sequence[ProxyEndpoint]) -> list[str]:
    """Affinity lookups (ClientIP), then the random choice among `endpoints`."""
    rules = []
    if plan.affinity:
        for ep in endpoints:
            base = endpoint_chain_base(plan, ep)
            rules.append(f"ip saddr @affinity-{base} goto endpoint-{base}")
    choices = ", ".join(
        f"{i} : goto endpoint-{endpoint_chain_base(plan, ep)}" for i, ep in enumerate(endpoints)
    )
    rules.append(f"numgen random mod {len(endpoints)} vmap {{ {choices} }}")
    return rules


def _port(plan: PortPlan, cidr: IPv4Network, out: _Node) -> None:
    """Everything one service port adds (upstream syncProxyRules' loop)."""
    name, proto = plan.name, plan.protocol
    base = port_chain_base(plan)
    service, local, external = f"service-{base}", f"local-{base}", f"external-{base}"
    internal_chain = local if plan.internal_local else service
    external_policy = local if plan.external_local else service
    if not plan.has_endpoints:
        internal_verdict = external_verdict = f"goto {REJECT_CHAIN}"
    else:
        internal_verdict = external_verdict = "drop"
    port = plan.port

    if plan.cluster_ip not in out.cluster_ips:
        out.cluster_ips.append(plan.cluster_ip)
    key = f"{plan.cluster_ip} . {proto} . {port.port}"
    if plan.has_internal:
        out.element(SERVICE_IPS, key, f"goto {internal_chain}")
    else:
        out.element(NO_ENDPOINT_SERVICES, key, internal_verdict, name)
    for ip in plan.external_ips:
        key = f"{ip} . {proto} . {port.port}"
        if plan.has_endpoints:
            out.element(SERVICE_IPS, key, f"goto {external}")
        if not plan.has_external:
            out.element(NO_ENDPOINT_SERVICES, key, external_verdict, name)
    if port.nodePort is not None:
        key = f"{proto} . {port.nodePort}"
        if plan.has_endpoints:
            out.element(SERVICE_NODEPORTS, key, f"goto {external}")
        if not plan.has_external:
            out.element(NO_ENDPOINT_NODEPORTS, key, external_verdict, name)

    chains: dict[str, list[str]] = {}
    if plan.has_internal:
        # Off-cluster clients reach a ClusterIP through a route to any node: masquerade them
        # so the reply comes back through that node.
        chains.setdefault(internal_chain, []).append(
            f"ip daddr {plan.cluster_ip} ip saddr != {cidr} jump {MARK_MASQ}"
        )
    if plan.uses_cluster_chain:
        chains.setdefault(service, []).extend(_lb_rules(plan, plan.cluster))
    if plan.uses_local_chain:
        chains.setdefault(local, []).extend(_lb_rules(plan, plan.local))
    if plan.uses_external_chain:
        rules = chains.setdefault(external, [])
        if not plan.external_local:
            # The endpoint may be on another node: masquerade so replies return through here.
            rules.append(f"jump {MARK_MASQ}")
        else:
            rules += [
                f'ip saddr {cidr} goto {service} comment "short-circuit pod traffic"',
                f'fib saddr type local jump {MARK_MASQ} comment "masquerade local traffic"',
                f'fib saddr type local goto {service} comment "short-circuit local traffic"',
            ]
        if plan.has_external:
            rules.append(f"goto {external_policy}")
    for ep in plan.reachable:
        ep_base = endpoint_chain_base(plan, ep)
        rules = [f"ip saddr {ep.ip} jump {MARK_MASQ}"]
        if plan.affinity:
            # Remember the client per endpoint and service port, whatever address it used.
            out.affinity.append(
                NftSet(
                    f"affinity-{ep_base}",
                    "ipv4_addr",
                    flags="dynamic,timeout",
                    timeout=f"{plan.service.spec.affinity_seconds}s",
                )
            )
            rules.append(f"update @affinity-{ep_base} {{ ip saddr }}")
        rules.append(f"meta l4proto {proto} dnat to {ep.text}")
        chains[f"endpoint-{ep_base}"] = rules
    out.chains += [Chain(n, tuple(r)) for n, r in chains.items()]


def _base_chains() -> list[Chain]:
    """The hooked chains and the helpers every node has, in packet order."""
    new = "ct state new jump"
    return [
        Chain("nat-prerouting", ("jump services",), "type nat hook prerouting priority -100;"),
        Chain("nat-output", ("jump services",), "type nat hook output priority -100;"),
        Chain(
            "filter-prerouting-pre-dnat",
            (f"{new} firewall-check",),
            "type filter hook prerouting priority -110;",
        ),
        Chain(
            "filter-output-pre-dnat",
            (f"{new} firewall-check",),
            "type filter hook output priority -110;",
        ),
        Chain(
            "filter-input",
            (f"{new} nodeport-endpoints-check", f"{new} service-endpoints-check"),
            "type filter hook input priority 0;",
        ),
        Chain(
            "filter-forward",
            (f"{new} service-endpoints-check", f"{new} cluster-ips-check"),
            "type filter hook forward priority 0;",
        ),
        Chain(
            "filter-output",
            (f"{new} service-endpoints-check", f"{new} cluster-ips-check"),
            "type filter hook output priority 0;",
        ),
        Chain("nat-postrouting", ("jump masquerading",), "type nat hook postrouting priority 100;"),
        Chain(
            "services",
            (
                f"ip daddr . meta l4proto . th dport vmap @{SERVICE_IPS}",
                f"ip daddr @{NODEPORT_IPS} meta l4proto . th dport vmap @{SERVICE_NODEPORTS}",
            ),
        ),
        Chain(
            "service-endpoints-check",
            (f"ip daddr . meta l4proto . th dport vmap @{NO_ENDPOINT_SERVICES}",),
        ),
        Chain(
            "nodeport-endpoints-check",
            (f"ip daddr @{NODEPORT_IPS} meta l4proto . th dport vmap @{NO_ENDPOINT_NODEPORTS}",),
        ),
        Chain(
            "cluster-ips-check",
            (
                f"ip daddr @{CLUSTER_IPS} reject "
                'comment "Reject traffic to invalid ports of ClusterIPs"',
            ),
        ),
        Chain("firewall-check", (f"ip daddr . meta l4proto . th dport vmap @{FIREWALL_IPS}",)),
        Chain(
            REJECT_CHAIN,
            ("reject",),
            comment="helper for @no-endpoint-services / @no-endpoint-nodeports",
        ),
        Chain(MARK_MASQ, (f"mark set mark or {MASQ_MARK}",)),
        Chain(
            "masquerading",
            (
                f"mark and {MASQ_MARK} == 0 return",
                # Clear the bit, so a packet that goes through the stack again is not
                # masqueraded twice.
                f"mark set mark xor {MASQ_MARK}",
                "masquerade fully-random",
            ),
        ),
    ]


def compile_node(
    node: str,
    node_ip: str,
    cluster_cidr: IPv4Network,
    services: Sequence[Service],
    slices: Mapping[str, EndpointSlice],
) -> str:
    """The `nft -f` input that makes `node` (whose address is `node_ip`) proxy `services`.

    `slices` are the cluster's EndpointSlices (any keys). Loading it replaces the node's
    `ip kube-proxy` table in one transaction, whether or not it existed.
    """
    out = _Node()
    for plan in port_plans(node, services, slices):
        _port(plan, cluster_cidr, out)
    sets = [
        NftSet(CLUSTER_IPS, "ipv4_addr", tuple(out.cluster_ips), comment="Active ClusterIPs"),
        NftSet(NODEPORT_IPS, "ipv4_addr", (node_ip,), comment="IPs that accept NodePort traffic"),
        *out.affinity,
    ]
    maps = [
        # Kept empty: it serves LoadBalancer source ranges, and the lab has no LoadBalancers.
        NftSet(
            FIREWALL_IPS,
            _ADDR_PORT,
            comment="destinations that are subject to LoadBalancerSourceRanges",
        ),
        NftSet(
            NO_ENDPOINT_NODEPORTS,
            _PROTO_PORT,
            tuple(out.maps[NO_ENDPOINT_NODEPORTS].values()),
            comment="vmap to drop or reject packets to service nodeports with no endpoints",
        ),
        NftSet(
            NO_ENDPOINT_SERVICES,
            _ADDR_PORT,
            tuple(out.maps[NO_ENDPOINT_SERVICES].values()),
            comment="vmap to drop or reject packets to services with no endpoints",
        ),
        NftSet(
            SERVICE_IPS,
            _ADDR_PORT,
            tuple(out.maps[SERVICE_IPS].values()),
            comment="ClusterIP, ExternalIP and LoadBalancer IP traffic",
        ),
        NftSet(
            SERVICE_NODEPORTS,
            _PROTO_PORT,
            tuple(out.maps[SERVICE_NODEPORTS].values()),
            comment="NodePort traffic",
        ),
    ]
    return render(
        TEMPLATE,
        node=node,
        node_ip=node_ip,
        cluster_cidr=cluster_cidr,
        table=TABLE,
        sets=sets,
        maps=maps,
        chains=[*_base_chains(), *out.chains],
    )


def count_rules(text: str) -> int:
    """Rules in the chains of an `nft -f` input written by `compile_node`."""
    count = 0
    in_chain = False
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("chain ") and line.endswith("{"):
            in_chain = True
        elif line == "}":
            in_chain = False
        elif in_chain and line and not line.startswith(("type ", "comment ")):
            count += 1
    return count
