"""The host-capacity check `up` runs before building (no root: demand is pure, limits given)."""

from __future__ import annotations

import pytest

from labctl import capacity
from labctl.bench.scale import scale_topology
from labctl.capacity import CapacityError, Demand, Limits
from labctl.modes import get_mode
from labctl.topology import load_topology, parse_topology

ROOMY = Limits(neighbours=1024, memory_mb=24_000, fds=1024)


def test_demand_of_the_default_topology() -> None:
    plan = get_mode("calico-bgp").plan(load_topology("default"))
    need = capacity.demand(plan)
    # 3 nodes on one segment: 3*2 entries; 6 pods: each with its node, both ways.
    assert need.neighbours == 3 * 2 + 2 * 6
    # supervisor + 9 shells + 3 FRR + etcd + a calico-node agent per node.
    assert need.memory_mb == pytest.approx(70 + 3.5 * 9 + 35 * 3 + 30 + 50 * 3)
    assert need.fds == 40 + 4 * 9
    capacity.check(need, ROOMY)  # the default lab fits a default host


def test_flannel_counts_etcd_and_an_agent_per_node() -> None:
    plan = get_mode("flannel-vxlan").plan(load_topology("default"))
    assert capacity.demand(plan).memory_mb == pytest.approx(70 + 3.5 * 9 + 30 + 50 * 3)


def test_a_segment_too_big_for_the_neighbour_table_is_refused() -> None:
    # 33 nodes on one segment: 33*32 = 1056 entries > 1024, the kernel's default cap.
    need = capacity.demand(get_mode("calico-bgp").plan(parse_topology(scale_topology(33, 1))))
    assert need.neighbours == 33 * 32 + 2 * 33
    with pytest.raises(CapacityError, match=r"gc_thresh3 is 1024: raise it on the host"):
        capacity.check(need, ROOMY)
    # Negative: 31 nodes fit.
    capacity.check(
        capacity.demand(get_mode("calico-bgp").plan(parse_topology(scale_topology(31, 1)))), ROOMY
    )


@pytest.mark.parametrize(
    ("have", "message"),
    [
        (Limits(neighbours=1024, memory_mb=100, fds=1024), r"needs ~200 MB but the host has 100"),
        (Limits(neighbours=1024, memory_mb=24_000, fds=50), r"needs ~60 open files .* is 50"),
    ],
)
def test_memory_and_file_limits_are_named(have: Limits, message: str) -> None:
    need = Demand(neighbours=10, memory_mb=200, fds=60)
    with pytest.raises(CapacityError, match=message):
        capacity.check(need, have)
    capacity.check(need, ROOMY)  # negative: the same lab on a roomy host


def test_the_error_is_one_line_with_exit_2() -> None:
    with pytest.raises(CapacityError) as info:
        capacity.check(Demand(neighbours=5000, memory_mb=1, fds=1), ROOMY)
    assert "\n" not in str(info.value) and info.value.exit_code == 2
    assert "gc_thresh3=7168" in str(info.value)  # a round figure above the demand


def test_host_limits_are_read_from_the_host() -> None:
    have = capacity.host_limits()
    assert have.neighbours == int(capacity.GC_THRESH3.read_text())
    assert have.memory_mb > 0 and have.fds > 0


def test_entries_already_in_the_shared_table_count() -> None:
    """Other labs and the host use the same table: a lab that fits alone may not fit now."""
    need = Demand(neighbours=900, memory_mb=1, fds=1)
    capacity.check(need, ROOMY)
    busy = Limits(neighbours=1024, memory_mb=24_000, fds=1024, neighbours_used=200)
    with pytest.raises(CapacityError, match=r"gc_thresh3 is 1024 and 200 are in use") as info:
        capacity.check(need, busy)
    assert info.value.short == "ARP 900 > 824 free of gc_thresh3 1024"


def test_pods_behind_a_bridge_resolve_each_other() -> None:
    """flannel's cni0 is an L2 segment of the node's pods; Calico's /32 pods are not."""
    topo = parse_topology(scale_topology(20, 10))
    bridged = capacity.demand(get_mode("flannel-vxlan").plan(topo)).neighbours
    routed = capacity.demand(get_mode("calico-vxlan").plan(topo)).neighbours
    assert routed == 20 * 19 + 2 * 200
    assert bridged == routed + 20 * 10 * 9  # the README's 20 x 10 flannel lab: refused
    with pytest.raises(CapacityError):
        capacity.check(capacity.demand(get_mode("flannel-vxlan").plan(topo)), ROOMY)
    capacity.check(capacity.demand(get_mode("calico-vxlan").plan(topo)), ROOMY)
