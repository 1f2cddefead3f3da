"""Control-plane convergence, side by side: how long after `labctl node stop` the other
nodes drop a frozen node's routes (flannel: subnet lease expiry; calico-bgp: the BGP hold
timer), and how long after `labctl node start` they have them again; then a node that joins
(`labctl node add`) and leaves (`labctl node remove`): how long until its routes are on
every other node (flannel: the others' lease watch; calico-bgp: BGP), and gone again.

`node add` and `node remove` return once the others have followed, so the figures are the
supervisor's (from the node's agent or FRR starting, resp. its lease deleted or FRR
stopped, to the last other node programmed), the verbs' wall time, and, checked from
outside, how long after each verb returned the routes were (still) missing: 0 when it
returned converged.

    python benchmarks/control_plane.py [--repeats 3] [--modes flannel-vxlan,calico-bgp]

Root; brings up labs named cp-bench-<n> (--name) and takes them down. Prints medians (the machine is
shared: say so when quoting the figures).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from labctl import state
from labctl.nsutil import nsenter_argv

LABCTL = str(Path(sys.executable).parent / "labctl")


def _labctl(*args: str) -> str:
    return subprocess.run([LABCTL, *args], capture_output=True, text=True, check=True).stdout


def _has_route(lab: str, at: str, cidr: str, ip: str) -> bool:
    pid = state.load(lab).namespaces[at].pid
    routes = subprocess.run(
        nsenter_argv(pid, ["ip", "route"], mount=False), capture_output=True, text=True
    ).stdout
    return any(line.startswith(cidr) or f" via {ip} " in line for line in routes.splitlines())


def _until(pred: object, started: float, timeout: float = 120.0) -> float:
    """Seconds from `started` (before the verb was called) until `pred()` holds."""
    while not pred():  # type: ignore[operator]
        if time.monotonic() - started > timeout:
            raise TimeoutError("no convergence")
        time.sleep(0.05)
    return time.monotonic() - started


def measure(mode: str, lab: str) -> dict[str, float]:
    """One stop/start round in a fresh lab of `mode` on default.yaml (node2 frozen)."""
    _labctl("up", mode, "-n", lab)
    try:
        nodes = {
            n["name"]: n for n in json.loads(_labctl("status", "-n", lab, "-o", "json"))["nodes"]
        }
        cidr, ip = nodes["node2"]["podCIDR"].split("/")[0], nodes["node2"]["ip"]
        t0 = time.monotonic()
        _labctl("node", "stop", "-n", lab, "node2")
        gone = _until(lambda: not _has_route(lab, "master", cidr, ip), t0)
        t0 = time.monotonic()
        _labctl("node", "start", "-n", lab, "node2")
        back = _until(lambda: _has_route(lab, "master", cidr, ip), t0)
        return {"dropped": gone, "back": back, **_join_leave(lab, list(nodes))}
    finally:
        _labctl("down", "-n", lab)


JOINER, JOINER_IP = "node3", "10.0.0.34"


def _join_leave(lab: str, others: list[str]) -> dict[str, float]:
    """Node JOINER joins and leaves (it runs no pods, so the drain is empty)."""

    def everywhere(cidr: str, want: bool) -> bool:
        return all(_has_route(lab, n, cidr, JOINER_IP) == want for n in others)

    t0 = time.monotonic()
    add = json.loads(
        _labctl(
            "node", "add", "-n", lab, JOINER, "--segment", "lan1", "--ip", JOINER_IP, "-o", "json"
        )
    )
    added = time.monotonic()
    cidr = add["podCIDR"].split("/")[0]
    late_in = _until(lambda: everywhere(cidr, True), added)
    t1 = time.monotonic()
    rm = json.loads(_labctl("node", "remove", "-n", lab, JOINER, "-o", "json"))
    removed = time.monotonic()
    late_out = _until(lambda: everywhere(cidr, False), removed)
    return {
        "join": add["converged"],
        "add": added - t0,
        "late_in": late_in,
        "leave": rm["converged"],
        "remove": removed - t1,
        "late_out": late_out,
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--modes", default="flannel-vxlan,calico-bgp")
    ap.add_argument("--name", default="cp-bench", help="lab name prefix (labs NAME-<n>)")
    args = ap.parse_args()
    for mode in args.modes.split(","):
        runs = [measure(mode, f"{args.name}-{i}") for i in range(args.repeats)]
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        print(
            f"{mode}: stopped node's routes dropped after {med['dropped']:.1f}s, "
            f"back {med['back']:.1f}s after start; joining node's routes on every other node "
            f"{med['join']:.2f}s after it started (node add {med['add']:.2f}s, routes missing "
            f"{med['late_in']:.2f}s after it returned), removed node's routes gone "
            f"{med['leave']:.2f}s after it stopped (node remove {med['remove']:.2f}s, routes left "
            f"{med['late_out']:.2f}s after it returned) (median of {len(runs)})",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
