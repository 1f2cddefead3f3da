"""Tunnel devices both CNI families program: a VXLAN VTEP, and an IPIP tunnel that is the
kernel's device or, where the kernel has no ipip, a TUN device whose packets are moved by
TC-BPF programs (datapath bpf) or by the userspace process (datapath userspace)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

from labctl.plan import UNDERLAY_IF, Daemon, Link, NamespacePlan


def bpf_note(dev: str) -> str:
    """What `up` and `status` say about the BPF IPIP datapath of tunnel device `dev`."""
    return (
        f"BPF IPIP datapath: {dev} is a TUN device the routes point at; TC-BPF programs "
        f"(labctl/datapath/bpf/ipip.bpf.c) encapsulate on {dev} egress (outer dst = the route's "
        f"gateway) and decapsulate on {UNDERLAY_IF} ingress, in the kernel, putting the same "
        f"bytes on the wire as the kernel's ipip device"
    )


def add_vxlan(
    ns: NamespacePlan, name: str, vni: int, port: int, local: IPv4Address, mtu: int, mac: str
) -> None:
    """A unicast VTEP on the underlay: no group, learning off, the FDB is programmed."""
    ns.links.append(
        Link(
            name=name,
            kind="vxlan",
            vni=vni,
            port=port,
            local=str(local),
            underlay=UNDERLAY_IF,
            learning=False,
            mtu=mtu,
            mac=mac,
        )
    )


def add_ipip(
    ns: NamespacePlan,
    name: str,
    local: IPv4Address,
    mtu: int,
    datapath: str,
    routes: list[tuple[IPv4Network, IPv4Address]],
) -> None:
    """An IPIP tunnel with remote "any". `routes` (subnet, node IP) feed the userspace
    datapath, which cannot see a route's gateway and so needs the table itself; the BPF
    datapath takes the gateway from the route and uses them only as the nodes it accepts
    IPIP from."""
    if datapath == "kernel":
        ns.links.append(Link(name=name, kind="ipip", local=str(local), mtu=mtu))
        return
    ns.links.append(Link(name=name, kind="tun", mtu=mtu))
    table = [{"subnet": str(subnet), "node_ip": str(ip)} for subnet, ip in routes]
    config: dict[str, object] = {"tun": name, "local_ip": str(local), "routes": table}
    if datapath == "bpf":
        ns.daemons.append(Daemon("ipip-bpf", {**config, "underlay": UNDERLAY_IF}))
        return
    ns.daemons.append(Daemon("ipip", config))
