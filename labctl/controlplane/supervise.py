"""The supervisor's side of the control plane: start the lab's etcd and seed flannel's
network config, wait until every node agent has programmed every peer, keep etcd running;
in Calico modes also keep each block's pod allocations current (calico-ipam's part of the
CNI ADD/DEL the lab's kubelet makes)."""

from __future__ import annotations

import time
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from labctl import state
from labctl.controlplane import agent
from labctl.controlplane import calicostore as cs
from labctl.controlplane import lease as leases
from labctl.controlplane.etcd import Etcd
from labctl.modes.calico import AGENT as CALICO_AGENT
from labctl.plan import Plan
from labctl.store import Store

AGENT = "flannel-agent"
#: The node agents' daemon kinds: flanneld, calico-node (start-up + Felix).
AGENTS = (AGENT, CALICO_AGENT)
NET_CONF = "/etc/kube-flannel/net-conf.json"
CONVERGE_TIMEOUT = 60.0
PER_NODE_TIMEOUT = 1.0


def agent_configs(plan: Plan) -> dict[str, dict[str, Any]]:
    """Node -> its agent's config, for the nodes the plan gives an agent."""
    return {ns.name: d.config for ns in plan.node_ns() for d in ns.daemons if d.kind in AGENTS}


def _owned(config: dict[str, Any]) -> str:
    """What an agent holds: its flannel lease or its Calico block."""
    return str(config.get("subnet") or config["block"])


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
        # Calico's agents create their pool themselves (calico-node start-up).
        flannel = any(d.kind == AGENT for ns in plan.node_ns() for d in ns.daemons)
        if flannel and self.etcd.client.get(leases.CONFIG_KEY) is None:
            self.etcd.client.put(leases.CONFIG_KEY, net_conf(plan))

    def converged(self, plan: Plan) -> tuple[bool, list[str]]:
        """Whether every agent holds its lease (block) and has programmed every other node's
        (the lab is then as `up` promises), and the agents' warnings."""
        configs = agent_configs(plan)
        reports = agent.read_status(self.st.dir)
        subnets = {n: _owned(c) for n, c in configs.items()}
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

    def wait_converged(self, plan: Plan, timeout: float | None = None) -> float:
        """Block until `converged`; record the agents' warnings; return the seconds taken.
        The default timeout grows with the nodes: each agent is a process that starts, reads
        every other node's record and programs it, on the same few cores."""
        if timeout is None:
            timeout = CONVERGE_TIMEOUT + PER_NODE_TIMEOUT * len(plan.node_ns())
        started = time.monotonic()
        while True:
            done, warnings = self.converged(plan)
            if done:
                self.st.warnings += [w for w in warnings if w not in self.st.warnings]
                return time.monotonic() - started
            if time.monotonic() - started > timeout:
                raise ConvergeTimeout(
                    f"the node agents did not program every peer within {timeout:.0f}s "
                    f"(see {self.st.dir / 'daemons'})"
                )
            time.sleep(0.02)

    def sync_ipam(self, plan: Plan, objects: Store) -> None:
        """Calico modes: make each node's block hold exactly its pods' allocations (a
        compare-and-swap per block, retried if an agent wrote it in between)."""
        client = self.etcd.client
        for node, config in agent_configs(plan).items():
            if "block" not in config:
                continue
            key = cs.block_key(IPv4Network(config["block"]))
            pods = [
                (p.namespace, p.name, IPv4Address(p.ip))
                for p in objects.pods.values()
                if p.node == node
            ]
            while True:
                kv = client.get(key)
                if kv is None:
                    break  # the agent has not claimed it yet: it will find the pods next sync
                block = cs.BlockRecord.from_json(kv.value)
                new = cs.with_pods(block, node, pods)
                if new == block or client.update(key, new.to_json(), kv.mod_revision):
                    break

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
