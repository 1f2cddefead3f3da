"""The BGP route wait of `up`: which speakers it waits for, and what it reports (no root:
the kernel's routes are faked)."""

from __future__ import annotations

import pytest

from labctl import bgp, frr, routing

NODES = [
    bgp.CalicoNode("master", "10.0.0.31", ["10.65.0.0/26"]),
    bgp.CalicoNode("node1", "10.0.0.32", ["10.65.1.0/26"]),
    bgp.CalicoNode("node2", "10.0.0.33", ["10.65.2.0/26"]),
]
PIDS = {"master": 1, "node1": 2, "node2": 3, "r1": 4}
ALL = {"10.65.0.0/26", "10.65.1.0/26", "10.65.2.0/26"}


def _fake_kernel(monkeypatch: pytest.MonkeyPatch, routes: dict[int, set[str]]) -> list[int]:
    asked: list[int] = []

    def kernel_bgp_routes(pid: int) -> list[str]:
        asked.append(pid)
        return sorted(routes[pid])

    monkeypatch.setattr(frr, "kernel_bgp_routes", kernel_bgp_routes)
    return asked


def test_converged_mesh_returns_nothing_pending(monkeypatch: pytest.MonkeyPatch) -> None:
    # Each node has the two other blocks (its own is a static blackhole, not bgp).
    _fake_kernel(monkeypatch, {1: ALL - {"10.65.0.0/26"}, 2: ALL - {"10.65.1.0/26"},
                               3: ALL - {"10.65.2.0/26"}})  # fmt: skip
    assert routing.wait_routes(bgp.calico_speakers(NODES), PIDS, timeout=1) == set()


def test_a_missing_block_is_reported_after_the_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_kernel(monkeypatch, {1: ALL - {"10.65.0.0/26"}, 2: {"10.65.0.0/26"},
                               3: ALL - {"10.65.2.0/26"}})  # fmt: skip
    assert routing.wait_routes(bgp.calico_speakers(NODES), PIDS, timeout=0.1) == {"node1"}


def test_only_speakers_that_install_and_originate_are_waited_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    speakers = {
        **bgp.calico_speakers(NODES, install_routes=False),
        "r1": bgp.router_speaker("r1", "10.0.0.1", 65001, ["10.0.0.31"]),
    }
    asked = _fake_kernel(monkeypatch, {pid: set() for pid in PIDS.values()})
    # No-rib nodes (ipip/vxlan modes) and routers (no blocks of their own): nothing to wait.
    assert routing.wait_routes(speakers, PIDS, timeout=0.1) == set()
    assert asked == []


def test_config_dry_runs_once_per_shape_not_per_speaker() -> None:
    """A 30-node mesh has 30 configs but few shapes; a reflector's is a shape of its own."""
    from labctl.bench.scale import scale_topology
    from labctl.modes import get_mode
    from labctl.routing import _shape
    from labctl.topology import parse_topology

    mesh = get_mode("calico-bgp").plan(parse_topology(scale_topology(30, 1, 0)))
    shapes = {_shape(ns.bgp) for ns in mesh.node_ns() if ns.bgp is not None}
    assert 1 < len(shapes) <= 3  # who waits for whom differs at the ends of the IP order
    rr = get_mode("calico-bgp").plan(parse_topology(scale_topology(30, 1, 2)))
    rr_shapes = {_shape(ns.bgp) for ns in rr.node_ns() if ns.bgp is not None}
    assert {s[1] for s in rr_shapes} == {True, False}  # reflectors and clients both checked
