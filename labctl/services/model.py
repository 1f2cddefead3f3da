"""The Service object (v1), validated as the API server does, and its ClusterIP and NodePort
allocation.

Validation follows kubernetes `pkg/apis/core/validation` (ValidateService) and the defaults of
`pkg/apis/core/v1/defaults.go`; messages reuse upstream's wording and add the fix. Field errors
are located by pydantic (`spec.ports[0].port`); checks that look at several fields raise from
the Service itself with the full path at the start of the message, so both read alike.

`allocate` is what the API server's REST layer does on create and update: a ClusterIP from the
service CIDR and NodePorts from 30000-32767, kept on update. labctl takes the first free value
instead of a random one, so that a lab comes out the same every time.

The lab is IPv4-only and has no cloud controller and no cluster DNS, so LoadBalancer,
ExternalName and headless (`clusterIP: None`) Services are refused with the reason.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from ipaddress import IPv4Address, IPv4Network, IPv6Address, ip_address
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    field_validator,
    model_validator,
)

from labctl.k8s.manifests import register_kind
from labctl.k8s.meta import ObjectMeta, check_label_key, check_label_value
from labctl.policy.model import _port_name_problem  # upstream's IsValidPortName wording
from labctl.topology import DNS1123_LABEL

NODE_PORT_RANGE = range(30000, 32768)
DEFAULT_AFFINITY_SECONDS = 10800  # upstream DefaultClientIPServiceAffinitySeconds (3 hours)
MAX_AFFINITY_SECONDS = 86400
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
# The `kubernetes` Service (the API server's own) always holds the first address of the range.
KUBERNETES_SERVICE = "default/kubernetes"


class ServiceError(ValueError):
    """A Service the API server refuses when allocating (address or port out of range or taken,
    an immutable field changed); exit 2."""

    exit_code = 2


class _Strict(BaseModel):
    # kubectl's default (strict) field validation rejects unknown fields: so do we.
    model_config = ConfigDict(extra="forbid")


class ServiceMeta(ObjectMeta):
    """`metadata` of a Service: the name becomes a DNS label (<name>.<namespace>.svc) and
    environment variable names, so it must be a DNS-1035 label, not just a subdomain."""

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:  # replaces ObjectMeta's DNS-1123 subdomain check
        if len(v) > 63 or not DNS1035_LABEL.match(v):
            raise ValueError(
                f'Invalid value: "{v}": a DNS-1035 label must consist of lower case alphanumeric '
                "characters or '-', start with an alphabetic character, and end with an "
                "alphanumeric character; use at most 63 of them (e.g. my-name or abc-123)"
            )
        return v


def _port_number(v: int) -> int:
    if not 1 <= v <= 65535:
        raise ValueError(
            f"Invalid value: {v}: must be between 1 and 65535, inclusive; write a port number"
        )
    return v


class ServicePort(_Strict):
    """One port of a Service: what clients connect to (`port`, and `nodePort` on every node)
    and where the pods listen (`targetPort`, a number or a container port name)."""

    name: str | None = None
    protocol: Literal["TCP", "UDP"] = "TCP"
    port: Annotated[StrictInt, AfterValidator(_port_number)]
    # Defaulted to `port` below; a string names a container port, resolved pod by pod.
    targetPort: StrictInt | str | None = None
    nodePort: StrictInt | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        if not v:
            return None  # "" means unnamed, as in Go
        if not DNS1123_LABEL.match(v):
            raise ValueError(
                f'Invalid value: "{v}": a lowercase RFC 1123 label must consist of lower case '
                "alphanumeric characters or '-', and must start and end with an alphanumeric "
                "character; use at most 63 of them (e.g. http)"
            )
        return v

    @field_validator("targetPort")
    @classmethod
    def _target(cls, v: int | str | None) -> int | str | None:
        if isinstance(v, int):
            return _port_number(v)
        if isinstance(v, str):
            problem = _port_name_problem(v)
            if problem:
                raise ValueError(
                    f'Invalid value: "{v}": {problem}; write a port number or the name of a '
                    "container port (e.g. http)"
                )
        return v

    @field_validator("nodePort")
    @classmethod
    def _node_port(cls, v: int | None) -> int | None:
        if v == 0:
            return None  # 0 means "allocate one", as in Go
        if v is not None and v not in NODE_PORT_RANGE:
            raise ValueError(
                f"Invalid value: {v}: provided port is not in the valid range. The range of valid "
                f"ports is {NODE_PORT_RANGE.start}-{NODE_PORT_RANGE.stop - 1}; pick one in it, or "
                "leave nodePort out to get one"
            )
        return v

    @model_validator(mode="after")
    def _default_target(self) -> ServicePort:
        if self.targetPort is None:
            self.targetPort = self.port
        return self

    @property
    def target(self) -> int | str:
        """`targetPort` after defaulting: a number, or a container port name."""
        return self.port if self.targetPort is None else self.targetPort


class ClientIPConfig(_Strict):
    """How long a client stays with the endpoint it first reached."""

    timeoutSeconds: StrictInt = DEFAULT_AFFINITY_SECONDS

    @field_validator("timeoutSeconds")
    @classmethod
    def _timeout(cls, v: int) -> int:
        if not 0 < v <= MAX_AFFINITY_SECONDS:
            raise ValueError(
                f"Invalid value: {v}: must be greater than 0 and less than "
                f"{MAX_AFFINITY_SECONDS}; write 1-{MAX_AFFINITY_SECONDS} seconds (the default is "
                f"{DEFAULT_AFFINITY_SECONDS}, 3 hours)"
            )
        return v


class SessionAffinityConfig(_Strict):
    """The settings of `sessionAffinity: ClientIP`."""

    clientIP: ClientIPConfig | None = None


def _check_external_ip(v: str) -> str:
    """An externalIP: an IPv4 address that is not special (upstream validateNonSpecialIP)."""
    try:
        ip = ip_address(v)
    except ValueError:
        raise ValueError(
            f'Invalid value: "{v}": must be a valid IP address, (e.g. 10.9.8.7); write one '
            "address per entry, without a prefix length"
        ) from None
    if isinstance(ip, IPv6Address):
        raise ValueError(f'Invalid value: "{v}": this lab is IPv4-only; use an IPv4 address')
    special = [
        (ip.is_unspecified, "may not be unspecified (0.0.0.0, ::)"),
        (ip.is_loopback, "may not be in the loopback range (127.0.0.0/8, ::1/128)"),
        (ip.is_link_local, "may not be in the link-local range (169.254.0.0/16, fe80::/10)"),
        (
            ip in IPv4Network("224.0.0.0/24"),
            "may not be in the link-local multicast range (224.0.0.0/24, ff02::/10)",
        ),
    ]
    for hit, problem in special:
        if hit:
            raise ValueError(
                f'Invalid value: "{v}": {problem}; use an address that routes to a node'
            )
    return str(ip)


def _parse_cluster_ip(v: str | None) -> str | None:
    """A requested ClusterIP: None (allocate one) or a canonical IPv4 address."""
    if not v:
        return None  # "" means "allocate one"
    if v == "None":
        raise ValueError(
            'Invalid value: "None": headless Services are not supported: the lab runs no '
            "cluster DNS to list their pods; leave clusterIP out to get a virtual IP"
        )
    try:
        ip = ip_address(v)
    except ValueError:
        raise ValueError(
            f'Invalid value: "{v}": must be empty, "None", or a valid IP address; write an '
            "address from the service CIDR, or leave clusterIP out"
        ) from None
    if isinstance(ip, IPv6Address):
        raise ValueError(f'Invalid value: "{v}": this lab is IPv4-only; use an IPv4 address')
    return str(ip)


class ServiceSpec(_Strict):
    """What the Service selects, the ports it exposes and how kube-proxy routes to them."""

    type: str = "ClusterIP"
    selector: dict[str, str] | None = None
    ports: list[ServicePort] = []
    clusterIP: str | None = None
    # Written by the API server (dual-stack fields); accepted so `get -o yaml` output applies.
    clusterIPs: list[str] | None = None
    ipFamilies: list[str] | None = None
    ipFamilyPolicy: str | None = None
    externalIPs: list[Annotated[str, AfterValidator(_check_external_ip)]] = []
    sessionAffinity: Literal["None", "ClientIP"] = "None"
    sessionAffinityConfig: SessionAffinityConfig | None = None
    externalTrafficPolicy: Literal["Cluster", "Local"] | None = None
    internalTrafficPolicy: Literal["Cluster", "Local"] = "Cluster"

    @field_validator("type")
    @classmethod
    def _type(cls, v: str) -> str:
        if v == "LoadBalancer":
            raise ValueError(
                'Unsupported value: "LoadBalancer": the lab has no cloud controller to give a '
                "load balancer an address; use type: NodePort (every node answers on the "
                "nodePort), or externalIPs"
            )
        if v == "ExternalName":
            raise ValueError(
                'Unsupported value: "ExternalName": it is only a DNS alias (CNAME) and the lab '
                "runs no cluster DNS; use type: ClusterIP with a selector"
            )
        if v not in ("ClusterIP", "NodePort"):
            raise ValueError(f'Unsupported value: "{v}": supported values: "ClusterIP", "NodePort"')
        return v

    @field_validator("selector")
    @classmethod
    def _selector(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        for key, value in (v or {}).items():
            check_label_key(key)
            check_label_value(key, value)
        return v

    @field_validator("clusterIP")
    @classmethod
    def _check_cluster_ip(cls, v: str | None) -> str | None:
        return _parse_cluster_ip(v)

    @field_validator("ipFamilies")
    @classmethod
    def _families(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and v not in ([], ["IPv4"]):
            raise ValueError(
                f"Invalid value: {v}: this lab is IPv4-only; write [IPv4] or leave ipFamilies out"
            )
        return v

    @field_validator("ipFamilyPolicy")
    @classmethod
    def _family_policy(cls, v: str | None) -> str | None:
        if v not in (None, "SingleStack", "PreferDualStack"):
            raise ValueError(
                f'Unsupported value: "{v}": this lab is IPv4-only; write SingleStack or leave '
                "ipFamilyPolicy out"
            )
        return v

    @property
    def externally_accessible(self) -> bool:
        """Reachable other than by its ClusterIP: a NodePort Service, or one with externalIPs
        (upstream `ExternallyAccessible`)."""
        return self.type == "NodePort" or bool(self.externalIPs)

    @property
    def affinity_seconds(self) -> int:
        """The ClientIP affinity timeout (meaningful when sessionAffinity is ClientIP)."""
        config = self.sessionAffinityConfig
        if config is None or config.clientIP is None:
            return DEFAULT_AFFINITY_SECONDS
        return config.clientIP.timeoutSeconds


class Service(_Strict):
    """A v1 Service of type ClusterIP or NodePort."""

    apiVersion: Literal["v1"]
    kind: Literal["Service"]
    metadata: ServiceMeta
    spec: ServiceSpec
    # Written by the API server; `get -o yaml` output carries it, so accept it and ignore it.
    status: dict[str, Any] | None = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _cross_field(self) -> Service:
        """ValidateService's checks that span fields, then the server's defaults."""
        spec = self.spec
        if not spec.ports:
            raise ValueError("spec.ports: Required value; list at least one port (e.g. - port: 80)")
        _check_ports(spec)
        if spec.sessionAffinity == "None" and spec.sessionAffinityConfig is not None:
            raise ValueError(
                "spec.sessionAffinityConfig: Forbidden: must not be set when session affinity "
                "is None; remove it, or set sessionAffinity: ClientIP"
            )
        if spec.externalTrafficPolicy is not None and not spec.externally_accessible:
            raise ValueError(
                f'spec.externalTrafficPolicy: Invalid value: "{spec.externalTrafficPolicy}": may '
                "only be set for externally-accessible services; set type: NodePort or "
                "externalIPs, or remove it"
            )
        if spec.clusterIPs:
            if len(spec.clusterIPs) > 1:
                raise ValueError(
                    f"spec.clusterIPs: Invalid value: {spec.clusterIPs}: this lab is "
                    "single-stack IPv4: write one address (the same as clusterIP)"
                )
            if spec.clusterIP is None:
                spec.clusterIP = _parse_cluster_ip(spec.clusterIPs[0])
            elif spec.clusterIPs[0] != spec.clusterIP:
                raise ValueError(
                    f'spec.clusterIPs[0]: Invalid value: "{spec.clusterIPs[0]}": must be same '
                    f"as `clusterIP` ({spec.clusterIP}); make them equal, or drop clusterIPs"
                )
        # Defaults (pkg/apis/core/v1/defaults.go).
        if spec.sessionAffinity == "ClientIP":
            config = spec.sessionAffinityConfig or SessionAffinityConfig()
            config.clientIP = config.clientIP or ClientIPConfig()
            spec.sessionAffinityConfig = config
        if spec.externally_accessible and spec.externalTrafficPolicy is None:
            spec.externalTrafficPolicy = "Cluster"
        spec.clusterIPs = [spec.clusterIP] if spec.clusterIP else None
        return self

    @property
    def key(self) -> str:
        """`namespace/name`."""
        return f"{self.metadata.namespace}/{self.metadata.name}"

    def manifest(self) -> dict[str, Any]:
        """The Service as `kubectl get -o yaml` shows it: server defaults filled in (protocol,
        targetPort, policies, IP families), unset and empty fields left out."""
        data = self.model_dump(mode="json", exclude_none=True)
        for key in ("labels", "annotations"):
            if not data["metadata"].get(key):
                data["metadata"].pop(key, None)
        spec = data["spec"]
        if not spec["externalIPs"]:
            del spec["externalIPs"]
        spec["ipFamilies"] = ["IPv4"]
        spec["ipFamilyPolicy"] = self.spec.ipFamilyPolicy or "SingleStack"
        data["status"] = {"loadBalancer": {}}
        return data


def _check_ports(spec: ServiceSpec) -> None:
    """Port names (required and unique when there are several), one port per number and
    protocol, nodePorts only on NodePort Services and not reused for the same protocol."""
    names: set[str] = set()
    numbers: set[tuple[int, str]] = set()
    node_ports: set[tuple[int, str]] = set()
    several = len(spec.ports) > 1
    for i, p in enumerate(spec.ports):
        where = f"spec.ports[{i}]"
        if p.name is None and several:
            raise ValueError(
                f"{where}.name: Required value: a Service with more than one port must name "
                "each; name them (e.g. http, https)"
            )
        if p.name is not None:
            if p.name in names:
                raise ValueError(
                    f'{where}.name: Duplicate value: "{p.name}"; give each port its own name'
                )
            names.add(p.name)
        if (p.port, p.protocol) in numbers:
            raise ValueError(
                f"{where}: Duplicate value: {p.port}/{p.protocol}; a Service exposes a port "
                "once per protocol: remove this entry or change its port"
            )
        numbers.add((p.port, p.protocol))
        if p.nodePort is None:
            continue
        if spec.type == "ClusterIP":
            raise ValueError(
                f"{where}.nodePort: Forbidden: may not be used when `type` is 'ClusterIP'; "
                "remove nodePort, or set type: NodePort"
            )
        if (p.nodePort, p.protocol) in node_ports:
            raise ValueError(
                f"{where}.nodePort: Duplicate value: {p.nodePort}; give each port its own "
                "nodePort, or leave it out to get one"
            )
        node_ports.add((p.nodePort, p.protocol))


def allocate(svc: Service, existing: Mapping[str, Service], service_cidr: IPv4Network) -> Service:
    """`svc` with its ClusterIP and (for NodePort) nodePorts filled in, as the API server
    allocates them on create or update.

    `existing` holds the stored Services by `namespace/name`; an entry under `svc.key` is the
    version being updated, whose ClusterIP and nodePorts are kept. Raises ServiceError for an
    address outside `service_cidr` or taken, a nodePort taken, a changed ClusterIP or a full
    range. Pure: `svc` and `existing` are not modified.
    """
    old = existing.get(svc.key)
    others = [s for key, s in existing.items() if key != svc.key]
    out = svc.model_copy(deep=True)
    ip = _cluster_ip(svc, old, others, service_cidr)
    out.spec.clusterIP = ip
    out.spec.clusterIPs = [ip]
    if out.spec.type == "NodePort":
        _node_ports(out, old, others)
    return out


def _cluster_ip(svc: Service, old: Service | None, others: list[Service], cidr: IPv4Network) -> str:
    given = svc.spec.clusterIP
    if old is not None and old.spec.clusterIP:
        if given not in (None, old.spec.clusterIP):
            raise ServiceError(
                f'spec.clusterIP: Invalid value: "{given}": field is immutable; the Service keeps '
                f"{old.spec.clusterIP}: delete it and create it again to change the address"
            )
        return old.spec.clusterIP
    taken = {IPv4Address(s.spec.clusterIP): s.key for s in others if s.spec.clusterIP}
    kubernetes_ip = cidr.network_address + 1
    if given is not None:
        ip = IPv4Address(given)
        if ip not in cidr or ip in (cidr.network_address, cidr.broadcast_address):
            raise ServiceError(
                f'spec.clusterIP: Invalid value: "{ip}": provided IP is not in the valid range. '
                f"The range of valid IPs is {cidr}; pick an address inside it, or leave "
                "clusterIP out to get one"
            )
        owner = taken.get(ip)
        if owner is None and ip == kubernetes_ip and svc.key != KUBERNETES_SERVICE:
            owner = KUBERNETES_SERVICE
        if owner is not None:
            raise ServiceError(
                f'spec.clusterIP: Invalid value: "{ip}": provided IP is already allocated (to '
                f"{owner}); pick another address, or leave clusterIP out to get a free one"
            )
        return str(ip)
    for ip in cidr.hosts():
        if ip != kubernetes_ip and ip not in taken:
            return str(ip)
    raise ServiceError(
        f"spec.clusterIP: failed to allocate a serviceIP: range is full ({cidr}); delete a "
        "Service, or use a larger service CIDR"
    )


def _node_ports(svc: Service, old: Service | None, others: list[Service]) -> None:
    """Fill in `svc`'s missing nodePorts in place (it is the caller's private copy)."""
    taken = {p.nodePort: s.key for s in others for p in s.spec.ports if p.nodePort is not None}
    ports = svc.spec.ports
    for i, p in enumerate(ports):
        if p.nodePort is not None and p.nodePort in taken:
            raise ServiceError(
                f"spec.ports[{i}].nodePort: Invalid value: {p.nodePort}: provided port is already "
                f"allocated (to {taken[p.nodePort]}); pick another in 30000-32767, or leave "
                "nodePort out to get a free one"
            )
    own = {p.nodePort for p in ports if p.nodePort is not None}
    # On update a port keeps the nodePort it had, matched by name (upstream patchAllocatedValues).
    if old is not None:
        previous = {p.name: p.nodePort for p in old.spec.ports if p.nodePort is not None}
        for p in ports:
            kept = previous.get(p.name)
            if p.nodePort is None and kept is not None and kept not in own:
                p.nodePort = kept
                own.add(kept)
    # The same port number under another protocol shares its nodePort (upstream initNodePorts).
    by_number = {p.port: p.nodePort for p in ports if p.nodePort is not None}
    for i, p in enumerate(ports):
        if p.nodePort is not None:
            continue
        number = by_number.get(p.port)
        if number is None:
            number = next((n for n in NODE_PORT_RANGE if n not in taken and n not in own), None)
            if number is None:
                raise ServiceError(
                    f"spec.ports[{i}].nodePort: failed to allocate a nodePort: range is full "
                    "(30000-32767); delete a NodePort Service"
                )
            own.add(number)
            by_number[p.port] = number
        p.nodePort = number


register_kind("v1", "Service", Service)
