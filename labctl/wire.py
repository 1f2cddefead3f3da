"""What verify expects and reports, as plain records: the planner writes expectations
(Flow, WireSpec), the checks return CheckResults. No packet parsing, no processes, so the
planning layer can use them without importing the capture machinery."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

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
