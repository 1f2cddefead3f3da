"""Traffic to the outside: a pod's request to an external host must arrive from its node's
address (flannel's ipMasq, Calico's natOutgoing), never from the pod's own IP. Measured where
it counts: the external host's server reports the source address it saw."""

from __future__ import annotations

from collections.abc import Sequence

from labctl.probe import http_get
from labctl.store import PodRecord
from labctl.topology import Topology
from labctl.wire import CheckResult


def outgoing_nat_checks(
    topo: Topology, pods: Sequence[PodRecord], pids: dict[str, int], timeout: float = 2.0
) -> list[CheckResult]:
    """One check per (node, external host): the node's first pod asks the host over HTTP."""
    first: dict[str, PodRecord] = {}
    for pod in pods:
        first.setdefault(pod.node, pod)
    out = []
    for node, pod in first.items():
        node_ip = str(topo.nodes[node].ip)
        for name, ext in topo.externals.items():
            check = f"outgoing nat {pod.key} -> {name}"
            try:
                body = http_get(pids[pod.key], str(ext.ip), 80, timeout)
            except OSError as e:
                out.append(CheckResult(check, False, f"no answer from {ext.ip}:80 ({e})"))
                continue
            lines = body.splitlines()
            seen = lines[1].removeprefix("client ").rsplit(":", 1)[0] if len(lines) > 1 else "?"
            if seen == node_ip:
                detail = f"arrived from {seen}, {node}'s address (masqueraded)"
                out.append(CheckResult(check, True, detail))
            elif seen == pod.ip:
                detail = f"arrived from the pod IP {seen}: not masqueraded on {node}"
                out.append(CheckResult(check, False, detail))
            else:
                out.append(CheckResult(check, False, f"arrived from {seen}, wanted {node_ip}"))
    return out
