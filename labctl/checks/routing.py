"""Routing checks verify runs in Calico modes: BGP sessions against the design, BGP routes in
the kernels (and on routers pod traffic crosses), routes written like Felix."""

from __future__ import annotations

import json
import subprocess
from ipaddress import IPv4Network
from typing import Any

from labctl import frr
from labctl.modes.calico import (
    blocks,
    design,
    expected_node_sessions,
    routers_between_segments,
)
from labctl.nsutil import nsenter_argv
from labctl.plan import Plan, Route
from labctl.topology import Topology
from labctl.wire import CheckResult


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
                f"{design(topo)}: {len(node_pairs)}/{want_n} node-to-node sessions Established",
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


def bgp_route_checks(topo: Topology, plan: Plan, pids: dict[str, int]) -> list[CheckResult]:
    """calico-bgp: each node has every remote block as a ``proto bgp`` kernel route, and each
    router that pod traffic may cross has a route covering every block."""
    by_node = blocks(topo)
    out = []
    for node in topo.nodes:
        want = sorted(str(b) for n, b in by_node.items() if n != node)
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
    for router in routers_between_segments(topo):
        nets = [
            IPv4Network("0.0.0.0/0" if r["dst"] == "default" else r["dst"], strict=False)
            for r in _kernel_routes(pids[router])
            if r.get("type", "unicast") == "unicast"
        ]
        missing = [str(b) for b in by_node.values() if not any(b.subnet_of(n) for n in nets)]
        why = (
            "it has no asn, so it runs no BGP and learns no pod routes"
            if topo.routers[router].asn is None
            else "BGP did not bring them"
        )
        detail = (
            f"routes cover all {len(by_node)} pod blocks"
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
    block_dsts = {str(b) for b in blocks(topo).values()}
    out = []
    for ns in plan.node_ns():
        want = [r for r in ns.routes if r.dst in block_dsts]
        have = _kernel_routes(pids[ns.name])
        missing = [r for r in want if not any(_same_route(k, r) for k in have)]
        detail = f"{len(want) - len(missing)}/{len(want)} Felix routes present"
        if missing:
            detail += "; missing: " + "; ".join(r.describe() for r in missing)
        out.append(CheckResult(f"felix routes {ns.name}", not missing, detail))
    return out
