"""The lab's holder process: `python -m labctl.supervisor LAB`.

Namespaces made by Mininet live only as long as their shells, which live only as long as the
process that started them. So one supervisor per lab builds the lab, then stays: it keeps the
shells, serves the pods' ports and restarts the lab's daemons. It runs inside the lab's
private namespace and reports progress through the lab's state file.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import traceback
from types import FrameType

from labctl import control, daemons, engine, routing, state, store, wiring
from labctl.controlplane.dynamics import Dynamics
from labctl.controlplane.membership import Membership
from labctl.controlplane.supervise import ControlPlane, agent_configs
from labctl.kubelet import Kubelet
from labctl.listeners import Host, PodServers
from labctl.modes import get_mode
from labctl.policy import apply as policy
from labctl.services import apply as proxy
from labctl.topology import DEFAULT_PORTS, load_topology


class _Stop(Exception):
    pass


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise _Stop


def run(lab: str) -> int:
    """Build the lab, mark it ready, then hold it until SIGTERM."""
    st = state.load(lab)
    st.supervisor_pid = os.getpid()
    started = time.monotonic()

    def phase(text: str) -> None:
        st.phase = text
        st.save()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    servers = PodServers()
    group = daemons.Group(lab)
    speakers = routing.Speakers()
    cplane = ControlPlane(st)
    try:
        plan = state.read_plan(lab)
        objects = store.load(lab)
        phase("creating namespaces")
        pids: dict[str, int] = {}

        def record(name: str, pid: int) -> None:
            pids[name] = pid
            ns = plan.namespaces[name]
            st.namespaces[name] = state.NsRecord(pid=pid, role=ns.role, node=ns.node)

        net = wiring.build(plan, record, phase)
        st.save()
        phase("programming the dataplane")
        st.warnings = engine.apply(plan, pids, phase)
        st.notes += [n for n in plan.notes if n not in st.notes]
        mode = get_mode(st.mode)
        if mode.enforces_policy:
            phase("programming the policy dataplane")
            policy.sync(objects, pids, [n.name for n in plan.node_ns()])
        topo = load_topology(st.topology)
        phase(f"programming kube-proxy ({st.proxy_mode})")
        proxy.sync(
            list(objects.services.values()),
            objects.pod_infos(),
            {n: str(x.ip) for n, x in topo.nodes.items()},
            pids,
            topo.cluster.podCIDR,
            st.proxy_mode,
        )
        phase("starting pod servers and daemons")
        servers.open(objects.pods.values(), pids)
        externals = [n.name for n in plan.namespaces.values() if n.role == "external"]
        servers.open([Host(name, DEFAULT_PORTS) for name in externals], pids)
        agents = bool(agent_configs(plan))
        if agents:
            phase("starting etcd")
            cplane.start(plan)
        group.start(plan, pids, st)
        if agents:
            phase("waiting for the node agents to program their peers")
            cplane.wait_converged(plan)
            cplane.sync_ipam(plan, objects)
        for name, dpids in speakers.start(plan, pids, phase).items():
            for dpid in dpids:
                st.processes[f"{name}:frr:{dpid}"] = dpid
        st.warnings += speakers.warnings
        # The node agents' pod lifecycle from now on: `apply` asks for a sync over the socket.
        hosts = {name: h for h in net.hosts for name, pid in pids.items() if pid == h.pid}
        kubelet = Kubelet(lab, net, hosts, mode, topo, plan, st, pids, servers)
        dyn = Dynamics(st, group, cplane, plan)

        def synced(result: dict[str, object]) -> dict[str, object]:
            # Calico IPAM: the blocks in etcd follow the pods the kubelet added or deleted.
            if agents:
                cplane.sync_ipam(plan, store.load(lab))
            return result

        nodes = Membership(kubelet, dyn, speakers)
        ops = {
            "sync": lambda req: synced(kubelet.sync()),
            "node": dyn.node,
            "set-backend": dyn.set_backend,
            "restart-agents": dyn.restart_agents,
            "node-add": nodes.add,
            "node-remove": nodes.remove,
        }
        ctl = control.listen(lab)
        servers.watch(ctl, lambda: control.handle(ctl, lambda req: ops[req["op"]](req)))
        st.status = "ready"
        st.phase = ""
        st.ready_after = round(time.monotonic() - started, 3)
        st.save()
        while True:
            servers.serve(0.5)
            if group.check(st) | cplane.check():
                st.save()
    except _Stop:
        st.status = "stopping"
        st.save()
        return 0
    except Exception as e:
        traceback.print_exc()
        st.status = "failed"
        # Say where it broke: "programming the dataplane: node1: route ...: File exists".
        st.error = f"{st.phase or 'starting'}: {e or type(e).__name__}"
        st.error_code = getattr(e, "exit_code", 1)
        st.save()
        return 1
    finally:
        speakers.stop()
        group.stop()
        cplane.stop()
        servers.close()


if __name__ == "__main__":
    sys.exit(run(sys.argv[1]))
