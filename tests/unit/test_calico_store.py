"""Calico's etcd records (libcalico-go's etcd v3 layout) and the calico-node agent's
record -> kernel-object logic, without a kernel."""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

import pytest

from labctl.controlplane import calicostore as cs
from labctl.controlplane.felix import Datastore, desired
from labctl.controlplane.supervise import agent_configs
from labctl.modes import get_mode
from labctl.modes.calico import ENCAPS, FELIX_PROTO
from labctl.plan import Fdb, Neigh, Route
from labctl.topology import load_topology

BLOCK = IPv4Network("10.244.1.0/26")
META = {"uid": "u", "creationTimestamp": "2024-01-01T00:00:00Z"}


def test_key_paths() -> None:
    assert cs.node_key("node1") == "/calico/resources/v3/projectcalico.org/nodes/node1"
    assert cs.pool_key() == "/calico/resources/v3/projectcalico.org/ippools/default-ipv4-ippool"
    assert cs.block_key(BLOCK) == "/calico/ipam/v2/assignment/ipv4/block/10.244.1.0-26"
    assert cs.affinity_key("node1", BLOCK) == "/calico/ipam/v2/host/node1/ipv4/block/10.244.1.0-26"
    assert cs.parse_block_key(cs.block_key(BLOCK)) == BLOCK
    for bad in ("/calico/ipam/v2/assignment/ipv4/block/10.244.1.0", "/coreos.com/x/10.0.0.0-26"):
        with pytest.raises(cs.RecordError):
            cs.parse_block_key(bad)


def test_node_resource_fields() -> None:
    rec = cs.NodeRecord(
        "node1",
        IPv4Interface("10.0.0.32/24"),
        vxlan_tunnel_addr=IPv4Address("10.244.1.1"),
        vxlan_mac="0e:00:00:00:00:01",
    )
    doc = json.loads(rec.to_json(META))
    assert (doc["kind"], doc["apiVersion"]) == ("Node", "projectcalico.org/v3")
    assert list(doc["metadata"]) == ["name", "uid", "creationTimestamp"]  # ObjectMeta order
    # ipv4Address is a CIDR: Felix's CrossSubnet test takes the subnet from it.
    assert doc["spec"]["bgp"] == {"ipv4Address": "10.0.0.32/24"}
    assert doc["spec"]["ipv4VXLANTunnelAddr"] == "10.244.1.1"
    assert doc["spec"]["vxlanTunnelMACAddr"] == "0e:00:00:00:00:01"
    assert cs.NodeRecord.from_json(rec.to_json(META)) == rec
    ipip = cs.NodeRecord("n", IPv4Interface("10.0.0.1/24"), IPv4Address("10.244.0.1"))
    bgp = json.loads(ipip.to_json(META))["spec"]["bgp"]
    assert bgp == {"ipv4Address": "10.0.0.1/24", "ipv4IPIPTunnelAddr": "10.244.0.1"}
    with pytest.raises(cs.RecordError, match="ipv4Address"):
        cs.NodeRecord.from_json('{"kind": "Node", "metadata": {"name": "x"}, "spec": {}}')


def test_pool_modes_select_the_lab_mode() -> None:
    pool = IPv4Network("10.244.0.0/16")
    for mode in ENCAPS:
        rec = cs.pool_for_mode(mode, pool)
        back = cs.PoolRecord.from_json(rec.to_json(META))
        assert back.mode() == mode
    spec = json.loads(cs.pool_for_mode("calico-ipip-crosssubnet", pool).to_json(META))["spec"]
    assert (spec["ipipMode"], spec["vxlanMode"], spec["blockSize"]) == ("CrossSubnet", "Never", 26)
    assert spec["natOutgoing"] is True
    with pytest.raises(cs.RecordError, match="vxlanMode"):
        cs.PoolRecord.from_json('{"spec": {"cidr": "10.0.0.0/16", "vxlanMode": "Sometimes"}}')


def test_block_allocations_and_affinity() -> None:
    tunnel = cs.tunnel_allocation("node1", "vxlan")
    block = cs.BlockRecord(BLOCK, "node1", {BLOCK.network_address + 1: tunnel}, sequence=7)
    block = cs.with_pods(
        block,
        "node1",
        [("default", "web", IPv4Address("10.244.1.2")), ("x", "far", IPv4Address("10.9.0.2"))],
    )
    doc = json.loads(block.to_json())
    assert doc["affinity"] == "host:node1" and doc["deleted"] is False
    assert len(doc["allocations"]) == 64 and doc["allocations"][:4] == [None, 0, 1, None]
    assert doc["unallocated"][:3] == [0, 3, 4] and len(doc["unallocated"]) == 62
    assert doc["attributes"] == [
        {
            "handle_id": "vxlan-tunnel-addr-node1",
            "secondary": {"node": "node1", "type": "vxlanTunnelAddress"},
        },
        {
            "handle_id": "k8s-pod-network.default.web",
            "secondary": {"namespace": "default", "node": "node1", "pod": "web"},
        },
    ]
    assert doc["sequenceNumber"] == 8  # bumped by the write
    assert cs.BlockRecord.from_json(block.to_json()) == block
    # The pod deleted: its allocation is released, the tunnel address stays.
    gone = cs.with_pods(block, "node1", [])
    assert list(gone.allocations) == [BLOCK.network_address + 1]
    assert cs.with_pods(gone, "node1", []) is gone  # nothing to write
    assert json.loads(cs.affinity_value()) == {"state": "confirmed", "deleted": False}


def test_block_names_a_missing_attribute() -> None:
    bad = '{"cidr": "10.244.1.0/26", "allocations": [null, 3], "attributes": []}'
    with pytest.raises(cs.RecordError, match="allocation 1"):
        cs.BlockRecord.from_json(bad)


def _node(name: str, ip: str, tunnel: str, mac: str = "") -> str:
    rec = cs.NodeRecord(
        name,
        IPv4Interface(ip),
        vxlan_tunnel_addr=IPv4Address(tunnel) if mac else None,
        ipip_tunnel_addr=None if mac else IPv4Address(tunnel),
        vxlan_mac=mac,
    )
    return rec.to_json(META)


def _store(mac: str = "") -> Datastore:
    ds = Datastore()
    for name, ip, block in (
        ("node1", "10.0.0.31/24", "10.244.0.0/26"),
        ("node2", "10.0.0.32/24", "10.244.1.0/26"),
        ("node3", "10.0.1.33/24", "10.244.2.0/26"),
    ):
        net = IPv4Network(block)
        tunnel = str(net.network_address + 1)
        assert ds.apply(cs.node_key(name), _node(name, ip, tunnel, mac and mac + name[-1])) is None
        assert ds.apply(cs.block_key(net), cs.BlockRecord(net, name).to_json()) is None
    return ds


SUBNET = IPv4Network("10.0.0.0/24")


def test_vxlan_records_become_vteps_and_routes() -> None:
    ds = _store(mac="0e:00:00:00:00:0")
    want = desired(ENCAPS["calico-vxlan"], "node1", SUBNET, ds)
    assert sorted(want) == ["node2", "node3"]  # never itself
    n2 = want["node2"]
    assert n2.neighbours == [Neigh("vxlan.calico", "10.244.1.1", "0e:00:00:00:00:02", agent=True)]
    assert n2.fdb == [Fdb("vxlan.calico", "0e:00:00:00:00:02", "10.0.0.32", agent=True)]
    assert n2.routes == [
        Route("10.244.1.0/26", via="10.244.1.1", dev="vxlan.calico", onlink=True, agent=True)
    ]
    # The block deleted: its route goes, the VTEP (from the Node record) stays.
    ds.apply(cs.block_key(IPv4Network("10.244.1.0/26")), None)
    n2 = desired(ENCAPS["calico-vxlan"], "node1", SUBNET, ds)["node2"]
    assert n2.routes == [] and len(n2.neighbours) == len(n2.fdb) == 1
    # The Node record deleted: nothing left for node2, whatever blocks say.
    ds.apply(cs.node_key("node2"), None)
    assert "node2" not in desired(ENCAPS["calico-vxlan"], "node1", SUBNET, ds)


def test_crosssubnet_compares_with_the_own_subnet() -> None:
    ds = _store(mac="0e:00:00:00:00:0")
    want = desired(ENCAPS["calico-vxlan-crosssubnet"], "node1", SUBNET, ds)
    (direct,) = want["node2"].routes
    assert (direct.dev, direct.via, direct.proto) == ("eth0", "10.0.0.32", FELIX_PROTO)
    (tunnelled,) = want["node3"].routes
    assert (tunnelled.dev, tunnelled.via) == ("vxlan.calico", "10.244.2.1")


def test_ipip_routes_and_bgp_nothing() -> None:
    ds = _store()
    want = desired(ENCAPS["calico-ipip"], "node1", SUBNET, ds)
    assert want["node3"].routes == [
        Route(
            "10.244.2.0/26",
            via="10.0.1.33",
            dev="tunl0",
            onlink=True,
            proto=FELIX_PROTO,
            agent=True,
        )
    ]
    assert want["node3"].neighbours == [] and want["node3"].fdb == []
    # calico-bgp: FRR installs the routes; Felix programs nothing per peer.
    bgp = desired(ENCAPS["calico-bgp"], "node1", SUBNET, ds)
    assert all(not (p.routes or p.neighbours or p.fdb) for p in bgp.values())


def test_a_block_of_an_unknown_node_and_bad_records() -> None:
    ds = _store()
    ghost = IPv4Network("10.244.9.0/26")
    ds.apply(cs.block_key(ghost), cs.BlockRecord(ghost, "ghost").to_json())
    want = desired(ENCAPS["calico-ipip"], "node1", SUBNET, ds)
    assert all(r.dst != str(ghost) for p in want.values() for r in p.routes)
    complaint = ds.apply(cs.node_key("node2"), "{not json")
    assert complaint is not None and "node2" in complaint
    assert "node2" not in desired(ENCAPS["calico-ipip"], "node1", SUBNET, ds)


def test_the_plan_agrees_with_the_agent() -> None:
    """What the planner marks `agent` for a node is exactly what the agent derives from the
    records every calico-node writes (one copy of the per-peer logic, two callers)."""
    topo = load_topology("cross-subnet")
    for mode in ("calico-vxlan", "calico-ipip-crosssubnet"):
        plan = get_mode(mode).plan(topo)
        configs = agent_configs(plan)
        ds = Datastore()
        for name, c in configs.items():
            block = IPv4Network(c["block"])
            tunnel = block.network_address + 1
            rec = cs.NodeRecord(
                name,
                IPv4Interface(c["ipv4_address"]),
                ipip_tunnel_addr=tunnel if c["tunnel"] == "ipip" else None,
                vxlan_tunnel_addr=tunnel if c["tunnel"] == "vxlan" else None,
                vxlan_mac=c["vtep_mac"],
            )
            ds.apply(cs.node_key(name), rec.to_json(META))
            ds.apply(cs.block_key(block), cs.BlockRecord(block, name).to_json())
        for ns in plan.node_ns():
            me = IPv4Interface(configs[ns.name]["ipv4_address"]).network
            want = desired(ENCAPS[mode], ns.name, me, ds).values()
            key = repr
            assert sorted(map(key, [r for r in ns.routes if r.agent])) == sorted(
                map(key, [r for p in want for r in p.routes])
            )
            assert sorted(map(key, [n for n in ns.neighbours if n.agent])) == sorted(
                map(key, [n for p in want for n in p.neighbours])
            )
            assert sorted(map(key, [f for f in ns.fdb if f.agent])) == sorted(
                map(key, [f for p in want for f in p.fdb])
            )
