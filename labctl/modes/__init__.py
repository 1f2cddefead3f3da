"""The mode catalogue. Each CNI family lives in its own module and registers its modes here;
differences between modes are data on those objects, not branches elsewhere."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from labctl.checker import CheckResult, WireSpec

if TYPE_CHECKING:
    from labctl.plan import Plan
    from labctl.topology import Topology

DATAPATHS = ("kernel", "userspace")


@dataclass(frozen=True)
class Mode:
    """One entry of `labctl modes`."""

    name: str
    cni: str
    summary: str
    wire: str  # what node-to-node traffic looks like, for people
    overhead: int  # bytes of encapsulation: pod MTU = underlay MTU - overhead
    enforces_policy: bool
    planner: Callable[[Topology, Mode, str], Plan]
    wire_specs: tuple[WireSpec, ...]  # every way pod traffic may cross the wire
    # The kernel device the mode needs that a kernel may lack ("ipip"): such a mode has a
    # userspace datapath too, chosen with `up --datapath`.
    kernel_feature: str | None = None
    # Mode-specific checks verify runs besides the wire (e.g. BGP sessions, kernel routes).
    checks: Callable[[Topology, Plan, dict[str, int]], list[CheckResult]] | None = None

    def pod_mtu(self, underlay_mtu: int = 1500) -> int:
        """Pod MTU on a segment of `underlay_mtu`: what is left after the encapsulation."""
        return underlay_mtu - self.overhead

    def plan(self, topo: Topology, datapath: str = "kernel") -> Plan:
        """Desired kernel state of every namespace for this mode on `topo`."""
        return self.planner(topo, self, datapath)


MODES: dict[str, Mode] = {}


def register(*modes: Mode) -> None:
    """Add `modes` to the catalogue (each family module calls this on import)."""
    for mode in modes:
        MODES[mode.name] = mode


class UnknownModeError(KeyError):
    def __str__(self) -> str:
        return f"unknown mode {self.args[0]!r}; run 'labctl modes' (known: {', '.join(MODES)})"


def get_mode(name: str) -> Mode:
    """The registered mode called `name`."""
    try:
        return MODES[name]
    except KeyError:
        raise UnknownModeError(name) from None


# Importing the family modules registers their modes.
from labctl.modes import calico, flannel  # noqa: E402, F401
