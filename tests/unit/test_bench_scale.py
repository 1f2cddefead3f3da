"""`bench --scale` without a lab: the generated topologies, the session counts and the plan
staying linear in nodes and pods (memory, not time: no timed asserts)."""

from __future__ import annotations

import pytest
import yaml

from labctl import capacity
from labctl.bench import scale
from labctl.modes import get_mode
from labctl.topology import dump_topology, parse_topology


@pytest.mark.parametrize(("nodes", "reflectors"), [(3, 0), (10, 0), (10, 2), (30, 2), (4, 1)])
def test_session_count_matches_the_planned_speakers(nodes: int, reflectors: int) -> None:
    topo = parse_topology(scale.scale_topology(nodes, 1, reflectors))
    plan = get_mode("calico-bgp").plan(topo)
    ends = sum(len(ns.bgp.neighbors) for ns in plan.node_ns() if ns.bgp is not None)
    assert ends == 2 * scale.sessions(nodes, reflectors)  # each session has two ends


def test_reflectors_cut_sessions_from_quadratic_to_linear() -> None:
    assert scale.sessions(100, 0) == 4950
    assert scale.sessions(100, 2) == 2 * 98 + 1
    assert scale.sessions(500, 2) < scale.sessions(50, 0)


def test_plan_memory_grows_linearly_with_nodes_and_pods() -> None:
    small, big = scale.plan_row(50, 10, 0), scale.plan_row(500, 10, 0)
    assert (small["nodes"], small["pods"], big["pods"]) == (50, 500, 5000)
    # Ten times the cluster: linear is ~10x the memory, a per-pair plan would be ~100x.
    assert big["planPeakMB"] < 20 * small["planPeakMB"]
    assert big["planPeakMB"] < 300  # the bound for 500 nodes / 5,000 pods


def test_a_size_this_host_cannot_hold_is_named_not_built(monkeypatch: pytest.MonkeyPatch) -> None:
    kernel_default = capacity.Limits(neighbours=1024, memory_mb=24_000, fds=1024)
    monkeypatch.setattr(capacity, "host_limits", lambda: kernel_default)
    row = scale.live_row(200, 1, 0, "never-built", lambda _: None)
    assert row["refused"] == "refused: ARP 40200 > 1024 free of gc_thresh3 1024" and "up" not in row


def test_the_recorded_topology_is_the_planned_cluster() -> None:
    """`up` records the YAML; verify re-reads it. Node order decides pod CIDRs, so the dump
    must keep it (a sorted dump put node10 before node2 and failed verify at 30 nodes)."""
    data = scale.scale_topology(30, 1, 0)
    again = parse_topology(yaml.safe_load(dump_topology(data)))
    assert again.node_pod_cidrs == parse_topology(data).node_pod_cidrs
    # Negative: the sorted dump is another cluster.
    sorted_dump = parse_topology(yaml.safe_load(yaml.safe_dump(data)))
    assert sorted_dump.node_pod_cidrs != parse_topology(data).node_pod_cidrs
