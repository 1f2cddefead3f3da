"""Calico: the no-bridge pod model (``cali*`` veths, proxy ARP for 169.254.1.1, a /32 route
per pod, a blackholed IPAM block per node) plus one encapsulation per mode.

What each mode programs follows shared/cni-dataplane-reference.md sections 10-14:

* ``calico-bgp``: no encapsulation; FRR (standing in for BIRD) announces each node's block and
  installs the peers' blocks (``proto bgp``). FRR's staticd also writes the block's blackhole
  (``proto static``, the lab's stand-in for BIRD's ``proto bird``).
* ``calico-ipip`` / ``-crosssubnet``: ``tunl0``; routes written like Felix on Calico master
  (``ProgramClusterRoutes``): ``<block> via <node IP> dev tunl0 onlink proto 80``. BGP still
  runs and announces blocks (so sessions can be inspected), but installs nothing.
* ``calico-vxlan`` / ``-crosssubnet``: ``vxlan.calico`` VNI 4096 port 4789; Felix programs a
  neighbour, an FDB entry and a route per peer VTEP. No BGP on the nodes.

Routers with an ``asn`` run FRR too: eBGP with the nodes on their segments (when the nodes
speak BGP) and with each other where they share a segment, so pod blocks and the underlay
propagate across a fabric.

Node-to-node mesh: on (Calico's default ``nodeToNodeMeshEnabled: true``) unless route
reflectors are configured or every node has a BGP router on its segment. The latter is
Calico's "AS per rack" IP-fabric design, which turns the mesh off and peers each node with
its top-of-rack router only. With the mesh on next to routers, a node learns the other rack's
subnet from its router and re-announces it, via the mesh, to nodes of the other rack, which
announce it to their own router as a second, equally long path through a node: the fabric
then load-balances underlay traffic into nodes that send it straight back (seen in the lab;
BIRD's export filter in Calico has the same gap for pool routes). Where the mesh stays on
across a router without BGP, mesh sessions are multi-hop iBGP over the default route and
their next hops (remote node IPs) resolve recursively through it (FRR ``ip nht
resolve-via-default``, BIRD's ``gateway recursive``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Any, Literal

from labctl import bgp
from labctl.bgp import BgpNeighbor, BgpSpeaker, CalicoNode
from labctl.modes import FELIX, Mode, register
from labctl.modes.podnet import CALI
from labctl.modes.tunnels import add_ipip, add_vxlan, bpf_note
from labctl.plan import (
    PEER_MAC,
    UNDERLAY_IF,
    Address,
    Daemon,
    Fdb,
    NamespacePlan,
    Neigh,
    Plan,
    Route,
    agent_owned,
    base_plan,
    path_classes,
    stable_mac,
)
from labctl.render import render
from labctl.topology import Topology, TopologyError
from labctl.wire import WireSpec

#: IPAM block size (``blockSize`` default for IPv4).
BLOCK_PREFIX = 26
#: Felix's ``DefaultRouteProto``: the protocol of the routes Felix writes.
FELIX_PROTO = 80
IPIP_DEV = "tunl0"
VXLAN_DEV = "vxlan.calico"
VXLAN_VNI = 4096
VXLAN_PORT = 4789
#: Route reflector cluster id, IPv4-formatted as Node.spec.bgp.routeReflectorClusterID; the
#: value Calico's own route-reflector docs use.
RR_CLUSTER_ID = "244.0.0.1"
#: The daemon kind of the per-node agent (calico-node: its start-up, then Felix).
AGENT = "calico-node"

USERSPACE_NOTE = (
    "userspace IPIP datapath: tunl0 is a TUN device plus a raw IP-protocol-4 socket per node "
    "(labctl.datapath.ipip), putting the same bytes on the wire as the kernel's tunl0"
)
NO_RIB_NOTE = (
    "{mode}: FRR BGP sessions run and announce each node's block (as BIRD does), but install "
    "nothing (bgp no-rib); the remote-block routes are the lab's own, written like Felix "
    "(proto 80, Calico >= 3.34 ProgramClusterRoutes)"
)
STATIC_ROUTERS_NOTE = (
    "calico-bgp: routers {routers} have no asn, so they learn no pod routes and drop bare pod "
    "traffic between segments (give them an asn, or use calico-ipip/calico-vxlan)"
)


def ipam_block(topo: Topology, node: str) -> IPv4Network:
    """The node's IPAM block: the /26 of its pod CIDR that holds its pods (the first one).

    Pod IPs come from ``topo.pod_ips`` (.2, .3, ... of the pod CIDR) and .1 is the node's
    tunnel address, so a block holds at most 62 pods; more is a topology error.
    """
    cidr = topo.node_pod_cidrs[node]
    block = cidr if cidr.prefixlen >= BLOCK_PREFIX else next(cidr.subnets(new_prefix=BLOCK_PREFIX))
    pods = topo.pods_on(node)
    if any(topo.pod_ips[p.key] not in block for p in pods):
        raise TopologyError(
            f"nodes.{node}: {len(pods)} pods do not fit in its Calico IPAM block {block} "
            f"(.2 to .{block.num_addresses - 1}, .1 is the tunnel address: at most "
            f"{block.num_addresses - 2} pods per node); move pods to other nodes"
        )
    return block


def tunnel_ip(block: IPv4Network) -> IPv4Address:
    """The node's IPIP/VXLAN tunnel address, allocated first from its own block."""
    return block.network_address + 1


def vtep_mac(node: str) -> str:
    """The node's VXLAN tunnel MAC (Felix derives one per node; here from the name)."""
    return stable_mac(node, VXLAN_DEV)


@dataclass(frozen=True)
class CalicoPeer:
    """Another node as Felix and BIRD see it (its Node resource and IPAM block)."""

    name: str
    ip: IPv4Address
    block: IPv4Network
    tunnel_ip: IPv4Address
    vtep_mac: str
    same_subnet: bool


def calico_peers(topo: Topology, node: str, blocks: dict[str, IPv4Network]) -> list[CalicoPeer]:
    """Every other node, with what a node's agents know about it."""
    me = topo.nodes[node]
    return [
        CalicoPeer(
            name=name,
            ip=other.ip,
            block=blocks[name],
            tunnel_ip=tunnel_ip(blocks[name]),
            vtep_mac=vtep_mac(name),
            same_subnet=other.segment == me.segment,
        )
        for name, other in topo.nodes.items()
        if name != node
    ]


# ---- per-mode pieces: tunnel device, per-peer routes, how a pair crosses the wire ----

DeviceFn = Callable[[NamespacePlan, Topology, str, IPv4Network, int, str, list[CalicoPeer]], None]


def _ipip_device(
    ns: NamespacePlan,
    topo: Topology,
    node: str,
    block: IPv4Network,
    mtu: int,
    datapath: str,
    peers: list[CalicoPeer],
) -> None:
    # Every peer, also same-subnet ones: the datapath drops IPIP from unknown nodes.
    routes = [(p.block, p.ip) for p in peers]
    add_ipip(ns, IPIP_DEV, topo.nodes[node].ip, mtu, datapath, routes)
    ns.addresses.append(Address(IPIP_DEV, f"{tunnel_ip(block)}/32"))


def _vxlan_device(
    ns: NamespacePlan,
    topo: Topology,
    node: str,
    block: IPv4Network,
    mtu: int,
    datapath: str,
    peers: list[CalicoPeer],
) -> None:
    add_vxlan(ns, VXLAN_DEV, VXLAN_VNI, VXLAN_PORT, topo.nodes[node].ip, mtu, vtep_mac(node))
    ns.addresses.append(Address(VXLAN_DEV, f"{tunnel_ip(block)}/32"))


def _vxlan_vtep(ns: NamespacePlan, peer: CalicoPeer) -> None:
    # Felix's VXLAN manager programs every remote VTEP, whatever the route to its block.
    ns.neighbours.append(Neigh(VXLAN_DEV, str(peer.tunnel_ip), peer.vtep_mac))
    ns.fdb.append(Fdb(VXLAN_DEV, peer.vtep_mac, str(peer.ip)))


def _ipip_route(ns: NamespacePlan, peer: CalicoPeer) -> None:
    # tunl0's remote is "any": the kernel takes the route's gateway as the outer destination.
    ns.routes.append(
        Route(dst=str(peer.block), via=str(peer.ip), dev=IPIP_DEV, onlink=True, proto=FELIX_PROTO)
    )


def _direct_route(ns: NamespacePlan, peer: CalicoPeer) -> None:
    # Felix's no-encap route for a same-subnet peer: onlink too, and proto 80.
    ns.routes.append(
        Route(
            dst=str(peer.block), via=str(peer.ip), dev=UNDERLAY_IF, onlink=True, proto=FELIX_PROTO
        )
    )


def _vxlan_route(ns: NamespacePlan, peer: CalicoPeer) -> None:
    # The VXLAN route target sets no protocol: the route table's default (boot) applies.
    ns.routes.append(
        Route(dst=str(peer.block), via=str(peer.tunnel_ip), dev=VXLAN_DEV, onlink=True)
    )


def _ipip_cross_subnet_route(ns: NamespacePlan, peer: CalicoPeer) -> None:
    (_direct_route if peer.same_subnet else _ipip_route)(ns, peer)


def _vxlan_cross_subnet_route(ns: NamespacePlan, peer: CalicoPeer) -> None:
    (_direct_route if peer.same_subnet else _vxlan_route)(ns, peer)


def _bare(same_subnet: bool) -> dict[str, Any]:
    # Across a router the first hop is the router, so only same-segment pairs pin the MAC.
    return {"encap": "bare", "next_hop_mac": PEER_MAC if same_subnet else None}


def _ipip(same_subnet: bool) -> dict[str, Any]:
    return {"encap": "ipip"}


def _vxlan(same_subnet: bool) -> dict[str, Any]:
    return {"encap": "vxlan", "port": VXLAN_PORT, "vni": VXLAN_VNI}


def _ipip_cross_subnet(same_subnet: bool) -> dict[str, Any]:
    return _bare(same_subnet) if same_subnet else _ipip(same_subnet)


def _vxlan_cross_subnet(same_subnet: bool) -> dict[str, Any]:
    return _bare(same_subnet) if same_subnet else _vxlan(same_subnet)


BgpRole = Literal["install", "announce", "off"]


@dataclass(frozen=True)
class Encap:
    """What differs between Calico modes (the IP pool's ipipMode / vxlanMode)."""

    overhead: int
    wire: tuple[WireSpec, ...]
    #: Programs what a node needs to reach one peer's block (Felix); None: BGP does it.
    per_peer: Callable[[NamespacePlan, CalicoPeer], None] | None
    #: How a packet from a pod to a pod on `peer` crosses the wire.
    encap_for: Callable[[bool], dict[str, Any]]  # by same_subnet (Plan.paths)
    #: Node BGP: "install" (FRR writes the routes), "announce" (sessions and announcements,
    #: routes are Felix's), "off" (no BGP on nodes, as calico_backend: vxlan).
    bgp: BgpRole
    device: DeviceFn | None = None
    kernel_feature: str | None = None
    #: Programs a remote node's VTEP (neighbour + FDB), from its Node record alone.
    vtep: Callable[[NamespacePlan, CalicoPeer], None] | None = None


BARE = WireSpec("bare")
IPIP = WireSpec("ipip")
VXLAN = WireSpec("vxlan", VXLAN_PORT, VXLAN_VNI)

ENCAPS: dict[str, Encap] = {
    "calico-bgp": Encap(overhead=0, wire=(BARE,), per_peer=None, encap_for=_bare, bgp="install"),
    "calico-ipip": Encap(
        overhead=20,
        wire=(IPIP,),
        per_peer=_ipip_route,
        encap_for=_ipip,
        bgp="announce",
        device=_ipip_device,
        kernel_feature="ipip",
    ),
    "calico-ipip-crosssubnet": Encap(
        overhead=20,
        wire=(IPIP, BARE),
        per_peer=_ipip_cross_subnet_route,
        encap_for=_ipip_cross_subnet,
        bgp="announce",
        device=_ipip_device,
        kernel_feature="ipip",
    ),
    "calico-vxlan": Encap(
        overhead=50,
        wire=(VXLAN,),
        per_peer=_vxlan_route,
        encap_for=_vxlan,
        bgp="off",
        device=_vxlan_device,
        vtep=_vxlan_vtep,
    ),
    "calico-vxlan-crosssubnet": Encap(
        overhead=50,
        wire=(VXLAN, BARE),
        per_peer=_vxlan_cross_subnet_route,
        encap_for=_vxlan_cross_subnet,
        bgp="off",
        device=_vxlan_device,
        vtep=_vxlan_vtep,
    ),
}


def vtep_objects(encap: Encap, node: str, peer: CalicoPeer) -> NamespacePlan:
    """What `node`'s Felix programs for a remote node's VTEP (its Node record), marked as the
    agent's (controlplane/felix.py programs them; the engine skips them)."""
    part = NamespacePlan(name=node, role="node")
    if encap.vtep is not None:
        encap.vtep(part, peer)
    return agent_owned(part)


def route_objects(encap: Encap, node: str, peer: CalicoPeer) -> NamespacePlan:
    """What `node`'s Felix programs for one remote block (`peer.block`, affine to
    `peer.name`), marked as the agent's."""
    part = NamespacePlan(name=node, role="node")
    if encap.per_peer is not None:
        encap.per_peer(part, peer)
    return agent_owned(part)


def agent_config(topo: Topology, mode: str, node: str, block: IPv4Network) -> dict[str, Any]:
    """calico-node's view of itself: what it writes to the datastore at start-up (its Node
    record, the default pool, its block) and the underlay it autodetects its address on."""
    me = topo.nodes[node]
    segment = topo.segments[me.segment]
    encap = ENCAPS[mode]
    return {
        "node": node,
        "mode": mode,
        "ipv4_address": f"{me.ip}/{segment.cidr.prefixlen}",
        "block": str(block),
        "pool": str(topo.cluster.podCIDR),
        # calico-node allocates the tunnel address of the pool's encapsulation from its block.
        "tunnel": "vxlan" if encap.vtep else ("ipip" if encap.device else ""),
        "vtep_mac": vtep_mac(node) if encap.vtep else "",
        "rr_cluster_id": RR_CLUSTER_ID if node in topo.bgp.routeReflectors else "",
    }


# ---- BGP speakers ----


def _router_neighbors(topo: Topology, rname: str) -> list[BgpNeighbor]:
    """eBGP to every other router with an asn that shares a segment (one session each)."""
    me = topo.routers[rname]
    out = []
    for oname, other in topo.routers.items():
        shared = [s for s in me.interfaces if s in other.interfaces]
        if oname == rname or other.asn is None or not shared:
            continue
        out.append(
            BgpNeighbor(
                ip=other.interfaces[shared[0]], remote_asn=other.asn, description=f"router_{oname}"
            )
        )
    return out


def _router_speakers(topo: Topology, with_nodes: bool) -> dict[str, BgpSpeaker]:
    """FRR on every router with an asn that has someone to talk to."""
    out = {}
    for rname, router in topo.routers.items():
        if router.asn is None:
            continue
        node_ips = [n.ip for n in topo.nodes.values() if n.segment in router.interfaces]
        speaker = bgp.router_speaker(
            rname,
            next(iter(router.interfaces.values())),
            router.asn,
            node_ips if with_nodes else [],
            node_asn=topo.bgp.asn,
        )
        neighbors = [*speaker.neighbors, *_router_neighbors(topo, rname)]
        if neighbors:
            out[rname] = BgpSpeaker.model_validate(
                {**speaker.model_dump(), "neighbors": [n.model_dump() for n in neighbors]}
            )
    return out


def _rack_routers(topo: Topology, node: str) -> list[str]:
    """Routers with an asn on the node's segment: its top-of-rack BGP peers."""
    segment = topo.nodes[node].segment
    return [
        name
        for name, router in topo.routers.items()
        if router.asn is not None and segment in router.interfaces
    ]


def _tor_neighbor(topo: Topology, rname: str, segment: str) -> BgpNeighbor:
    router = topo.routers[rname]
    assert router.asn is not None
    ip = router.interfaces[segment]
    return BgpNeighbor(
        ip=ip, remote_asn=router.asn, description="Node_" + str(ip).replace(".", "_")
    )


def node_mesh(topo: Topology) -> bool:
    """Whether the node-to-node mesh is on (see the module docstring for why not always)."""
    if topo.bgp.routeReflectors:
        return False
    return not all(_rack_routers(topo, node) for node in topo.nodes)


def _node_speakers(
    topo: Topology, blocks: dict[str, IPv4Network], install: bool
) -> dict[str, BgpSpeaker]:
    """Calico node speakers: mesh or route reflectors, plus eBGP to the routers with an asn
    on each node's segment (per-node BGPPeers, BIRD protocol names Node_<ip>)."""
    rrs = set(topo.bgp.routeReflectors)
    nodes = [
        CalicoNode(name, node.ip, [blocks[name]], RR_CLUSTER_ID if name in rrs else None)
        for name, node in topo.nodes.items()
    ]
    external = {
        name: [_tor_neighbor(topo, rname, node.segment) for rname in _rack_routers(topo, name)]
        for name, node in topo.nodes.items()
    }
    return bgp.calico_speakers(
        nodes,
        topo.bgp.asn,
        mesh=node_mesh(topo),
        external_peers=external,
        install_routes=install,
    )


def routers_between_segments(topo: Topology) -> list[str]:
    """Routers that pod traffic between nodes may cross (nodes on more than one segment)."""
    if len({n.segment for n in topo.nodes.values()}) < 2:
        return []
    return list(topo.routers)


# ---- the planner ----


def plan_calico(topo: Topology, mode: Mode, datapath: str = "kernel") -> Plan:
    """Calico's per-node state: cali* veths, /32 pod routes, the block, the encapsulation."""
    encap = mode.backend
    assert isinstance(encap, Encap)
    plan = base_plan(topo, mode, datapath)
    if encap.kernel_feature is not None and datapath == "userspace":
        plan.notes.append(USERSPACE_NOTE)
    elif encap.kernel_feature is not None and datapath == "bpf":
        plan.notes.append(bpf_note(IPIP_DEV))
    if encap.bgp == "announce":
        plan.notes.append(NO_RIB_NOTE.format(mode=mode.name))
    blocks = {node: ipam_block(topo, node) for node in topo.nodes}
    for node in topo.nodes:
        ns = plan.namespaces[node]
        pod_mtu = plan.node_pod_mtu[node]
        # Only devices and per-peer routes need the other nodes (BGP mode learns them).
        peers = calico_peers(topo, node, blocks) if encap.device or encap.per_peer else []
        if encap.device is not None:
            encap.device(ns, topo, node, blocks[node], pod_mtu, datapath, peers)
        mode.network.node(plan, ns, topo, node, pod_mtu)
        for pod in topo.pods_on(node):
            mode.network.pod(plan, ns, pod, topo, pod_mtu, topo.pod_ips[pod.key])
        # The default IP pool has natOutgoing: true: pods reach the outside as their node.
        ns.netfilter = render("calico-nat-outgoing.j2", node=node, pool=topo.cluster.podCIDR)
        if encap.per_peer is not None:
            # Felix owns the routes: the blackhole is its too (BGP mode: FRR's staticd).
            ns.routes.append(Route(dst=str(blocks[node]), type="blackhole", proto=FELIX_PROTO))
        for peer in peers:
            for part in (vtep_objects(encap, node, peer), route_objects(encap, node, peer)):
                ns.neighbours += part.neighbours
                ns.fdb += part.fdb
                ns.routes += part.routes
        ns.daemons.append(Daemon(AGENT, agent_config(topo, mode.name, node, blocks[node])))

    if encap.bgp != "off":
        for node, speaker in _node_speakers(topo, blocks, encap.bgp == "install").items():
            plan.namespaces[node].bgp = speaker
    for rname, speaker in _router_speakers(topo, with_nodes=encap.bgp != "off").items():
        plan.namespaces[rname].bgp = speaker
    static = [r for r in routers_between_segments(topo) if topo.routers[r].asn is None]
    if encap.bgp == "install" and static:
        plan.notes.append(STATIC_ROUTERS_NOTE.format(routers=", ".join(static)))

    plan.paths = path_classes(encap.encap_for)
    return plan


# ---- the BGP design, for the checks ----


def expected_node_sessions(topo: Topology) -> int:
    """Node-to-node BGP sessions the design calls for: a full mesh, n(n-1)/2; with r route
    reflectors r(n-r) client sessions plus r(r-1)/2 between the reflectors; none when every
    node peers with its rack's router instead."""
    n, r = len(topo.nodes), len(set(topo.bgp.routeReflectors))
    if r:
        return r * (n - r) + r * (r - 1) // 2
    return n * (n - 1) // 2 if node_mesh(topo) else 0


def design(topo: Topology) -> str:
    rrs = sorted(set(topo.bgp.routeReflectors))
    if rrs:
        return f"route reflector(s) {', '.join(rrs)} with {len(topo.nodes) - len(rrs)} clients"
    if node_mesh(topo):
        return f"full mesh of {len(topo.nodes)} nodes"
    return "AS per rack: every node peers only with its router(s), no mesh"


def blocks(topo: Topology) -> dict[str, IPv4Network]:
    """Every node's IPAM block."""
    return {node: ipam_block(topo, node) for node in topo.nodes}


def _mode(name: str, summary: str, wire: str) -> Mode:
    encap = ENCAPS[name]
    # Felix writes the remote-block routes where there is a per-peer function; else BGP does.
    routes = "felix-routes" if encap.per_peer is not None else "bgp-routes"
    return Mode(
        name=name,
        cni="calico",
        summary=summary,
        wire=wire,
        network=CALI,
        backend=encap,
        planner=plan_calico,
        policy=FELIX,
        checks=("bgp-sessions", routes),
        ipam=ipam_block,
    )


register(
    _mode(
        "calico-bgp",
        "cali* veths, no bridge; /32 per pod; proxy ARP for 169.254.1.1; blackholed block; "
        "FRR BGP (mesh or route reflectors; routers with an asn peer)",
        "bare pod IPs",
    ),
    _mode(
        "calico-ipip",
        "as calico-bgp plus tunl0; remote blocks via <node IP> dev tunl0 onlink proto 80",
        "IP protocol 4, outer node IPs, inner pod IPs",
    ),
    _mode(
        "calico-ipip-crosssubnet",
        "as calico-ipip, but same-subnet peers via <node IP> dev eth0 onlink (no tunnel)",
        "same subnet: bare pod IPs; across routers: IP protocol 4",
    ),
    _mode(
        "calico-vxlan",
        "cali* veths; vxlan.calico VNI 4096 port 4789; per-peer neigh + fdb + onlink route; no BGP",
        "UDP 4789, VXLAN VNI 4096, outer node IPs, inner pod IPs",
    ),
    _mode(
        "calico-vxlan-crosssubnet",
        "as calico-vxlan, but same-subnet peers via <node IP> dev eth0 onlink (no tunnel)",
        "same subnet: bare pod IPs; across routers: UDP 4789 VXLAN VNI 4096",
    ),
)
