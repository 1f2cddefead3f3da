"""`labctl bench --scale`: how planning, `up`, BGP convergence and `verify` grow with the
cluster, and what a full mesh costs next to route reflectors. Figures, not pass/fail.

Plan rows are pure (no root, no lab): seconds and peak Python memory to plan a calico-bgp
cluster of each size, with its BGP session count and what it would ask of this host. Live
rows build the lab, unless this host cannot hold it (`labctl.capacity`): then the row says
which limit refused it, as `up` would.
"""

from __future__ import annotations

import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

from labctl import capacity, lifecycle
from labctl.modes import get_mode
from labctl.topology import dump_topology, parse_topology
from labctl.verify import verify

MODE = "calico-bgp"
#: Route reflectors in the "rr" design (Calico's advice: two or more, for redundancy).
REFLECTORS = 2
#: Sizes of the plan rows: nodes, with `pods_per_node` pods each (the issue's 500 x 5,000).
PLAN_SIZES = (3, 10, 30, 100, 500)


def scale_topology(nodes: int, pods_per_node: int, reflectors: int = 0) -> dict[str, Any]:
    """Calico nodes on one /16 segment, `pods_per_node` pods each; the first `reflectors`
    nodes are route reflectors (0: the node-to-node full mesh)."""
    topo: dict[str, Any] = {
        "name": f"scale-{nodes}x{pods_per_node}-{'rr' if reflectors else 'mesh'}",
        "cluster": {"podCIDR": "10.128.0.0/9", "nodeCIDRSize": 24},
        "segments": {"lan1": {"cidr": "10.0.0.0/16"}},
        "nodes": {
            f"node{i}": {"segment": "lan1", "ip": f"10.0.{i // 250}.{i % 250 + 2}"}
            for i in range(nodes)
        },
        "pods": [
            {"name": f"pod-{i}-{j}", "node": f"node{i}"}
            for i in range(nodes)
            for j in range(pods_per_node)
        ],
    }
    if reflectors:
        topo["bgp"] = {"routeReflectors": [f"node{i}" for i in range(reflectors)]}
    return topo


def sessions(nodes: int, reflectors: int) -> int:
    """Node-to-node BGP sessions: n(n-1)/2 for the mesh; with r reflectors each client peers
    with every reflector and the reflectors with each other."""
    if not reflectors:
        return nodes * (nodes - 1) // 2
    return reflectors * (nodes - reflectors) + reflectors * (reflectors - 1) // 2


def plan_row(nodes: int, pods_per_node: int, reflectors: int) -> dict[str, Any]:
    """Time and peak memory to validate and plan one size (best of three for time)."""
    data = scale_topology(nodes, pods_per_node, reflectors)
    mode = get_mode(MODE)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        plan = mode.plan(parse_topology(data))
        times.append(time.perf_counter() - t0)
    tracemalloc.start()
    mode.plan(parse_topology(data))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    need = capacity.demand(plan)
    return {
        "design": "rr" if reflectors else "mesh",
        "nodes": nodes,
        "pods": nodes * pods_per_node,
        "planSeconds": round(min(times), 3),
        "planPeakMB": round(peak / 2**20, 1),
        "bgpSessions": sessions(nodes, reflectors),
        "neighbours": need.neighbours,
        "memoryMB": round(need.memory_mb),
        "refused": _refusal(need),
    }


def _refusal(need: capacity.Demand) -> str | None:
    try:
        capacity.check(need, capacity.host_limits())
    except capacity.CapacityError as e:
        return f"refused: {e.short}"
    return None


def _settle_neighbours(timeout: float = 30.0) -> None:
    """Wait while the shared neighbour table still shrinks: the kernel frees a deleted
    namespace's entries some time after `down`, and the previous row's would count."""
    deadline = time.monotonic() + timeout
    last = capacity.host_limits().neighbours_used
    while time.monotonic() < deadline:
        time.sleep(1)
        now = capacity.host_limits().neighbours_used
        if now >= last:
            return
        last = now


def live_row(
    nodes: int, pods_per_node: int, reflectors: int, lab: str, progress: Callable[[str], None]
) -> dict[str, Any]:
    """Build the lab and time `up` (with the BGP phase on its own), `verify` and `down`."""
    data = scale_topology(nodes, pods_per_node, reflectors)
    row: dict[str, Any] = {
        "design": "rr" if reflectors else "mesh",
        "nodes": nodes,
        "pods": nodes * pods_per_node,
        "bgpSessions": sessions(nodes, reflectors),
    }
    topo = parse_topology(data)
    _settle_neighbours()
    refused = _refusal(capacity.demand(get_mode(MODE).plan(topo)))
    if refused:
        row["refused"] = refused
        return row
    phases: dict[str, float] = {}

    def phase(what: str) -> None:
        phases.setdefault(what, time.monotonic())
        progress(f"{row['design']} {nodes} nodes: {what}")

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "scale.yaml"
        path.write_text(dump_topology(data))
        t0 = time.monotonic()
        try:
            lifecycle.up(lab, get_mode(MODE), path, topo, phase)
            t1 = time.monotonic()
            # FRR is up's last step: from its start to ready is BGP convergence.
            bgp_from = next((t for p, t in phases.items() if p.startswith("starting FRR")), t1)
            progress(f"{row['design']} {nodes} nodes: verify")
            report = verify(lab, with_mtu=False)
            t2 = time.monotonic()
            row.update(
                up=round(t1 - t0, 2),
                converge=round(t1 - bgp_from, 2),
                verify=round(t2 - t1, 2),
                # TCP pod pairs verify probed, of all ordered pairs (it samples large labs).
                pairsProbed=report.pairs["tcp"][0],
                pairs=report.pairs["tcp"][1],
                verified=report.passed,
                failed=[f"{c.name}: {c.detail}" for c in report.checks if not c.passed][:5],
            )
        finally:
            t3 = time.monotonic()
            lifecycle.down(lab)
            row["down"] = round(time.monotonic() - t3, 2)
    return row


def run(
    sizes: list[int],
    pods_per_node: int,
    lab: str,
    progress: Callable[[str], None],
) -> dict[str, list[dict[str, Any]]]:
    """Plan rows for PLAN_SIZES (10 pods per node), live rows for `sizes`; both designs."""
    plans = [
        plan_row(n, 10, r) for n in PLAN_SIZES for r in (0, REFLECTORS) if n > REFLECTORS or not r
    ]
    live = [
        live_row(n, pods_per_node, r, lab, progress)
        for n in sizes
        for r in (0, REFLECTORS)
        if n > REFLECTORS or not r
    ]
    return {"plan": plans, "live": live}
