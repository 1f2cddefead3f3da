"""Nodes that join and leave a running lab (`labctl node add|remove`), the pure part: the
new node validated as the topology loader validates one, the topology as it becomes, and the
re-plan: what the joining or leaving node changes in the lab's recorded plan.

The same planner `up` uses plans the lab before and after the change; a node's share of the
difference must be something a running cluster's agents follow on their own (flannel and
canal: the per-peer routes, neighbours and FDB entries the agents program from the leases;
Calico: the VTEPs and block routes calico-node programs from the Node and block records, and
BGP neighbours, as confd re-renders BIRD's config; both: the peer tables of the userspace and
BPF datapaths). Anything else would need the lab rebuilt, and the change is refused before
anything is touched.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields, replace
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import yaml

from labctl.bgp import BgpSpeaker
from labctl.controlplane.supervise import AGENT as FLANNEL_AGENT
from labctl.errors import LabctlError
from labctl.modes import Mode
from labctl.plan import Daemon, NamespacePlan, Plan
from labctl.topology import DNS1123_LABEL, Topology, TopologyError, parse_topology

HEADER = (
    "# The lab's topology as it is now: recorded by labctl node add/remove (every node's pod\n"
    "# CIDR written out, so that a node leaving never moves another node's subnet).\n"
)


class NodeChangeError(ValueError, LabctlError):
    """A node add/remove the lab refuses (bad input, unsupported mode); exit 2."""

    exit_code = 2


def mechanism(plan: Plan) -> str:
    """What makes the other nodes follow a node joining or leaving a lab of `plan`: flannel's
    lease watch (canal too: its routes are flanneld's), BGP where the speakers install the
    routes (calico-bgp), else the calico-node agents' etcd watch, with BGP announcing the
    blocks beside it in the IPIP modes (BIRD's part; the routes are Felix's)."""
    kinds = {d.kind for ns in plan.node_ns() for d in ns.daemons}
    speakers = [ns.bgp for ns in plan.node_ns() if ns.bgp is not None]
    if FLANNEL_AGENT in kinds:
        return "flannel lease watch"
    if any(s.install_routes for s in speakers):
        return "BGP"
    if speakers:
        return "calico-node watch; BGP announces"
    return "calico-node watch"


def read_raw(path: str | Path) -> dict[str, Any]:
    """The recorded topology file as plain data (it was validated at `up`)."""
    data: dict[str, Any] = yaml.safe_load(Path(path).read_text())
    return data


def write_raw(path: str | Path, raw: dict[str, Any]) -> None:
    """Record the topology as it is now (atomically: every later command reads it)."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(HEADER + yaml.safe_dump(raw, sort_keys=False, default_flow_style=None))
    tmp.replace(target)


def _pinned(raw: dict[str, Any], topo: Topology) -> dict[str, Any]:
    """A copy of `raw` with every node's pod CIDR explicit: allocation runs in node order, so
    without this a node leaving would shift the subnets of the nodes after it."""
    out = copy.deepcopy(raw)
    for name, node in out["nodes"].items():
        node["podCIDR"] = str(topo.node_pod_cidrs[name])
    return out


def _used_ips(topo: Topology) -> dict[IPv4Address, str]:
    used = {n.ip: f"nodes.{name}" for name, n in topo.nodes.items()}
    used |= {x.ip: f"externals.{name}" for name, x in topo.externals.items()}
    for rname, router in topo.routers.items():
        used |= {ip: f"routers.{rname}" for ip in router.interfaces.values()}
    return used


def _free_ip(topo: Topology, segment: str) -> str:
    used = _used_ips(topo)
    free = next((ip for ip in topo.segments[segment].cidr.hosts() if ip not in used), None)
    return f", e.g. {free}" if free else ""


def _free_cidr(topo: Topology, size: int) -> IPv4Network | None:
    taken = list(topo.node_pod_cidrs.values())
    return next(
        (
            s
            for s in topo.cluster.podCIDR.subnets(new_prefix=size)
            if not any(s.overlaps(t) for t in taken)
        ),
        None,
    )


def add_node(
    raw: dict[str, Any],
    topo: Topology,
    name: str,
    segment: str,
    ip: str,
    pod_cidr: str | None = None,
) -> tuple[dict[str, Any], Topology]:
    """The topology with node `name` added (raw data to record, validated model); one-line
    NodeChangeError naming the option and the fix."""
    if not DNS1123_LABEL.match(name):
        raise NodeChangeError(
            f"NAME {name!r}: use a DNS-1123 label (lowercase letters, digits and '-', at most "
            "63, starting and ending alphanumeric)"
        )
    for section in ("nodes", "routers", "externals", "segments"):
        if name in getattr(topo, section):
            raise NodeChangeError(
                f"NAME {name!r} is already used by {section}.{name}; pick another name"
            )
    if segment not in topo.segments:
        raise NodeChangeError(
            f"--segment {segment!r}: no such segment; use one of {', '.join(topo.segments)}"
        )
    cidr = topo.segments[segment].cidr
    try:
        addr = IPv4Address(ip)
    except ValueError:
        raise NodeChangeError(
            f"--ip {ip!r}: not an IPv4 address; write e.g. {next(cidr.hosts())}"
        ) from None
    if addr not in cidr or addr in (cidr.network_address, cidr.broadcast_address):
        raise NodeChangeError(
            f"--ip {addr}: not a host address of segment {segment} ({cidr}); pick a free "
            f"one{_free_ip(topo, segment)}"
        )
    owner = _used_ips(topo).get(addr)
    if owner is not None:
        raise NodeChangeError(
            f"--ip {addr}: already used by {owner}; pick a free address of segment "
            f"{segment}{_free_ip(topo, segment)}"
        )
    size = topo.cluster.nodeCIDRSize
    if pod_cidr is None:
        pods = _free_cidr(topo, size)
        if pods is None:
            raise NodeChangeError(
                f"--pod-cidr: cluster.podCIDR {topo.cluster.podCIDR} has no free /{size} left; "
                "give a smaller free range with --pod-cidr"
            )
    else:
        try:
            pods = IPv4Network(pod_cidr)
        except ValueError:
            raise NodeChangeError(
                f"--pod-cidr {pod_cidr!r}: not an IPv4 network; write address/prefix with no "
                "host bits set, e.g. 10.244.9.0/24"
            ) from None
        if not pods.subnet_of(topo.cluster.podCIDR) or pods.prefixlen > 28:
            raise NodeChangeError(
                f"--pod-cidr {pods}: use a /{topo.cluster.podCIDR.prefixlen}-/28 range inside "
                f"cluster.podCIDR {topo.cluster.podCIDR}, or leave it out to get a free one"
            )
        for other, taken in topo.node_pod_cidrs.items():
            if pods.overlaps(taken):
                free = _free_cidr(topo, size)
                raise NodeChangeError(
                    f"--pod-cidr {pods}: overlaps node {other}'s {taken}; pick a free range"
                    + (f", e.g. {free}" if free else "")
                    + ", or leave --pod-cidr out"
                )
    out = _pinned(raw, topo)
    out["nodes"][name] = {"segment": segment, "ip": str(addr), "podCIDR": str(pods)}
    return out, _parse(out, f"node {name}")


def remove_node(
    raw: dict[str, Any], topo: Topology, name: str, bgp: bool
) -> tuple[dict[str, Any], Topology]:
    """The topology without node `name` (and its topology pods); refused for the last node,
    the only route reflector of a BGP mode (`bgp`), or a node others route through."""
    if name not in topo.nodes:
        raise NodeChangeError(
            f"NAME {name!r} is not a node of this lab; use one of {', '.join(topo.nodes)}"
        )
    if len(topo.nodes) == 1:
        raise NodeChangeError(
            f"NAME {name!r} is the lab's last node; a cluster needs one ('labctl down' "
            "removes the whole lab)"
        )
    rrs = topo.bgp.routeReflectors
    if bgp and rrs == [name]:
        clients = [n for n in topo.nodes if n != name]
        raise NodeChangeError(
            f"NAME {name!r} is the only BGP route reflector and nodes {', '.join(clients)} "
            "peer with it alone; remove them first, or up a lab with a second reflector"
        )
    ip = topo.nodes[name].ip
    hops = [
        f"externals.{x}.routes[{i}]"
        for x, ext in topo.externals.items()
        for i, r in enumerate(ext.routes)
        if r.via == ip
    ] + [f"externals.{x}.gateway" for x, ext in topo.externals.items() if ext.gateway == ip]
    hops += [
        f"routers.{r}.routes[{i}]"
        for r, router in topo.routers.items()
        for i, route in enumerate(router.routes)
        if route.via == ip
    ]
    if hops:
        raise NodeChangeError(
            f"NAME {name!r}: {hops[0]} routes via its address {ip}; the lab would lose that "
            "path (up a lab without it)"
        )
    out = _pinned(raw, topo)
    del out["nodes"][name]
    out["pods"] = [p for p in out.get("pods") or [] if p.get("node") != name]
    if name in rrs:
        out["bgp"]["routeReflectors"] = [r for r in rrs if r != name]
    return out, _parse(out, f"node {name}")


def _parse(raw: dict[str, Any], what: str) -> Topology:
    try:
        return parse_topology(raw, what)
    except TopologyError as e:
        raise NodeChangeError(f"{e}; nothing was changed") from None


@dataclass
class Change:
    """What a node's joining or leaving does to the lab's recorded plan."""

    plan: Plan  # the recorded plan as it becomes
    node: str
    joined: bool
    #: Namespaces whose daemons get a new config (peer tables): (namespace, daemon).
    daemons: list[tuple[str, Daemon]] = field(default_factory=list)
    #: Speakers whose BGP neighbours change: namespace -> (before, after); None: no speaker.
    speakers: dict[str, tuple[BgpSpeaker | None, BgpSpeaker | None]] = field(default_factory=dict)
    #: Namespace -> agent-programmed objects it gains (join) or loses (leave), for messages.
    peers: dict[str, int] = field(default_factory=dict)


def _static(ns: NamespacePlan) -> NamespacePlan:
    """What a running cluster's agents would not change on their own when a node comes or
    goes: everything but agent objects, daemon configs and BGP neighbours."""
    return replace(
        ns,
        routes=[r for r in ns.routes if not r.agent],
        neighbours=[n for n in ns.neighbours if not n.agent],
        fdb=[f for f in ns.fdb if not f.agent],
        daemons=[Daemon(d.kind, {}) for d in ns.daemons],
        bgp=ns.bgp.model_copy(update={"neighbors": []}) if ns.bgp else None,
    )


def _agent_objects(ns: NamespacePlan) -> int:
    return (
        sum(r.agent for r in ns.routes)
        + sum(n.agent for n in ns.neighbours)
        + sum(f.agent for f in ns.fdb)
    )


def replan(
    mode: Mode, datapath: str, recorded: Plan, old_topo: Topology, new_topo: Topology
) -> Change:
    """Plan `old_topo` and `new_topo` (one node more or less) with `mode`; return the recorded
    plan with the node's share applied. NodeChangeError when the node changes more in another
    namespace than its agents or BGP follow."""
    (node,) = set(new_topo.nodes) ^ set(old_topo.nodes)
    joined = node in new_topo.nodes
    before, after = mode.plan(old_topo, datapath), mode.plan(new_topo, datapath)
    plan = copy.deepcopy(recorded)
    change = Change(plan=plan, node=node, joined=joined)
    for name, old in before.namespaces.items():
        new = after.namespaces.get(name)
        if new is None or old.role == "pod":
            continue
        a, b = _static(old), _static(new)
        if a != b:
            what = ", ".join(
                f.name for f in fields(NamespacePlan) if getattr(a, f.name) != getattr(b, f.name)
            )
            raise NodeChangeError(
                f"node {'add' if joined else 'remove'} {node}: in {mode.name} it changes "
                f"{name}'s {what} beyond what its agents and BGP follow; up a new lab with "
                "the topology you want"
            )
        rec = plan.namespaces[name]
        gained = _agent_objects(new) - _agent_objects(old)
        if gained:
            change.peers[name] = gained
        rec.routes = [r for r in rec.routes if not r.agent] + [r for r in new.routes if r.agent]
        rec.neighbours = [n for n in rec.neighbours if not n.agent] + [
            n for n in new.neighbours if n.agent
        ]
        rec.fdb = [f for f in rec.fdb if not f.agent] + [f for f in new.fdb if f.agent]
        for i, d in enumerate(rec.daemons):
            fresh = next((x for x in new.daemons if x.kind == d.kind), None)
            if fresh is not None and fresh.config != d.config:
                rec.daemons[i] = fresh
                change.daemons.append((name, fresh))
        if rec.bgp != new.bgp:
            change.speakers[name] = (rec.bgp, new.bgp)
            rec.bgp = new.bgp
    if joined:
        ns = after.namespaces[node]
        plan.namespaces[node] = ns
        plan.attachments += [a for a in after.attachments if a.ns == node]
        plan.node_pod_mtu[node] = after.node_pod_mtu[node]
        if ns.bgp is not None:
            change.speakers[node] = (None, ns.bgp)
    else:
        gone = plan.namespaces.pop(node)
        for key in [k for k, n in plan.namespaces.items() if n.role == "pod" and n.node == node]:
            del plan.namespaces[key]
        plan.attachments = [a for a in plan.attachments if a.ns != node]
        del plan.node_pod_mtu[node]
        if gone.bgp is not None:
            change.speakers[node] = (gone.bgp, None)
    plan.pod_mtu = min(plan.node_pod_mtu.values())
    plan.paths = dict(after.paths)
    # The planner's notes follow the node list ("nodes a, b have no default route"): its old
    # ones give way to its new ones; notes from elsewhere stay.
    plan.notes = [n for n in plan.notes if n not in before.notes] + after.notes
    return change
