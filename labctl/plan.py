"""The planner: topology + mode in, the desired kernel state of every namespace out.

Pure functions and plain data: no root, no kernel, no randomness (MACs are derived from
names), so every route, neighbour and FDB entry a mode would program is unit-testable.
The engine applies a Plan; verify reads the Plan's expectations.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import Any, Literal, Protocol

from labctl.bgp import BgpSpeaker
from labctl.topology import Topology
from labctl.wire import Flow, PodLike, WireSpec, flow_between

# external: a host outside the cluster (topology `externals:`), one underlay port.
Role = Literal["node", "pod", "router", "external"]

UNDERLAY_IF = "eth0"
#: The classes of node pairs a backend may carry differently (Plan.paths keys).
SAME_SUBNET, CROSS_SUBNET = "same-subnet", "cross-subnet"
#: `next_hop_mac` placeholder in Plan.paths: the destination node's underlay MAC.
PEER_MAC = "peer"


def stable_mac(*parts: str) -> str:
    """A locally administered unicast MAC derived from names, so plans are reproducible."""
    digest = hashlib.sha1("/".join(parts).encode()).digest()
    return "0e:" + ":".join(f"{b:02x}" for b in digest[:5])


@dataclass
class Link:
    """A device the engine creates (Mininet already made the underlay veths)."""

    name: str
    kind: Literal["bridge", "vxlan", "veth", "tun", "ipip"]  # tun: a persistent TUN device
    mtu: int | None = None
    mac: str | None = None
    master: str | None = None
    # veth: the peer end, created straight in the peer namespace.
    peer_ns: str | None = None
    peer_name: str | None = None
    peer_mac: str | None = None
    peer_mtu: int | None = None
    # vxlan
    vni: int | None = None
    port: int | None = None
    local: str | None = None
    underlay: str | None = None
    learning: bool = False
    # bridge: hairpin on enslaved ports is set per port
    hairpin: bool = False


@dataclass
class Address:
    dev: str
    cidr: str  # "10.244.1.1/24"


@dataclass
class Route:
    dst: str  # "10.244.2.0/24" or "default"
    via: str | None = None
    dev: str | None = None
    onlink: bool = False
    scope: Literal["link", "global"] | None = None
    type: Literal["unicast", "blackhole"] = "unicast"
    proto: int | None = None  # None: boot (3), as `ip route add` and flanneld leave it
    # flanneld logs a rejected route and carries on (host-gw off-link peers): so do we.
    best_effort: bool = False
    why: str = ""
    # Programmed by the node's CNI agent from its peers' leases (controlplane/), not at `up`.
    agent: bool = False

    def describe(self) -> str:
        """`ip route` style text, for messages."""
        parts = [self.dst] if self.type == "unicast" else ["blackhole", self.dst]
        parts += ["via", self.via] if self.via else []
        parts += ["dev", self.dev] if self.dev else []
        parts += ["onlink"] if self.onlink else []
        parts += ["proto", str(self.proto)] if self.proto is not None else []
        return " ".join(parts)


@dataclass
class Neigh:
    dev: str
    ip: str
    mac: str
    agent: bool = False  # as Route.agent


@dataclass
class Fdb:
    dev: str
    mac: str
    dst: str
    agent: bool = False  # as Route.agent


@dataclass
class Daemon:
    """A long-running process the supervisor starts in the namespace and restarts if it dies."""

    kind: str  # key into labctl.daemons registry
    config: dict[str, Any]


@dataclass
class NamespacePlan:
    """Everything one namespace (node, pod, router or external host) should hold."""

    name: str
    role: Role
    node: str | None = None  # for pods: the node they run on
    links: list[Link] = field(default_factory=list)
    addresses: list[Address] = field(default_factory=list)
    routes: list[Route] = field(default_factory=list)
    neighbours: list[Neigh] = field(default_factory=list)
    fdb: list[Fdb] = field(default_factory=list)
    sysctls: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    daemons: list[Daemon] = field(default_factory=list)
    private_dirs: list[str] = field(default_factory=list)
    # Offloads to turn off per device, so a capture on a veth shows what a real wire would.
    offloads_off: dict[str, list[str]] = field(default_factory=dict)
    # The node's or router's BGP speaker (FRR), started once the underlay passes traffic.
    bgp: BgpSpeaker | None = None
    # iptables-restore input (tables with COMMIT), loaded with --noflush after the routes, as
    # the CNI agent would install it (flanneld's masquerade and forward chains); "" for none.
    netfilter: str = ""


@dataclass
class Attachment:
    """An underlay port: namespace `ns` interface `ifname` plugged into segment `segment`."""

    ns: str
    ifname: str
    segment: str
    mac: str
    mtu: int = 1500


@dataclass
class Plan:
    """Desired state of a whole lab for one mode."""

    mode: str
    topology: str
    datapath: str  # "kernel", or "userspace" where a kernel feature is missing
    namespaces: dict[str, NamespacePlan]
    attachments: list[Attachment]
    wire: list[WireSpec]
    pod_mtu: int  # the smallest of node_pod_mtu
    # Per node: its underlay (segment) MTU minus the mode's encapsulation, as each node's
    # agent computes it from its own interface.
    node_pod_mtu: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # How pod packets between two nodes cross the wire (Flow's encap, port, vni,
    # next_hop_mac), per class of node pair (SAME_SUBNET, CROSS_SUBNET): it depends only on
    # whether the pair shares a segment, so the plan stays linear in nodes. `path(src, dst)`
    # resolves one pair; pods added later get flows from it too (flows_for).
    paths: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (for `status -o json` and debugging)."""
        return asdict(self)

    def path(self, src: str, dst: str) -> dict[str, Any]:
        """How pod packets from node `src` to node `dst` cross the wire."""
        segment = {a.ns: a.segment for a in self.attachments if a.ifname == UNDERLAY_IF}
        same = segment[src] == segment[dst]
        out = dict(self.paths[SAME_SUBNET if same else CROSS_SUBNET])
        if out.get("next_hop_mac") == PEER_MAC:
            out["next_hop_mac"] = underlay_mac(dst, UNDERLAY_IF)
        return out

    def node_ns(self) -> list[NamespacePlan]:
        """The plans of the node namespaces, in topology order."""
        return [n for n in self.namespaces.values() if n.role == "node"]


def agent_owned(part: NamespacePlan) -> NamespacePlan:
    """Mark `part`'s neighbours, FDB entries and routes as a node agent's: the planner
    records them, the agent programs them, the engine skips them."""
    objects: list[Neigh | Fdb | Route] = [*part.neighbours, *part.fdb, *part.routes]
    for obj in objects:
        obj.agent = True
    return part


def pod_ns_name(ns: str, pod: str) -> str:
    """Namespace key of a pod inside the lab (`ns/pod` is the user-facing name)."""
    return f"{ns}/{pod}"


@dataclass
class Peer:
    """A remote node as a node's CNI agent sees it (flannel lease / calico node resource)."""

    name: str
    ip: IPv4Address
    pod_cidr: IPv4Network
    vtep_mac: str
    same_subnet: bool  # directly connected: `ip route get` shows no gateway


def peers_of(topo: Topology, node: str, vtep_dev: str) -> list[Peer]:
    """All other nodes, with what a node's agent would learn about them."""
    me = topo.nodes[node]
    out = []
    for name, other in topo.nodes.items():
        if name == node:
            continue
        out.append(
            Peer(
                name=name,
                ip=other.ip,
                pod_cidr=topo.node_pod_cidrs[name],
                vtep_mac=stable_mac(name, vtep_dev),
                same_subnet=other.segment == me.segment,
            )
        )
    return out


def underlay_mac(ns: str, ifname: str) -> str:
    """MAC of an underlay interface; fixed so host-gw's next-hop MAC can be checked."""
    return stable_mac(ns, ifname)


class ModeShape(Protocol):
    """What the mode-independent planning needs of a mode (labctl.modes.Mode has it); a
    protocol, so the planner does not import the mode catalogue that imports it."""

    @property
    def name(self) -> str: ...

    @property
    def wire_specs(self) -> tuple[WireSpec, ...]: ...

    def pod_mtu(self, underlay_mtu: int = 1500) -> int: ...


def base_plan(topo: Topology, mode: ModeShape, datapath: str = "kernel") -> Plan:
    """The mode-independent part: underlay wiring, node, router and external host
    addressing, gateways, and each node's pod MTU."""
    namespaces: dict[str, NamespacePlan] = {}
    attachments: list[Attachment] = []
    for rname, router in topo.routers.items():
        rp = NamespacePlan(name=rname, role="router", sysctls={"net.ipv4.ip_forward": "1"})
        for i, (seg, ip) in enumerate(router.interfaces.items()):
            ifname = f"eth{i}"
            mac = underlay_mac(rname, ifname)
            attachments.append(Attachment(rname, ifname, seg, mac, topo.segments[seg].mtu))
            rp.addresses.append(Address(ifname, f"{ip}/{topo.segments[seg].cidr.prefixlen}"))
        for route in router.routes:
            rp.routes.append(Route(dst=str(route.to), via=str(route.via)))
        namespaces[rname] = rp
    for nname, node in topo.nodes.items():
        segment = topo.segments[node.segment]
        np_ = NamespacePlan(name=nname, role="node", sysctls={"net.ipv4.ip_forward": "1"})
        mac = underlay_mac(nname, UNDERLAY_IF)
        attachments.append(Attachment(nname, UNDERLAY_IF, node.segment, mac, segment.mtu))
        np_.addresses.append(Address(UNDERLAY_IF, f"{node.ip}/{segment.cidr.prefixlen}"))
        gw = topo.node_gateway(nname)
        if gw is not None:
            np_.routes.append(Route(dst="default", via=str(gw), dev=UNDERLAY_IF))
        namespaces[nname] = np_
    for ename, ext in topo.externals.items():
        segment = topo.segments[ext.segment]
        ep = NamespacePlan(name=ename, role="external")
        mac = underlay_mac(ename, UNDERLAY_IF)
        attachments.append(Attachment(ename, UNDERLAY_IF, ext.segment, mac, segment.mtu))
        ep.addresses.append(Address(UNDERLAY_IF, f"{ext.ip}/{segment.cidr.prefixlen}"))
        gw = topo.external_gateway(ename)
        if gw is not None:
            ep.routes.append(Route(dst="default", via=str(gw), dev=UNDERLAY_IF))
        for route in ext.routes:
            ep.routes.append(Route(dst=str(route.to), via=str(route.via), dev=UNDERLAY_IF))
        namespaces[ename] = ep
    for pod in topo.pods:
        key = pod_ns_name(pod.namespace, pod.name)
        namespaces[key] = NamespacePlan(name=key, role="pod", node=pod.node)
    node_mtu = {n: mode.pod_mtu(topo.segments[x.segment].mtu) for n, x in topo.nodes.items()}
    return Plan(
        mode=mode.name,
        topology=topo.name,
        datapath=datapath,
        namespaces=namespaces,
        attachments=attachments,
        wire=list(mode.wire_specs),
        pod_mtu=min(node_mtu.values()),
        node_pod_mtu=node_mtu,
    )


def path_classes(encap_for: Callable[[bool], dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """`Plan.paths` from a backend's `encap_for(same_subnet)`."""
    return {SAME_SUBNET: encap_for(True), CROSS_SUBNET: encap_for(False)}


def flows_for(pods: Sequence[PodLike], plan: Plan, topo: Topology) -> list[Flow]:
    """One Flow per ordered pair of `pods` on different nodes (the pods live now, whenever
    they were created), carried as the plan's node paths say."""
    ip = {name: str(n.ip) for name, n in topo.nodes.items()}
    return [
        flow_between(src, dst, ip[src.node], ip[dst.node], **plan.path(src.node, dst.node))
        for src in pods
        for dst in pods
        if src.node != dst.node
    ]
