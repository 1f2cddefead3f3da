"""Pod networks: how a pod is attached to its node, one part every mode is composed of.

* ``BRIDGE``: flannel's CNI chain (bridge + host-local IPAM): ``cni0`` holds the lease's .1,
  each pod's veth is a bridge port with hairpin on (reference section 8).
* ``CALI``: Calico's CNI plugin: no bridge, a ``cali*`` veth per pod with the
  ``ee:ee:ee:ee:ee:ee`` MAC, proxy ARP for the pods' 169.254.1.1 gateway, a /32 route and a
  permanent neighbour per pod (reference section 10). Canal uses it too, with flannel's IPAM.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address

from labctl.plan import (
    UNDERLAY_IF,
    Address,
    Link,
    NamespacePlan,
    Neigh,
    Plan,
    Route,
    pod_ns_name,
    underlay_mac,
)
from labctl.topology import Pod, Topology


@dataclass(frozen=True)
class PodNetwork:
    """How pods attach to their node: per-node setup, per-pod objects, host interface name."""

    name: str
    #: Node-side setup before its pods: (plan, node namespace, topology, node, pod MTU).
    node: Callable[[Plan, NamespacePlan, Topology, str, int], None]
    #: One pod's veth, addresses and routes (the CNI ADD):
    #: (plan, node namespace, pod, topology, pod MTU, the pod's IP from IPAM).
    pod: Callable[[Plan, NamespacePlan, Pod, Topology, int, IPv4Address], None]
    #: The pod's host-side interface (what policy dispatches on).
    iface: Callable[[Pod], str]
    #: The plugin announces a new pod's address with a gratuitous ARP (the bridge plugin
    #: does: a reused address must not stay bound to a deleted pod's MAC in its neighbours).
    announce: bool = False


# ---- flannel: cni0 ----

BRIDGE_DEV = "cni0"


def veth_name(pod: Pod) -> str:
    """Host-side veth name: 'veth' + 8 hex digits, like the bridge plugin's random names."""
    return "veth" + hashlib.sha1(f"{pod.namespace}/{pod.name}".encode()).hexdigest()[:8]


def _lease_gateway(topo: Topology, node: str) -> str:
    return str(topo.node_pod_cidrs[node].network_address + 1)


def _bridge_node(plan: Plan, ns: NamespacePlan, topo: Topology, node: str, mtu: int) -> None:
    # The bridge plugin: cni0 with the gateway .1 of the lease, at the flannel MTU.
    lease = topo.node_pod_cidrs[node]
    ns.links.append(
        Link(name=BRIDGE_DEV, kind="bridge", mtu=mtu, mac=underlay_mac(node, BRIDGE_DEV))
    )
    ns.addresses.append(Address(BRIDGE_DEV, f"{_lease_gateway(topo, node)}/{lease.prefixlen}"))


def _bridge_pod(
    plan: Plan, node_ns: NamespacePlan, pod: Pod, topo: Topology, mtu: int, ip: IPv4Address
) -> None:
    key = pod_ns_name(pod.namespace, pod.name)
    lease = topo.node_pod_cidrs[pod.node]
    gateway = _lease_gateway(topo, pod.node)
    node_ns.links.append(
        Link(
            name=veth_name(pod),
            kind="veth",
            mtu=mtu,
            master=BRIDGE_DEV,
            hairpin=True,
            peer_ns=key,
            peer_name="eth0",
            peer_mtu=mtu,
            peer_mac=underlay_mac(key, "eth0"),
        )
    )
    pod_ns = plan.namespaces[key]
    pod_ns.addresses.append(Address("eth0", f"{ip}/{lease.prefixlen}"))
    # isDefaultGateway plus the IPAM route for the whole flannel network.
    pod_ns.routes.append(Route(dst="default", via=gateway, dev="eth0"))
    pod_ns.routes.append(Route(dst=str(topo.cluster.podCIDR), via=gateway, dev="eth0"))


BRIDGE = PodNetwork("bridge", node=_bridge_node, pod=_bridge_pod, iface=veth_name, announce=True)


# ---- calico: cali* veths ----

#: Every host-side cali* veth has this MAC (the CNI plugin forces it).
CALI_MAC = "ee:ee:ee:ee:ee:ee"
#: The pods' dummy next hop, answered by proxy ARP on the cali* interface.
POD_GATEWAY = "169.254.1.1"
NO_GATEWAY_NOTE = (
    "nodes {nodes} have no default route, so each gets '169.254.1.1 dev eth0 scope link': "
    "proxy ARP on cali* answers only when the node routes 169.254.1.1 out of another "
    "interface, which a real node's default route provides"
)


def cali_name(pod: Pod) -> str:
    """Host-side veth name: 'cali' + the first 11 hex digits of sha1('<namespace>.<pod>')."""
    return "cali" + hashlib.sha1(f"{pod.namespace}.{pod.name}".encode()).hexdigest()[:11]


def _cali_node(plan: Plan, ns: NamespacePlan, topo: Topology, node: str, mtu: int) -> None:
    if topo.node_gateway(node) is not None:
        return
    ns.routes.append(Route(dst=POD_GATEWAY, dev=UNDERLAY_IF, scope="link"))
    note = NO_GATEWAY_NOTE.format(
        nodes=", ".join(n for n in topo.nodes if topo.node_gateway(n) is None)
    )
    if note not in plan.notes:
        plan.notes.append(note)


def _cali_pod(
    plan: Plan, node_ns: NamespacePlan, pod: Pod, topo: Topology, mtu: int, ip: IPv4Address
) -> None:
    key = pod_ns_name(pod.namespace, pod.name)
    cali = cali_name(pod)
    pod_ip = str(ip)
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


CALI = PodNetwork("cali", node=_cali_node, pod=_cali_pod, iface=cali_name)
