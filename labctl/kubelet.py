"""The node agents' pod lifecycle while a lab runs (in the supervisor): every pod the object
store holds gets a namespace, its CNI ADD and its servers; every pod the store no longer
holds gets its CNI DEL. Pods from the topology and pods applied later are treated alike.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import time
from ipaddress import IPv4Address
from typing import Any

from labctl import engine, state, store
from labctl.listeners import PodServers
from labctl.modes import Mode
from labctl.nsutil import in_netns, nsenter_argv
from labctl.plan import Plan
from labctl.store import PodRecord
from labctl.topology import Pod, Topology
from labctl.workloads.cni import plan_pod


def gratuitous_arp(ifname: str, ip: str) -> None:
    """Broadcast an ARP request for our own address from `ifname` (in the current namespace):
    neighbours that still map the address to another MAC update their entry."""
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
        s.bind((ifname, 0))
        mac = s.getsockname()[4]
        addr = socket.inet_aton(ip)
        arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + mac + addr + b"\x00" * 6 + addr
        s.send(b"\xff" * 6 + mac + struct.pack("!H", 0x0806) + arp)


class Kubelet:
    """Reconciles the lab's pod namespaces with the store (see `sync`)."""

    def __init__(
        self,
        lab: str,
        net: Any,
        hosts: dict[str, Any],
        mode: Mode,
        topo: Topology,
        plan: Plan,
        st: state.LabState,
        pids: dict[str, int],
        servers: PodServers,
    ) -> None:
        self.lab, self.net, self.hosts, self.mode = lab, net, hosts, mode
        self.topo, self.plan, self.st, self.pids, self.servers = topo, plan, st, pids, servers
        self._serial = 0

    def sync(self) -> dict[str, Any]:
        """CNI DEL for pods gone from the store, then ADD for new ones; returns what changed
        and how long it took."""
        started = time.monotonic()
        objects = store.load(self.lab)
        live = {k for k, r in self.st.namespaces.items() if r.role == "pod"}
        gone = sorted(live - set(objects.pods))
        new = [p for k, p in objects.pods.items() if k not in live]
        for key in gone:
            self._delete(key)
        for pod in new:
            self._add(pod)
        self.st.save()
        return {
            "added": [p.key for p in new],
            "deleted": gone,
            "seconds": round(time.monotonic() - started, 4),
        }

    def _add(self, rec: PodRecord) -> None:
        self._serial += 1
        host = self.net.addHost(f"p{self._serial}")
        self.hosts[rec.key] = host
        self.pids[rec.key] = host.pid
        self.st.namespaces[rec.key] = state.NsRecord(pid=host.pid, role="pod", node=rec.node)
        pod = Pod(
            name=rec.name,
            namespace=rec.namespace,
            node=rec.node,
            labels=rec.labels,
            ports=rec.ports,
        )
        try:
            node_ns, pod_ns = plan_pod(self.mode, self.topo, self.plan, pod, IPv4Address(rec.ip))
            engine.apply_namespace(node_ns, self.pids[rec.node], self.pids)
            engine.apply_namespace(pod_ns, host.pid, self.pids)
            self.servers.open([rec], self.pids)
            if self.mode.network.announce:
                with in_netns(host.pid):
                    gratuitous_arp("eth0", rec.ip)
        except Exception as e:
            # What a failed CNI ADD leaves (namespace, half a veth) goes at once, as the
            # runtime tears down a sandbox whose network setup failed.
            self._delete(rec.key)
            self.st.save()
            raise RuntimeError(f"pod {rec.key}: CNI ADD on {rec.node} failed: {e}") from e

    def _delete(self, key: str) -> None:
        self.servers.close_pod(key)
        # CNI DEL: removing the pod's eth0 removes the pair, the host end's /32 route and
        # neighbour at once, so a pod re-created with the same name never meets a half-gone
        # interface. (By the pod's side: a host device of that name may not be ours.)
        subprocess.run(
            nsenter_argv(self.pids[key], ["ip", "link", "del", "eth0"], mount=False),
            capture_output=True,
        )
        host = self.hosts.pop(key, None)
        if host is not None:
            host.terminate()
            if host in self.net.hosts:
                self.net.hosts.remove(host)
        self.pids.pop(key, None)
        del self.st.namespaces[key]
