"""Compile Services into kube-proxy's iptables mode for one node: an `iptables-restore` input.

The rules are what kube-proxy's full sync writes (`pkg/proxy/iptables/proxier.go`), so that
`iptables-save` on a lab node reads like a real one:

* nat `KUBE-SERVICES` (from PREROUTING and OUTPUT) sends each ClusterIP:port to the service's
  `KUBE-SVC-<hash>` chain and each externalIP:port to `KUBE-EXT-<hash>`; its last rule sends
  traffic to any local address (`--dst-type LOCAL`) to `KUBE-NODEPORTS`, which sends each
  nodePort to `KUBE-EXT-<hash>`.
* `KUBE-SVC-<hash>` first marks traffic from outside the cluster CIDR for masquerade, then
  picks an endpoint chain `KUBE-SEP-<hash>` with `statistic` rules of probability 1/n, 1/(n-1),
  ..., the last one unconditional (`recent` rules first for ClientIP affinity).
  `KUBE-SVL-<hash>` is the same over this node's endpoints only (Local traffic policies).
* `KUBE-EXT-<hash>` handles external traffic: with externalTrafficPolicy Cluster it marks for
  masquerade and goes to KUBE-SVC; with Local it lets the cluster's pods and the node itself
  use every endpoint, and everyone else only this node's (KUBE-SVL), keeping their source.
* `KUBE-SEP-<hash>` marks hairpin traffic (the endpoint reaching itself through the service)
  for masquerade, then DNATs to the endpoint.
* `KUBE-MARK-MASQ` sets mark 0x4000; `KUBE-POSTROUTING` (from POSTROUTING) masquerades marked
  packets and clears the bit. Flannel's FLANNEL-POSTRTG returns early for this mark.
* filter `KUBE-SERVICES` / `KUBE-EXTERNAL-SERVICES` REJECT Services without endpoints (DROP
  when only Local endpoints are missing); `KUBE-FORWARD` accepts marked and established traffic.

Chain names hash as upstream does: `KUBE-SVC-` + the first 16 characters of
base32(sha256(service port name + protocol)), `KUBE-SEP-` likewise with `ip:port` appended.
Rules are written in the form `iptables-save` prints them (e.g. `--set-xmark 0x4000/0x4000`
for `--or-mark 0x4000`, probabilities with 11 decimals), so every line of the input reads back
unchanged.

`iptables-restore --noflush` flushes only the chains the input declares: the KUBE-* chains are
rewritten and every other chain (FLANNEL-*, other tables) is left alone. The hooks from the
built-in chains are not part of a full sync upstream (kube-proxy checks and inserts them one by
one); here they are `-I` lines added only when `saved` (the node's `iptables-save`) lacks them,
and chains of Services that are gone are deleted, so one restore does the whole sync.

Pure: no processes; output is sorted so tests can pin it.
"""

from __future__ import annotations

import base64
import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Network

from labctl.render import render
from labctl.services.endpoints import EndpointSlice, PortPlan, ProxyEndpoint, port_plans
from labctl.services.model import Service

TEMPLATE = "kube-proxy.iptables.j2"
MASQ_MARK = "0x4000"  # kube-proxy's masqueradeBit 14

KUBE_SERVICES = "KUBE-SERVICES"
KUBE_EXTERNAL_SERVICES = "KUBE-EXTERNAL-SERVICES"
KUBE_NODEPORTS = "KUBE-NODEPORTS"
KUBE_POSTROUTING = "KUBE-POSTROUTING"
KUBE_MARK_MASQ = "KUBE-MARK-MASQ"
KUBE_FORWARD = "KUBE-FORWARD"
KUBE_PROXY_FIREWALL = "KUBE-PROXY-FIREWALL"

FILTER_CHAINS = (
    KUBE_SERVICES,
    KUBE_EXTERNAL_SERVICES,
    KUBE_FORWARD,
    KUBE_NODEPORTS,
    KUBE_PROXY_FIREWALL,
)
NAT_CHAINS = (KUBE_SERVICES, KUBE_NODEPORTS, KUBE_POSTROUTING, KUBE_MARK_MASQ)
# Per-service chains (the only ones a sync deletes when their Service is gone).
SERVICE_CHAIN_PREFIXES = ("KUBE-SVC-", "KUBE-SVL-", "KUBE-EXT-", "KUBE-FW-", "KUBE-SEP-")

REJECT = "REJECT --reject-with icmp-port-unreachable"
_NEW = "-m conntrack --ctstate NEW"
# What iptables-save prints for a recent match with the defaults kube-proxy relies on.
_RECENT_TAIL = "--mask 255.255.255.255 --rsource"
# iptables-save quotes a comment unless it is only these characters (xtables_save_string).
_BARE = frozenset("_-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


@dataclass(frozen=True)
class Hook:
    """A jump from a built-in chain into kube-proxy's chains."""

    table: str
    chain: str
    rule: str  # the rule after `-A <chain> `, as iptables-save prints it

    @property
    def line(self) -> str:
        """The rule as iptables-save lists it."""
        return f"-A {self.chain} {self.rule}"

    @property
    def insert(self) -> str:
        """The restore line that puts it first in its chain."""
        return f"-I {self.chain} 1 {self.rule}"


def _comment(text: str) -> str:
    quoted = text if text and set(text) <= _BARE else '"' + text.replace('"', '\\"') + '"'
    return f"-m comment --comment {quoted}"


# kube-proxy's iptablesJumpChains, in its order. It prepends each one, so on a node they end up
# in reverse order at the top of each built-in chain; inserting the missing ones in this order
# at position 1 gives the same result.
HOOKS = (
    Hook(
        "filter",
        "INPUT",
        f"{_NEW} {_comment('kubernetes externally-visible service portals')} "
        f"-j {KUBE_EXTERNAL_SERVICES}",
    ),
    Hook(
        "filter",
        "FORWARD",
        f"{_NEW} {_comment('kubernetes externally-visible service portals')} "
        f"-j {KUBE_EXTERNAL_SERVICES}",
    ),
    Hook(
        "filter",
        "INPUT",
        f"{_comment('kubernetes health check service ports')} -j {KUBE_NODEPORTS}",
    ),
    Hook(
        "filter", "FORWARD", f"{_NEW} {_comment('kubernetes service portals')} -j {KUBE_SERVICES}"
    ),
    Hook("filter", "OUTPUT", f"{_NEW} {_comment('kubernetes service portals')} -j {KUBE_SERVICES}"),
    Hook("filter", "FORWARD", f"{_comment('kubernetes forwarding rules')} -j {KUBE_FORWARD}"),
    *(
        Hook(
            "filter",
            chain,
            f"{_NEW} {_comment('kubernetes load balancer firewall')} -j {KUBE_PROXY_FIREWALL}",
        )
        for chain in ("INPUT", "OUTPUT", "FORWARD")
    ),
    Hook("nat", "OUTPUT", f"{_comment('kubernetes service portals')} -j {KUBE_SERVICES}"),
    Hook("nat", "PREROUTING", f"{_comment('kubernetes service portals')} -j {KUBE_SERVICES}"),
    Hook("nat", "POSTROUTING", f"{_comment('kubernetes postrouting rules')} -j {KUBE_POSTROUTING}"),
)


def port_proto_hash(port_name: str, protocol: str) -> str:
    """Upstream portProtoHash: base32(sha256(name + protocol)), first 16 characters."""
    digest = hashlib.sha256((port_name + protocol).encode()).digest()
    return base64.b32encode(digest).decode()[:16]


def service_chain(port_name: str, protocol: str) -> str:
    """`KUBE-SVC-<hash>`: endpoints for Cluster traffic policy."""
    return "KUBE-SVC-" + port_proto_hash(port_name, protocol)


def local_chain(port_name: str, protocol: str) -> str:
    """`KUBE-SVL-<hash>`: this node's endpoints, for Local traffic policy."""
    return "KUBE-SVL-" + port_proto_hash(port_name, protocol)


def external_chain(port_name: str, protocol: str) -> str:
    """`KUBE-EXT-<hash>`: NodePort and externalIP traffic."""
    return "KUBE-EXT-" + port_proto_hash(port_name, protocol)


def endpoint_chain(port_name: str, protocol: str, endpoint: str) -> str:
    """`KUBE-SEP-<hash>` of one endpoint (`ip:port`) of a service port."""
    digest = hashlib.sha256((port_name + protocol + endpoint).encode()).digest()
    return "KUBE-SEP-" + base64.b32encode(digest).decode()[:16]


def probability(n: int) -> str:
    """The `--probability` of picking the first of `n` remaining endpoints, as iptables-save
    prints it: kube-proxy writes 1/n with 10 decimals, xt_statistic stores round(2^31 * p) and
    prints it back with 11 (1/3 -> 0.33333333349, 1/2 -> 0.50000000000)."""
    written = float(f"{1.0 / n:0.10f}")
    stored = math.floor(written * 0x80000000 + 0.5)  # C lround of a positive number
    return f"{stored / 0x80000000:.11f}"


def _rule(
    chain: str,
    *,
    target: str,
    src: str = "",
    dst: str = "",
    proto: str = "",
    comment: str = "",
    matches: str = "",
) -> str:
    """One `-A` line, its parts in iptables-save's order."""
    parts = ["-A", chain, src, dst, f"-p {proto}" if proto else ""]
    parts += [_comment(comment) if comment else "", matches, f"-j {target}"]
    return " ".join(p for p in parts if p)


@dataclass
class Block:
    """Rules of one table that belong together, under a `# title` line."""

    title: str
    rules: list[str] = field(default_factory=list)


@dataclass
class Table:
    """One table's part of the restore input."""

    chains: list[str]
    blocks: list[Block] = field(default_factory=list)
    hooks: list[str] = field(default_factory=list)  # `-I` lines for missing jumps
    stale: list[str] = field(default_factory=list)  # chains to delete


def _lb_rules(plan: PortPlan, chain: str, endpoints: Sequence[ProxyEndpoint]) -> list[str]:
    """Affinity rules (ClientIP), then the random choice among `endpoints`."""
    rules = []
    name, proto = plan.name, plan.protocol
    if plan.affinity:
        seconds = plan.service.spec.affinity_seconds
        for ep in endpoints:
            sep = endpoint_chain(name, proto, ep.text)
            rules.append(
                _rule(
                    chain,
                    comment=f"{name} -> {ep.text}",
                    matches=f"-m recent --rcheck --seconds {seconds} --reap --name {sep} "
                    + _RECENT_TAIL,
                    target=sep,
                )
            )
    n = len(endpoints)
    for i, ep in enumerate(endpoints):
        chance = f"-m statistic --mode random --probability {probability(n - i)}"
        rules.append(
            _rule(
                chain,
                comment=f"{name} -> {ep.text}",
                matches=chance if i < n - 1 else "",
                target=endpoint_chain(name, proto, ep.text),
            )
        )
    return rules


def _port_rules(plan: PortPlan, cidr: IPv4Network, filter_: Table, nat: Table) -> None:
    """Everything one service port adds to the two tables (upstream syncProxyRules' loop)."""
    name, proto = plan.name, plan.protocol
    port = plan.port
    dport = f"-m {proto} --dport {port.port}"
    svc_chain = service_chain(name, proto)
    svl_chain = local_chain(name, proto)
    ext_chain = external_chain(name, proto)
    internal = svl_chain if plan.internal_local else svc_chain
    external = svl_chain if plan.external_local else svc_chain
    cluster_ip = f"-d {plan.cluster_ip}/32"

    if not plan.has_endpoints:
        internal_verdict = external_verdict = (REJECT, f"{name} has no endpoints")
    else:
        internal_verdict = external_verdict = ("DROP", f"{name} has no local endpoints")

    title = f"{name} ({proto}) cluster IP {plan.cluster_ip}:{port.port}"
    if port.nodePort is not None:
        title += f", nodePort {port.nodePort}"
    f = Block(title)
    n = Block(title)

    if plan.has_internal:
        n.rules.append(
            _rule(
                KUBE_SERVICES,
                dst=cluster_ip,
                proto=proto,
                comment=f"{name} cluster IP",
                matches=dport,
                target=internal,
            )
        )
    else:
        f.rules.append(
            _rule(
                KUBE_SERVICES,
                dst=cluster_ip,
                proto=proto,
                comment=internal_verdict[1],
                matches=dport,
                target=internal_verdict[0],
            )
        )
    for ip in plan.external_ips:
        if plan.has_endpoints:
            n.rules.append(
                _rule(
                    KUBE_SERVICES,
                    dst=f"-d {ip}/32",
                    proto=proto,
                    comment=f"{name} external IP",
                    matches=dport,
                    target=ext_chain,
                )
            )
        if not plan.has_external:
            f.rules.append(
                _rule(
                    KUBE_EXTERNAL_SERVICES,
                    dst=f"-d {ip}/32",
                    proto=proto,
                    comment=external_verdict[1],
                    matches=dport,
                    target=external_verdict[0],
                )
            )
    if port.nodePort is not None:
        node_dport = f"-m {proto} --dport {port.nodePort}"
        if plan.has_endpoints:
            n.rules.append(
                _rule(
                    KUBE_NODEPORTS, proto=proto, comment=name, matches=node_dport, target=ext_chain
                )
            )
        if not plan.has_external:
            f.rules.append(
                _rule(
                    KUBE_EXTERNAL_SERVICES,
                    proto=proto,
                    comment=external_verdict[1],
                    matches=f"-m addrtype --dst-type LOCAL {node_dport}",
                    target=external_verdict[0],
                )
            )

    if plan.has_internal:
        # Off-cluster clients may reach a ClusterIP through a route to any node; the reply
        # must come back through that node, so masquerade them.
        n.rules.append(
            _rule(
                internal,
                src=f"! -s {cidr}",
                dst=cluster_ip,
                proto=proto,
                comment=f"{name} cluster IP",
                matches=dport,
                target=KUBE_MARK_MASQ,
            )
        )

    if plan.uses_external_chain:
        nat.chains.append(ext_chain)
        if not plan.external_local:
            # The endpoint may be on another node: masquerade so replies return through here.
            n.rules.append(
                _rule(
                    ext_chain,
                    comment=f"masquerade traffic for {name} external destinations",
                    target=KUBE_MARK_MASQ,
                )
            )
        else:
            # The cluster's own pods go to any endpoint, as if through an outside balancer.
            n.rules.append(
                _rule(
                    ext_chain,
                    src=f"-s {cidr}",
                    comment=f"pod traffic for {name} external destinations",
                    target=svc_chain,
                )
            )
            # The node's own address is the source of local traffic: masquerade it.
            n.rules.append(
                _rule(
                    ext_chain,
                    comment=f"masquerade LOCAL traffic for {name} external destinations",
                    matches="-m addrtype --src-type LOCAL",
                    target=KUBE_MARK_MASQ,
                )
            )
            n.rules.append(
                _rule(
                    ext_chain,
                    comment=f"route LOCAL traffic for {name} external destinations",
                    matches="-m addrtype --src-type LOCAL",
                    target=svc_chain,
                )
            )
        if plan.has_external:
            n.rules.append(_rule(ext_chain, target=external))

    if plan.uses_cluster_chain:
        nat.chains.append(svc_chain)
        n.rules += _lb_rules(plan, svc_chain, plan.cluster)
    if plan.uses_local_chain:
        nat.chains.append(svl_chain)
        n.rules += _lb_rules(plan, svl_chain, plan.local)

    for ep in plan.reachable:
        sep = endpoint_chain(name, proto, ep.text)
        nat.chains.append(sep)
        n.rules.append(_rule(sep, src=f"-s {ep.ip}/32", comment=name, target=KUBE_MARK_MASQ))
        remember = f"-m recent --set --name {sep} {_RECENT_TAIL} " if plan.affinity else ""
        n.rules.append(
            _rule(
                sep,
                proto=proto,
                comment=name,
                matches=f"{remember}-m {proto}",
                target=f"DNAT --to-destination {ep.text}",
            )
        )

    for table, block in ((filter_, f), (nat, n)):
        if block.rules:
            table.blocks.append(block)


def _saved_tables(saved: str) -> dict[str, tuple[set[str], set[str]]]:
    """iptables-save output as table -> (chain names, `-A` lines)."""
    tables: dict[str, tuple[set[str], set[str]]] = {}
    current: tuple[set[str], set[str]] | None = None
    for line in saved.splitlines():
        if line.startswith("*"):
            current = tables.setdefault(line[1:].strip(), (set(), set()))
        elif current is not None and line.startswith(":"):
            current[0].add(line[1:].split()[0])
        elif current is not None and line.startswith("-A "):
            current[1].add(line.strip())
    return tables


def compile_node(
    node: str,
    node_ip: str,
    cluster_cidr: IPv4Network,
    services: Sequence[Service],
    slices: Mapping[str, EndpointSlice],
    saved: str = "",
) -> str:
    """The `iptables-restore --noflush` input that makes `node` proxy `services`.

    `slices` are the cluster's EndpointSlices (any keys). `saved` is the node's current
    `iptables-save` output: hooks already present are not inserted again and KUBE-SVC/SEP/...
    chains no longer wanted are deleted; leave it empty for a node without kube-proxy rules.
    NodePorts answer on every local address of the node but 127.0.0.0/8 (kube-proxy with
    `--iptables-localhost-nodeports=false`: the lab sets no `route_localnet`).
    """
    filter_ = Table(list(FILTER_CHAINS))
    nat = Table(list(NAT_CHAINS))
    nat.blocks.append(
        Block(
            "masquerade what is marked 0x4000, once",
            [
                _rule(
                    KUBE_POSTROUTING,
                    matches=f"-m mark ! --mark {MASQ_MARK}/{MASQ_MARK}",
                    target="RETURN",
                ),
                # Clear the bit, so a packet that goes through the stack again is not
                # masqueraded twice.
                _rule(KUBE_POSTROUTING, target=f"MARK --set-xmark {MASQ_MARK}/0x0"),
                _rule(
                    KUBE_POSTROUTING,
                    comment="kubernetes service traffic requiring SNAT",
                    target="MASQUERADE --random-fully",
                ),
                _rule(KUBE_MARK_MASQ, target=f"MARK --set-xmark {MASQ_MARK}/{MASQ_MARK}"),
            ],
        )
    )
    for plan in port_plans(node, services, slices):
        _port_rules(plan, cluster_cidr, filter_, nat)
    nat.blocks.append(
        Block(
            "then every other packet to this node's own addresses: NodePorts",
            [
                _rule(
                    KUBE_SERVICES,
                    dst="! -d 127.0.0.0/8",
                    comment="kubernetes service nodeports; NOTE: this must be the last rule "
                    "in this chain",
                    matches="-m addrtype --dst-type LOCAL",
                    target=KUBE_NODEPORTS,
                )
            ],
        )
    )
    filter_.blocks.append(
        Block(
            "forwarding: drop what conntrack cannot place, accept what kube-proxy marked",
            [
                _rule(KUBE_FORWARD, matches="-m conntrack --ctstate INVALID", target="DROP"),
                _rule(
                    KUBE_FORWARD,
                    comment="kubernetes forwarding rules",
                    matches=f"-m mark --mark {MASQ_MARK}/{MASQ_MARK}",
                    target="ACCEPT",
                ),
                _rule(
                    KUBE_FORWARD,
                    comment="kubernetes forwarding conntrack rule",
                    matches="-m conntrack --ctstate RELATED,ESTABLISHED",
                    target="ACCEPT",
                ),
            ],
        )
    )

    existing = _saved_tables(saved)
    for name, table in (("filter", filter_), ("nat", nat)):
        present = existing.get(name, (set(), set()))
        table.hooks = [h.insert for h in HOOKS if h.table == name and h.line not in present[1]]
    nat.stale = sorted(
        c
        for c in existing.get("nat", (set(), set()))[0]
        if c.startswith(SERVICE_CHAIN_PREFIXES) and c not in nat.chains
    )
    return render(
        TEMPLATE,
        node=node,
        node_ip=node_ip,
        cluster_cidr=cluster_cidr,
        tables=[("filter", filter_), ("nat", nat)],
    )


def count_rules(text: str) -> int:
    """Rules a restore input adds (`-A` and `-I` lines)."""
    return sum(1 for line in text.splitlines() if line.startswith(("-A ", "-I ")))
