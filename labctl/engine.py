"""The engine: applies a Plan to the lab's namespaces with pyroute2 (netlink, no shell).

Order inside a namespace follows what the real agents do: devices, addresses, links up,
neighbours, FDB, routes (flanneld's neighbour-FDB-route order, so nothing needs resolving),
sysctls, netfilter rules (iptables-restore), then files. Nodes and routers go first because
they create the pods' veths.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from labctl.nsutil import in_netns, netns_path, nsenter_argv, write_sysctl
from labctl.plan import Fdb, Link, NamespacePlan, Neigh, Plan, Route

NUD_PERMANENT = 0x80
NTF_SELF = 0x02
RTNH_F_ONLINK = 0x04
RTPROT_BOOT = 3  # what `ip route add` uses; `ip route` then prints no "proto"
RT_SCOPE = {"link": 253, "global": 0}


class EngineError(RuntimeError):
    """A plan object the kernel refused; names the namespace and object."""


def _index(ip: IPRoute, name: str) -> int:
    found = ip.link_lookup(ifname=name)
    if not found:
        raise EngineError(f"device {name} does not exist")
    return int(found[0])


def _create_link(ip: IPRoute, link: Link, pids: dict[str, int]) -> None:
    common: dict[str, object] = {"ifname": link.name}
    if link.mtu:
        common["mtu"] = link.mtu
    if link.mac:
        common["address"] = link.mac
    if link.kind == "bridge":
        ip.link("add", kind="bridge", **common)
    elif link.kind == "vxlan":
        ip.link(
            "add",
            kind="vxlan",
            vxlan_id=link.vni,
            vxlan_port=link.port,
            vxlan_local=link.local,
            vxlan_link=_index(ip, link.underlay or ""),
            vxlan_learning=1 if link.learning else 0,
            **common,
        )
    elif link.kind == "veth":
        assert link.peer_ns is not None
        peer_fd = os.open(netns_path(pids[link.peer_ns]), os.O_RDONLY)
        try:
            peer: dict[str, object] = {"ifname": link.peer_name, "net_ns_fd": peer_fd}
            if link.peer_mac:
                peer["address"] = link.peer_mac
            if link.peer_mtu:
                peer["mtu"] = link.peer_mtu
            ip.link("add", kind="veth", peer=peer, **common)
        finally:
            os.close(peer_fd)
    elif link.kind == "ipip":
        if link.name == "tunl0" and ip.link_lookup(ifname="tunl0"):
            # With the ipip module loaded every namespace already has the fallback tunl0
            # (local any, remote any); Calico's Felix adopts it rather than creating one.
            ip.link("set", index=_index(ip, "tunl0"), mtu=link.mtu)
        else:
            ip.link("add", kind="ipip", ipip_local=link.local, **common)
    elif link.kind == "tun":
        # Persistent, so the userspace datapath can restart without losing routes.
        ip.link("add", ifname=link.name, kind="tuntap", mode="tun", ifr={"no_pi": True})
        extra = {k: v for k, v in common.items() if k == "mtu"}
        if extra:
            ip.link("set", index=_index(ip, link.name), **extra)
    else:
        raise EngineError(f"device kind {link.kind} is not supported by this kernel path")
    if link.master:
        idx = _index(ip, link.name)
        ip.link("set", index=idx, master=_index(ip, link.master))
        if link.hairpin:
            ip.brport("set", index=idx, mode=1)


def _route_args(ip: IPRoute, route: Route) -> dict[str, object]:
    args: dict[str, object] = {"dst": "0.0.0.0/0" if route.dst == "default" else route.dst}
    if route.type == "blackhole":
        args["type"] = "blackhole"
        if route.proto is not None:
            args["proto"] = route.proto
        return args
    args["proto"] = route.proto if route.proto is not None else RTPROT_BOOT
    if route.via:
        args["gateway"] = route.via
    if route.dev:
        args["oif"] = _index(ip, route.dev)
    if route.onlink:
        args["flags"] = RTNH_F_ONLINK
    if route.scope:
        args["scope"] = RT_SCOPE[route.scope]
    return args


def _neigh(ip: IPRoute, n: Neigh) -> None:
    ip.neigh("replace", dst=n.ip, lladdr=n.mac, ifindex=_index(ip, n.dev), state=NUD_PERMANENT)


def _fdb(ip: IPRoute, f: Fdb) -> None:
    ip.fdb(
        "replace",
        ifindex=_index(ip, f.dev),
        lladdr=f.mac,
        dst=f.dst,
        state=NUD_PERMANENT,
        flags=NTF_SELF,
    )


def _route(ip: IPRoute, where: str, route: Route) -> list[str]:
    try:
        ip.route("replace", **_route_args(ip, route))
    except NetlinkError as e:
        if not route.best_effort:
            raise
        # flanneld's behaviour: log the refused route and carry on.
        return [
            f"{where}: error adding route {route.describe()}: "
            f"{os.strerror(e.code)}" + (f" ({route.why})" if route.why else "")
        ]
    return []


def program_peer(ip: IPRoute, where: str, ns: NamespacePlan) -> list[str]:
    """Program one peer's objects (a node agent's lease handler), in flanneld's order:
    neighbours, FDB, routes; return warnings for refused best-effort routes."""
    for n in ns.neighbours:
        _neigh(ip, n)
    for f in ns.fdb:
        _fdb(ip, f)
    return [w for r in ns.routes for w in _route(ip, where, r)]


def unprogram_peer(ip: IPRoute, ns: NamespacePlan) -> None:
    """Remove what `program_peer` added for a peer whose lease is gone (routes first)."""
    for r in ns.routes:
        with contextlib.suppress(NetlinkError, EngineError):
            ip.route("del", **_route_args(ip, r))
    for f in ns.fdb:
        with contextlib.suppress(NetlinkError, EngineError):
            ip.fdb("del", ifindex=_index(ip, f.dev), lladdr=f.mac, dst=f.dst, flags=NTF_SELF)
    for n in ns.neighbours:
        with contextlib.suppress(NetlinkError, EngineError):
            ip.neigh("del", dst=n.ip, lladdr=n.mac, ifindex=_index(ip, n.dev))


def apply_namespace(ns: NamespacePlan, pid: int, pids: dict[str, int]) -> list[str]:
    """Program one namespace; return warnings for best-effort objects the kernel refused."""
    warnings: list[str] = []
    with in_netns(pid), IPRoute() as ip:
        step = "lo"
        try:
            ip.link("set", index=_index(ip, "lo"), state="up")
            for link in ns.links:
                step = f"link {link.name}"
                _create_link(ip, link, pids)
            for addr in ns.addresses:
                step = f"address {addr.cidr} on {addr.dev}"
                host, plen = addr.cidr.split("/")
                ip.addr("replace", index=_index(ip, addr.dev), address=host, prefixlen=int(plen))
            step = "links up"
            for link in ip.get_links():
                if link.get("state") != "up":
                    ip.link("set", index=link["index"], state="up")
            # Objects marked `agent` are the node agent's to program from etcd leases.
            for n in ns.neighbours:
                if n.agent:
                    continue
                step = f"neighbour {n.ip} on {n.dev}"
                _neigh(ip, n)
            for f in ns.fdb:
                if f.agent:
                    continue
                step = f"fdb {f.mac} dst {f.dst} on {f.dev}"
                _fdb(ip, f)
            for route in ns.routes:
                if route.agent:
                    continue
                step = f"route {route.describe()}"
                warnings += _route(ip, ns.name, route)
            for key, value in ns.sysctls.items():
                step = f"sysctl {key}"
                write_sysctl(key, value)
        except (NetlinkError, OSError) as e:
            code = e.code if isinstance(e, NetlinkError) else e.errno
            raise EngineError(f"{ns.name}: {step}: {os.strerror(code or errno.EINVAL)}") from e
    if ns.netfilter:
        apply_netfilter(ns.name, pid, ns.netfilter)
    for path, content in ns.files.items():
        _write_file(pid, path, content)
    for dev, features in ns.offloads_off.items():
        _offloads_off(pid, dev, features)
    return warnings


def _iptables(pid: int, argv: list[str], text: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        nsenter_argv(pid, argv, mount=False), input=text, capture_output=True, text=True
    )


def _tables(dump: str) -> dict[str, str]:
    """iptables-save/-restore text split per table: name -> its `*table` ... `COMMIT` block."""
    return {
        m.group(1): m.group(0) + "\n"
        for m in re.finditer(r"^\*(\w+)$.*?^COMMIT$", dump, flags=re.M | re.S)
    }


def apply_netfilter(name: str, pid: int, text: str) -> None:
    """Load iptables-restore input `text` into namespace `pid` without flushing what is there;
    all or nothing: EngineError naming `name` and iptables' complaint if it is refused."""
    before = _tables(_iptables(pid, ["iptables-save"]).stdout)
    proc = _iptables(pid, ["iptables-restore", "--noflush"], text)
    if proc.returncode == 0:
        return
    # iptables-nft commits each table at its COMMIT, so tables before the refused one are in:
    # put back what those tables held (a table that did not exist is restored empty).
    undo = "".join(before.get(t, f"*{t}\nCOMMIT\n") for t in _tables(text))
    _iptables(pid, ["iptables-restore"], undo)
    complaint = "; ".join(
        line.strip() for line in proc.stderr.splitlines() if line.strip() and "Try `" not in line
    )
    raise EngineError(f"{name}: iptables-restore refused the netfilter rules: {complaint}")


def _offloads_off(pid: int, dev: str, features: list[str]) -> None:
    # ethtool's feature names are stable and documented; its netlink API is not in pyroute2.
    argv = nsenter_argv(
        pid, ["ethtool", "-K", dev, *[x for f in features for x in (f, "off")]], mount=False
    )
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise EngineError(f"ethtool -K {dev}: {proc.stderr.strip()}")


def _write_file(pid: int, path: str, content: str) -> None:
    # /proc/<pid>/root resolves inside the node's own mount namespace, so this lands in the
    # node's private directory, not the host's.
    target = Path(f"/proc/{pid}/root") / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(content)
    target.chmod(0o644)


def apply(
    plan: Plan, pids: dict[str, int], progress: Callable[[str], None] | None = None
) -> list[str]:
    """Program every namespace of the plan; return the best-effort warnings."""
    warnings: list[str] = []
    order = sorted(plan.namespaces.values(), key=lambda n: n.role == "pod")
    for i, ns in enumerate(order):
        if progress and i % 25 == 0:
            progress(f"programming {ns.role} {ns.name} ({i + 1}/{len(order)})")
        warnings += apply_namespace(ns, pids[ns.name], pids)
    return warnings
