"""Flannel's etcd records as the node agents write and read them (no root, no etcd)."""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from labctl.controlplane import lease
from labctl.controlplane.agent import status_path
from labctl.controlplane.dynamics import switch_refusal
from labctl.controlplane.supervise import ControlPlane, agent_configs, net_conf
from labctl.modes import get_mode
from labctl.modes.flannel import LEASE_TTL, backend_named, lease_ttl
from labctl.state import LabState
from labctl.topology import TopologyError, load_topology

# What flanneld v0.18+ puts under /coreos.com/network/subnets/192.168.56.11-24 (Go's
# encoding/json of lease.LeaseAttrs: declaration order, compact, PublicIPv6 null).
FLANNEL_VXLAN = (
    '{"PublicIP":"192.168.56.11","PublicIPv6":null,"BackendType":"vxlan",'
    '"BackendData":{"VNI":1,"VtepMAC":"9a:3c:5e:11:22:33"}}'
)
FLANNEL_HOSTGW = '{"PublicIP":"192.168.56.12","PublicIPv6":null,"BackendType":"host-gw"}'
FLANNEL_UDP = '{"PublicIP":"192.168.56.13","PublicIPv6":null}'


def test_lease_values_are_byte_for_byte_flannels() -> None:
    ip = IPv4Address("192.168.56.11")
    assert lease.attrs_for("vxlan", ip, 1, "9a:3c:5e:11:22:33").to_json() == FLANNEL_VXLAN
    assert lease.attrs_for("host-gw", IPv4Address("192.168.56.12"), 1, "").to_json() == (
        FLANNEL_HOSTGW
    )
    assert lease.attrs_for("udp", IPv4Address("192.168.56.13"), 1, "").to_json() == FLANNEL_UDP
    # Negative: the same data pretty-printed or with the v6 field left out is not what
    # flanneld writes, and the comparison above would catch it.
    assert json.dumps(json.loads(FLANNEL_VXLAN)) != FLANNEL_VXLAN


@pytest.mark.parametrize("text", [FLANNEL_VXLAN, FLANNEL_HOSTGW, FLANNEL_UDP])
def test_flannel_values_parse_and_round_trip(text: str) -> None:
    assert lease.LeaseAttrs.from_json(text).to_json() == text


def test_vxlan_lease_exposes_the_vtep() -> None:
    attrs = lease.LeaseAttrs.from_json(FLANNEL_VXLAN)
    assert attrs.vtep_mac == "9a:3c:5e:11:22:33" and attrs.backend_type == "vxlan"
    assert lease.LeaseAttrs.from_json(FLANNEL_HOSTGW).vtep_mac == ""


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("not json", "not JSON"),
        ('{"PublicIPv6":null}', "no PublicIP"),
        ('{"PublicIP":"10.0.0.300"}', "not an IPv4"),
        ('{"PublicIP":"10.0.0.1","BackendType":"vxlan"}', "VtepMAC"),
        ('{"PublicIP":"10.0.0.1","BackendType":"vxlan","BackendData":[1]}', "JSON object"),
    ],
)
def test_bad_lease_values_are_refused(text: str, why: str) -> None:
    with pytest.raises(lease.LeaseFormatError, match=why):
        lease.LeaseAttrs.from_json(text)


def test_subnet_keys() -> None:
    net = IPv4Network("10.244.1.0/24")
    assert lease.subnet_key(net) == "/coreos.com/network/subnets/10.244.1.0-24"
    assert lease.parse_subnet_key(lease.subnet_key(net)) == net
    for bad in (
        "/coreos.com/network/config",
        "/coreos.com/network/subnets/10.244.1.0/24",
        "/coreos.com/network/subnets/10.244.1.1-24",  # host bits set
        "/other/subnets/10.244.1.0-24",
    ):
        with pytest.raises(lease.LeaseFormatError):
            lease.parse_subnet_key(bad)


@pytest.mark.parametrize(
    ("backend", "mode"),
    [
        ({"Type": "vxlan", "VNI": 1}, "flannel-vxlan"),
        ({"Type": "vxlan", "DirectRouting": True}, "flannel-vxlan-directrouting"),
        ({"Type": "host-gw"}, "flannel-host-gw"),
        ({"Type": "ipip"}, "flannel-ipip"),
        ({}, "flannel-udp"),  # flanneld's default backend
    ],
)
def test_net_conf_selects_the_backend(backend: dict[str, object], mode: str) -> None:
    assert backend_named({"Network": "10.244.0.0/16", "Backend": backend}) == mode


def test_lease_ttl_is_configurable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LABCTL_LEASE_TTL", "4")
    assert lease_ttl() == 4
    for bad in ("0", "abc", "-3"):
        monkeypatch.setenv("LABCTL_LEASE_TTL", bad)
        with pytest.raises(TopologyError, match="LABCTL_LEASE_TTL"):
            lease_ttl()


def test_unknown_backend_is_refused() -> None:
    with pytest.raises(ValueError, match=r"Backend\.Type 'wireguard'"):
        backend_named({"Backend": {"Type": "wireguard"}})


def test_plan_leaves_peer_state_to_the_agents() -> None:
    topo = load_topology("default")
    plan = get_mode("flannel-vxlan").plan(topo)
    node1 = plan.namespaces["node1"]
    peer_routes = [r for r in node1.routes if r.dev == "flannel.1"]
    assert len(peer_routes) == 2 and all(r.agent for r in peer_routes)
    assert all(n.agent for n in node1.neighbours) and all(f.agent for f in node1.fdb)
    # The node's own state stays the engine's.
    assert not any(r.agent for r in node1.routes if r.dev != "flannel.1")
    cfg = agent_configs(plan)["node1"]
    assert cfg["subnet"] == "10.244.1.0/24" and cfg["public_ip"] == "10.0.0.32"
    assert cfg["ttl"] == LEASE_TTL and cfg["underlay"] == "10.0.0.0/24"
    assert json.loads(net_conf(plan))["Backend"]["Type"] == "vxlan"
    # Calico's agent is calico-node; it owns a block, not a lease.
    cfg = agent_configs(get_mode("calico-bgp").plan(topo))["node1"]
    assert cfg["block"] == "10.244.1.0/26" and cfg["tunnel"] == ""


def test_converged_needs_every_peer_on_every_node(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("labctl.state.STATE_ROOT", tmp_path)
    plan = get_mode("flannel-vxlan").plan(load_topology("default"))
    cp = ControlPlane(LabState(lab="t", mode="flannel-vxlan", topology=""))
    subnets = {n: c["subnet"] for n, c in agent_configs(plan).items()}

    def report(node: str, peers: list[str], warnings: list[str] = []) -> None:  # noqa: B006
        p = status_path(tmp_path / "t", node)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps({"peers": sorted(peers), "warnings": warnings}))

    for node in subnets:
        report(node, [s for n, s in subnets.items() if n != node])
    assert cp.converged(plan) == (True, [])
    report("node2", [subnets["master"]], ["node2: error adding route ..."])  # one peer missing
    assert cp.converged(plan)[0] is False
    report("node2", [subnets["master"], subnets["node1"]], ["node2: error adding route ..."])
    assert cp.converged(plan) == (True, ["node2: error adding route ..."])


@pytest.mark.parametrize(
    ("mode", "new", "vtep", "says"),
    [
        ("flannel-vxlan", "flannel-host-gw", False, None),  # host-gw needs no device
        ("flannel-vxlan", "flannel-vxlan-directrouting", True, None),
        ("flannel-vxlan-directrouting", "flannel-vxlan", True, None),
        ("flannel-host-gw", "flannel-vxlan", False, "needs flannel.1 on every node"),
        ("flannel-udp", "flannel-host-gw", True, "switching flannel-udp to flannel-host-gw"),
        ("flannel-ipip", "flannel-host-gw", True, "switching flannel-ipip to flannel-host-gw"),
        ("flannel-vxlan", "flannel-udp", True, "switching flannel-vxlan to flannel-udp"),
    ],
)
def test_which_backend_switches_are_offered_in_place(
    mode: str, new: str, vtep: bool, says: str | None
) -> None:
    asked: list[bool] = []

    def has_vtep() -> bool:
        asked.append(True)
        return vtep

    refused = switch_refusal(mode, new, has_vtep)
    assert refused is None if says is None else says in (refused or ""), refused
    # The nodes are looked at only when both modes are switchable and the target needs a VTEP.
    assert bool(asked) == (new != "flannel-host-gw" and "switching" not in (says or ""))
