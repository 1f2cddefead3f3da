"""`labctl bench --control-plane`: how fast the live control plane follows a cluster that
changes, side by side per mode: a node that joins (`node add`), one that leaves (`node
remove`), one that dies (`node stop`: its agent and daemons frozen) and comes back (`node
start`), and whether pods still reach each other while etcd is frozen. Figures, not
pass/fail.

A dead node's routes go when its flannel subnet lease expires (lease TTL) or, in
calico-bgp, when the peers' BGP hold timer fires; a join and a leave are events (the
others' lease watch, BGP UPDATE/Cease) and wait for no timer. Every "outside" figure is
measured from just before the verb is called until `ip route` on every other node shows
(or no longer shows) a route into the node's pod CIDR.

One lab per mode on default.yaml (three nodes); node2 dies and comes back, node3 joins and
leaves, `repeats` times each; etcd is frozen once, last.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import time
from collections.abc import Callable
from ipaddress import IPv4Network, ip_network
from typing import Any

from labctl import apiserver, control, lifecycle, state, store
from labctl.controlplane.supervise import agent_configs
from labctl.modes import get_mode
from labctl.nsutil import nsenter_argv
from labctl.plan import Plan
from labctl.probe import probe
from labctl.topology import load_topology, resolve_path

MODES = ("flannel-vxlan", "calico-bgp")
#: The node that dies and comes back, and the one that joins and leaves (default.yaml).
DEAD = "node2"
JOINER, JOINER_SEGMENT, JOINER_IP = "node3", "lan1", "10.0.0.34"
POLL = 0.1

#: Timed figures (seconds, median of the repeats), as the table names them.
FIGURES = (
    ("join", "join: node's routes on every other node, after it started (supervisor)"),
    ("joinSeen", "join: node's routes seen on every other node, from 'node add'"),
    ("leave", "leave: node's routes gone from every other node, after it stopped (supervisor)"),
    ("leaveSeen", "leave: node's routes seen gone everywhere, from 'node remove'"),
    ("dead", "dead node: routes gone from every other node, from 'node stop'"),
    ("back", "dead node back: routes on every other node, from 'node start'"),
)

#: Modes measured, and the timer after which the peers drop a dead node.
TIMERS = {
    "flannel-vxlan": "lease TTL",
    "flannel-vxlan-directrouting": "lease TTL",
    "flannel-host-gw": "lease TTL",
    "flannel-ipip": "lease TTL",
    "calico-bgp": "BGP hold timer",
    "canal": "lease TTL",  # flannel's leases carry canal's routes; Felix adds policy only
}
_NO_TTL = "Calico records have no TTL: nothing drops a dead node's routes"
#: Why the others are not.
UNMEASURED = {
    "flannel-udp": "its peers are in the proxy's table, not in the kernel routes measured here",
    "calico-ipip": _NO_TTL,
    "calico-ipip-crosssubnet": _NO_TTL,
    "calico-vxlan": _NO_TTL,
    "calico-vxlan-crosssubnet": _NO_TTL,
}


class UnsupportedMode(ValueError):
    """The mode is not measured (see UNMEASURED)."""


def timer_kind(mode: str) -> str:
    """What decides when the peers drop a dead node in `mode`; refuses modes not measured."""
    if mode not in TIMERS:
        why = UNMEASURED.get(mode, "nodes cannot join or leave it live")
        raise UnsupportedMode(f"{mode}: not measured: {why}; use one of {', '.join(TIMERS)}")
    return TIMERS[mode]


def timer_seconds(plan: Plan) -> int:
    """The lab's configured timer: the agents' lease TTL (flannel) or the nodes' BGP hold
    time (calico-bgp)."""
    for config in agent_configs(plan).values():
        if "ttl" in config:
            return int(config["ttl"])
    for ns in plan.node_ns():
        if ns.bgp is not None:
            return ns.bgp.timers.hold
    raise ValueError(f"plan of {plan.mode} has neither a lease TTL nor BGP timers")


ROUTE_TYPES = {"unicast", "blackhole", "unreachable", "prohibit", "local", "broadcast", "throw"}


def carries(routes: str, pod_cidr: IPv4Network) -> bool:
    """Whether `ip route` output has a route into `pod_cidr` (a node's /24, or a calico
    block inside it), blackholes aside (a node's own block)."""
    for line in routes.splitlines():
        words = line.split()
        if not words or words[0] in ROUTE_TYPES - {"unicast"}:
            continue
        dst = words[1] if words[0] == "unicast" and len(words) > 1 else words[0]
        if dst == "default":
            continue
        try:
            net = ip_network(dst, strict=False)
        except ValueError:
            continue
        if net.version == 4 and net.subnet_of(pod_cidr):
            return True
    return False


def summarise(
    mode: str, timer: int, runs: list[dict[str, float | None]], forwards: dict[str, Any]
) -> dict[str, Any]:
    """One column: the median of each timed figure over the runs (None if any run timed
    out), its spread, and the etcd-frozen outcome."""
    row: dict[str, Any] = {
        "mode": mode,
        "timer": timer_kind(mode),
        "timerSeconds": timer,
        "repeats": len(runs),
    }
    for key, _ in FIGURES:
        values = [r[key] for r in runs]
        if not values or any(v is None for v in values):
            row[key], row[f"{key}Spread"] = None, None
            continue
        got = [float(v) for v in values if v is not None]
        row[key] = round(statistics.median(got), 2)
        row[f"{key}Spread"] = [round(min(got), 2), round(max(got), 2)]
    row.update(forwards)
    return row


def cells(row: dict[str, Any]) -> list[str]:
    """The table's column for one row, in FIGURES order, then the timer and etcd rows."""
    out = []
    for key, _ in FIGURES:
        v, spread = row[key], row[f"{key}Spread"]
        if v is None:
            out.append("timed out")
        elif row["repeats"] > 1:
            out.append(f"{v:.2f} ({spread[0]:.2f}-{spread[1]:.2f})")
        else:
            out.append(f"{v:.2f}")
    out.append(f"{row['timer']} {row['timerSeconds']}s")
    verdict = "yes" if row["etcdFrozenForwards"] else "no"
    out.append(f"{verdict} ({row['etcdFrozenPairs']} pod pairs, {row['etcdFrozenSeconds']}s)")
    return out


# ---- live ----


def _routes(pid: int) -> str:
    argv = nsenter_argv(pid, ["ip", "route"], mount=False)
    return subprocess.run(argv, capture_output=True, text=True).stdout


def _everywhere(lab: str, others: list[str], cidr: IPv4Network, want: bool) -> bool:
    pids = {n: r.pid for n, r in state.load(lab).namespaces.items()}
    return all(carries(_routes(pids[n]), cidr) == want for n in others)


def _until(pred: Callable[[], bool], started: float, timeout: float) -> float | None:
    """Seconds from `started` until `pred()` holds; None after `timeout`."""
    while not pred():
        if time.monotonic() - started > timeout:
            return None
        time.sleep(POLL)
    return round(time.monotonic() - started, 3)


def _node_cidr(lab: str, node: str) -> IPv4Network:
    return load_topology(state.load(lab).topology).node_pod_cidrs[node]


def cycle(lab: str, timer: int, progress: Callable[[str], None]) -> dict[str, float | None]:
    """One round: DEAD dies and comes back, JOINER joins and leaves."""
    nodes = [n for n, r in state.load(lab).namespaces.items() if r.role == "node"]
    others = [n for n in nodes if n != DEAD]
    cidr = _node_cidr(lab, DEAD)
    wait = 3 * timer + 30  # a figure past this is reported as timed out
    progress(f"{DEAD} stopped: waiting for its {timer}s timer")
    t0 = time.monotonic()
    control.request(lab, "node", name=DEAD, action="stop")
    dead = _until(lambda: _everywhere(lab, others, cidr, False), t0, wait)
    progress(f"{DEAD} started again")
    t0 = time.monotonic()
    control.request(lab, "node", name=DEAD, action="start")
    back = _until(lambda: _everywhere(lab, others, cidr, True), t0, wait)
    progress(f"{JOINER} joins")
    t0 = time.monotonic()
    add = apiserver.add_node(lab, JOINER, JOINER_SEGMENT, JOINER_IP)
    joiner = IPv4Network(add["podCIDR"])
    join_seen = _until(lambda: _everywhere(lab, nodes, joiner, True), t0, wait)
    progress(f"{JOINER} leaves")
    t0 = time.monotonic()
    _, rm = apiserver.remove_node(lab, JOINER, force=True)
    leave_seen = _until(lambda: _everywhere(lab, nodes, joiner, False), t0, wait)
    return {
        "join": add["converged"],
        "joinSeen": join_seen,
        "leave": rm["converged"],
        "leaveSeen": leave_seen,
        "dead": dead,
        "back": back,
    }


def etcd_frozen(lab: str, timer: int, progress: Callable[[str], None]) -> dict[str, Any]:
    """Freeze etcd (SIGSTOP) for the mode's timer and a second (flannel: every lease is past
    its TTL and no agent can renew), then probe every pod pair by TCP; thaw it."""
    st = state.load(lab)
    objects = store.load(lab)
    pods = list(objects.pods.values())
    pids = {k: r.pid for k, r in st.namespaces.items()}
    etcd = st.processes["etcd"]
    frozen = timer + 1
    progress(f"etcd frozen for {frozen}s, then every pod pair probed")
    os.kill(etcd, signal.SIGSTOP)
    try:
        time.sleep(frozen)
        results = probe(pods, pids, "tcp")
    finally:
        os.kill(etcd, signal.SIGCONT)
    failed = [f"{r.src} -> {r.dst}: {r.detail}" for r in results if not r.ok]
    return {
        "etcdFrozenForwards": bool(results) and not failed,
        "etcdFrozenPairs": len(results),
        "etcdFrozenSeconds": frozen,
        "etcdFrozenFailed": failed[:5],
    }


def measure(mode: str, repeats: int, lab: str, progress: Callable[[str], None]) -> dict[str, Any]:
    """Bring `mode` up on default.yaml as `lab`, run the rounds and the etcd freeze, and take
    the lab down whatever happened."""
    timer_kind(mode)
    path = resolve_path("default")

    def said(what: str) -> None:
        progress(f"{mode}: {what}")

    try:
        lifecycle.up(lab, get_mode(mode), path, load_topology(path), said)
        timer = timer_seconds(state.read_plan(lab))
        runs = []
        for i in range(repeats):
            runs.append(cycle(lab, timer, lambda p: said(f"round {i + 1}/{repeats}: {p}")))  # noqa: B023
        forwards = etcd_frozen(lab, timer, said)
    finally:
        said("down")
        lifecycle.down(lab)
    return summarise(mode, timer, runs, forwards)


def run(
    modes: list[str], repeats: int, lab: str, progress: Callable[[str], None]
) -> list[dict[str, Any]]:
    """One column per mode (every mode checked before anything is built)."""
    for mode in modes:
        timer_kind(mode)
    return [measure(mode, repeats, lab, progress) for mode in modes]
