"""The topology model: YAML in, validated typed objects out.

Validation happens here, once, so that everything downstream (planner, engine, verify) can
trust names, addresses and references. Errors are one line: file, field, what is wrong and
what is allowed.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from functools import cached_property
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from labctl.errors import LabctlError

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
# Label keys/values as Kubernetes allows them (optional DNS prefix on keys).
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$")
LABEL_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)

TOPOLOGY_DIR = Path(__file__).resolve().parent.parent / "topologies"


class TopologyError(ValueError, LabctlError):
    """A topology that cannot be built; the message is one line naming file and field."""


def _check_name(value: str, what: str) -> str:
    if not DNS1123_LABEL.match(value):
        raise ValueError(
            f"{what} {value!r} is not a DNS-1123 label "
            "(use lowercase letters, digits and '-', at most 63, starting and ending alphanumeric)"
        )
    return value


def _check_labels(labels: dict[str, str]) -> dict[str, str]:
    for key, value in labels.items():
        if not LABEL_KEY.match(key) or len(key.rpartition("/")[0]) > 253:
            raise ValueError(
                f"label key {key!r} is not a valid Kubernetes label key (an optional DNS "
                "subdomain prefix of at most 253 characters and '/', then 1-63 letters, digits, "
                "'-', '_' or '.', starting and ending with a letter or digit)"
            )
        if not isinstance(value, str) or not LABEL_VALUE.match(value):
            raise ValueError(
                f"label {key}={value!r}: a Kubernetes label value is empty or 1-63 letters, "
                "digits, '-', '_' or '.', starting and ending with a letter or digit"
            )
    return labels


class _Strict(BaseModel):
    # Unknown keys are typos more often than not: reject them.
    model_config = ConfigDict(extra="forbid", frozen=True)


class Cluster(_Strict):
    podCIDR: IPv4Network = IPv4Network("10.244.0.0/16")
    nodeCIDRSize: Annotated[int, Field(ge=8, le=28)] = 24
    # kubeadm's default --service-cidr.
    serviceCIDR: IPv4Network = IPv4Network("10.96.0.0/12")


class Segment(_Strict):
    cidr: IPv4Network
    mtu: Annotated[int, Field(ge=1280, le=9000)] = 1500


class StaticRoute(_Strict):
    to: IPv4Network
    via: IPv4Address


class Router(_Strict):
    interfaces: dict[str, IPv4Address]
    asn: Annotated[int, Field(ge=1, le=4294967295)] | None = None
    routes: list[StaticRoute] = []

    @field_validator("interfaces")
    @classmethod
    def _non_empty(cls, v: dict[str, IPv4Address]) -> dict[str, IPv4Address]:
        if not v:
            raise ValueError("a router needs at least one interface (segment: address)")
        return v


class Node(_Strict):
    segment: str
    ip: IPv4Address
    podCIDR: IPv4Network | None = None
    gateway: IPv4Address | None = None


class External(_Strict):
    """A host outside the cluster (a laptop on the nodes' segment, an "internet" host behind
    a router): one interface, no Kubernetes."""

    segment: str
    ip: IPv4Address
    gateway: IPv4Address | None = None
    routes: list[StaticRoute] = []


class Bgp(_Strict):
    asn: Annotated[int, Field(ge=1, le=4294967295)] = 64512
    routeReflectors: list[str] = []


class Namespace(_Strict):
    labels: dict[str, str] = {}

    _labels = field_validator("labels")(classmethod(lambda cls, v: _check_labels(v)))


class PodPort(_Strict):
    name: str | None = None
    containerPort: Annotated[int, Field(ge=1, le=65535)]
    protocol: Literal["TCP", "UDP"] = "TCP"


DEFAULT_PORTS = (
    PodPort(name="http", containerPort=80, protocol="TCP"),
    PodPort(name="http-udp", containerPort=80, protocol="UDP"),
)


class Pod(_Strict):
    name: str
    namespace: str = "default"
    node: str
    labels: dict[str, str] = {}
    ports: list[PodPort] = Field(default_factory=lambda: list(DEFAULT_PORTS))

    _labels = field_validator("labels")(classmethod(lambda cls, v: _check_labels(v)))

    @field_validator("name", "namespace")
    @classmethod
    def _dns(cls, v: str) -> str:
        return _check_name(v, "name")

    @property
    def key(self) -> str:
        """The pod's `namespace/name`, as kubectl and the probe matrix name it."""
        return f"{self.namespace}/{self.name}"


class Topology(_Strict):
    """A validated lab topology. Derived addressing is computed once and cached."""

    model_config = ConfigDict(extra="forbid", frozen=False)

    name: str
    description: str = ""
    cluster: Cluster = Cluster()
    segments: dict[str, Segment]
    routers: dict[str, Router] = {}
    nodes: dict[str, Node]
    externals: dict[str, External] = {}
    bgp: Bgp = Bgp()
    namespaces: dict[str, Namespace] = {}
    pods: list[Pod] = []

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _check_name(v, "name")

    @field_validator("nodes")
    @classmethod
    def _some_nodes(cls, v: dict[str, Node]) -> dict[str, Node]:
        if not v:
            raise ValueError("a topology needs at least one node")
        return v

    @model_validator(mode="after")
    def _cross_checks(self) -> Topology:
        for section in ("segments", "routers", "nodes", "externals", "namespaces"):
            for key in getattr(self, section):
                try:
                    _check_name(key, "name")
                except ValueError as e:
                    raise ValueError(f"{section}.{key}: {e}") from None

        pod_cidr, size = self.cluster.podCIDR, self.cluster.nodeCIDRSize
        _check_not_reserved(pod_cidr, "cluster.podCIDR", "e.g. 10.244.0.0/16")
        if size < pod_cidr.prefixlen:
            raise ValueError(
                f"cluster.nodeCIDRSize: /{size} is larger than cluster.podCIDR {pod_cidr}; "
                f"use a prefix length from {max(pod_cidr.prefixlen, 8)} to 28"
            )

        seen_ips: dict[IPv4Address, str] = {}
        seen_names: dict[str, str] = {}

        def claim_name(name: str, where: str) -> None:
            if name in seen_names:
                raise ValueError(f"{where}: name {name!r} is already used by {seen_names[name]}")
            seen_names[name] = where

        def claim_ip(ip: IPv4Address, where: str) -> None:
            if ip in seen_ips:
                raise ValueError(f"{where}: address {ip} is already used by {seen_ips[ip]}")
            seen_ips[ip] = where

        segs = list(self.segments.items())
        for i, (sname, seg) in enumerate(segs):
            claim_name(sname, f"segments.{sname}")
            if seg.cidr.prefixlen > 30:
                raise ValueError(
                    f"segments.{sname}.cidr: {seg.cidr} is too small; use /30 or larger"
                )
            for oname, other in segs[:i]:
                if seg.cidr.overlaps(other.cidr):
                    raise ValueError(
                        f"segments.{sname}.cidr: {seg.cidr} overlaps segments.{oname} "
                        f"({other.cidr}); segments must be disjoint"
                    )
            _check_not_reserved(seg.cidr, f"segments.{sname}.cidr", "e.g. 10.0.0.0/24")
            if seg.cidr.overlaps(self.cluster.podCIDR):
                raise ValueError(
                    f"segments.{sname}.cidr: {seg.cidr} overlaps cluster.podCIDR "
                    f"{self.cluster.podCIDR}; pick disjoint ranges"
                )
        self._check_service_cidr()

        for rname, router in self.routers.items():
            claim_name(rname, f"routers.{rname}")
            for sname, ip in router.interfaces.items():
                where = f"routers.{rname}.interfaces.{sname}"
                self._check_on_segment(sname, ip, where)
                claim_ip(ip, where)
            for i, route in enumerate(router.routes):
                where = f"routers.{rname}.routes[{i}].via"
                if not any(route.via in self.segments[s].cidr for s in router.interfaces):
                    raise ValueError(f"{where}: {route.via} is not on any of the router's segments")
                if route.via in router.interfaces.values():
                    raise ValueError(
                        f"{where}: {route.via} is the router's own address; use the next hop's "
                        "address on a shared segment"
                    )
                if route.to.overlaps(pod_cidr):
                    raise ValueError(
                        f"routers.{rname}.routes[{i}].to: {route.to} overlaps cluster.podCIDR "
                        f"{pod_cidr}; routes to pods come from the CNI (BGP), not static routes"
                    )
            if router.asn is not None and router.asn == self.bgp.asn:
                raise ValueError(
                    f"routers.{rname}.asn: {router.asn} is the cluster's bgp.asn; a router "
                    "peers over eBGP, so give it its own AS number (e.g. 65001)"
                )

        for nname, node in self.nodes.items():
            claim_name(nname, f"nodes.{nname}")
            self._check_on_segment(node.segment, node.ip, f"nodes.{nname}.ip")
            claim_ip(node.ip, f"nodes.{nname}.ip")
            if node.gateway is not None:
                self._check_on_segment(node.segment, node.gateway, f"nodes.{nname}.gateway")
                if node.gateway == node.ip:
                    raise ValueError(
                        f"nodes.{nname}.gateway: {node.gateway} is the node's own address; "
                        "use a router's address on the node's segment"
                    )
                owner = next(
                    (o for o, x in self.nodes.items() if o != nname and x.ip == node.gateway), None
                )
                if owner is not None:
                    raise ValueError(
                        f"nodes.{nname}.gateway: {node.gateway} is node {owner}'s address and "
                        "nodes do not route for each other; use a router's address"
                    )
            if node.podCIDR is not None:
                if not node.podCIDR.subnet_of(self.cluster.podCIDR):
                    raise ValueError(
                        f"nodes.{nname}.podCIDR: {node.podCIDR} does not fit in cluster.podCIDR "
                        f"{self.cluster.podCIDR}"
                    )
                if node.podCIDR.prefixlen > 28:
                    raise ValueError(
                        f"nodes.{nname}.podCIDR: {node.podCIDR} is too small; use /28 or larger"
                    )

        for ename, ext in self.externals.items():
            where = f"externals.{ename}"
            claim_name(ename, where)
            self._check_on_segment(ext.segment, ext.ip, f"{where}.ip")
            claim_ip(ext.ip, f"{where}.ip")
            if ext.gateway is not None:
                self._check_on_segment(ext.segment, ext.gateway, f"{where}.gateway")
                if ext.gateway == ext.ip:
                    raise ValueError(
                        f"{where}.gateway: {ext.gateway} is the host's own address; "
                        "use a router's or node's address on its segment"
                    )
            for i, route in enumerate(ext.routes):
                via = f"{where}.routes[{i}].via"
                self._check_on_segment(ext.segment, route.via, via)
                if route.via == ext.ip:
                    raise ValueError(
                        f"{via}: {route.via} is the host's own address; use another host on "
                        f"segment {ext.segment}, e.g. a node"
                    )

        explicit = [(n, x.podCIDR) for n, x in self.nodes.items() if x.podCIDR is not None]
        for i, (n, cidr) in enumerate(explicit):
            for m, earlier in explicit[:i]:
                assert cidr is not None and earlier is not None
                if cidr.overlaps(earlier):
                    raise ValueError(
                        f"nodes.{n}.podCIDR: {cidr} overlaps nodes.{m}.podCIDR ({earlier}); "
                        "node pod CIDRs must be disjoint"
                    )

        for i, rr in enumerate(self.bgp.routeReflectors):
            if rr not in self.nodes:
                raise ValueError(
                    f"bgp.routeReflectors[{i}]: unknown node {rr!r}; known nodes: "
                    + ", ".join(self.nodes)
                )

        seen_rr: set[str] = set()
        for i, rr in enumerate(self.bgp.routeReflectors):
            if rr in seen_rr:
                raise ValueError(f"bgp.routeReflectors[{i}]: {rr!r} is listed twice; list it once")
            seen_rr.add(rr)
        self._check_segments_joined()

        pod_keys: set[str] = set()
        for i, pod in enumerate(self.pods):
            where = f"pods[{i}]"
            if pod.node not in self.nodes:
                raise ValueError(
                    f"{where}.node: unknown node {pod.node!r}; known nodes: "
                    + ", ".join(self.nodes)
                )
            if pod.namespace != "default" and pod.namespace not in self.namespaces:
                raise ValueError(
                    f"{where}.namespace: unknown namespace {pod.namespace!r}; declare it under "
                    "namespaces:"
                )
            if pod.key in pod_keys:
                raise ValueError(f"{where}.name: duplicate pod {pod.key}")
            pod_keys.add(pod.key)
            ports = set()
            for j, port in enumerate(pod.ports):
                if (port.containerPort, port.protocol) in ports:
                    raise ValueError(
                        f"{where}.ports[{j}]: duplicate {port.protocol} port {port.containerPort}"
                    )
                ports.add((port.containerPort, port.protocol))
        return self

    def _check_segments_joined(self) -> None:
        """Nodes talk to each other: every node segment must be reachable from the others
        through routers."""
        node_segments = list(dict.fromkeys(n.segment for n in self.nodes.values()))
        reach = {node_segments[0]}
        grew = True
        while grew:
            grew = False
            for router in self.routers.values():
                joined = set(router.interfaces)
                if joined & reach and not joined <= reach:
                    reach |= joined
                    grew = True
        cut = [s for s in node_segments if s not in reach]
        if cut:
            raise ValueError(
                f"segments.{cut[0]}: its nodes cannot reach the nodes on {node_segments[0]}: no "
                "router joins the two; add a router with an interface on each (routers:)"
            )

    def _check_service_cidr(self) -> None:
        # Node pod CIDRs are checked to lie inside cluster.podCIDR, so that one check covers them.
        svc = self.cluster.serviceCIDR
        default = "" if "serviceCIDR" in self.cluster.model_fields_set else " (the default)"
        if svc.prefixlen < 12:
            # kube-apiserver's limit for --service-cluster-ip-range.
            raise ValueError(
                f"cluster.serviceCIDR: {svc} is larger than Kubernetes allows; use /12 or smaller"
            )
        taken = [("cluster.podCIDR", self.cluster.podCIDR)]
        taken += [(f"segments.{n}", s.cidr) for n, s in self.segments.items()]
        taken += [
            (f"routers.{n}.routes[{i}].to", route.to)
            for n, router in self.routers.items()
            for i, route in enumerate(router.routes)
        ]
        for where, cidr in taken:
            if svc.overlaps(cidr):
                raise ValueError(
                    f"cluster.serviceCIDR: {svc}{default} overlaps {where} ({cidr}); set "
                    "cluster.serviceCIDR to a range disjoint from pods, segments and routes"
                )

    def _check_on_segment(self, sname: str, ip: IPv4Address, where: str) -> None:
        if sname not in self.segments:
            raise ValueError(
                f"{where}: unknown segment {sname!r}; known segments: " + ", ".join(self.segments)
            )
        cidr = self.segments[sname].cidr
        if ip not in cidr or ip in (cidr.network_address, cidr.broadcast_address):
            raise ValueError(f"{where}: {ip} is not a host address of segment {sname} ({cidr})")

    # ---- derived addressing (IPAM): computed once, after validation ----

    @cached_property
    def node_pod_cidrs(self) -> dict[str, IPv4Network]:
        """Each node's pod CIDR: explicit ones kept, the rest allocated in order.

        Allocation starts at the first subnet of the cluster CIDR, as kube-controller-manager's
        range allocator does (flannel's own etcd allocator would skip it; kube mode does not).
        """
        size = self.cluster.nodeCIDRSize
        taken = [n.podCIDR for n in self.nodes.values() if n.podCIDR is not None]
        free: Iterator[IPv4Network] = (
            s
            for s in self.cluster.podCIDR.subnets(new_prefix=size)
            if not any(s.overlaps(t) for t in taken)
        )
        out: dict[str, IPv4Network] = {}
        for name, node in self.nodes.items():
            if node.podCIDR is not None:
                out[name] = node.podCIDR
                continue
            nxt = next(free, None)
            if nxt is None:
                raise TopologyError(
                    f"nodes.{name}.podCIDR: cluster.podCIDR {self.cluster.podCIDR} has no free "
                    f"/{size} left; widen cluster.podCIDR or lower nodeCIDRSize"
                )
            out[name] = nxt
        return out

    @cached_property
    def pod_ips(self) -> dict[str, IPv4Address]:
        """Pod IPs keyed `ns/name`: .2, .3, ... of the node's pod CIDR, in file order
        (host-local IPAM hands out addresses after the .1 gateway)."""
        out: dict[str, IPv4Address] = {}
        used: dict[str, int] = {}
        for i, pod in enumerate(self.pods):
            cidr = self.node_pod_cidrs[pod.node]
            idx = used.get(pod.node, 0)
            addr = cidr.network_address + 2 + idx
            if addr >= cidr.broadcast_address:
                raise TopologyError(
                    f"pods[{i}].node: node {pod.node} has more pods than its pod CIDR {cidr} "
                    f"can address (at most {cidr.num_addresses - 3}); lower "
                    "cluster.nodeCIDRSize or move pods to other nodes"
                )
            used[pod.node] = idx + 1
            out[pod.key] = addr
        return out

    def node_gateway(self, name: str) -> IPv4Address | None:
        """The node's default gateway: explicit, else the router interface on its segment."""
        node = self.nodes[name]
        return node.gateway if node.gateway is not None else self._segment_router(node.segment)

    def external_gateway(self, name: str) -> IPv4Address | None:
        """An external host's default gateway: explicit, else the router interface on its
        segment (as for nodes)."""
        ext = self.externals[name]
        return ext.gateway if ext.gateway is not None else self._segment_router(ext.segment)

    def _segment_router(self, segment: str) -> IPv4Address | None:
        for router in self.routers.values():
            ip = router.interfaces.get(segment)
            if ip is not None:
                return ip
        return None

    def pods_on(self, node: str) -> list[Pod]:
        """Pods scheduled on `node`, in file order."""
        return self._pods_by_node.get(node, [])

    @cached_property
    def _pods_by_node(self) -> dict[str, list[Pod]]:
        by_node: dict[str, list[Pod]] = {}
        for pod in self.pods:
            by_node.setdefault(pod.node, []).append(pod)
        return by_node

    def namespace_labels(self, ns: str) -> dict[str, str]:
        """A namespace's labels plus the automatic `kubernetes.io/metadata.name`."""
        labels = dict(self.namespaces[ns].labels) if ns in self.namespaces else {}
        labels["kubernetes.io/metadata.name"] = ns
        return labels


#: Ranges a lab cannot use for pods or segments: "this network", loopback, link-local (Calico's
#: 169.254.1.1 pod gateway lives there), multicast and reserved.
RESERVED = {
    IPv4Network("0.0.0.0/8"): "'this network'",
    IPv4Network("127.0.0.0/8"): "loopback",
    IPv4Network("169.254.0.0/16"): "link-local (Calico's pod gateway 169.254.1.1)",
    IPv4Network("224.0.0.0/4"): "multicast",
    IPv4Network("240.0.0.0/4"): "reserved",
}


def _check_not_reserved(net: IPv4Network, where: str, example: str) -> None:
    for reserved, what in RESERVED.items():
        if net.overlaps(reserved):
            raise ValueError(
                f"{where}: {net} overlaps {reserved}, which is {what}; use a private range, "
                f"{example}"
            )


def _loc(err: dict[str, Any]) -> str:
    parts: list[str] = []
    for p in err.get("loc", ()):
        if p == "[key]":  # pydantic's marker for an invalid dict key (the key precedes it)
            continue
        if isinstance(p, int):
            parts.append(f"[{p}]")
        else:
            parts.append(("." if parts else "") + str(p))
    return "".join(parts)


def _explain(err: dict[str, Any]) -> str:
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        return "unknown key (check the spelling; see topologies/default.yaml for the format)"
    if kind == "missing":
        return "required field is missing"
    if kind == "ip_v4_network":
        return (
            f"{err.get('input')!r} is not an IPv4 network; write address/prefix with no host "
            "bits set, e.g. 10.0.0.0/24"
        )
    if kind == "ip_v4_address":
        return f"{err.get('input')!r} is not an IPv4 address; write e.g. 10.0.0.31"
    msg = str(err.get("msg", "invalid value"))
    return msg.removeprefix("Value error, ")


def resolve_path(ref: str | Path) -> Path:
    """A topology file path, or a bare name of one shipped in `topologies/`."""
    p = Path(ref)
    if p.exists():
        return p
    shipped = TOPOLOGY_DIR / f"{ref}.yaml"
    if re.fullmatch(r"[a-z0-9-]+", str(ref)) and shipped.exists():
        return shipped
    names = ", ".join(sorted(x.stem for x in TOPOLOGY_DIR.glob("*.yaml")))
    raise TopologyError(f"{ref}: no such topology file; shipped topologies: {names}")


class _Loader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate mapping keys (PyYAML silently keeps the last one, so a
    copy-pasted node would vanish without a word)."""


def _construct_map(loader: _Loader, node: yaml.MappingNode) -> Iterator[dict[Any, Any]]:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            first = seen.get(key)
        except TypeError:  # unhashable key: construct_mapping reports it
            continue
        if first is not None:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"duplicate key {key!r} (first defined on line {first + 1})",
                key_node.start_mark,
            )
        seen[key] = key_node.start_mark.line
    yield from loader.construct_yaml_map(node)


_Loader.add_constructor("tag:yaml.org,2002:map", _construct_map)


def dump_topology(data: dict[str, Any]) -> str:
    """YAML for a topology built in code, keys in their order: the order of nodes decides
    the pod CIDRs they are allocated, so a sorted dump would be another cluster."""
    return yaml.safe_dump(data, sort_keys=False)


def load_topology(ref: str | Path) -> Topology:
    """Load and validate a topology; raise TopologyError with one precise line on bad input."""
    path = resolve_path(ref)
    try:
        data = yaml.load(path.read_bytes(), Loader=_Loader)  # a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or getattr(e, "reason", None) or str(e)
        problem = " ".join(str(problem).split())
        raise TopologyError(f"{path}{where}: not valid YAML ({problem})") from None
    except OSError as e:
        raise TopologyError(f"{path}: cannot read ({e.strerror})") from None
    return parse_topology(data, str(path))


def parse_topology(data: Any, source: str = "<topology>") -> Topology:
    """Validate already-parsed YAML data (see load_topology)."""
    if not isinstance(data, dict):
        raise TopologyError(f"{source}: the top level must be a mapping with name, segments, nodes")
    try:
        topo = Topology.model_validate(data)
        # Touch derived addressing so exhaustion errors surface at load time.
        _ = topo.node_pod_cidrs, topo.pod_ips
        _check_pod_cidrs_disjoint(topo, source)
    except ValidationError as e:
        err = e.errors()[0]
        loc = _loc(dict(err))
        raise TopologyError(f"{source}: {loc + ': ' if loc else ''}{_explain(dict(err))}") from None
    except TopologyError as e:
        msg = str(e)
        raise TopologyError(msg if msg.startswith(source) else f"{source}: {msg}") from None
    return topo


def _check_pod_cidrs_disjoint(topo: Topology, source: str) -> None:
    # Sorted by first address, two CIDRs overlap only if neighbours do: n log n, not n^2.
    order = {n: i for i, n in enumerate(topo.nodes)}
    cidrs = sorted(topo.node_pod_cidrs.items(), key=lambda kv: (kv[1], order[kv[0]]))
    for (m, d), (n, c) in itertools.pairwise(cidrs):
        if c.overlaps(d):
            # Name the later node in the file, as the user wrote the clash there.
            (m, d), (n, c) = sorted([(m, d), (n, c)], key=lambda kv: order[kv[0]])
            raise TopologyError(f"{source}: nodes.{n}.podCIDR: {c} overlaps nodes.{m} ({d})")
