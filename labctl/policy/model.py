"""The NetworkPolicy object (networking.k8s.io/v1), validated as the API server does.

Validation follows kubernetes `pkg/apis/networking/validation` (ValidateNetworkPolicy); messages
reuse upstream's wording and add the fix. The lab is IPv4-only, so IPv6 CIDRs are refused.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network, ip_network
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from labctl.k8s.manifests import register_kind
from labctl.k8s.meta import LabelSelector, ObjectMeta

# IANA service name (RFC 6335), as Kubernetes checks a named port.
_PORT_NAME_CHARS = re.compile(r"^[-a-z0-9]+$")


class _Strict(BaseModel):
    # kubectl's default (strict) field validation rejects unknown fields: so do we.
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def _parse_cidr(value: str) -> IPv4Network:
    """A valid IPv4 CIDR with no host bits set, or ValueError saying what to write."""
    if "/" not in value:
        raise ValueError(f"{value!r} is not a CIDR; write address/prefix, e.g. 10.0.0.0/24")
    try:
        net = ip_network(value, strict=False)
    except ValueError:
        raise ValueError(
            f"{value!r} is not a valid CIDR; write address/prefix, e.g. 10.0.0.0/24"
        ) from None
    if isinstance(net, IPv6Network):
        raise ValueError(f"{value!r} is IPv6 and this lab is IPv4-only; use an IPv4 CIDR")
    if str(net) != value:
        raise ValueError(f"{value!r} has host bits set; write the network {net}")
    return net


def _check_cidr(value: str) -> str:
    _parse_cidr(value)
    return value


def _check_except(value: str, info: ValidationInfo) -> str:
    net = _parse_cidr(value)
    cidr = info.data.get("cidr")  # absent when cidr itself was invalid (reported there)
    if cidr is not None:
        outer = _parse_cidr(cidr)
        if not (net.subnet_of(outer) and net.prefixlen > outer.prefixlen):
            raise ValueError(
                f"must be a strict subset of `cidr` ({value} is not inside {cidr}); "
                f"write a network smaller than {cidr} and inside it"
            )
    return value


class IPBlock(_Strict):
    """A CIDR and the sub-ranges (`except`) carved out of it."""

    cidr: Annotated[str, AfterValidator(_check_cidr)]
    except_: list[Annotated[str, AfterValidator(_check_except)]] = Field(default=[], alias="except")

    def network(self) -> IPv4Network:
        """`cidr` as a network."""
        return _parse_cidr(self.cidr)

    def excepts(self) -> list[IPv4Network]:
        """The `except` entries as networks."""
        return [_parse_cidr(e) for e in self.except_]


class NetworkPolicyPeer(_Strict):
    """One `from`/`to` entry: pods by selector(s), or an ipBlock."""

    podSelector: LabelSelector | None = None
    namespaceSelector: LabelSelector | None = None
    ipBlock: IPBlock | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> NetworkPolicyPeer:
        if self.podSelector is None and self.namespaceSelector is None and self.ipBlock is None:
            raise ValueError(
                "must specify a peer; set podSelector, namespaceSelector and/or ipBlock "
                "(podSelector: {} means every pod in the policy's namespace)"
            )
        selectors = self.podSelector is not None or self.namespaceSelector is not None
        if self.ipBlock is not None and selectors:
            raise ValueError(
                "may not specify both ipBlock and another peer; put the ipBlock in its own "
                "list item (starting with '-')"
            )
        return self


def _port_name_problem(name: str) -> str | None:
    """Upstream's IsValidPortName message for a bad name, or None."""
    if len(name) > 15:
        return "must be no more than 15 characters"
    if not _PORT_NAME_CHARS.match(name):
        return "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)"
    if "--" in name:
        return "must not contain consecutive hyphens"
    if not re.search(r"[a-z]", name):
        return "must contain at least one letter (a-z)"
    if name.startswith("-") or name.endswith("-"):
        return "must not begin or end with a hyphen"
    return None


class NetworkPolicyPort(_Strict):
    """A protocol with a port number, a port range, a named port, or all ports."""

    protocol: Literal["TCP", "UDP", "SCTP"] = "TCP"
    port: int | str | None = None
    endPort: int | None = None

    @field_validator("port", mode="before")
    @classmethod
    def _port_type(cls, v: Any) -> Any:
        # YAML `true` or `80.5` would otherwise be coerced; Kubernetes takes an int or a string.
        if v is not None and (isinstance(v, bool) or not isinstance(v, int | str)):
            raise ValueError(f"{v!r} is not a port; write a number 1-65535 or a port name")
        return v

    @field_validator("port")
    @classmethod
    def _port(cls, v: int | str | None) -> int | str | None:
        if isinstance(v, int) and not 1 <= v <= 65535:
            raise ValueError(f"{v}: must be between 1 and 65535, inclusive")
        if isinstance(v, str):
            problem = _port_name_problem(v)
            if problem:
                raise ValueError(
                    f"{v!r}: {problem}; write a number or a container port name such as http"
                )
        return v

    @field_validator("endPort", mode="before")
    @classmethod
    def _end_port_type(cls, v: Any) -> Any:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"{v!r} is not a port number; write a number 1-65535")
        return v

    @field_validator("endPort")
    @classmethod
    def _end_port(cls, v: int, info: ValidationInfo) -> int:
        if "port" not in info.data:  # the port itself was invalid and is reported
            return v
        port = info.data["port"]
        if port is None:
            raise ValueError(
                "may not be specified when `port` is not specified; set port to the start of "
                "the range"
            )
        if isinstance(port, str):
            raise ValueError(
                "may not be specified when `port` is non-numeric; use a numeric port, or drop "
                "endPort"
            )
        if v < port:
            raise ValueError(
                f"must be greater than or equal to `port` ({v} < {port}); swap them or fix the "
                "range"
            )
        if v > 65535:
            raise ValueError(f"{v}: must be between 1 and 65535, inclusive")
        return v


class NetworkPolicyIngressRule(_Strict):
    """Traffic allowed in: from any of the peers (all if none) to any of the ports (all if none)."""

    from_: list[NetworkPolicyPeer] = Field(default=[], alias="from")
    ports: list[NetworkPolicyPort] = []


class NetworkPolicyEgressRule(_Strict):
    """Traffic allowed out: to any of the peers (all if none) on any of the ports (all if none)."""

    to: list[NetworkPolicyPeer] = []
    ports: list[NetworkPolicyPort] = []


class NetworkPolicySpec(_Strict):
    """Which pods the policy selects, the directions it isolates, and what it allows."""

    podSelector: LabelSelector
    policyTypes: list[Literal["Ingress", "Egress"]] | None = None
    ingress: list[NetworkPolicyIngressRule] = []
    egress: list[NetworkPolicyEgressRule] = []

    @field_validator("policyTypes")
    @classmethod
    def _types(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and len(v) > 2:
            raise ValueError("may not specify more than two policyTypes; list Ingress, Egress")
        if v is not None and len(set(v)) != len(v):
            raise ValueError(f"{v} lists a type twice; list each of Ingress, Egress at most once")
        return v

    def effective_types(self) -> frozenset[str]:
        """policyTypes after Kubernetes defaulting: when absent (or empty), Ingress always, and
        Egress only if there are egress rules."""
        if self.policyTypes:
            return frozenset(self.policyTypes)
        return frozenset(["Ingress", "Egress"] if self.egress else ["Ingress"])


class NetworkPolicy(_Strict):
    """A networking.k8s.io/v1 NetworkPolicy."""

    apiVersion: Literal["networking.k8s.io/v1"]
    kind: Literal["NetworkPolicy"]
    metadata: ObjectMeta
    spec: NetworkPolicySpec

    @property
    def key(self) -> str:
        """`namespace/name`."""
        return f"{self.metadata.namespace}/{self.metadata.name}"

    def manifest(self) -> dict[str, Any]:
        """The object as `kubectl get -o yaml` shows it: server defaults (policyTypes, protocol)
        filled in, unset and empty fields left out, `from`/`except` spelled as in YAML."""
        data = self.model_dump(mode="json", by_alias=True, exclude_none=True)
        data["spec"]["policyTypes"] = self.spec.policyTypes or [
            t for t in ("Ingress", "Egress") if t in self.spec.effective_types()
        ]
        return _omit_empty(data)


def _omit_empty(data: Any) -> Any:
    """Drop empty lists and empty string maps, as Go's `omitempty` does; keep empty selectors
    (`podSelector: {}` means "all pods")."""
    if isinstance(data, list):
        return [_omit_empty(x) for x in data]
    if not isinstance(data, dict):
        return data
    out = {}
    for k, v in data.items():
        if v == [] or (v == {} and k in ("labels", "annotations", "matchLabels")):
            continue
        out[k] = _omit_empty(v)
    return out


@dataclass(frozen=True)
class NamedPort:
    """A container port of a pod, as named ports resolve against it."""

    name: str | None
    port: int
    protocol: str  # "TCP" | "UDP" | "SCTP"


@dataclass(frozen=True)
class PodInfo:
    """What policy code needs to know of a pod."""

    namespace: str
    name: str
    ip: str
    node: str
    labels: Mapping[str, str]
    ports: tuple[NamedPort, ...] = ()
    iface: str = ""  # host-side interface name (cali...)

    @property
    def key(self) -> str:
        """`namespace/name`."""
        return f"{self.namespace}/{self.name}"


register_kind("networking.k8s.io/v1", "NetworkPolicy", NetworkPolicy)
