"""What changes a running flannel lab's control plane, asked over the supervisor's control
socket: a node frozen and thawed (`labctl node stop|start`), the backend switched in place
(`labctl config set backend`), the agents restarted (`labctl restart agents`).

`node stop` freezes the node's agent and daemons with SIGSTOP, like a hung flanneld/kubelet:
its kernel keeps forwarding, but its lease is no longer renewed, so the other nodes drop its
routes when the lease expires. `node start` thaws them with SIGCONT; the agent renews at once
and the others program it again.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from typing import Any

from pyroute2 import IPRoute

from labctl import daemons, state
from labctl.controlplane import lease as leases
from labctl.controlplane.supervise import AGENTS, ControlPlane, agent_configs
from labctl.modes import get_mode
from labctl.modes.flannel import BACKENDS, VXLAN_DEV, backend_named, peer_objects
from labctl.nsutil import in_netns
from labctl.plan import Plan, path_classes, peers_of
from labctl.topology import load_topology

# What `config set backend` accepts: flannel's Backend.Type (+ vxlan's DirectRouting).
BACKEND_CHOICES = ("vxlan", "vxlan-directrouting", "host-gw", "udp", "ipip")
# Backends the agents can switch to on nodes that already have their device (flanneld makes
# flannel0 and its proxy itself; the lab's agents do not).
SWITCHABLE = {"flannel-vxlan", "flannel-vxlan-directrouting", "flannel-host-gw"}


def stopped_note(node: str, ttl: int, mode: str = "") -> str:
    """The lab note (status, verify) while `node` is stopped."""
    when = f"its lease expires (TTL {ttl}s)" if ttl else "their BGP hold timer expires"
    if mode.startswith("calico-") and mode != "calico-bgp":
        # Calico's records have no TTL: nothing expires while calico-node is frozen.
        when = "its Node record is deleted (Calico has no lease TTL: until then they stay)"
    return (
        f"node {node} is stopped (labctl node stop): its agent and daemons are frozen; the "
        f"other nodes drop its routes when {when}"
    )


def switch_refusal(mode: str, new: str, has_vtep: Callable[[], bool]) -> str | None:
    """Why `config set backend` cannot switch a `mode` lab to `new` in place (None: it can).
    `has_vtep` says whether every node has flannel.1 (asked only when it matters)."""
    if mode not in SWITCHABLE or new not in SWITCHABLE:
        return (
            f"switching {mode} to {new} in place is not supported (the agents switch between "
            f"{', '.join(sorted(SWITCHABLE))}); up a new lab in {new}"
        )
    if new != "flannel-host-gw" and not has_vtep():
        return (
            f"{new} needs {VXLAN_DEV} on every node and this lab's nodes have none; "
            f"up a new lab in {new}"
        )
    return None


class Dynamics:
    """The supervisor's handler for control-plane requests."""

    def __init__(
        self, st: state.LabState, group: daemons.Group, cplane: ControlPlane, plan: Plan
    ) -> None:
        self.st, self.group, self.cplane, self.plan = st, group, cplane, plan

    def _node(self, name: str) -> None:
        nodes = [r for n, r in self.st.namespaces.items() if r.role == "node" and n == name]
        if not nodes:
            known = ", ".join(n for n, r in self.st.namespaces.items() if r.role == "node")
            raise ValueError(f"{name!r} is not a node of lab {self.st.lab} ({known})")

    def _pids(self, node: str) -> list[int]:
        pids = [p.popen.pid for p in self.group.procs if p.name.startswith(f"{node}:")]
        return pids + [
            pid for key, pid in self.st.processes.items() if key.startswith(f"{node}:frr:")
        ]

    def node(self, req: dict[str, Any]) -> dict[str, Any]:
        """`node stop|start NAME`: SIGSTOP or SIGCONT the node's agent and daemons."""
        name, action = req["name"], req["action"]
        self._node(name)
        ttl = agent_configs(self.plan).get(name, {}).get("ttl", 0)
        note = stopped_note(name, ttl, self.st.mode)
        pids = self._pids(name)
        if not pids:
            raise ValueError(f"node {name} runs no agent or daemon in mode {self.st.mode}")
        sig = signal.SIGSTOP if action == "stop" else signal.SIGCONT
        for pid in pids:
            os.kill(pid, sig)
        if action == "stop" and note not in self.st.notes:
            self.st.notes.append(note)
        if action == "start":
            self.st.notes = [n for n in self.st.notes if n != note]
        self.st.save()
        return {"node": name, "action": action, "processes": len(pids), "at": time.time()}

    def restart_agents(self, req: dict[str, Any] | None = None) -> dict[str, Any]:
        """Restart every node's agent (each re-reads the network config) and wait until they
        have programmed every peer again."""
        started = time.monotonic()
        for p in self.group.procs:
            if p.name.split(":")[-1] in AGENTS:
                p.popen.terminate()
                p.popen.wait(5)
                p.popen = self.group._spawn(p.ns_pid, p.argv, p.log)
                self.st.processes[p.name] = p.popen.pid
        for d in (self.st.dir / "agents").glob("*.json"):
            d.unlink()
        self.st.save()
        took = self.cplane.wait_converged(self.plan)
        self.st.save()
        return {"restarted": True, "converged": round(time.monotonic() - started, 3), "wait": took}

    def set_backend(self, req: dict[str, Any]) -> dict[str, Any]:
        """`config set backend B`: put the new Backend into /coreos.com/network/config,
        record the lab's new mode and expectations, restart the agents."""
        value = req["value"]
        if value not in BACKEND_CHOICES:
            raise ValueError(f"backend {value!r}: use one of {', '.join(BACKEND_CHOICES)}")
        new = f"flannel-{value}"
        refused = switch_refusal(self.st.mode, new, self._has_vtep)
        if refused:
            raise ValueError(refused)
        client = self.cplane.etcd.client
        kv = client.get(leases.CONFIG_KEY)
        conf = json.loads(kv.value) if kv else {}
        old = backend_named(conf)
        conf["Backend"] = BACKENDS[new].options
        client.put(leases.CONFIG_KEY, json.dumps(conf, indent=2))
        self._replan(new)
        state.write_plan(self.st.lab, self.plan)
        self.st.mode = new
        self.st.save()
        result = self.restart_agents()
        return {"from": old, "to": new, **result}

    def _has_vtep(self) -> bool:
        for ns in self.plan.node_ns():
            with in_netns(self.st.namespaces[ns.name].pid), IPRoute() as ip:
                if not ip.link_lookup(ifname=VXLAN_DEV):
                    return False
        return True

    def _replan(self, new: str) -> None:
        """The plan as it is after the switch: each node's agent-programmed peer objects and
        the pairs' wire expectations follow the new backend; devices, addresses and pod MTUs
        stay as they are (flanneld changes none of them, nor do the running pods)."""
        mode = get_mode(new)
        backend = BACKENDS[new]
        topo = load_topology(self.st.topology)
        for ns in self.plan.node_ns():
            ns.routes = [r for r in ns.routes if not r.agent]
            ns.neighbours = [n for n in ns.neighbours if not n.agent]
            ns.fdb = [f for f in ns.fdb if not f.agent]
            peers = {p.name: p for p in peers_of(topo, ns.name, VXLAN_DEV)}
            for peer in peers.values():
                part = peer_objects(backend, ns.name, peer)
                ns.routes += part.routes
                ns.neighbours += part.neighbours
                ns.fdb += part.fdb
        self.plan.mode = new
        self.plan.wire = list(mode.wire_specs)
        self.plan.paths = path_classes(backend.encap_for)


def leftovers(plan: Plan, pids: dict[str, int], mode: str) -> list[str]:
    """Devices a previous backend left on the nodes (flanneld does not remove flannel.1 on a
    switch to host-gw), for verify to point out."""
    if mode != "flannel-host-gw":
        return []
    out = []
    for ns in plan.node_ns():
        with in_netns(pids[ns.name]), IPRoute() as ip:
            idx = ip.link_lookup(ifname=VXLAN_DEV)
            if not idx:
                continue
            fdb = [e for e in ip.fdb("dump", ifindex=idx[0]) if e.get("ifindex") == idx[0]]
            neigh = ip.get_neighbours(ifindex=idx[0])
        out.append(
            f"{ns.name}: {VXLAN_DEV} is left over from the vxlan backend (flanneld does not "
            f"delete it when the backend changes), with {len(fdb)} FDB and {len(neigh)} "
            f"neighbour entries; 'ip link del {VXLAN_DEV}' removes it"
        )
    return out
