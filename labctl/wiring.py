"""Mininet wiring: every node, router, external host and pod becomes a namespace (a Mininet
host), every segment a Linux bridge, every underlay attachment a veth into that bridge.

Runs inside the lab's private namespace, so Mininet's bridges and switch-side veths never
appear in the host's namespace.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pyroute2 import IPRoute

from labctl import frr
from labctl.nsutil import in_netns
from labctl.plan import Attachment, NamespacePlan, Plan

DEFAULT_MTU = 1500


def _mininet() -> tuple[Any, Any]:
    # Imported lazily: only the supervisor (Debian's /usr/bin/python3 venv) has Mininet.
    from mininet.log import setLogLevel
    from mininet.net import Mininet
    from mininet.nodelib import LinuxBridge

    setLogLevel("error")
    # Mininet.init() would raise host-wide limits and sysctls (fixLimits); the host is not
    # ours to change, and the lab does not need them.
    Mininet.inited = True
    return Mininet, LinuxBridge


def build(
    plan: Plan,
    on_namespace: Callable[[str, int], None],
    progress: Callable[[str], None] | None = None,
) -> Any:
    """Create the namespaces and the underlay; report each namespace's PID as it appears.

    Returns the Mininet object, which must stay referenced: it holds the node shells whose
    lifetime is the namespaces' lifetime.
    """
    mininet_cls, bridge_cls = _mininet()
    net = mininet_cls(switch=bridge_cls, controller=None, build=False, autoSetMacs=False)
    hosts = {}
    for i, ns in enumerate(plan.namespaces.values()):
        if progress and i % 25 == 0:
            progress(f"creating namespaces ({i + 1}/{len(plan.namespaces)})")
        dirs = list(ns.private_dirs) + (list(frr.PRIVATE_DIRS) if ns.bgp else [])
        host = net.addHost(f"h{i}", privateDirs=dirs)
        hosts[ns.name] = host
        on_namespace(ns.name, host.pid)
    segments = sorted({a.segment for a in plan.attachments})
    switches = {
        seg: net.addSwitch(f"sg{i}", dpid=str(i + 1), stp=False) for i, seg in enumerate(segments)
    }
    ports: dict[str, int] = {}
    for att in plan.attachments:
        sw = switches[att.segment]
        n = ports.get(att.segment, 0)
        ports[att.segment] = n + 1
        port = f"{sw.name}p{n}"
        net.addLink(hosts[att.ns], sw, intfName1=att.ifname, addr1=att.mac, intfName2=port)
        if att.mtu != DEFAULT_MTU:
            _set_mtu(att.mtu, port, hosts[att.ns].pid, att.ifname)
    for sw in switches.values():
        sw.start([])
    # Kept on the Mininet object, which the supervisor holds for the lab's lifetime: nodes
    # that join later plug into their segment's switch (add_host).
    net.labctl_segments = switches
    return net


def add_host(net: Any, ns: NamespacePlan, atts: list[Attachment], serial: int) -> Any:
    """A namespace for a node that joins a running lab, plugged into its segments' bridges as
    `build` plugs the others (`serial` makes the Mininet name unique); returns the host."""
    dirs = list(ns.private_dirs) + (list(frr.PRIVATE_DIRS) if ns.bgp else [])
    host = net.addHost(f"j{serial}", privateDirs=dirs)
    switches: dict[str, Any] = net.labctl_segments
    for att in atts:
        if att.segment not in switches:
            # A segment no namespace was on at `up` has no bridge yet.
            sw = net.addSwitch(f"sg{len(net.switches)}", dpid=str(len(net.switches) + 1), stp=False)
            sw.start([])
            switches[att.segment] = sw
        sw = switches[att.segment]
        n = 0
        while f"{sw.name}p{n}" in sw.nameToIntf:
            n += 1
        port = f"{sw.name}p{n}"
        net.addLink(host, sw, intfName1=att.ifname, addr1=att.mac, intfName2=port)
        # Mininet enslaves ports when a bridge starts; this one started long ago.
        with IPRoute() as lab:
            idx = lab.link_lookup(ifname=port)[0]
            lab.link("set", index=idx, master=lab.link_lookup(ifname=sw.name)[0], state="up")
        if att.mtu != DEFAULT_MTU:
            _set_mtu(att.mtu, port, host.pid, att.ifname)
    return host


def remove_host(net: Any, host: Any) -> None:
    """Remove a node's namespace and its links from the segments (a node that leaves)."""
    for link in [x for x in net.links if host in (x.intf1.node, x.intf2.node)]:
        # Deleting one end of a veth deletes both: the bridge port goes with it.
        link.intf1.node.cmd("ip link del", link.intf1.name)
        for intf in (link.intf1, link.intf2):
            intf.node.delIntf(intf)
        net.links.remove(link)
    host.terminate()
    net.hosts.remove(host)
    del net.nameToNode[host.name]


def _set_mtu(mtu: int, port: str, pid: int, ifname: str) -> None:
    """Mininet has no MTU knob: set the segment's MTU on the switch port (this process runs
    in the lab namespace; the bridge follows its ports) and on the node's end."""
    with IPRoute() as lab:
        lab.link("set", index=lab.link_lookup(ifname=port)[0], mtu=mtu)
    with in_netns(pid), IPRoute() as node:
        node.link("set", index=node.link_lookup(ifname=ifname)[0], mtu=mtu)
