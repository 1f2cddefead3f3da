"""Whether this host can hold a lab, decided from its plan before anything is built.

Three limits break a big lab in ways that look like dataplane bugs, so `up` refuses first:

* the kernel's neighbour (ARP) table: one table for every network namespace (so the host's
  and other labs' entries count too), capped by the host's
  ``net.ipv4.neigh.default.gc_thresh3``; past it the kernel drops new entries
  ("neighbour table overflow") and pods lose traffic at random. labctl never raises the cap
  itself: it is a host sysctl, and the host is not the lab's to change;
* memory: every node runs a shell, and FRR, an agent or a userspace datapath per the mode;
* file descriptors of the supervisor, which holds a pty and pipes per namespace.

The demand is an estimate from figures measured on a running lab (``docs/performance.md``,
Scale); the check is pure, the host's limits are read by ``host_limits``.
"""

from __future__ import annotations

import resource
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from labctl.errors import LabctlError
from labctl.plan import Plan

#: Resident memory in MB, measured with `labctl up` (RSS summed per process kind).
SUPERVISOR_MB = 70
SHELL_MB = 3.5  # Mininet's shell per node, router, external host and pod
FRR_MB = 35  # zebra + staticd + bgpd of one speaker
ETCD_MB = 30
#: Daemon kinds (plan.Daemon.kind) and what one costs: Python processes, pyroute2 loaded.
DAEMON_MB = {
    "flannel-agent": 50,
    "calico-node": 50,
    "udpproxy": 45,
    "ipip": 45,
    "ipip-bpf": 5,
}
#: The daemons that need the lab's etcd.
ETCD_CLIENTS = frozenset({"flannel-agent", "calico-node"})
#: Memory the host keeps for itself beyond the lab's estimate.
MEMORY_MARGIN = 0.8
#: File descriptors of the supervisor: a base plus a pty and pipes per namespace.
SUPERVISOR_FDS = 40
FDS_PER_NAMESPACE = 4

GC_THRESH3 = Path("/proc/sys/net/ipv4/neigh/default/gc_thresh3")
#: Per-CPU rows; the first column, `entries`, is the table's size in hex (same on every row).
ARP_STATS = Path("/proc/net/stat/arp_cache")


class CapacityError(LabctlError):
    """The topology is more than this host can hold; exit 2 (bad input for this host).
    `short` names the limit in a few words, for tables."""

    def __init__(self, message: str, short: str) -> None:
        super().__init__(message)
        self.short = short


@dataclass(frozen=True)
class Demand:
    """What a lab needs of the host."""

    neighbours: int  # dynamic ARP entries, all namespaces together
    memory_mb: float
    fds: int


@dataclass(frozen=True)
class Limits:
    """What the host allows."""

    neighbours: int  # gc_thresh3
    memory_mb: float  # MemAvailable
    fds: int  # RLIMIT_NOFILE soft limit, which the supervisor inherits
    neighbours_used: int = 0  # entries already in the table (the host, other labs)


def demand(plan: Plan) -> Demand:
    """The lab's needs, from its plan.

    Neighbours: any pod may talk to any pod, so every host on a segment may resolve every
    other one (m hosts: m(m-1) entries), each pod and its node resolve each other, and pods
    behind one bridge resolve each other.
    Permanent entries (VXLAN's per-peer ARP) do not count against the cap.
    """
    hosts = Counter(a.segment for a in plan.attachments)
    pods = sum(1 for ns in plan.namespaces.values() if ns.role == "pod")
    neighbours = sum(m * (m - 1) for m in hosts.values()) + 2 * pods
    # Behind a bridge (flannel's cni0) a node's pods share one L2 segment and resolve each
    # other too: k pods add k(k-1). Calico's /32 pods resolve only their gateway.
    per_node = Counter(ns.node for ns in plan.namespaces.values() if ns.role == "pod")
    for ns in plan.node_ns():
        if any(link.kind == "bridge" for link in ns.links):
            neighbours += per_node[ns.name] * (per_node[ns.name] - 1)
    daemons = [d.kind for ns in plan.namespaces.values() for d in ns.daemons]
    speakers = sum(1 for ns in plan.namespaces.values() if ns.bgp is not None)
    memory = (
        SUPERVISOR_MB
        + SHELL_MB * len(plan.namespaces)
        + FRR_MB * speakers
        + ETCD_MB * bool(ETCD_CLIENTS & set(daemons))
        + sum(DAEMON_MB.get(kind, 45) for kind in daemons)
    )
    fds = SUPERVISOR_FDS + FDS_PER_NAMESPACE * len(plan.namespaces)
    return Demand(neighbours=neighbours, memory_mb=memory, fds=fds)


def host_limits() -> Limits:
    """This host's limits (read only: labctl never changes them)."""
    available_kb = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemAvailable:")
    )
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return Limits(
        neighbours=int(GC_THRESH3.read_text()),
        memory_mb=available_kb / 1024,
        fds=soft if soft != resource.RLIM_INFINITY else 1 << 30,
        neighbours_used=int(ARP_STATS.read_text().splitlines()[1].split()[0], 16),
    )


def check(need: Demand, have: Limits) -> None:
    """Raise CapacityError naming the first limit the lab would exceed, and the fix."""
    free = have.neighbours - have.neighbours_used
    if need.neighbours > free:
        used = f" and {have.neighbours_used} are in use" if have.neighbours_used else ""
        raise CapacityError(
            f"topology needs ~{need.neighbours} neighbour (ARP) entries but the host's "
            f"net.ipv4.neigh.default.gc_thresh3 is {have.neighbours}{used}: raise it on the host "
            f"(sysctl -w net.ipv4.neigh.default.gc_thresh3="
            f"{_round_up(need.neighbours + have.neighbours_used)}; labctl never changes host "
            "sysctls), take other labs down, or split the nodes over more segments",
            f"ARP {need.neighbours} > {free} free of gc_thresh3 {have.neighbours}",
        )
    if need.memory_mb > MEMORY_MARGIN * have.memory_mb:
        raise CapacityError(
            f"topology needs ~{need.memory_mb:.0f} MB but the host has "
            f"{have.memory_mb:.0f} MB available (MemAvailable; labctl keeps "
            f"{1 - MEMORY_MARGIN:.0%} free): use fewer nodes or pods, or free memory",
            f"{need.memory_mb:.0f} MB > {MEMORY_MARGIN * have.memory_mb:.0f} MB",
        )
    if need.fds > have.fds:
        raise CapacityError(
            f"topology needs ~{need.fds} open files in the supervisor but RLIMIT_NOFILE is "
            f"{have.fds}: raise it (ulimit -n {_round_up(need.fds)}) or use fewer namespaces",
            f"files {need.fds} > RLIMIT_NOFILE {have.fds}",
        )


def _round_up(n: int) -> int:
    """A round figure comfortably above `n`, for the suggested fix."""
    step = 1024
    return (n * 5 // 4 // step + 1) * step
