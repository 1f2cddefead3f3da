"""What the planner and routing-check tests share: cached topologies and plans, and lookups
into a NamespacePlan."""

from __future__ import annotations

from functools import cache
from ipaddress import IPv4Network

from labctl import store
from labctl.modes import get_mode
from labctl.plan import Link, NamespacePlan, Plan, Route, flows_for
from labctl.topology import Topology, load_topology
from labctl.wire import Flow


def link(ns: NamespacePlan, name: str) -> Link:
    """The one link called `name` (fails if there are none or several)."""
    (found,) = [x for x in ns.links if x.name == name]
    return found


def addrs(ns: NamespacePlan, dev: str) -> list[str]:
    """Addresses (CIDR strings) planned on `dev`."""
    return [a.cidr for a in ns.addresses if a.dev == dev]


def route_to(ns: NamespacePlan, dst: str) -> Route:
    """The one route to `dst` (fails if there are none or several)."""
    (found,) = [r for r in ns.routes if r.dst == dst]
    return found


@cache
def topo(name: str) -> Topology:
    """The named topology, loaded once per test session."""
    return load_topology(name)


@cache
def plan(mode: str, topology: str, datapath: str = "userspace") -> Plan:
    """`mode`'s plan for the named topology, built once per test session."""
    return get_mode(mode).plan(topo(topology), datapath)


def block(t: Topology, node: str) -> str:
    """The first /26 of the node's pod CIDR, computed here without the planner."""
    cidr = t.node_pod_cidrs[node]
    return str(IPv4Network(f"{cidr.network_address}/26"))


def topology_flows(p: Plan, topology: Topology) -> list[Flow]:
    """Every cross-node pod pair of the topology's pods, carried as `p` says."""
    pods = store.from_topology(topology, get_mode(p.mode).network).pods.values()
    return flows_for(list(pods), p, topology)
