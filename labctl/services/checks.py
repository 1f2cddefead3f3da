"""What verify asks of Services: every port answers from every pod through its ClusterIP (by
an endpoint of that Service), from every external host through each NodePort and externalIP,
with the source address each traffic policy promises; and on the underlay no packet ever
carries a ClusterIP (kube-proxy DNATs on the client's node), while backend pod IPs do.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from ipaddress import IPv4Network, ip_address

from labctl.checker import CaptureIndex
from labctl.policy.evaluate import allowed, isolated
from labctl.policy.model import PodInfo
from labctl.probe import http_get, udp_ask
from labctl.services.endpoints import selected_pods, slices_for
from labctl.services.model import Service, ServicePort
from labctl.store import Store
from labctl.topology import Topology
from labctl.wire import CheckResult

TIMEOUT = 1.0
#: (client key, backend key) -> does NetworkPolicy let the client reach that backend pod.
Allowed = Callable[[str, str, int, str], bool]


def _ask(pid: int, ip: str, port: int, protocol: str) -> tuple[str, str] | None:
    """(who answered, the client address it saw) or None when nothing answered."""
    try:
        if protocol == "TCP":
            lines = http_get(pid, ip, port, TIMEOUT).splitlines()
            return lines[0], lines[1].removeprefix("client ").rsplit(":", 1)[0]
        return udp_ask(pid, ip, port, TIMEOUT).strip(), ""
    except (OSError, IndexError):
        return None


def _backends(
    svc: Service, port: ServicePort, pods: Sequence[PodInfo]
) -> dict[str, tuple[str, int]]:
    """Endpoint pod key -> (node, target port) for one service port."""
    name = port.name or ""
    out = {}
    for s in slices_for(svc, pods):
        number = next((p.port for p in s.ports if p.name == name), None)
        if number is None:
            continue
        for ep in s.endpoints:
            out[f"{ep.namespace}/{ep.pod}"] = (ep.node, number)
    return out


def policy_allows(objects: Store, enforced: bool) -> Allowed:
    """Kubernetes' answer for a client pod reaching a backend pod (policies act after DNAT,
    on the backend); always yes where nothing enforces NetworkPolicy."""
    if not enforced or not objects.networkpolicies:
        return lambda client, backend, port, protocol: True
    policies, namespaces = objects.policies(), objects.namespace_labels()
    infos = {p.key: p.info() for p in objects.pods.values()}

    def answer(client: str, backend: str, port: int, protocol: str) -> bool:
        return allowed(policies, namespaces, infos[client], infos[backend], port, protocol)  # type: ignore[arg-type]

    return answer


def isolated_endpoints(svc: Service, objects: Store, enforced: bool) -> bool:
    """Whether NetworkPolicy isolates (for ingress) any endpoint of `svc`."""
    if not enforced or not objects.networkpolicies:
        return False
    policies = objects.policies()
    pods = [p for p in objects.pod_infos() if p.namespace == svc.metadata.namespace]
    return any(isolated(policies, p, "Ingress") for p in selected_pods(svc, pods))


def service_checks(
    services: Sequence[Service],
    pods: Sequence[PodInfo],
    pids: dict[str, int],
    topo: Topology,
    allowed: Allowed,
    pods_too: bool = True,
    externals: bool = True,
) -> list[CheckResult]:
    """ClusterIP from every pod; NodePort on every node and externalIPs from every external
    host (each part can be left out). One check per service port and client kind."""
    out: list[CheckResult] = []
    for svc in services:
        for port in svc.spec.ports:
            backends = _backends(svc, port, pods)
            label = f"{svc.key}:{port.port}/{port.protocol}"
            if pods_too:
                out.append(_cluster_ip(svc, port, backends, pods, pids, allowed, label))
            if not externals:
                continue
            if svc.spec.type == "NodePort" and port.nodePort:
                out.extend(_node_ports(svc, port, backends, pids, topo, label))
            for ext_ip in svc.spec.externalIPs or []:
                out.extend(_external_ip(svc, port, ext_ip, backends, pids, topo, label))
    return out


def _cluster_ip(
    svc: Service,
    port: ServicePort,
    backends: dict[str, tuple[str, int]],
    pods: Sequence[PodInfo],
    pids: dict[str, int],
    allowed: Allowed,
    label: str,
) -> CheckResult:
    ip = svc.spec.clusterIP or ""
    local = svc.spec.internalTrafficPolicy == "Local"
    problems, answered_by = [], set()
    for client in pods:
        usable = [
            b
            for b, (node, target) in backends.items()
            if (not local or node == client.node) and allowed(client.key, b, target, port.protocol)
        ]
        got = _ask(pids[client.key], ip, port.port, port.protocol)
        if got is None:
            if usable:
                problems.append(f"{client.key}: no answer")
            continue
        who = got[0]
        answered_by.add(who)
        if who not in usable:
            problems.append(f"{client.key}: answered by {who}, not one of {sorted(usable)}")
    name = f"service {label} cluster IP {ip}"
    if problems:
        return CheckResult(name, False, "; ".join(problems[:4]))
    return CheckResult(
        name, True, f"{len(pods)} pods: answered by {len(answered_by)} of {len(backends)} endpoints"
    )


def _node_ports(
    svc: Service,
    port: ServicePort,
    backends: dict[str, tuple[str, int]],
    pids: dict[str, int],
    topo: Topology,
    label: str,
) -> list[CheckResult]:
    out = []
    local = svc.spec.externalTrafficPolicy == "Local"
    for ext_name, ext in topo.externals.items():
        problems, notes = [], []
        for node_name, node in topo.nodes.items():
            has_local = any(n == node_name for n, _ in backends.values())
            should = bool(backends) and (has_local or not local)
            got = _ask(pids[ext_name], str(node.ip), port.nodePort or 0, port.protocol)
            if got is None:
                if should:
                    problems.append(f"{node_name}: no answer")
                continue
            if not should:
                problems.append(f"{node_name}: answered by {got[0]} with no local endpoint")
                continue
            problems += _source(got, str(ext.ip), local, node_name)
            notes.append(node_name)
        name = f"service {label} nodePort {port.nodePort} from {ext_name}"
        if problems:
            out.append(CheckResult(name, False, "; ".join(problems[:4])))
        else:
            policy = "Local: client IP kept" if local else "Cluster: SNAT to the node"
            out.append(CheckResult(name, True, f"answered on {', '.join(notes)} ({policy})"))
    return out


def _source(got: tuple[str, str], client_ip: str, local: bool, where: str) -> list[str]:
    """What is wrong with the source address the endpoint saw, for the traffic policy."""
    if got[1] == "":
        return []  # UDP answers carry no client address
    if local and got[1] != client_ip:
        return [f"{where}: endpoint saw {got[1]}, wanted the client's {client_ip} (Local)"]
    if not local and got[1] == client_ip:
        return [f"{where}: endpoint saw the client's own {client_ip}; Cluster must SNAT"]
    return []


def _external_ip(
    svc: Service,
    port: ServicePort,
    ext_ip: str,
    backends: dict[str, tuple[str, int]],
    pids: dict[str, int],
    topo: Topology,
    label: str,
) -> list[CheckResult]:
    out = []
    local = svc.spec.externalTrafficPolicy == "Local"
    for ext_name, ext in topo.externals.items():
        name = f"service {label} externalIP {ext_ip} from {ext_name}"
        got = _ask(pids[ext_name], ext_ip, port.port, port.protocol)
        if got is None:
            if backends and not local:
                out.append(
                    CheckResult(name, False, "no answer (is the externalIP routed to a node?)")
                )
            else:
                out.append(CheckResult(name, True, "no answer, as expected: no local endpoint"))
            continue
        problems = _source(got, str(ext.ip), local, ext_ip)
        if got[0] not in backends:
            problems.append(f"answered by {got[0]}, not an endpoint")
        detail = "; ".join(problems) or f"answered by {got[0]}"
        out.append(CheckResult(name, not problems, detail))
    return out


def cluster_ip_wire_check(
    index: dict[str, CaptureIndex], service_cidr: IPv4Network, backends: set[str]
) -> CheckResult:
    """On every node's underlay: no packet to or from a ClusterIP (DNAT happened on the
    client's node), and at least one packet to a backend pod IP when one crossed nodes."""
    leaks = []
    seen_backend = False
    for node, idx in index.items():
        for src, dst in idx.pairs:
            if ip_address(dst) in service_cidr or ip_address(src) in service_cidr:
                leaks.append(f"{node}: {src} -> {dst}")
            seen_backend = seen_backend or dst in backends
    name = "service traffic on the wire"
    if leaks:
        return CheckResult(name, False, f"ClusterIP on the underlay: {'; '.join(leaks[:3])}")
    if backends and not seen_backend:
        return CheckResult(name, False, "no packet to a backend pod IP crossed the underlay")
    return CheckResult(name, True, "no ClusterIP on the underlay; backend pod IPs are")
