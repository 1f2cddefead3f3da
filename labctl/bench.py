"""`labctl bench`: how long `up`, `verify` and `down` take, on the default topology and on a
generated large one. Figures, not pass/fail: speed is measured here, never in timed tests."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from labctl import lifecycle
from labctl.topology import load_topology, resolve_path
from labctl.verify import verify


def large_topology(nodes: int = 20, pods_per_node: int = 10) -> dict[str, Any]:
    """A flat cluster: `nodes` nodes on one /24 and `pods_per_node` pods on each."""
    return {
        "name": f"large-{nodes}x{pods_per_node}",
        "cluster": {"podCIDR": "10.244.0.0/16", "nodeCIDRSize": 24},
        "segments": {"lan1": {"cidr": "10.0.0.0/24"}},
        "nodes": {f"node{i}": {"segment": "lan1", "ip": f"10.0.0.{10 + i}"} for i in range(nodes)},
        "pods": [
            {"name": f"pod-{i}-{j}", "node": f"node{i}", "labels": {"app": f"app{j % 3}"}}
            for i in range(nodes)
            for j in range(pods_per_node)
        ],
    }


def measure(mode: str, topology: Path, lab: str, with_mtu: bool = True) -> dict[str, Any]:
    """Time up, verify and down of one lab; the lab is always removed."""
    topo = load_topology(topology)
    row: dict[str, Any] = {
        "mode": mode,
        "topology": topo.name,
        "nodes": len(topo.nodes),
        "pods": len(topo.pods),
    }
    t0 = time.monotonic()
    try:
        lifecycle.up(lab, mode, topology, topo.name, lambda _: None)
        t1 = time.monotonic()
        report = verify(lab, with_mtu=with_mtu)
        t2 = time.monotonic()
        row.update(
            up=round(t1 - t0, 2),
            verify=round(t2 - t1, 2),
            passed=report.passed,
            checks=len(report.checks),
            pairs=len(topo.pods) * (len(topo.pods) - 1),
        )
    finally:
        t3 = time.monotonic()
        lifecycle.down(lab)
        row["down"] = round(time.monotonic() - t3, 2)
    return row


def run(
    modes: list[str], large: tuple[int, int], progress: Callable[[str], None]
) -> list[dict[str, Any]]:
    """Benchmark each mode on the default topology and on a generated large one."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        big = Path(tmp) / "large.yaml"
        big.write_text(yaml.safe_dump(large_topology(*large)))
        for mode in modes:
            for topo in (resolve_path("default"), big):
                progress(f"{mode} on {topo.stem}")
                rows.append(measure(mode, topo, "bench"))
    return rows
