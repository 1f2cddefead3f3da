"""The mode catalogue. Each CNI family lives in its own module and registers its modes here;
differences between modes are data on those objects, not branches elsewhere."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from labctl.checker import WireSpec

if TYPE_CHECKING:
    from labctl.plan import Plan
    from labctl.topology import Topology


@dataclass(frozen=True)
class Mode:
    """One entry of `labctl modes`."""

    name: str
    cni: str
    summary: str
    wire: str  # what node-to-node traffic looks like, for people
    overhead: int  # bytes of encapsulation: pod MTU = underlay MTU - overhead
    enforces_policy: bool
    planner: Callable[[Topology, Mode], Plan]
    wire_specs: tuple[WireSpec, ...]  # every way pod traffic may cross the wire

    def pod_mtu(self, underlay_mtu: int = 1500) -> int:
        return underlay_mtu - self.overhead

    def plan(self, topo: Topology) -> Plan:
        """Desired kernel state of every namespace for this mode on `topo`."""
        return self.planner(topo, self)


MODES: dict[str, Mode] = {}


def register(*modes: Mode) -> None:
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
from labctl.modes import flannel  # noqa: E402, F401
