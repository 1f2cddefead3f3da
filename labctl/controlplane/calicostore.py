"""Calico's records in etcd, in the etcd v3 datastore layout of libcalico-go
(``lib/backend/model``: ``ResourceKey``, ``BlockKey``, ``BlockAffinityKey``).

Keys:

* ``/calico/resources/v3/projectcalico.org/nodes/<name>``: the Node resource
  (``spec.bgp.ipv4Address`` as CIDR, ``spec.bgp.ipv4IPIPTunnelAddr``,
  ``spec.ipv4VXLANTunnelAddr``, ``spec.vxlanTunnelMACAddr``);
* ``/calico/resources/v3/projectcalico.org/ippools/default-ipv4-ippool``: the default pool
  (``ipipMode`` / ``vxlanMode`` choose the encapsulation Felix programs);
* ``/calico/ipam/v2/assignment/ipv4/block/<a.b.c.d>-<len>``: an ``AllocationBlock``
  (``affinity: host:<node>``, one entry per address in ``allocations``);
* ``/calico/ipam/v2/host/<node>/ipv4/block/<a.b.c.d>-<len>``: the block affinity
  (``{"state": "confirmed", "deleted": false}``).

Values are what Go's encoding/json makes of those structs: fields in declaration order,
``omitempty`` ones left out when empty.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any

PREFIX = "/calico/"
API_VERSION = "projectcalico.org/v3"
RESOURCES = "/calico/resources/v3/projectcalico.org/"
NODES = f"{RESOURCES}nodes/"
POOLS = f"{RESOURCES}ippools/"
DEFAULT_POOL = "default-ipv4-ippool"
BLOCKS = "/calico/ipam/v2/assignment/ipv4/block/"
MODES = ("Never", "Always", "CrossSubnet")
POD_HANDLE = "k8s-pod-network."
_CIDR = re.compile(r"^(\d+\.\d+\.\d+\.\d+)-(\d+)$")


class RecordError(ValueError):
    """A key or value Calico's backend would not parse."""


def _cidr_part(net: IPv4Network) -> str:
    return f"{net.network_address}-{net.prefixlen}"


def _parse_cidr_part(key: str, part: str) -> IPv4Network:
    m = _CIDR.match(part)
    if not m:
        raise RecordError(f"{key!r}: want <a.b.c.d>-<prefixlen> at the end")
    try:
        return IPv4Network(f"{m.group(1)}/{m.group(2)}")
    except ValueError as e:
        raise RecordError(f"{key!r}: {e}") from None


def node_key(name: str) -> str:
    """The Node resource's key."""
    return f"{NODES}{name}"


def pool_key(name: str = DEFAULT_POOL) -> str:
    """An IPPool resource's key."""
    return f"{POOLS}{name}"


def block_key(cidr: IPv4Network) -> str:
    """``/calico/ipam/v2/assignment/ipv4/block/10.244.1.0-26``."""
    return f"{BLOCKS}{_cidr_part(cidr)}"


def affinity_key(node: str, cidr: IPv4Network) -> str:
    """``/calico/ipam/v2/host/<node>/ipv4/block/10.244.1.0-26``."""
    return f"/calico/ipam/v2/host/{node}/ipv4/block/{_cidr_part(cidr)}"


def parse_block_key(key: str) -> IPv4Network:
    """The CIDR a block key names; RecordError for anything else."""
    if not key.startswith(BLOCKS):
        raise RecordError(f"{key!r} is not under {BLOCKS}")
    return _parse_cidr_part(key, key[len(BLOCKS) :])


def _dumps(doc: dict[str, Any]) -> str:
    return json.dumps(doc, separators=(",", ":"))


def _load(what: str, text: str) -> dict[str, Any]:
    try:
        raw = json.loads(text)
    except ValueError as e:
        raise RecordError(f"{what} is not JSON: {e}") from None
    if not isinstance(raw, dict):
        raise RecordError(f"{what} is not a JSON object")
    return raw


# ---- Node ----


@dataclass(frozen=True)
class NodeRecord:
    """What Felix reads from a Node resource."""

    name: str
    address: IPv4Interface  # spec.bgp.ipv4Address: the node IP with its subnet's prefix
    ipip_tunnel_addr: IPv4Address | None = None
    vxlan_tunnel_addr: IPv4Address | None = None
    vxlan_mac: str = ""
    rr_cluster_id: str = ""

    def to_json(self, meta: dict[str, Any]) -> str:
        """The resource calico-node writes; `meta` is its ObjectMeta (name, uid, ...)."""
        bgp: dict[str, Any] = {"ipv4Address": str(self.address)}
        if self.ipip_tunnel_addr is not None:
            bgp["ipv4IPIPTunnelAddr"] = str(self.ipip_tunnel_addr)
        if self.rr_cluster_id:
            bgp["routeReflectorClusterID"] = self.rr_cluster_id
        spec: dict[str, Any] = {"bgp": bgp}
        if self.vxlan_tunnel_addr is not None:
            spec["ipv4VXLANTunnelAddr"] = str(self.vxlan_tunnel_addr)
        if self.vxlan_mac:
            spec["vxlanTunnelMACAddr"] = self.vxlan_mac
        spec["orchRefs"] = [{"nodeName": self.name, "orchestrator": "k8s"}]
        return _dumps(
            {
                "kind": "Node",
                "apiVersion": API_VERSION,
                "metadata": {"name": self.name, **meta},
                "spec": spec,
                "status": {},
            }
        )

    @classmethod
    def from_json(cls, text: str) -> NodeRecord:
        """Parse a Node resource; RecordError naming what is missing or wrong."""
        raw = _load("Node", text)
        if raw.get("kind") != "Node":
            raise RecordError(f"kind {raw.get('kind')!r} is not Node")
        name = (raw.get("metadata") or {}).get("name")
        spec = raw.get("spec") or {}
        bgp = spec.get("bgp") or {}
        if not name or "ipv4Address" not in bgp:
            raise RecordError("Node needs metadata.name and spec.bgp.ipv4Address")
        try:
            return cls(
                name=name,
                address=IPv4Interface(bgp["ipv4Address"]),
                ipip_tunnel_addr=_addr(bgp.get("ipv4IPIPTunnelAddr")),
                vxlan_tunnel_addr=_addr(spec.get("ipv4VXLANTunnelAddr")),
                vxlan_mac=spec.get("vxlanTunnelMACAddr", ""),
                rr_cluster_id=bgp.get("routeReflectorClusterID", ""),
            )
        except ValueError as e:
            raise RecordError(f"Node {name}: {e}") from None


def _addr(raw: str | None) -> IPv4Address | None:
    return IPv4Address(raw) if raw else None


# ---- IPPool ----


@dataclass(frozen=True)
class PoolRecord:
    """The default IPv4 pool as calico-node creates it from CALICO_IPV4POOL_*."""

    cidr: IPv4Network
    ipip_mode: str
    vxlan_mode: str
    block_size: int = 26

    def to_json(self, meta: dict[str, Any]) -> str:
        """The IPPool resource."""
        return _dumps(
            {
                "kind": "IPPool",
                "apiVersion": API_VERSION,
                "metadata": {"name": DEFAULT_POOL, **meta},
                "spec": {
                    "cidr": str(self.cidr),
                    "vxlanMode": self.vxlan_mode,
                    "ipipMode": self.ipip_mode,
                    "natOutgoing": True,
                    "blockSize": self.block_size,
                    "nodeSelector": "all()",
                    "allowedUses": ["Workload", "Tunnel"],
                },
            }
        )

    @classmethod
    def from_json(cls, text: str) -> PoolRecord:
        """Parse an IPPool; RecordError for modes Calico does not know."""
        spec = _load("IPPool", text).get("spec") or {}
        ipip, vxlan = spec.get("ipipMode", "Never"), spec.get("vxlanMode", "Never")
        for name, value in (("ipipMode", ipip), ("vxlanMode", vxlan)):
            if value not in MODES:
                raise RecordError(f"IPPool spec.{name} {value!r}: use {', '.join(MODES)}")
        if ipip != "Never" and vxlan != "Never":
            raise RecordError("IPPool: ipipMode and vxlanMode cannot both be enabled")
        try:
            return cls(IPv4Network(spec["cidr"]), ipip, vxlan, int(spec.get("blockSize", 26)))
        except (KeyError, ValueError) as e:
            raise RecordError(f"IPPool spec.cidr: {e}") from None

    def mode(self) -> str:
        """The lab's Calico mode this pool's encapsulation settings select."""
        if self.vxlan_mode != "Never":
            return "calico-vxlan" + ("-crosssubnet" if self.vxlan_mode == "CrossSubnet" else "")
        if self.ipip_mode != "Never":
            return "calico-ipip" + ("-crosssubnet" if self.ipip_mode == "CrossSubnet" else "")
        return "calico-bgp"


def pool_for_mode(mode: str, cidr: IPv4Network) -> PoolRecord:
    """The pool (CALICO_IPV4POOL_IPIP / _VXLAN) that makes Felix program `mode`."""
    setting = "CrossSubnet" if mode.endswith("-crosssubnet") else "Always"
    ipip = setting if mode.startswith("calico-ipip") else "Never"
    vxlan = setting if mode.startswith("calico-vxlan") else "Never"
    return PoolRecord(cidr, ipip, vxlan)


# ---- IPAM block and affinity ----


@dataclass(frozen=True)
class Allocation:
    """One address in use: its IPAM handle and the attributes stored with it."""

    handle: str
    attrs: dict[str, str] = field(default_factory=dict, hash=False)


def tunnel_allocation(node: str, kind: str) -> Allocation:
    """calico-node's tunnel address (`kind` ipip or vxlan): handle and attributes."""
    return Allocation(f"{kind}-tunnel-addr-{node}", {"node": node, "type": f"{kind}TunnelAddress"})


def pod_allocation(namespace: str, pod: str, node: str) -> Allocation:
    """The CNI plugin's allocation for a pod (the lab has no container IDs: the handle names
    the pod instead)."""
    return Allocation(
        f"{POD_HANDLE}{namespace}.{pod}", {"namespace": namespace, "node": node, "pod": pod}
    )


@dataclass(frozen=True)
class BlockRecord:
    """An AllocationBlock: its CIDR, affinity and the addresses allocated in it."""

    cidr: IPv4Network
    host: str | None
    allocations: dict[IPv4Address, Allocation] = field(default_factory=dict, hash=False)
    sequence: int = 0
    claim_time: str = ""

    def to_json(self) -> str:
        """The block value: an ordinal per address, attributes shared by equal allocations
        (libcalico-go's findOrAddAttribute), free ordinals in order."""
        attrs: list[dict[str, Any]] = []
        ordinals: list[int | None] = [None] * self.cidr.num_addresses
        seq: dict[str, int] = {}
        for ip in sorted(self.allocations):
            alloc = self.allocations[ip]
            entry = {"handle_id": alloc.handle, "secondary": alloc.attrs}
            if entry not in attrs:
                attrs.append(entry)
            ordinal = int(ip) - int(self.cidr.network_address)
            ordinals[ordinal] = attrs.index(entry)
            seq[str(ordinal)] = self.sequence
        doc: dict[str, Any] = {
            "cidr": str(self.cidr),
            "affinity": f"host:{self.host}" if self.host else None,
        }
        if self.claim_time:
            doc["affinity_claim_time"] = self.claim_time
        doc.update(
            allocations=ordinals,
            unallocated=[i for i, a in enumerate(ordinals) if a is None],
            attributes=attrs,
            sequenceNumber=self.sequence,
            sequenceNumberForAllocation=seq,
            deleted=False,
        )
        return _dumps(doc)

    @classmethod
    def from_json(cls, text: str) -> BlockRecord:
        """Parse a block; RecordError naming the field that is wrong."""
        raw = _load("block", text)
        try:
            cidr = IPv4Network(raw["cidr"])
        except (KeyError, ValueError) as e:
            raise RecordError(f"block cidr: {e}") from None
        affinity = raw.get("affinity") or ""
        host = affinity[len("host:") :] if affinity.startswith("host:") else None
        attrs = raw.get("attributes") or []
        allocs = {}
        for ordinal, idx in enumerate(raw.get("allocations") or []):
            if idx is None:
                continue
            if not isinstance(idx, int) or not 0 <= idx < len(attrs):
                raise RecordError(f"block {cidr}: allocation {ordinal} names no attribute")
            a = attrs[idx]
            allocs[cidr.network_address + ordinal] = Allocation(
                a.get("handle_id") or "", dict(a.get("secondary") or {})
            )
        return cls(
            cidr,
            host,
            allocs,
            int(raw.get("sequenceNumber", 0)),
            raw.get("affinity_claim_time", ""),
        )


def affinity_value(state: str = "confirmed") -> str:
    """A BlockAffinity value."""
    return _dumps({"state": state, "deleted": False})


def with_pods(
    block: BlockRecord, node: str, pods: list[tuple[str, str, IPv4Address]]
) -> BlockRecord:
    """`block` with its pod allocations set to `pods` (namespace, name, IP) that lie in it:
    calico-ipam's assignments and releases as the CNI plugin would have made them; tunnel
    and other allocations are kept."""
    allocs = {ip: a for ip, a in block.allocations.items() if not a.handle.startswith(POD_HANDLE)}
    for namespace, name, ip in pods:
        if ip in block.cidr:
            allocs[ip] = pod_allocation(namespace, name, node)
    if allocs == block.allocations:
        return block
    return BlockRecord(block.cidr, block.host, allocs, block.sequence + 1, block.claim_time)
