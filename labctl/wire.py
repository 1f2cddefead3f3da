"""What verify expects and reports, as plain records: the planner writes expectations
(Flow, WireSpec), the checks return CheckResults. No packet parsing, no processes, so the
planning layer can use them without importing the capture machinery."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

Encap = Literal["vxlan", "bare", "udp", "ipip"]


@dataclass(frozen=True)
class Flow:
    """One pod-to-pod pair whose packets must cross the underlay between two nodes."""

    src_pod: str  # "ns/name", for messages
    dst_pod: str
    src_pod_ip: str
    dst_pod_ip: str
    src_node: str  # node names, for messages
    dst_node: str
    src_node_ip: str
    dst_node_ip: str
    encap: Encap
    port: int | None = None  # vxlan: UDP dst port (8472 flannel, 4789 calico); udp: 8285
    vni: int | None = None  # vxlan only (1 flannel, 4096 calico)
    # bare only: expected Ethernet dst of frames the sending node puts on its underlay
    # (host-gw: the peer node's MAC); None = don't check.
    next_hop_mac: str | None = None


class PodLike(Protocol):
    """A live pod as flows need it (store.PodRecord)."""

    @property
    def key(self) -> str: ...

    ip: str
    node: str


def flow_between(
    src: PodLike, dst: PodLike, src_node_ip: str, dst_node_ip: str, **how: Any
) -> Flow:
    """The Flow from pod `src` to pod `dst` between their nodes' underlay addresses,
    carried as `how` says (encap, port, vni, next_hop_mac)."""
    return Flow(
        src_pod=src.key,
        dst_pod=dst.key,
        src_pod_ip=src.ip,
        dst_pod_ip=dst.ip,
        src_node=src.node,
        dst_node=dst.node,
        src_node_ip=src_node_ip,
        dst_node_ip=dst_node_ip,
        **how,
    )


@dataclass
class CheckResult:
    """Outcome of one check, in the shape `labctl verify -o json` reports."""

    name: str
    passed: bool
    detail: str  # one line a student can read: what was expected, what was seen
    pcap: str | None = None


@dataclass(frozen=True)
class WireSpec:
    """One way a mode may carry pod traffic on the wire (None port/vni = any)."""

    encap: Encap
    port: int | None = None
    vni: int | None = None
