"""Unit tests for the routing checks of Calico modes (labctl.checks.routing), fed with faked
daemon and kernel answers: each passes on the converged state and fails, naming what is
missing, when a session, a route or a Felix route is not there."""

from __future__ import annotations

from typing import Any

import pytest

from labctl import frr
from labctl.checks import routing
from labctl.plan import Plan, Route
from labctl.wire import CheckResult

from .plan_helpers import block, plan, topo

BGP = "calico-bgp"
FELIX_MODES = ("calico-ipip", "calico-ipip-crosssubnet", "calico-vxlan", "calico-vxlan-crosssubnet")


# ---------------------------------------------------------------- checks (negative cases)


def _pids(p: Plan) -> dict[str, int]:
    return {name: i + 100 for i, name in enumerate(p.namespaces)}


def _by_name(results: list[CheckResult]) -> dict[str, CheckResult]:
    return {r.name: r for r in results}


def _all_established(p: Plan) -> dict[int, dict[str, str]]:
    pids = _pids(p)
    return {
        pids[n]: {str(x.ip): "Established" for x in ns.bgp.neighbors}
        for n, ns in p.namespaces.items()
        if ns.bgp is not None
    }


def test_session_checks_pass_and_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    t, p = topo("default"), plan(BGP, "default")
    states = _all_established(p)
    monkeypatch.setattr(frr, "peer_states", lambda pid: states[pid])
    ok = _by_name(routing.session_checks(t, p, _pids(p)))
    assert all(r.passed for r in ok.values())
    assert ok["bgp design"].detail == "full mesh of 3 nodes: 3/3 node-to-node sessions Established"
    # node1's view of master drops to Active: node1 and the design fail.
    states[_pids(p)["node1"]]["10.0.0.31"] = "Active"
    bad = _by_name(routing.session_checks(t, p, _pids(p)))
    assert not bad["bgp sessions node1"].passed
    assert "10.0.0.31 Active" in bad["bgp sessions node1"].detail
    assert bad["bgp sessions node2"].passed
    assert not bad["bgp design"].passed


def test_session_check_fails_when_bgpd_is_gone(monkeypatch: pytest.MonkeyPatch) -> None:
    t, p = topo("default"), plan(BGP, "default")
    states = _all_established(p)

    def peer_states(pid: int) -> dict[str, str]:
        if pid == _pids(p)["master"]:
            raise frr.FrrError("bgpd is not running")
        return states[pid]

    monkeypatch.setattr(frr, "peer_states", peer_states)
    res = _by_name(routing.session_checks(t, p, _pids(p)))
    assert not res["bgp sessions master"].passed
    assert "does not answer" in res["bgp sessions master"].detail


def test_route_reflector_design_check(monkeypatch: pytest.MonkeyPatch) -> None:
    t, p = topo("route-reflector"), plan(BGP, "route-reflector")
    states = _all_established(p)
    monkeypatch.setattr(frr, "peer_states", lambda pid: states[pid])
    res = _by_name(routing.session_checks(t, p, _pids(p)))
    assert res["bgp design"].passed
    assert "3/3" in res["bgp design"].detail and "node1" in res["bgp design"].detail


def test_bgp_route_check_fails_on_a_missing_block(monkeypatch: pytest.MonkeyPatch) -> None:
    t, p = topo("default"), plan(BGP, "default")
    pids = _pids(p)
    blocks = {n: block(t, n) for n in t.nodes}
    routes = {pids[n]: sorted(b for m, b in blocks.items() if m != n) for n in t.nodes}
    monkeypatch.setattr(frr, "kernel_bgp_routes", lambda pid: routes[pid])
    assert all(r.passed for r in routing.bgp_route_checks(t, p, pids))
    routes[pids["node2"]].remove("10.244.1.0/26")
    res = _by_name(routing.bgp_route_checks(t, p, pids))
    assert not res["bgp routes node2"].passed
    assert "missing 10.244.1.0/26" in res["bgp routes node2"].detail


def test_router_without_asn_is_named_as_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    t, p = topo("leaf-spine-no-bgp"), plan(BGP, "leaf-spine-no-bgp")
    monkeypatch.setattr(frr, "kernel_bgp_routes", lambda pid: [])
    monkeypatch.setattr(
        routing, "_kernel_routes", lambda pid: [{"dst": "10.0.1.0/24"}, {"dst": "10.0.2.0/24"}]
    )
    res = _by_name(routing.bgp_route_checks(t, p, _pids(p)))
    leaf = res["pod routes on router leaf1"]
    assert not leaf.passed and "no asn" in leaf.detail
    monkeypatch.setattr(routing, "_kernel_routes", lambda pid: [{"dst": "default"}])
    assert _by_name(routing.bgp_route_checks(t, p, _pids(p)))["pod routes on router leaf1"].passed


def _kernel_json(route: Route) -> dict[str, Any]:
    out: dict[str, Any] = {"dst": route.dst, "flags": ["onlink"] if route.onlink else []}
    if route.type == "blackhole":
        out["type"] = "blackhole"
    if route.via:
        out["gateway"] = route.via
    if route.dev:
        out["dev"] = route.dev
    out["protocol"] = str(route.proto) if route.proto is not None else "boot"
    return out


@pytest.mark.parametrize("mode", FELIX_MODES)
def test_felix_route_check_pass_and_fail(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    t, p = topo("cross-subnet"), plan(mode, "cross-subnet")
    pids = _pids(p)
    kernel = {pids[ns.name]: [_kernel_json(r) for r in ns.routes] for ns in p.node_ns()}
    monkeypatch.setattr(routing, "_kernel_routes", lambda pid: kernel[pid])
    assert all(r.passed for r in routing.felix_route_checks(t, p, pids))
    # The route to node3's block comes back with the wrong protocol (e.g. BIRD's).
    (entry,) = [k for k in kernel[pids["node1"]] if k["dst"] == "10.244.2.0/26"]
    entry["protocol"] = "bird"
    res = _by_name(routing.felix_route_checks(t, p, pids))
    assert not res["felix routes node1"].passed
    assert "10.244.2.0/26" in res["felix routes node1"].detail
    assert res["felix routes node2"].passed
