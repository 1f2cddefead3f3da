"""EndpointSlices as Kubernetes' EndpointSlice controller computes them, and the endpoints a
node's kube-proxy uses for each service port.

Slices (`discovery.k8s.io/v1`): the Service's selector picks the ready pods of its namespace
(a pod with an IP counts as ready in the lab); each service port resolves its `targetPort` on
every pod, a name by looking up the pod's container port of that name and protocol. A pod
without the named port is no endpoint for that port. Pods that resolve to the same port numbers
share a slice (a slice has one `ports` list), at most 100 endpoints per slice, as upstream.

Proxy view (`port_plans`): kube-proxy merges a service's slices per service port, sorts the
endpoints by `ip:port` and splits them by traffic policy (upstream `CategorizeEndpoints`):
"Cluster" uses every endpoint, "Local" only those on this node. Both proxy compilers build on
it. Everything here is pure.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from labctl.policy.model import PodInfo
from labctl.services.model import Service, ServicePort

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
MANAGED_BY = "endpointslice-controller.k8s.io"
MAX_ENDPOINTS_PER_SLICE = 100
# The alphabet of Kubernetes' generated name suffixes (utilrand.String: no vowels, so no words).
_SUFFIX_CHARS = "bcdfghjklmnpqrstvwxz2456789"
# generateName keeps at most 63 - 5 characters of the base, then adds the 5-character suffix.
_MAX_BASE = 58


@dataclass(frozen=True)
class EndpointPort:
    """A port of a slice: the service port's name ("" when unnamed) and the pods' number."""

    name: str
    port: int
    protocol: str


@dataclass(frozen=True)
class Endpoint:
    """One pod in a slice."""

    address: str
    node: str
    namespace: str
    pod: str


@dataclass(frozen=True)
class EndpointSlice:
    """A discovery.k8s.io/v1 EndpointSlice owned by a Service."""

    namespace: str
    name: str
    service: str  # the owning Service's name (label kubernetes.io/service-name)
    labels: Mapping[str, str]
    endpoints: tuple[Endpoint, ...]
    ports: tuple[EndpointPort, ...]

    @property
    def key(self) -> str:
        """`namespace/name` of the slice."""
        return f"{self.namespace}/{self.name}"

    @property
    def service_key(self) -> str:
        """`namespace/name` of the Service it belongs to."""
        return f"{self.namespace}/{self.service}"

    def manifest(self) -> dict[str, Any]:
        """The slice as `kubectl get endpointslice -o yaml` shows it."""
        return {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "generateName": f"{self.service[: _MAX_BASE - 1]}-",
                "labels": dict(self.labels),
                "ownerReferences": [
                    {
                        "apiVersion": "v1",
                        "kind": "Service",
                        "name": self.service,
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "addressType": "IPv4",
            "endpoints": [
                {
                    "addresses": [e.address],
                    "conditions": {"ready": True, "serving": True, "terminating": False},
                    "nodeName": e.node,
                    "targetRef": {"kind": "Pod", "namespace": e.namespace, "name": e.pod},
                }
                for e in self.endpoints
            ],
            "ports": [{"name": p.name, "port": p.port, "protocol": p.protocol} for p in self.ports],
        }


def selected_pods(svc: Service, pods: Iterable[PodInfo]) -> list[PodInfo]:
    """The ready pods `svc` selects, by name: same namespace, every selector label matching.

    A Service without a selector (or with `{}`, which the API stores the same way) selects
    nothing: its endpoints would be managed by hand, which the lab does not offer.
    """
    selector = svc.spec.selector
    if not selector:
        return []
    chosen = [
        p
        for p in pods
        if p.namespace == svc.metadata.namespace
        and p.ip
        and all(p.labels.get(k) == v for k, v in selector.items())
    ]
    return sorted(chosen, key=lambda p: p.name)


def resolve_target(port: ServicePort, pod: PodInfo) -> int | None:
    """The pod's port number for a service port: the number itself, or the pod's container port
    with that name and protocol (None when the pod has none; upstream `FindPort`)."""
    target = port.target
    if isinstance(target, int):
        return target
    for p in pod.ports:
        if p.name == target and p.protocol.upper() == port.protocol:
            return p.port
    return None


def _slice_name(svc: Service, index: int) -> str:
    """`<service>-<5 chars>`, derived from the Service and the slice's position, so that the
    name stays the same as pods come and go (upstream keeps a slice's random name)."""
    digest = hashlib.sha256(f"{svc.key}#{index}".encode()).digest()
    suffix = "".join(_SUFFIX_CHARS[b % len(_SUFFIX_CHARS)] for b in digest[:5])
    return f"{svc.metadata.name}-"[:_MAX_BASE] + suffix


def slices_for(svc: Service, pods: Iterable[PodInfo]) -> list[EndpointSlice]:
    """The EndpointSlices of `svc` given all pods of the cluster.

    A Service with a selector always has at least one slice, empty when no pod matches (the
    controller's placeholder); one without a selector has none.
    """
    if not svc.spec.selector:
        return []
    groups: dict[tuple[EndpointPort, ...], list[Endpoint]] = {}
    for pod in selected_pods(svc, pods):
        resolved = []
        for sp in svc.spec.ports:
            number = resolve_target(sp, pod)
            if number is not None:
                resolved.append(EndpointPort(sp.name or "", number, sp.protocol))
        endpoint = Endpoint(pod.ip, pod.node, pod.namespace, pod.name)
        groups.setdefault(tuple(resolved), []).append(endpoint)
    if not groups:
        groups[()] = []
    labels = {
        **svc.metadata.labels,
        SERVICE_NAME_LABEL: svc.metadata.name,
        MANAGED_BY_LABEL: MANAGED_BY,
    }
    out: list[EndpointSlice] = []
    # The biggest group first, so the usual single-mapping Service keeps slice index 0.
    for ports, endpoints in sorted(groups.items(), key=lambda g: (-len(g[1]), g[0])):
        for start in range(0, max(len(endpoints), 1), MAX_ENDPOINTS_PER_SLICE):
            out.append(
                EndpointSlice(
                    namespace=svc.metadata.namespace,
                    name=_slice_name(svc, len(out)),
                    service=svc.metadata.name,
                    labels=labels,
                    endpoints=tuple(endpoints[start : start + MAX_ENDPOINTS_PER_SLICE]),
                    ports=ports,
                )
            )
    return out


def compute_slices(
    services: Iterable[Service], pods: Sequence[PodInfo]
) -> dict[str, EndpointSlice]:
    """Every Service's slices, keyed by the slice's `namespace/name`."""
    return {s.key: s for svc in services for s in slices_for(svc, pods)}


@dataclass(frozen=True)
class ProxyEndpoint:
    """One `ip:port` of a service port, as kube-proxy holds it."""

    ip: str
    port: int
    node: str

    @property
    def text(self) -> str:
        """`ip:port` (upstream Endpoint.String(): the DNAT target and the hash input)."""
        return f"{self.ip}:{self.port}"


@dataclass(frozen=True)
class PortPlan:
    """What one node's kube-proxy does with one service port."""

    service: Service
    port: ServicePort
    cluster: tuple[ProxyEndpoint, ...]  # used by "Cluster" policy (empty if never used)
    local: tuple[ProxyEndpoint, ...]  # this node's endpoints, for "Local" policy
    reachable: tuple[ProxyEndpoint, ...]  # all endpoints this node may DNAT to
    has_endpoints: bool  # anywhere in the cluster

    @property
    def name(self) -> str:
        """Upstream ServicePortName.String(): `ns/name`, plus `:port-name` when named."""
        base = self.service.key
        return f"{base}:{self.port.name}" if self.port.name else base

    @property
    def protocol(self) -> str:
        """`tcp` or `udp`."""
        return self.port.protocol.lower()

    @property
    def cluster_ip(self) -> str:
        """The allocated ClusterIP."""
        assert self.service.spec.clusterIP is not None  # port_plans skips unallocated ones
        return self.service.spec.clusterIP

    @property
    def external_ips(self) -> list[str]:
        """The Service's externalIPs."""
        return self.service.spec.externalIPs

    @property
    def affinity(self) -> bool:
        """ClientIP session affinity."""
        return self.service.spec.sessionAffinity == "ClientIP"

    @property
    def externally_accessible(self) -> bool:
        """Reached by a nodePort or an externalIP, not only by the ClusterIP."""
        return self.port.nodePort is not None or bool(self.external_ips)

    @property
    def internal_local(self) -> bool:
        """internalTrafficPolicy: Local."""
        return self.service.spec.internalTrafficPolicy == "Local"

    @property
    def external_local(self) -> bool:
        """externalTrafficPolicy: Local (only meaningful when externally accessible)."""
        return self.externally_accessible and self.service.spec.externalTrafficPolicy == "Local"

    @property
    def has_internal(self) -> bool:
        """ClusterIP traffic has somewhere to go from this node."""
        return self.has_endpoints and (bool(self.local) or not self.internal_local)

    @property
    def has_external(self) -> bool:
        """External traffic arriving at this node has somewhere to go."""
        return self.has_endpoints and (bool(self.local) or not self.external_local)

    @property
    def uses_cluster_chain(self) -> bool:
        """The Cluster-policy chain (KUBE-SVC / service-) exists on this node."""
        return bool(self.cluster)

    @property
    def uses_local_chain(self) -> bool:
        """The Local-policy chain (KUBE-SVL / local-) exists on this node."""
        return bool(self.local)

    @property
    def uses_external_chain(self) -> bool:
        """The external-traffic chain (KUBE-EXT / external-) exists on this node."""
        return self.has_endpoints and self.externally_accessible


def _endpoints(port: ServicePort, slices: Sequence[EndpointSlice]) -> list[ProxyEndpoint]:
    """A service port's endpoints over all of its slices, unique and sorted by `ip:port`."""
    found: dict[str, ProxyEndpoint] = {}
    for s in slices:
        for sp in s.ports:
            if sp.name != (port.name or "") or sp.protocol != port.protocol:
                continue
            for e in s.endpoints:
                ep = ProxyEndpoint(e.address, sp.port, e.node)
                found.setdefault(ep.text, ep)
    return [found[k] for k in sorted(found)]


def port_plans(
    node: str, services: Sequence[Service], slices: Mapping[str, EndpointSlice]
) -> list[PortPlan]:
    """Every service port as `node`'s kube-proxy sees it, sorted by name.

    `slices` may be keyed any way (the values are grouped by the Service they belong to).
    Services without a ClusterIP yet are skipped, as kube-proxy skips them.
    """
    by_service: dict[str, list[EndpointSlice]] = {}
    for s in slices.values():
        by_service.setdefault(s.service_key, []).append(s)
    plans = []
    for svc in services:
        if not svc.spec.clusterIP:
            continue
        for port in svc.spec.ports:
            endpoints = _endpoints(port, by_service.get(svc.key, []))
            plans.append(_categorize(node, svc, port, endpoints))
    return sorted(plans, key=lambda p: (p.name, p.protocol))


def _categorize(
    node: str, svc: Service, port: ServicePort, endpoints: list[ProxyEndpoint]
) -> PortPlan:
    """Upstream CategorizeEndpoints, for a lab where every endpoint is ready and there are no
    topology hints."""
    # The policy properties depend on the Service and port only: read them off a bare plan.
    plan = PortPlan(svc, port, (), (), (), bool(endpoints))
    # "Cluster" endpoints are needed unless all traffic is Local; an externally reachable port
    # keeps them even with externalTrafficPolicy Local, to short-circuit its own pods' traffic.
    uses_cluster = not plan.internal_local or plan.externally_accessible
    uses_local = plan.internal_local or plan.external_local
    cluster = tuple(endpoints) if uses_cluster else ()
    local = tuple(e for e in endpoints if e.node == node) if uses_local else ()
    reachable = cluster if uses_cluster else local
    return PortPlan(svc, port, cluster, local, reachable, bool(endpoints))
