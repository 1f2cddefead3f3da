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

import hashlib
import json
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Any, Literal

from labctl import frr
from labctl.checker import CheckResult, WireSpec
from labctl.frr import BgpNeighbor, BgpSpeaker, CalicoNode
from labctl.modes import Mode, register
from labctl.modes.tunnels import add_ipip, add_vxlan
from labctl.nsutil import nsenter_argv
from labctl.plan import (
    UNDERLAY_IF,
    Address,
    Fdb,
    Link,
    NamespacePlan,
    Neigh,
    Plan,
    Route,
    base_plan,
    cross_node_flows,
    pod_ns_name,
    stable_mac,
    underlay_mac,
)
from labctl.topology import Pod, Topology, TopologyError

#: IPAM block size (``blockSize`` default for IPv4).
BLOCK_PREFIX = 26
#: Every host-side cali* veth has this MAC (the CNI plugin forces it).
CALI_MAC = "ee:ee:ee:ee:ee:ee"
#: The pods' dummy next hop, answered by proxy ARP on the cali* interface.
POD_GATEWAY = "169.254.1.1"
#: Felix's ``DefaultRouteProto``: the protocol of the routes Felix writes.
FELIX_PROTO = 80
IPIP_DEV = "tunl0"
VXLAN_DEV = "vxlan.calico"
VXLAN_VNI = 4096
VXLAN_PORT = 4789
#: Route reflector cluster id, IPv4-formatted as Node.spec.bgp.routeReflectorClusterID; the
#: value Calico's own route-reflector docs use.
RR_CLUSTER_ID = "244.0.0.1"

USERSPACE_NOTE = (
    "userspace IPIP datapath: tunl0 is a TUN device plus a raw IP-protocol-4 socket per node "
    "(labctl.datapath.ipip), putting the same bytes on the wire as the kernel's tunl0"
)
NO_RIB_NOTE = (
    "{mode}: FRR BGP sessions run and announce each node's block (as BIRD does), but install "
    "nothing (bgp no-rib); the remote-block routes are the lab's own, written like Felix "
    "(proto 80, Calico >= 3.34 ProgramClusterRoutes)"
)
NO_GATEWAY_NOTE = (
    "nodes {nodes} have no default route, so each gets '169.254.1.1 dev eth0 scope link': "
    "proxy ARP on cali* answers only when the node routes 169.254.1.1 out of another "
    "interface, which a real node's default route provides"
)
STATIC_ROUTERS_NOTE = (
    "calico-bgp: routers {routers} have no asn, so they learn no pod routes and drop bare pod "
    "traffic between segments (give them an asn, or use calico-ipip/calico-vxlan)"
)


def cali_name(pod: Pod) -> str:
    """Host-side veth name: 'cali' + the first 11 hex digits of sha1('<namespace>.<pod>')."""
    return "cali" + hashlib.sha1(f"{pod.namespace}.{pod.name}".encode()).hexdigest()[:11]


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
    # Felix's VXLAN manager programs every remote VTEP, whatever the route to its block.
    for peer in peers:
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


def _bare(peer: CalicoPeer) -> dict[str, Any]:
    # Across a router the first hop is the router, so only same-segment pairs pin the MAC.
    return {
        "encap": "bare",
        "next_hop_mac": underlay_mac(peer.name, UNDERLAY_IF) if peer.same_subnet else None,
    }


def _ipip(peer: CalicoPeer) -> dict[str, Any]:
    return {"encap": "ipip"}


def _vxlan(peer: CalicoPeer) -> dict[str, Any]:
    return {"encap": "vxlan", "port": VXLAN_PORT, "vni": VXLAN_VNI}


def _ipip_cross_subnet(peer: CalicoPeer) -> dict[str, Any]:
    return _bare(peer) if peer.same_subnet else _ipip(peer)


def _vxlan_cross_subnet(peer: CalicoPeer) -> dict[str, Any]:
    return _bare(peer) if peer.same_subnet else _vxlan(peer)


BgpRole = Literal["install", "announce", "off"]


@dataclass(frozen=True)
class Encap:
    """What differs between Calico modes (the IP pool's ipipMode / vxlanMode)."""

    overhead: int
    wire: tuple[WireSpec, ...]
    #: Programs what a node needs to reach one peer's block (Felix); None: BGP does it.
    per_peer: Callable[[NamespacePlan, CalicoPeer], None] | None
    #: How a packet from a pod to a pod on `peer` crosses the wire.
    encap_for: Callable[[CalicoPeer], dict[str, Any]]
    #: Node BGP: "install" (FRR writes the routes), "announce" (sessions and announcements,
    #: routes are Felix's), "off" (no BGP on nodes, as calico_backend: vxlan).
    bgp: BgpRole
    device: DeviceFn | None = None
    kernel_feature: str | None = None


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
    ),
    "calico-vxlan-crosssubnet": Encap(
        overhead=50,
        wire=(VXLAN, BARE),
        per_peer=_vxlan_cross_subnet_route,
        encap_for=_vxlan_cross_subnet,
        bgp="off",
        device=_vxlan_device,
    ),
}


# ---- pod model ----


def _plan_pod(plan: Plan, node_ns: NamespacePlan, pod: Pod, topo: Topology, mtu: int) -> None:
    key = pod_ns_name(pod.namespace, pod.name)
    cali = cali_name(pod)
    pod_ip = str(topo.pod_ips[pod.key])
    pod_mac = underlay_mac(key, "eth0")
    node_ns.links.append(
        Link(
            name=cali,
            kind="veth",
            mtu=mtu,
            mac=CALI_MAC,
            peer_ns=key,
            peer_name="eth0",
            peer_mtu=mtu,
            peer_mac=pod_mac,
        )
    )
    node_ns.routes.append(Route(dst=f"{pod_ip}/32", dev=cali, scope="link"))
    # Felix's static ARP entry: the host never has to ask the pod.
    node_ns.neighbours.append(Neigh(cali, pod_ip, pod_mac))
    node_ns.sysctls.update(
        {
            f"net.ipv4.conf.{cali}.proxy_arp": "1",
            f"net.ipv4.neigh.{cali}.proxy_delay": "0",
            f"net.ipv4.conf.{cali}.forwarding": "1",
            f"net.ipv4.conf.{cali}.route_localnet": "1",
        }
    )
    pod_ns = plan.namespaces[key]
    pod_ns.addresses.append(Address("eth0", f"{pod_ip}/32"))
    pod_ns.routes.append(Route(dst=POD_GATEWAY, dev="eth0", scope="link"))
    pod_ns.routes.append(Route(dst="default", via=POD_GATEWAY, dev="eth0"))


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
        speaker = frr.router_speaker(
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
    return frr.calico_speakers(
        nodes,
        topo.bgp.asn,
        mesh=node_mesh(topo),
        external_peers=external,
        install_routes=install,
    )


def _routers_between_segments(topo: Topology) -> list[str]:
    """Routers that pod traffic between nodes may cross (nodes on more than one segment)."""
    if len({n.segment for n in topo.nodes.values()}) < 2:
        return []
    return list(topo.routers)


# ---- the planner ----


def plan_calico(topo: Topology, mode: Mode, datapath: str = "kernel") -> Plan:
    """Calico's per-node state: cali* veths, /32 pod routes, the block, the encapsulation."""
    encap = ENCAPS[mode.name]
    plan = base_plan(topo, mode, datapath)
    if encap.kernel_feature is not None and datapath == "userspace":
        plan.notes.append(USERSPACE_NOTE)
    if encap.bgp == "announce":
        plan.notes.append(NO_RIB_NOTE.format(mode=mode.name))
    blocks = {node: ipam_block(topo, node) for node in topo.nodes}
    peers = {node: calico_peers(topo, node, blocks) for node in topo.nodes}
    no_gateway = [n for n in topo.nodes if topo.node_gateway(n) is None]
    if no_gateway:
        plan.notes.append(NO_GATEWAY_NOTE.format(nodes=", ".join(no_gateway)))
    for node in topo.nodes:
        ns = plan.namespaces[node]
        pod_mtu = plan.node_pod_mtu[node]
        if encap.device is not None:
            encap.device(ns, topo, node, blocks[node], pod_mtu, datapath, peers[node])
        for pod in topo.pods_on(node):
            _plan_pod(plan, ns, pod, topo, pod_mtu)
        if node in no_gateway:
            ns.routes.append(Route(dst=POD_GATEWAY, dev=UNDERLAY_IF, scope="link"))
        if encap.per_peer is not None:
            # Felix owns the routes: the blackhole is its too (BGP mode: FRR's staticd).
            ns.routes.append(Route(dst=str(blocks[node]), type="blackhole", proto=FELIX_PROTO))
            for peer in peers[node]:
                encap.per_peer(ns, peer)

    if encap.bgp != "off":
        for node, speaker in _node_speakers(topo, blocks, encap.bgp == "install").items():
            plan.namespaces[node].bgp = speaker
    for rname, speaker in _router_speakers(topo, with_nodes=encap.bgp != "off").items():
        plan.namespaces[rname].bgp = speaker
    static = [r for r in _routers_between_segments(topo) if topo.routers[r].asn is None]
    if encap.bgp == "install" and static:
        plan.notes.append(STATIC_ROUTERS_NOTE.format(routers=", ".join(static)))

    by_name = {node: {p.name: p for p in ps} for node, ps in peers.items()}

    plan.flows = cross_node_flows(topo, lambda a, b: encap.encap_for(by_name[a][b]))
    return plan


# ---- checks (verify) ----


def expected_node_sessions(topo: Topology) -> int:
    """Node-to-node BGP sessions the design calls for: a full mesh, n(n-1)/2; with r route
    reflectors r(n-r) client sessions plus r(r-1)/2 between the reflectors; none when every
    node peers with its rack's router instead."""
    n, r = len(topo.nodes), len(set(topo.bgp.routeReflectors))
    if r:
        return r * (n - r) + r * (r - 1) // 2
    return n * (n - 1) // 2 if node_mesh(topo) else 0


def _design(topo: Topology) -> str:
    rrs = sorted(set(topo.bgp.routeReflectors))
    if rrs:
        return f"route reflector(s) {', '.join(rrs)} with {len(topo.nodes) - len(rrs)} clients"
    if node_mesh(topo):
        return f"full mesh of {len(topo.nodes)} nodes"
    return "AS per rack: every node peers only with its router(s), no mesh"


def session_checks(topo: Topology, plan: Plan, pids: dict[str, int]) -> list[CheckResult]:
    """Per speaker: every configured neighbor Established; overall: the node-to-node session
    count matches the mesh or reflector design."""
    out = []
    node_ips = {str(n.ip) for n in topo.nodes.values()}
    # (node IP, peer node IP) for every session a node reports Established.
    seen: set[tuple[str, str]] = set()
    for ns in plan.namespaces.values():
        if ns.bgp is None:
            continue
        name = f"bgp sessions {ns.name}"
        try:
            states = frr.peer_states(pids[ns.name])
        except (frr.FrrError, ValueError) as e:
            out.append(CheckResult(name, False, f"bgpd does not answer: {e}"))
            continue
        want = [str(n.ip) for n in ns.bgp.neighbors]
        up = [ip for ip in want if states.get(ip) == "Established"]
        down = [f"{ip} {states.get(ip, 'not configured')}" for ip in want if ip not in up]
        detail = f"{len(up)}/{len(want)} Established"
        out.append(
            CheckResult(name, not down, detail + (f"; not: {', '.join(down)}" if down else ""))
        )
        if ns.role == "node":
            me = str(topo.nodes[ns.name].ip)
            seen |= {(me, ip) for ip in up if ip in node_ips}
    if any(ns.bgp is not None for ns in plan.node_ns()):
        # A session counts once both ends report it Established.
        node_pairs = {frozenset(pair) for pair in seen if pair[::-1] in seen}
        want_n = expected_node_sessions(topo)
        out.append(
            CheckResult(
                "bgp design",
                len(node_pairs) == want_n,
                f"{_design(topo)}: {len(node_pairs)}/{want_n} node-to-node sessions Established",
            )
        )
    return out


def _kernel_routes(pid: int) -> list[dict[str, Any]]:
    proc = subprocess.run(
        nsenter_argv(pid, ["ip", "-j", "-4", "route", "show"], mount=False),
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    routes: list[dict[str, Any]] = json.loads(proc.stdout or "[]")
    return routes


def _blocks(topo: Topology) -> dict[str, IPv4Network]:
    return {node: ipam_block(topo, node) for node in topo.nodes}


def bgp_route_checks(topo: Topology, plan: Plan, pids: dict[str, int]) -> list[CheckResult]:
    """calico-bgp: each node has every remote block as a ``proto bgp`` kernel route, and each
    router that pod traffic may cross has a route covering every block."""
    blocks = _blocks(topo)
    out = []
    for node in topo.nodes:
        want = sorted(str(b) for n, b in blocks.items() if n != node)
        have = set(frr.kernel_bgp_routes(pids[node]))
        missing = [b for b in want if b not in have]
        detail = f"{len(want) - len(missing)}/{len(want)} remote blocks as proto bgp routes"
        out.append(
            CheckResult(
                f"bgp routes {node}",
                not missing,
                detail + (f"; missing {', '.join(missing)}" if missing else ""),
            )
        )
    for router in _routers_between_segments(topo):
        nets = [
            IPv4Network("0.0.0.0/0" if r["dst"] == "default" else r["dst"], strict=False)
            for r in _kernel_routes(pids[router])
            if r.get("type", "unicast") == "unicast"
        ]
        missing = [str(b) for b in blocks.values() if not any(b.subnet_of(n) for n in nets)]
        why = (
            "it has no asn, so it runs no BGP and learns no pod routes"
            if topo.routers[router].asn is None
            else "BGP did not bring them"
        )
        detail = (
            f"routes cover all {len(blocks)} pod blocks"
            if not missing
            else f"no route to {', '.join(missing)}: {why}; bare pod traffic through it is dropped"
        )
        out.append(CheckResult(f"pod routes on router {router}", not missing, detail))
    return out


def _same_route(kernel: dict[str, Any], route: Route) -> bool:
    proto = str(route.proto) if route.proto is not None else "boot"
    return (
        kernel.get("dst") == route.dst
        and kernel.get("gateway") == route.via
        and kernel.get("dev") == route.dev
        and ("onlink" in kernel.get("flags", [])) == route.onlink
        and str(kernel.get("protocol", "boot")) == proto
    )


def felix_route_checks(topo: Topology, plan: Plan, pids: dict[str, int]) -> list[CheckResult]:
    """ipip/vxlan modes: every route the lab wrote like Felix (blackhole and remote blocks)
    is in the node's kernel exactly, protocol included."""
    blocks = {str(b) for b in _blocks(topo).values()}
    out = []
    for ns in plan.node_ns():
        want = [r for r in ns.routes if r.dst in blocks]
        have = _kernel_routes(pids[ns.name])
        missing = [r for r in want if not any(_same_route(k, r) for k in have)]
        detail = f"{len(want) - len(missing)}/{len(want)} Felix routes present"
        if missing:
            detail += "; missing: " + "; ".join(_describe(r) for r in missing)
        out.append(CheckResult(f"felix routes {ns.name}", not missing, detail))
    return out


def _describe(route: Route) -> str:
    parts = [route.type if route.type == "blackhole" else "", route.dst]
    parts += ["via", route.via] if route.via else []
    parts += ["dev", route.dev] if route.dev else []
    parts += ["onlink"] if route.onlink else []
    parts += ["proto", str(route.proto)] if route.proto is not None else []
    return " ".join(p for p in parts if p)


def _checks(encap: Encap) -> Callable[[Topology, Plan, dict[str, int]], list[CheckResult]]:
    routes = felix_route_checks if encap.per_peer is not None else bgp_route_checks

    def run(topo: Topology, plan: Plan, pids: dict[str, int]) -> list[CheckResult]:
        return session_checks(topo, plan, pids) + routes(topo, plan, pids)

    return run


def _mode(name: str, summary: str, wire: str) -> Mode:
    encap = ENCAPS[name]
    return Mode(
        name=name,
        cni="calico",
        summary=summary,
        wire=wire,
        overhead=encap.overhead,
        enforces_policy=True,
        planner=plan_calico,
        wire_specs=encap.wire,
        kernel_feature=encap.kernel_feature,
        checks=_checks(encap),
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
