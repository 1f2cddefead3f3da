"""Tunnel devices both CNI families program: a VXLAN VTEP, and an IPIP tunnel that is the
kernel's device or, where the kernel has no ipip, the userspace datapath on a TUN."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

from labctl.plan import UNDERLAY_IF, Daemon, Link, NamespacePlan


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
    datapath, which cannot see a route's gateway and so needs the table itself."""
    if datapath == "kernel":
        ns.links.append(Link(name=name, kind="ipip", local=str(local), mtu=mtu))
        return
    ns.links.append(Link(name=name, kind="tun", mtu=mtu))
    table = [{"subnet": str(subnet), "node_ip": str(ip)} for subnet, ip in routes]
    ns.daemons.append(Daemon("ipip", {"tun": name, "local_ip": str(local), "routes": table}))
