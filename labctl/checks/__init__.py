"""Mode-specific checks verify runs besides the wire, by name: a mode lists the names
(``Mode.checks``), this registry holds the functions, which read live kernel and daemon
state. Keeping them here keeps the mode catalogue free of runtime code."""

from __future__ import annotations

from collections.abc import Callable

from labctl.checks import routing
from labctl.plan import Plan
from labctl.topology import Topology
from labctl.wire import CheckResult

CheckFn = Callable[[Topology, Plan, dict[str, int]], list[CheckResult]]

CHECKS: dict[str, CheckFn] = {
    "bgp-sessions": routing.session_checks,
    "bgp-routes": routing.bgp_route_checks,
    "felix-routes": routing.felix_route_checks,
}


def run(
    names: tuple[str, ...], topo: Topology, plan: Plan, pids: dict[str, int]
) -> list[CheckResult]:
    """Run the named checks in order."""
    return [result for name in names for result in CHECKS[name](topo, plan, pids)]
