"""Flannel's etcd records, as flanneld (>= 0.18, etcd v3) writes them.

Keys: ``<prefix>/config`` holds net-conf.json; ``<prefix>/subnets/<a.b.c.d>-<len>`` holds one
node's lease (``subnet.MakeSubnetKey``), attached to an etcd lease with a TTL. The value is
``lease.LeaseAttrs`` marshalled by Go's encoding/json: fields in declaration order, compact,
``PublicIPv6`` always present (null), the rest omitted when empty.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Any

PREFIX = "/coreos.com/network"
CONFIG_KEY = f"{PREFIX}/config"
SUBNETS = f"{PREFIX}/subnets/"
_KEY = re.compile(r"^(\d+\.\d+\.\d+\.\d+)-(\d+)$")


class LeaseFormatError(ValueError):
    """A subnet key or lease value that flanneld would not accept."""


def subnet_key(subnet: IPv4Network) -> str:
    """``/coreos.com/network/subnets/10.244.1.0-24`` for 10.244.1.0/24."""
    return f"{SUBNETS}{subnet.network_address}-{subnet.prefixlen}"


def parse_subnet_key(key: str) -> IPv4Network:
    """The subnet a lease key names; LeaseFormatError for anything else."""
    if not key.startswith(SUBNETS):
        raise LeaseFormatError(f"{key!r} is not under {SUBNETS}")
    m = _KEY.match(key[len(SUBNETS) :])
    if not m:
        raise LeaseFormatError(f"{key!r}: want {SUBNETS}<a.b.c.d>-<prefixlen>")
    try:
        return IPv4Network(f"{m.group(1)}/{m.group(2)}")
    except ValueError as e:
        raise LeaseFormatError(f"{key!r}: {e}") from None


@dataclass(frozen=True)
class LeaseAttrs:
    """``lease.LeaseAttrs`` for IPv4: what a node publishes about itself."""

    public_ip: IPv4Address
    backend_type: str = ""  # the udp backend leaves it empty
    backend_data: dict[str, Any] | None = None  # vxlan: {"VNI": 1, "VtepMAC": "..."}

    def to_json(self) -> str:
        """The value flanneld puts under the subnet key."""
        out: dict[str, Any] = {"PublicIP": str(self.public_ip), "PublicIPv6": None}
        if self.backend_type:
            out["BackendType"] = self.backend_type
        if self.backend_data:
            out["BackendData"] = self.backend_data
        return json.dumps(out, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> LeaseAttrs:
        """Parse a lease value; LeaseFormatError naming what is wrong."""
        try:
            raw = json.loads(text)
        except ValueError as e:
            raise LeaseFormatError(f"lease value is not JSON: {e}") from None
        if not isinstance(raw, dict) or "PublicIP" not in raw:
            raise LeaseFormatError("lease value has no PublicIP")
        try:
            ip = IPv4Address(raw["PublicIP"])
        except (ValueError, TypeError):
            raise LeaseFormatError(f"PublicIP {raw['PublicIP']!r} is not an IPv4 address") from None
        data = raw.get("BackendData")
        if data is not None and not isinstance(data, dict):
            raise LeaseFormatError("BackendData must be a JSON object")
        btype = raw.get("BackendType", "")
        if btype == "vxlan" and not (data and "VtepMAC" in data and "VNI" in data):
            raise LeaseFormatError("a vxlan lease needs BackendData with VNI and VtepMAC")
        return cls(ip, btype or "", data or None)

    @property
    def vtep_mac(self) -> str:
        """The peer's flannel.1 MAC (vxlan leases), else ""."""
        return str((self.backend_data or {}).get("VtepMAC", ""))


def attrs_for(backend_type: str, public_ip: IPv4Address, vni: int, vtep_mac: str) -> LeaseAttrs:
    """What each flannel backend publishes: vxlan its VTEP, host-gw and ipip only their type,
    udp nothing but the public IP (its code leaves BackendType empty)."""
    if backend_type == "vxlan":
        return LeaseAttrs(public_ip, "vxlan", {"VNI": vni, "VtepMAC": vtep_mac})
    if backend_type == "udp":
        return LeaseAttrs(public_ip)
    return LeaseAttrs(public_ip, backend_type)
