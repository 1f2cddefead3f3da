"""Flannel: the `cni0` bridge pod model plus one backend per mode.

Each backend is data (device, overhead, wire format) plus one small function that says what a
node programs for one peer, mirroring flanneld's per-lease handlers (see
shared/cni-dataplane-reference.md sections 4-8).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from labctl.modes import Mode, register
from labctl.modes.podnet import BRIDGE
from labctl.modes.tunnels import add_ipip, add_vxlan, bpf_note
from labctl.plan import (
    PEER_MAC,
    UNDERLAY_IF,
    Address,
    Daemon,
    Fdb,
    Link,
    NamespacePlan,
    Neigh,
    Peer,
    Plan,
    Route,
    agent_owned,
    base_plan,
    path_classes,
    peers_of,
    stable_mac,
)
from labctl.render import render
from labctl.topology import Topology, TopologyError
from labctl.wire import WireSpec

USERSPACE_NOTE = (
    "userspace IPIP datapath: a TUN device plus a raw IP-protocol-4 socket per node "
    "(labctl.datapath.ipip) puts the same bytes on the wire as the kernel's ipip device"
)
VXLAN_DEV = "flannel.1"
VXLAN_VNI = 1
VXLAN_PORT = 8472  # the Linux kernel default flannel relies on, not IANA's 4789
PRIVATE_DIRS = ["/run/flannel", "/etc/cni/net.d", "/etc/kube-flannel"]
# Lab-sized subnet lease TTL (flanneld: 24 h), so a dead node's routes vanish in seconds;
# LABCTL_LEASE_TTL overrides it for a lab (read when the lab is planned).
LEASE_TTL = 15
LEASE_TTL_ENV = "LABCTL_LEASE_TTL"


@dataclass(frozen=True)
class Backend:
    """What differs between flannel backends."""

    type: str  # flannel's Backend.Type
    overhead: int
    options: dict[str, Any] = field(default_factory=dict)  # net-conf.json Backend options
    # Programs the tunnel device (if any) on one node: (ns, topo, node, mtu, datapath, peers).
    device: Callable[[NamespacePlan, Topology, str, int, str, list[Peer]], None] | None = None
    kernel_feature: str | None = None
    # Programs what a node needs to reach one peer.
    per_peer: Callable[[NamespacePlan, Peer], None] = lambda ns, peer: None
    # How a packet from a pod on node A to a pod on node B crosses the wire.
    # How a pair crosses the wire, by whether it shares a segment (Plan.paths).
    encap_for: Callable[[bool], dict[str, Any]] = lambda same_subnet: {"encap": "bare"}
    wire: tuple[WireSpec, ...] = ()


# ---- vxlan ----


def _vxlan_device(
    ns: NamespacePlan, topo: Topology, node: str, mtu: int, datapath: str, peers: list[Peer]
) -> None:
    lease = topo.node_pod_cidrs[node]
    add_vxlan(ns, VXLAN_DEV, VXLAN_VNI, VXLAN_PORT, topo.nodes[node].ip, mtu, _vtep_mac(node))
    # /32: no connected route, the address only gives host-to-pod traffic an overlay source.
    ns.addresses.append(Address(VXLAN_DEV, f"{lease.network_address}/32"))


def _vtep_mac(node: str) -> str:
    return stable_mac(node, VXLAN_DEV)


def _vxlan_peer(ns: NamespacePlan, peer: Peer) -> None:
    gw = str(peer.pod_cidr.network_address)
    # flanneld's order: neighbour, FDB, route, so the kernel never has to resolve anything.
    ns.neighbours.append(Neigh(VXLAN_DEV, gw, peer.vtep_mac))
    ns.fdb.append(Fdb(VXLAN_DEV, peer.vtep_mac, str(peer.ip)))
    ns.routes.append(Route(dst=str(peer.pod_cidr), via=gw, dev=VXLAN_DEV, onlink=True))


def _vxlan_direct_peer(ns: NamespacePlan, peer: Peer) -> None:
    if peer.same_subnet:
        # DirectRouting: a plain route, no device, no onlink, no neighbour or FDB entry.
        ns.routes.append(Route(dst=str(peer.pod_cidr), via=str(peer.ip)))
    else:
        _vxlan_peer(ns, peer)


def _vxlan_encap(same_subnet: bool) -> dict[str, Any]:
    return {"encap": "vxlan", "port": VXLAN_PORT, "vni": VXLAN_VNI}


def _vxlan_direct_encap(same_subnet: bool) -> dict[str, Any]:
    if same_subnet:
        return {"encap": "bare", "next_hop_mac": PEER_MAC}
    return _vxlan_encap(same_subnet)


# ---- host-gw ----


def _hostgw_peer(ns: NamespacePlan, peer: Peer) -> None:
    # No onlink: the kernel refuses a gateway that is not on a connected prefix, which is the
    # whole lesson of host-gw across routers. flanneld logs the failure and carries on.
    ns.routes.append(
        Route(
            dst=str(peer.pod_cidr),
            via=str(peer.ip),
            dev=UNDERLAY_IF,
            best_effort=True,
            why=f"host-gw needs peer {peer.name} ({peer.ip}) on the same L2 segment",
        )
    )


def _hostgw_encap(same_subnet: bool) -> dict[str, Any]:
    return {"encap": "bare", "next_hop_mac": PEER_MAC}


# ---- udp (flanneld's userspace proxy) ----

UDP_DEV = "flannel0"
UDP_PORT = 8285


def _peer_routes(peers: list[Peer]) -> list[dict[str, str]]:
    return [{"subnet": str(p.pod_cidr), "node_ip": str(p.ip)} for p in peers]


def _udp_device(
    ns: NamespacePlan, topo: Topology, node: str, mtu: int, datapath: str, peers: list[Peer]
) -> None:
    lease = topo.node_pod_cidrs[node]
    ns.links.append(Link(name=UDP_DEV, kind="tun", mtu=mtu))
    ns.addresses.append(Address(UDP_DEV, f"{lease.network_address}/32"))
    # One route for the whole network into the TUN; the proxy picks the peer.
    ns.routes.append(Route(dst=str(topo.cluster.podCIDR), dev=UDP_DEV))
    ns.daemons.append(
        Daemon(
            "udpproxy",
            {
                "tun": UDP_DEV,
                "local_ip": str(topo.nodes[node].ip),
                "port": UDP_PORT,
                "routes": _peer_routes(peers),
            },
        )
    )
    # The proxy batches with UDP GSO; a veth passes such super-datagrams unsegmented, so
    # turn segmentation offload off to make the capture show what a real NIC would send.
    ns.offloads_off[UNDERLAY_IF] = ["tx-udp-segmentation"]


# ---- ipip ----

IPIP_DEV = "flannel.ipip"


def _ipip_device(
    ns: NamespacePlan, topo: Topology, node: str, mtu: int, datapath: str, peers: list[Peer]
) -> None:
    lease = topo.node_pod_cidrs[node]
    routes = [(p.pod_cidr, p.ip) for p in peers]
    add_ipip(ns, IPIP_DEV, topo.nodes[node].ip, mtu, datapath, routes)
    ns.addresses.append(Address(IPIP_DEV, f"{lease.network_address}/32"))


def _ipip_peer(ns: NamespacePlan, peer: Peer) -> None:
    # The tunnel's remote is "any": the kernel takes the route's gateway as outer destination.
    ns.routes.append(Route(dst=str(peer.pod_cidr), via=str(peer.ip), dev=IPIP_DEV, onlink=True))


VXLAN_WIRE = WireSpec("vxlan", VXLAN_PORT, VXLAN_VNI)

BACKENDS: dict[str, Backend] = {
    "flannel-vxlan": Backend(
        type="vxlan",
        overhead=50,
        options={"Type": "vxlan", "VNI": VXLAN_VNI, "Port": VXLAN_PORT},
        device=_vxlan_device,
        per_peer=_vxlan_peer,
        encap_for=_vxlan_encap,
        wire=(VXLAN_WIRE,),
    ),
    "flannel-vxlan-directrouting": Backend(
        type="vxlan",
        overhead=50,
        options={"Type": "vxlan", "VNI": VXLAN_VNI, "Port": VXLAN_PORT, "DirectRouting": True},
        device=_vxlan_device,
        per_peer=_vxlan_direct_peer,
        encap_for=_vxlan_direct_encap,
        wire=(VXLAN_WIRE, WireSpec("bare")),
    ),
    "flannel-udp": Backend(
        type="udp",
        overhead=28,
        options={"Type": "udp", "Port": UDP_PORT},
        device=_udp_device,
        encap_for=lambda same_subnet: {"encap": "udp", "port": UDP_PORT},
        wire=(WireSpec("udp", UDP_PORT),),
    ),
    "flannel-ipip": Backend(
        type="ipip",
        overhead=20,
        options={"Type": "ipip"},
        device=_ipip_device,
        per_peer=_ipip_peer,
        encap_for=lambda same_subnet: {"encap": "ipip"},
        wire=(WireSpec("ipip"),),
        kernel_feature="ipip",
    ),
    "flannel-host-gw": Backend(
        type="host-gw",
        overhead=0,
        options={"Type": "host-gw"},
        per_peer=_hostgw_peer,
        encap_for=_hostgw_encap,
        wire=(WireSpec("bare"),),
    ),
}


def peer_objects(backend: Backend, node: str, peer: Peer) -> NamespacePlan:
    """What `node` programs for one peer's lease (neighbours, FDB, routes), marked as the
    node agent's: the planner records them, the agent (controlplane/agent.py) programs them."""
    part = NamespacePlan(name=node, role="node")
    backend.per_peer(part, peer)
    return agent_owned(part)


def lease_ttl() -> int:
    """The subnet lease TTL labs get: $LABCTL_LEASE_TTL, else LEASE_TTL."""
    raw = os.environ.get(LEASE_TTL_ENV, str(LEASE_TTL))
    if not raw.isdigit() or not 2 <= int(raw) <= 86400:
        raise TopologyError(f"{LEASE_TTL_ENV}={raw!r}: use whole seconds from 2 to 86400")
    return int(raw)


def agent_config(topo: Topology, node: str) -> dict[str, Any]:
    """The node agent's view of itself: what it leases and publishes, and its underlay."""
    me = topo.nodes[node]
    segment = topo.segments[me.segment]
    return {
        "node": node,
        "subnet": str(topo.node_pod_cidrs[node]),
        "network": str(topo.cluster.podCIDR),
        "public_ip": str(me.ip),
        "underlay": str(segment.cidr),
        "underlay_mtu": segment.mtu,
        "vtep_mac": _vtep_mac(node),
        "ttl": lease_ttl(),
    }


def backend_named(net_conf: dict[str, Any]) -> str:
    """The flannel mode whose backend a net-conf.json Backend section selects."""
    b = net_conf.get("Backend") or {}
    btype = b.get("Type", "udp")  # flanneld's default backend
    if btype == "vxlan":
        return "flannel-vxlan-directrouting" if b.get("DirectRouting") else "flannel-vxlan"
    name = f"flannel-{btype}"
    if name not in BACKENDS:
        raise ValueError(f"Backend.Type {btype!r}: use vxlan, host-gw, udp or ipip")
    return name


def plan_flannel(topo: Topology, mode: Mode, datapath: str = "kernel") -> Plan:
    """Flannel's per-node state: lease files, masquerade and forward rules, the pod network
    (``cni0``; Canal: ``cali*``), the backend device and what each peer's lease asks for."""
    backend = mode.backend
    assert isinstance(backend, Backend)
    plan = base_plan(topo, mode, datapath)
    if datapath == "userspace":
        plan.notes.append(USERSPACE_NOTE)
    elif datapath == "bpf":
        plan.notes.append(bpf_note(IPIP_DEV))
    network = topo.cluster.podCIDR
    peers = {node: {p.name: p for p in peers_of(topo, node, VXLAN_DEV)} for node in topo.nodes}
    for node in topo.nodes:
        ns = plan.namespaces[node]
        pod_mtu = plan.node_pod_mtu[node]
        ns.private_dirs.extend(PRIVATE_DIRS)
        lease = topo.node_pod_cidrs[node]
        ns.files["/run/flannel/subnet.env"] = render(
            "subnet.env.j2",
            network=network,
            subnet_gateway=lease.network_address + 1,
            subnet_prefixlen=lease.prefixlen,
            mtu=pod_mtu,
            ipmasq=True,
        )
        ns.files[f"/etc/cni/net.d/{mode.cni_conf}"] = render(
            f"{mode.cni_conf}.j2", mtu=pod_mtu, node=node
        )
        ns.files["/etc/kube-flannel/net-conf.json"] = render(
            "net-conf.json.j2", network=network, backend=backend.options
        )
        # What --ip-masq (FLANNEL_IPMASQ=true above) and --iptables-forward-rules install.
        ns.netfilter = render("flannel-iptables.j2", node=node, network=network, lease=lease)
        if backend.device is not None:
            backend.device(ns, topo, node, pod_mtu, datapath, list(peers[node].values()))
        mode.network.node(plan, ns, topo, node, pod_mtu)
        for pod in topo.pods_on(node):
            mode.network.pod(plan, ns, pod, topo, pod_mtu, topo.pod_ips[pod.key])
        for peer in peers[node].values():
            part = peer_objects(backend, node, peer)
            ns.neighbours += part.neighbours
            ns.fdb += part.fdb
            ns.routes += part.routes
        ns.daemons.append(Daemon("flannel-agent", agent_config(topo, node)))

    plan.paths = path_classes(backend.encap_for)
    return plan


def _mode(name: str, summary: str, wire: str) -> Mode:
    return Mode(
        name=name,
        cni="flannel",
        summary=summary,
        wire=wire,
        network=BRIDGE,
        backend=BACKENDS[name],
        planner=plan_flannel,
        cni_conf="10-flannel.conflist",
    )


register(
    _mode(
        "flannel-vxlan",
        "cni0 bridge; flannel.1 VXLAN VNI 1 port 8472; per-peer neigh + fdb + onlink route",
        "UDP 8472, VXLAN VNI 1, outer node IPs, inner pod IPs",
    ),
    _mode(
        "flannel-vxlan-directrouting",
        "as flannel-vxlan; peers on the same subnet get a plain route via their node IP",
        "same subnet: bare pod IPs; across routers: UDP 8472 VXLAN VNI 1",
    ),
    _mode(
        "flannel-udp",
        "cni0 bridge; flannel0 TUN, network route into it; userspace proxy (debug only, slow)",
        "UDP 8285, payload = the bare inner pod IP packet",
    ),
    _mode(
        "flannel-ipip",
        "cni0 bridge; flannel.ipip; peer subnets via the peer node IP dev flannel.ipip onlink",
        "IP protocol 4, outer node IPs, inner pod IPs",
    ),
    _mode(
        "flannel-host-gw",
        "cni0 bridge; one route per peer subnet via the peer node IP (needs one L2 segment)",
        "bare pod IPs, L2 destination = peer node MAC",
    ),
)
