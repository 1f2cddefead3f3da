"""The CNI ADD of one pod as a plan: the same pod-network code `up` plans every pod with, run
for a single pod, so a pod added later is wired exactly as one from the topology."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address

from labctl.modes import Mode
from labctl.plan import NamespacePlan, Plan, pod_ns_name
from labctl.topology import Pod, Topology


def plan_pod(
    mode: Mode, topo: Topology, plan: Plan, pod: Pod, ip: IPv4Address
) -> tuple[NamespacePlan, NamespacePlan]:
    """What ADD programs: (the node's share: veth, /32 route, neighbour, sysctls; the pod's
    share: address and routes). `plan` is the lab's recorded plan (for the node's pod MTU)."""
    key = pod_ns_name(pod.namespace, pod.name)
    node_ns = NamespacePlan(name=pod.node, role="node")
    pod_ns = NamespacePlan(name=key, role="pod", node=pod.node)
    scratch = replace(plan, namespaces={pod.node: node_ns, key: pod_ns}, notes=[])
    mode.network.pod(scratch, node_ns, pod, topo, plan.node_pod_mtu[pod.node], ip)
    return node_ns, pod_ns
