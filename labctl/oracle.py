"""The wire oracle: what each mode must put on the underlay, written once as data from
shared/cni-dataplane-reference.md, independently of the planner.

verify takes its wire and MTU expectations from here, not from the plan that configured the
devices, so a wrong planner constant (a port, a VNI, an overhead, which pairs go bare) fails
a check instead of being compared with itself. This module imports only the user's topology
model, never ``labctl.modes``, ``labctl.plan`` or ``labctl.wire``; a unit test keeps it that
way and another cross-checks the planner against this table for every mode.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from labctl.topology import Topology

# Bytes each header adds in front of a pod's IPv4 packet (reference sections 2, 4, 6, 7, 11):
# VXLAN = outer IPv4 + UDP + VXLAN + the inner Ethernet frame header = 50; flannel udp = outer
# IPv4 + UDP = 28; IPIP = outer IPv4 = 20.
IPV4_HEADER = 20
UDP_HEADER = 8
VXLAN_HEADER = 8
INNER_ETHERNET_HEADER = 14

EncapKind = Literal["vxlan", "udp", "ipip", "bare"]


@dataclass(frozen=True)
class Carrier:
    """One way pod packets may cross the underlay (None port/vni: the carrier has none)."""

    encap: EncapKind
    port: int | None = None  # outer UDP destination port
    vni: int | None = None

    @property
    def overhead(self) -> int:
        """Bytes this carrier adds to every pod packet."""
        return {
            "vxlan": IPV4_HEADER + UDP_HEADER + VXLAN_HEADER + INNER_ETHERNET_HEADER,
            "udp": IPV4_HEADER + UDP_HEADER,
            "ipip": IPV4_HEADER,
            "bare": 0,
        }[self.encap]

    def describe(self) -> str:
        """Human wording, for check details."""
        if self.encap == "vxlan":
            return f"VXLAN VNI {self.vni} on UDP {self.port}"
        if self.encap == "udp":
            return f"UDP {self.port} carrying the bare IP packet"
        if self.encap == "ipip":
            return "IPIP (IP protocol 4)"
        return "bare packets"


#: flannel vxlan: VNI default 1, port unset so the Linux kernel default 8472 (section 4).
FLANNEL_VXLAN = Carrier("vxlan", port=8472, vni=1)
#: Calico: vxlan.calico, VXLANVNI 4096, VXLANPort 4789 (section 13).
CALICO_VXLAN = Carrier("vxlan", port=4789, vni=4096)
#: flannel udp: the raw IP packet as the payload of UDP to port 8285 (section 6).
FLANNEL_UDP = Carrier("udp", port=8285)
#: flannel ipip and Calico tunl0: IP protocol 4 (sections 7, 12).
IPIP = Carrier("ipip")
#: host-gw, BGP, and the same-subnet pairs of DirectRouting / CrossSubnet (sections 4, 5, 12-14).
BARE = Carrier("bare")

#: When a pod pair crosses bare: never; only when the peer node is on this node's own subnet
#: (flannel DirectRouting: `ip route get <peer>` shows no gateway; Calico CrossSubnet: the
#: next hop is inside the node's network_v4); always (no encapsulation at all).
Direct = Literal["never", "same-subnet", "always"]


@dataclass(frozen=True)
class ModeWire:
    """The wire of one mode."""

    tunnel: Carrier | None  # the encapsulation, None for a mode that never encapsulates
    direct: Direct
    # host-gw's route is `<peer subnet> via <peer IP> dev eth0` with no fallback (section 5):
    # its bare frames go to the peer node itself even where a router lies between (the route
    # is then rejected and nothing may leave another way). BGP next hops across a router are
    # the router, which is not checked.
    peer_is_next_hop: bool = False
    reference: str = ""

    @property
    def carriers(self) -> tuple[Carrier, ...]:
        """Every carrier the mode may use."""
        out = [] if self.tunnel is None else [self.tunnel]
        return (*out, BARE) if self.direct != "never" else tuple(out)

    @property
    def overhead(self) -> int:
        """Bytes taken from the pod MTU: the enabled encapsulation's, even for pairs that go
        bare (flannel's MTU() and Calico's smallest-of-enabled-encapsulations rule)."""
        return 0 if self.tunnel is None else self.tunnel.overhead


MODES: dict[str, ModeWire] = {
    "flannel-vxlan": ModeWire(FLANNEL_VXLAN, "never", reference="section 4"),
    "flannel-vxlan-directrouting": ModeWire(
        FLANNEL_VXLAN, "same-subnet", reference="section 4, DirectRouting"
    ),
    "flannel-udp": ModeWire(FLANNEL_UDP, "never", reference="section 6"),
    "flannel-ipip": ModeWire(IPIP, "never", reference="section 7"),
    "flannel-host-gw": ModeWire(None, "always", peer_is_next_hop=True, reference="section 5"),
    "calico-bgp": ModeWire(None, "always", reference="section 14"),
    "calico-ipip": ModeWire(IPIP, "never", reference="section 12, ipipMode Always"),
    "calico-ipip-crosssubnet": ModeWire(
        IPIP, "same-subnet", reference="section 12, ipipMode CrossSubnet"
    ),
    "calico-vxlan": ModeWire(CALICO_VXLAN, "never", reference="section 13, vxlanMode Always"),
    "calico-vxlan-crosssubnet": ModeWire(
        CALICO_VXLAN, "same-subnet", reference="section 13, vxlanMode CrossSubnet"
    ),
    # Canal: Calico's CNI and policy with flannel's VXLAN between nodes.
    "canal": ModeWire(FLANNEL_VXLAN, "never", reference="section 4 (canal runs flanneld)"),
}


class NoOracleError(KeyError):
    def __str__(self) -> str:
        return f"the wire oracle has no entry for mode {self.args[0]!r} (known: {', '.join(MODES)})"


def mode_wire(mode: str) -> ModeWire:
    """The oracle's entry for `mode`."""
    try:
        return MODES[mode]
    except KeyError:
        raise NoOracleError(mode) from None


def same_subnet(topo: Topology, node: str, peer: str) -> bool:
    """The peer's underlay address lies in `node`'s own subnet, so no router is in between."""
    me = topo.nodes[node]
    return topo.nodes[peer].ip in topo.segments[me.segment].cidr


@dataclass(frozen=True)
class Path:
    """How pod packets from a pod on `src` to a pod on `dst` must cross the wire.

    Encapsulated packets carry the two nodes' underlay addresses outside (src -> dst, the
    reply dst -> src) and the pod addresses inside; bare packets carry the pod addresses.
    """

    carrier: Carrier
    # Bare only: the node whose underlay MAC must be the Ethernet destination of the frames
    # `src` sends; None when a router is the next hop (not checked).
    next_hop: str | None


def path(mode: str, topo: Topology, src: str, dst: str) -> Path:
    """The oracle's path for the ordered node pair (src, dst), src != dst."""
    wire = mode_wire(mode)
    adjacent = same_subnet(topo, src, dst)
    bare = wire.direct == "always" or (wire.direct == "same-subnet" and adjacent)
    if bare or wire.tunnel is None:
        hop = dst if adjacent or wire.peer_is_next_hop else None
        return Path(BARE, next_hop=hop)
    return Path(wire.tunnel, next_hop=None)


def paths(mode: str, topo: Topology) -> dict[tuple[str, str], Path]:
    """The path of every ordered pair of distinct nodes."""
    return {(a, b): path(mode, topo, a, b) for a in topo.nodes for b in topo.nodes if a != b}


def pod_mtu(mode: str, underlay_mtu: int) -> int:
    """The pod (and tunnel device) MTU on an underlay of `underlay_mtu` bytes."""
    return underlay_mtu - mode_wire(mode).overhead


def node_pod_mtu(mode: str, topo: Topology, node: str) -> int:
    """A node's pod MTU: its agent derives it from the node's own interface (segment MTU)."""
    return pod_mtu(mode, topo.segments[topo.nodes[node].segment].mtu)


def mtu_reason(mode: str, topo: Topology, node: str) -> str:
    """Where the expected pod MTU comes from, for check details."""
    underlay = topo.segments[topo.nodes[node].segment].mtu
    tunnel = mode_wire(mode).tunnel
    if tunnel is None:
        return f"underlay {underlay}, no encapsulation"
    return f"underlay {underlay} - {tunnel.overhead} for {tunnel.describe()}"
