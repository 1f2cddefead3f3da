"""The mode catalogue. A mode is composed of parts, each a record owned by its family
module: a pod network (how pods attach: ``cni0`` bridge or ``cali*`` veths), a backend
(encapsulation and per-peer routing, BGP included), and optionally a policy part (who
enforces NetworkPolicy). Canal, for instance, is Calico's pod network + flannel's VXLAN
backend + Felix's policy. Differences between modes are data on these records, not branches
elsewhere. Everything here is pure: verify looks up a mode's checks by name
(``labctl.checks``), so the catalogue imports no runtime code."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from labctl.errors import LabctlError
from labctl.modes.podnet import PodNetwork
from labctl.wire import WireSpec

if TYPE_CHECKING:
    from ipaddress import IPv4Network

    from labctl.plan import Plan
    from labctl.topology import Topology

DATAPATHS = ("kernel", "bpf", "userspace")


class Backend(Protocol):
    """What the catalogue needs of a family's backend record (flannel Backend, calico Encap)."""

    @property
    def overhead(self) -> int: ...  # bytes of encapsulation: pod MTU = underlay MTU - overhead

    @property
    def wire(self) -> tuple[WireSpec, ...]: ...  # every way pod traffic may cross the wire

    # The kernel device the backend needs that a kernel may lack ("ipip"): such a mode has
    # BPF and userspace datapaths too, chosen with `up --datapath`.
    @property
    def kernel_feature(self) -> str | None: ...


@dataclass(frozen=True)
class PolicyPart:
    """Who enforces NetworkPolicy in a mode, and how (see labctl.policy)."""

    name: str
    summary: str


#: Felix's policy dataplane: per-endpoint chains in one nftables table per node.
FELIX = PolicyPart("felix", "Felix-style per-endpoint chains in nftables table 'ip calico'")


@dataclass(frozen=True)
class Mode:
    """One entry of `labctl modes`: a named composition of parts."""

    name: str
    cni: str
    summary: str
    wire: str  # what node-to-node traffic looks like, for people
    network: PodNetwork
    backend: Backend
    planner: Callable[[Topology, Mode, str], Plan]
    policy: PolicyPart | None = None
    # The CNI config file the mode's installer drops in /etc/cni/net.d (from templates/<name>.j2).
    cni_conf: str | None = None
    # Names of the checks verify runs besides the wire (labctl.checks.CHECKS).
    checks: tuple[str, ...] = ()
    # IPAM: the address range a node hands its pods from (flannel: the lease; Calico: the
    # node's block). None: the node's pod CIDR.
    ipam: Callable[[Topology, str], IPv4Network] | None = None

    @property
    def overhead(self) -> int:
        """Bytes of encapsulation the backend adds."""
        return self.backend.overhead

    @property
    def wire_specs(self) -> tuple[WireSpec, ...]:
        """Every way the mode may carry pod traffic on the wire."""
        return self.backend.wire

    @property
    def kernel_feature(self) -> str | None:
        """The kernel device the mode needs that a kernel may lack."""
        return self.backend.kernel_feature

    @property
    def enforces_policy(self) -> bool:
        """True when a policy part enforces NetworkPolicy."""
        return self.policy is not None

    def pod_mtu(self, underlay_mtu: int = 1500) -> int:
        """Pod MTU on a segment of `underlay_mtu`: what is left after the encapsulation."""
        return underlay_mtu - self.overhead

    def pod_pool(self, topo: Topology, node: str) -> IPv4Network:
        """The addresses `node` hands to its pods (what host-local or Calico IPAM allocates)."""
        return self.ipam(topo, node) if self.ipam else topo.node_pod_cidrs[node]

    def plan(self, topo: Topology, datapath: str = "kernel") -> Plan:
        """Desired kernel state of every namespace for this mode on `topo`."""
        return self.planner(topo, self, datapath)


MODES: dict[str, Mode] = {}


def register(*modes: Mode) -> None:
    """Add `modes` to the catalogue (each family module calls this on import)."""
    for mode in modes:
        MODES[mode.name] = mode


class UnknownModeError(KeyError, LabctlError):
    def __str__(self) -> str:
        return f"unknown mode {self.args[0]!r}; run 'labctl modes' (known: {', '.join(MODES)})"


def get_mode(name: str) -> Mode:
    """The registered mode called `name`."""
    try:
        return MODES[name]
    except KeyError:
        raise UnknownModeError(name) from None


# Importing the family modules registers their modes (canal composes parts of both).
from labctl.modes import (  # noqa: E402, F401
    calico,
    canal,
    flannel,
)
