"""`bench --control-plane` without a lab: which modes it measures and by which timer, the
timer read from a plan, the route test on real `ip route` output, the medians and the table
column (no root, no labs)."""

from __future__ import annotations

import json
from ipaddress import IPv4Network
from pathlib import Path

import pytest

from labctl.bench import controlplane as cp
from labctl.bench import save_figures
from labctl.modes import MODES, get_mode
from labctl.topology import load_topology, resolve_path

NODE2 = IPv4Network("10.244.2.0/24")

FLANNEL_MASTER = """\
default via 10.0.0.1 dev eth0
10.0.0.0/24 dev eth0 proto kernel scope link src 10.0.0.31
10.244.0.0/24 dev cni0 proto kernel scope link src 10.244.0.1
10.244.1.0/24 via 10.244.1.0 dev flannel.1 onlink
10.244.2.0/24 via 10.244.2.0 dev flannel.1 onlink
"""
CALICO_NODE1 = """\
blackhole 10.244.1.0/26 proto bgp metric 20
10.244.0.0/26 via 10.0.0.31 dev eth0 proto bgp metric 20
10.244.2.0/26 via 10.0.0.33 dev eth0 proto bgp metric 20
10.244.1.2 dev cali1 scope link
"""


def _drop(routes: str, prefix: str) -> str:
    return "".join(line for line in routes.splitlines(True) if not line.startswith(prefix))


@pytest.mark.parametrize("routes", [FLANNEL_MASTER, CALICO_NODE1])
def test_a_route_into_the_pod_cidr_or_a_block_of_it_counts(routes: str) -> None:
    assert cp.carries(routes, NODE2)
    # Negative: the same table without that route.
    assert not cp.carries(_drop(routes, "10.244.2.0/"), NODE2)


def test_blackholes_default_and_other_nodes_do_not_count() -> None:
    # A node's own block is a blackhole (calico-bgp); it is not a route to that node (its
    # pods' /32s are, and the bench only reads other nodes' tables).
    assert not cp.carries(_drop(CALICO_NODE1, "10.244.1.2"), IPv4Network("10.244.1.0/24"))
    assert not cp.carries("default via 10.0.0.1 dev eth0\n", NODE2)
    assert not cp.carries("10.244.0.0/16 dev flannel0\n", NODE2)  # wider: not the node's
    assert cp.carries("unicast 10.244.2.0/24 via 10.0.0.33 dev eth0\n", NODE2)


def test_timer_kind_by_mode_and_refusals() -> None:
    assert cp.timer_kind("flannel-vxlan") == "lease TTL"
    assert cp.timer_kind("calico-bgp") == "BGP hold timer"
    assert cp.timer_kind("canal") == "lease TTL"
    for mode in ("flannel-udp", "calico-vxlan"):
        with pytest.raises(cp.UnsupportedMode, match=f"{mode}: not measured: .*; use one of"):
            cp.timer_kind(mode)
    with pytest.raises(cp.UnsupportedMode, match="no TTL"):
        cp.timer_kind("calico-ipip")
    # Every mode is either measured or says why not.
    assert set(MODES) == set(cp.TIMERS) | set(cp.UNMEASURED)


def test_default_modes_are_measurable() -> None:
    assert all(cp.timer_kind(m) for m in cp.MODES)


def test_timer_read_from_the_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    topo = load_topology(resolve_path("default"))
    monkeypatch.setenv("LABCTL_LEASE_TTL", "4")
    assert cp.timer_seconds(get_mode("flannel-vxlan").plan(topo)) == 4
    monkeypatch.setenv("LABCTL_LEASE_TTL", "7")
    assert cp.timer_seconds(get_mode("flannel-host-gw").plan(topo)) == 7
    assert cp.timer_seconds(get_mode("calico-bgp").plan(topo)) == 9  # FRR datacenter 3/9
    with pytest.raises(ValueError, match="neither"):
        cp.timer_seconds(get_mode("calico-vxlan").plan(topo))


def _run(**over: float | None) -> dict[str, float | None]:
    base: dict[str, float | None] = {k: 1.0 for k, _ in cp.FIGURES}
    return {**base, **over}


FORWARDS = {
    "etcdFrozenForwards": True,
    "etcdFrozenPairs": 30,
    "etcdFrozenSeconds": 5,
    "etcdFrozenFailed": [],
}


def test_summary_is_the_median_with_its_spread() -> None:
    runs = [_run(dead=4.2), _run(dead=5.0), _run(dead=4.4, back=None)]
    row = cp.summarise("flannel-vxlan", 4, runs, FORWARDS)
    assert (row["timer"], row["timerSeconds"], row["repeats"]) == ("lease TTL", 4, 3)
    assert row["dead"] == 4.4 and row["deadSpread"] == [4.2, 5.0]
    assert row["join"] == 1.0
    # One run that never converged makes the figure "timed out", not a median of the rest.
    assert row["back"] is None and row["backSpread"] is None
    json.dumps(row)  # saved as is


def test_table_column() -> None:
    one = cp.summarise("calico-bgp", 9, [_run(dead=9.1)], FORWARDS)
    column = cp.cells(one)
    assert len(column) == len(cp.FIGURES) + 2
    assert column[[k for k, _ in cp.FIGURES].index("dead")] == "9.10"
    assert column[-2:] == ["BGP hold timer 9s", "yes (30 pod pairs, 5s)"]
    many = cp.summarise("calico-bgp", 9, [_run(dead=9.1), _run(dead=9.5), _run()], FORWARDS)
    assert cp.cells(many)[[k for k, _ in cp.FIGURES].index("dead")] == "9.10 (1.00-9.50)"
    failed = {**FORWARDS, "etcdFrozenForwards": False}
    broken = cp.summarise("calico-bgp", 9, [_run(back=None)], failed)
    assert "timed out" in cp.cells(broken) and cp.cells(broken)[-1].startswith("no ")


def test_saved_under_the_labs_bench_dir(tmp_path: Path) -> None:
    rows = [cp.summarise("flannel-vxlan", 4, [_run()], FORWARDS)]
    path = save_figures("cb-unit", "control-plane", rows, root=tmp_path)
    assert path.parent == tmp_path / "cb-unit" / "bench"
    assert path.name.startswith("control-plane-") and json.loads(path.read_text()) == rows
