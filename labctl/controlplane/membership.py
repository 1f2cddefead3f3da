"""Nodes joining and leaving a running lab, in the supervisor (`labctl node add|remove`,
asked over the control socket).

A node joins as in a cluster: its namespace and its link to the segment's bridge appear,
its share of the plan (made by the same planner as `up`, see members.py) is applied, its
daemons start. Flannel (and canal): its agent takes a subnet lease in etcd, and the other
agents program their routes, neighbours and FDB entries for it from their lease watch.
calico-ipip/-vxlan (and CrossSubnet): its calico-node writes its Node record and claims its
block, and the other calico-nodes program its VTEP and block route from their watch. The
userspace and BPF datapaths re-read their peer tables (SIGHUP). calico-bgp, and the IPIP
modes' announcing sessions: its FRR starts with its mesh or route-reflector peers, and every
other speaker gains it as a neighbour (the re-rendered frr.conf written, the difference
applied with vtysh, as confd re-renders BIRD's config).

A node leaves the other way round (its pods were drained by the caller): its daemons stop;
its lease (Calico: Node, block affinity and block records) is deleted and the other agents
remove what they programmed for it as the watch reports the deletion; its FRR stops (the
sessions close, the peers withdraw its block), the peers drop the neighbour. Then its
namespace goes.

Both record the lab's topology and plan as they become, so every later command sees the
node, and say how long the other nodes took to follow.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from ipaddress import IPv4Network
from typing import Any

from labctl import engine, frr, routing, state, store, wiring
from labctl.controlplane import calicostore as cs
from labctl.controlplane import lease as leases
from labctl.controlplane import members
from labctl.controlplane.agent import status_path
from labctl.controlplane.dynamics import Dynamics
from labctl.controlplane.supervise import agent_configs
from labctl.kubelet import Kubelet
from labctl.modes import get_mode
from labctl.plan import Daemon, Plan
from labctl.policy import apply as policy
from labctl.services import apply as proxy
from labctl.topology import Topology

#: How long the others may take to follow a joining or leaving node's BGP speaker.
BGP_TIMEOUT = 60.0


class Membership:
    """The supervisor's handler for `node add` and `node remove`."""

    def __init__(self, kubelet: Kubelet, dyn: Dynamics, speakers: routing.Speakers) -> None:
        self.kubelet, self.dyn, self.speakers = kubelet, dyn, speakers
        self.st = dyn.st
        self._serial = 0

    @property
    def pids(self) -> dict[str, int]:
        return self.kubelet.pids

    # ---- join ----

    def add(self, req: dict[str, Any]) -> dict[str, Any]:
        """`node add`: create, wire, program and start the node; wait until every other node
        has its routes and it has theirs."""
        started = time.monotonic()
        st, name = self.st, req["name"]
        old_topo, old_plan = self.kubelet.topo, self.dyn.plan
        old_raw = members.read_raw(st.topology)
        raw, topo = members.add_node(
            old_raw, old_topo, name, req["segment"], req["ip"], req.get("pod_cidr")
        )
        change = members.replan(get_mode(st.mode), st.datapath, old_plan, old_topo, topo)
        ns = change.plan.namespaces[name]
        self._serial += 1
        atts = [a for a in change.plan.attachments if a.ns == name]
        host = wiring.add_host(self.kubelet.net, ns, atts, self._serial)
        self.kubelet.hosts[name] = host
        self.pids[name] = host.pid
        st.namespaces[name] = state.NsRecord(pid=host.pid, role="node")
        try:
            warnings = engine.apply_namespace(ns, host.pid, self.pids)
            # Recorded before the daemons start: the agent finds its namespace in the state.
            self._record(change.plan, raw, topo)
            joining = time.monotonic()
            self.dyn.group.start_namespace(ns, host.pid, st)
            for where, daemon in change.daemons:
                self.dyn.group.reconfigure(where, daemon, st)
            self._bgp_join(change.speakers, name)
            if agent_configs(change.plan):
                self.dyn.cplane.wait_converged(change.plan)
            joined = time.monotonic() - joining
            self._sync_nodes(topo)
        except BaseException:
            # Back to the lab as it was: everything the join started, undone in reverse.
            undo = {n: (after, before) for n, (before, after) in change.speakers.items()}
            old = [(n, _daemon(old_plan, n, d.kind)) for n, d in change.daemons]
            try:
                self._leave(name, undo, old, old_plan, _lease(change.plan, name))
            except Exception as e:
                st.warnings.append(f"node add {name} failed, and undoing it too: {e}")
            self._forget(name)
            self._record(old_plan, old_raw, old_topo)
            raise
        st.warnings += [w for w in warnings if w not in st.warnings]
        st.save()
        return {
            "node": name,
            "ip": str(topo.nodes[name].ip),
            "podCIDR": str(topo.node_pod_cidrs[name]),
            "peers": change.peers,
            "converged": round(joined, 3),
            "seconds": round(time.monotonic() - started, 3),
            "by": members.mechanism(change.plan),
        }

    def _bgp_join(self, speakers: dict[str, tuple[Any, Any]], name: str) -> None:
        """Start the new node's FRR and give every other speaker its neighbour; wait until
        the sessions are up and every block is in every kernel."""
        if name not in speakers:
            return
        new = speakers[name][1]
        others = {n: pair for n, pair in speakers.items() if n != name}
        # Peers that wait for the new node to connect first, the others once it listens, so
        # that nobody's first attempt is refused and sits out BGP's connect-retry timer.
        new_ip = str(new.router_id)
        waiting = {n: p for n, p in others.items() if _waits_for(p[1], new_ip)}
        for n, (before, after) in waiting.items():
            frr.reconfigure(self.pids[n], before, after)
        pid = self.pids[name]
        routing.reach_all({name: [str(nb.ip) for nb in new.neighbors]}, self.pids)
        dpids = frr.start(pid, new)
        self.speakers.daemons[name] = (pid, dpids)
        for dpid in dpids:
            self.st.processes[f"{name}:frr:{dpid}"] = dpid
        for n, (before, after) in others.items():
            if n not in waiting:
                frr.reconfigure(self.pids[n], before, after)
        frr.wait_established(pid, len(new.neighbors), BGP_TIMEOUT)
        live = {n: ns.bgp for n, ns in self.dyn.plan.namespaces.items() if ns.bgp is not None}
        late = routing.wait_routes(live, self.pids, BGP_TIMEOUT)
        if late:
            raise TimeoutError(
                f"BGP: {', '.join(sorted(late))} lack blocks {BGP_TIMEOUT:.0f}s after {name} joined"
            )

    # ---- leave ----

    def remove(self, req: dict[str, Any]) -> dict[str, Any]:
        """`node remove` of a drained node: stop it, let the others drop it, remove it."""
        started = time.monotonic()
        st, name = self.st, req["name"]
        mode = get_mode(st.mode)
        pods = sorted(k for k, r in st.namespaces.items() if r.role == "pod" and r.node == name)
        if pods:
            raise ValueError(f"node {name} still runs pods {', '.join(pods)}; drain it first")
        old_topo = self.kubelet.topo
        old_plan = self.dyn.plan
        bgp = any(ns.bgp for ns in old_plan.node_ns())
        raw, topo = members.remove_node(members.read_raw(st.topology), old_topo, name, bgp)
        change = members.replan(mode, st.datapath, old_plan, old_topo, topo)
        leaving = time.monotonic()
        self._leave(name, change.speakers, change.daemons, change.plan, _lease(old_plan, name))
        if agent_configs(change.plan):
            self.dyn.cplane.wait_converged(change.plan)
        left = time.monotonic() - leaving
        self._forget(name)
        self._record(change.plan, raw, topo)
        self._sync_nodes(topo)
        st.save()
        return {
            "node": name,
            "peers": change.peers,
            "converged": round(left, 3),
            "seconds": round(time.monotonic() - started, 3),
            "by": members.mechanism(change.plan),
        }

    def _leave(
        self,
        name: str,
        speakers: dict[str, tuple[Any, Any]],
        tables: list[tuple[str, Daemon]],
        plan: Plan,
        lease: list[str],
    ) -> None:
        """Stop the node's daemons and speaker, delete its lease, give the others' datapaths
        their new peer `tables` and their speakers their new neighbours; wait until its block
        is gone from every kernel that `plan` (the lab without the node) keeps."""
        st = self.st
        self.dyn.group.stop_namespace(name, st)
        status_path(st.dir, name).unlink(missing_ok=True)
        for key in lease:
            # What `kubectl delete node` does for flannel's kube subnet manager (with the etcd
            # one an operator's `etcdctl del`: flanneld never deletes its own lease) and
            # Calico's node controller.
            self.dyn.cplane.etcd.client.delete(key)
        for where, daemon in tables:
            self.dyn.group.reconfigure(where, daemon, st)
        if name in self.speakers.daemons:
            pid, dpids = self.speakers.daemons.pop(name)
            blocks = {str(b) for b in speakers[name][0].networks}
            for dpid in dpids:
                # A frozen speaker (node stop) would sit out SIGTERM and be killed without
                # closing its sessions.
                with contextlib.suppress(ProcessLookupError):
                    os.kill(dpid, signal.SIGCONT)
            frr.stop(pid, dpids)
            for key in [k for k in st.processes if k.startswith(f"{name}:frr:")]:
                del st.processes[key]
            self._wait_withdrawn(blocks, plan, name)
        for n, (before, after) in speakers.items():
            if n != name and before is not None and after is not None:
                frr.reconfigure(self.pids[n], before, after)

    def _wait_withdrawn(self, blocks: set[str], plan: Plan, name: str) -> None:
        """Until no other speaker that installs routes has any of `blocks` in its kernel."""
        others = [
            ns.name
            for ns in plan.namespaces.values()
            if ns.bgp is not None and ns.bgp.install_routes and ns.name != name
        ]
        deadline = time.monotonic() + BGP_TIMEOUT
        while True:
            held = [n for n in others if blocks & set(frr.kernel_bgp_routes(self.pids[n]))]
            if not held:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"BGP: {', '.join(held)} still route {name}'s block")
            time.sleep(0.02)

    def _forget(self, name: str) -> None:
        """Remove the node's namespace and links, and every record of it."""
        host = self.kubelet.hosts.pop(name, None)
        if host is not None:
            wiring.remove_host(self.kubelet.net, host)
        self.pids.pop(name, None)
        self.st.namespaces.pop(name, None)
        self.st.notes = [n for n in self.st.notes if not n.startswith(f"node {name} is stopped")]

    # ---- both ----

    def _record(self, plan: Plan, raw: dict[str, Any], topo: Topology) -> None:
        """The lab's topology and plan as they are now, for every later command and for the
        supervisor's own handlers."""
        members.write_raw(self.st.topology, raw)
        state.write_plan(self.st.lab, plan)
        gone = set(self.dyn.plan.notes) - set(plan.notes)
        self.dyn.plan = self.kubelet.plan = plan
        self.kubelet.topo = topo
        self.st.notes = [n for n in self.st.notes if n not in gone]
        self.st.notes += [n for n in plan.notes if n not in self.st.notes]
        self.st.save()

    def _sync_nodes(self, topo: Topology) -> None:
        """kube-proxy (and Felix's policy where the mode enforces it) on every node of `topo`:
        a new node gets the services' rules, the others the node list as it is now."""
        objects = store.load(self.st.lab)
        nodes = {n: self.pids[n] for n in topo.nodes}
        proxy.sync(
            list(objects.services.values()),
            objects.pod_infos(),
            {n: str(x.ip) for n, x in topo.nodes.items()},
            nodes,
            topo.cluster.podCIDR,
            self.st.proxy_mode,
        )
        if get_mode(self.st.mode).enforces_policy:
            policy.sync(objects, self.pids, list(topo.nodes))


def _lease(plan: Plan, node: str) -> list[str]:
    """The etcd keys that go with `node` when it is deleted: flannel's subnet lease; in
    Calico modes its Node resource, block and block affinity (what Calico's node
    controller removes after `kubectl delete node`)."""
    config = agent_configs(plan).get(node)
    if not config:
        return []
    if "subnet" in config:
        return [leases.subnet_key(IPv4Network(config["subnet"]))]
    block = IPv4Network(config["block"])
    return [cs.node_key(node), cs.affinity_key(node, block), cs.block_key(block)]


def _daemon(plan: Plan, ns: str, kind: str) -> Daemon:
    (found,) = [d for d in plan.namespaces[ns].daemons if d.kind == kind]
    return found


def _waits_for(speaker: Any, ip: str) -> bool:
    """Whether `speaker` waits for the neighbour at `ip` to open the session."""
    return any(str(n.ip) == ip and n.passive for n in speaker.neighbors)
