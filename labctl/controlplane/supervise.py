"""The supervisor's side of the control plane: start the lab's etcd and seed flannel's
network config, wait until every node agent has programmed every peer, keep etcd running."""

from __future__ import annotations

import time
from typing import Any

from labctl import state
from labctl.controlplane import agent
from labctl.controlplane import lease as leases
from labctl.controlplane.etcd import Etcd
from labctl.plan import Plan

AGENT = "flannel-agent"
NET_CONF = "/etc/kube-flannel/net-conf.json"
CONVERGE_TIMEOUT = 60.0


def agent_configs(plan: Plan) -> dict[str, dict[str, Any]]:
    """Node -> its agent's config, for the nodes the plan gives an agent."""
    return {ns.name: d.config for ns in plan.node_ns() for d in ns.daemons if d.kind == AGENT}


def net_conf(plan: Plan) -> str:
    """The net-conf.json every node of the plan was given (what flannel keeps in etcd)."""
    for ns in plan.node_ns():
        if NET_CONF in ns.files:
            return ns.files[NET_CONF]
    raise ValueError("the plan has no net-conf.json")


class ConvergeTimeout(RuntimeError):
    """The agents did not program every peer in time."""


class ControlPlane:
    """The lab's etcd plus what the supervisor knows of its agents."""

    def __init__(self, st: state.LabState) -> None:
        self.st = st
        self.etcd = Etcd(st.lab, st.dir)

    def start(self, plan: Plan) -> None:
        """Start etcd and put the network config there unless it already holds one."""
        self.st.processes["etcd"] = self.etcd.start()
        if self.etcd.client.get(leases.CONFIG_KEY) is None:
            self.etcd.client.put(leases.CONFIG_KEY, net_conf(plan))

    def converged(self, plan: Plan) -> tuple[bool, list[str]]:
        """Whether every agent holds its lease and has programmed every other node's subnet
        (the lab is then as `up` promises), and the agents' warnings."""
        configs = agent_configs(plan)
        reports = agent.read_status(self.st.dir)
        subnets = {n: c["subnet"] for n, c in configs.items()}
        warnings = []
        done = True
        for node in configs:
            rep = reports.get(node)
            want = sorted(s for n, s in subnets.items() if n != node)
            if rep is None or rep.get("peers") != want:
                done = False
            else:
                warnings += rep.get("warnings", [])
        return done, warnings

    def wait_converged(self, plan: Plan, timeout: float = CONVERGE_TIMEOUT) -> float:
        """Block until `converged`; record the agents' warnings; return the seconds taken."""
        started = time.monotonic()
        while True:
            done, warnings = self.converged(plan)
            if done:
                self.st.warnings += [w for w in warnings if w not in self.st.warnings]
                return time.monotonic() - started
            if time.monotonic() - started > timeout:
                raise ConvergeTimeout(
                    f"the flannel agents did not program every peer within {timeout:.0f}s "
                    f"(see {self.st.dir / 'daemons'})"
                )
            time.sleep(0.02)

    def check(self) -> bool:
        """Restart etcd if it died; True if the lab's state changed."""
        warning = self.etcd.check()
        if warning is None:
            return False
        self.st.warnings.append(warning)
        if self.etcd.popen is not None:
            self.st.processes["etcd"] = self.etcd.popen.pid
        return True

    def stop(self) -> None:
        """Stop etcd (after the agents)."""
        self.etcd.stop()
