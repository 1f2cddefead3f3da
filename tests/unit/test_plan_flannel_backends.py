"""flannel-udp and flannel-ipip plans, and the datapath choice (no root)."""

from __future__ import annotations

import pytest

from labctl.features import BadDatapath, MissingFeature, resolve_datapath
from labctl.modes import get_mode
from labctl.topology import Topology, load_topology
from tests.unit.plan_helpers import topology_flows


@pytest.fixture(scope="module")
def topo() -> Topology:
    return load_topology("default")


def test_udp_plan_matches_flanneld(topo: Topology) -> None:
    plan = get_mode("flannel-udp").plan(topo)
    node = plan.namespaces["node1"]
    tun = next(link for link in node.links if link.name == "flannel0")
    assert tun.kind == "tun" and tun.mtu == 1472
    assert any(a.dev == "flannel0" and a.cidr == "10.244.1.0/32" for a in node.addresses)
    # One route for the whole network into the TUN, nothing per peer.
    tun_routes = [r for r in node.routes if r.dev == "flannel0"]
    assert [(r.dst, r.via) for r in tun_routes] == [("10.244.0.0/16", None)]
    (daemon,) = [d for d in node.daemons if d.kind == "udpproxy"]
    assert daemon.kind == "udpproxy" and daemon.config["port"] == 8285
    assert daemon.config["local_ip"] == "10.0.0.32"
    assert {r["subnet"]: r["node_ip"] for r in daemon.config["routes"]} == {
        "10.244.0.0/24": "10.0.0.31",
        "10.244.2.0/24": "10.0.0.33",
    }
    assert "FLANNEL_MTU=1472" in node.files["/run/flannel/subnet.env"]
    assert plan.pod_mtu == 1472
    flows = topology_flows(plan, topo)
    assert {f.encap for f in flows} == {"udp"} and {f.port for f in flows} == {8285}


@pytest.mark.parametrize(("datapath", "kind"), [("kernel", "ipip"), ("userspace", "tun")])
def test_ipip_plan_both_datapaths(topo: Topology, datapath: str, kind: str) -> None:
    plan = get_mode("flannel-ipip").plan(topo, datapath)
    node = plan.namespaces["master"]
    dev = next(link for link in node.links if link.name == "flannel.ipip")
    assert dev.kind == kind and dev.mtu == 1480
    if kind == "ipip":
        assert dev.local == "10.0.0.31"
        assert [d.kind for d in node.daemons] == ["flannel-agent"]
        assert not plan.notes
    else:
        assert [d.kind for d in node.daemons] == ["ipip", "flannel-agent"]
        assert any("userspace" in n for n in plan.notes)
    routes = {r.dst: r for r in node.routes if r.dev == "flannel.ipip"}
    assert routes["10.244.1.0/24"].via == "10.0.0.32" and routes["10.244.1.0/24"].onlink
    assert routes["10.244.2.0/24"].via == "10.0.0.33" and routes["10.244.2.0/24"].onlink
    assert {f.encap for f in topology_flows(plan, topo)} == {"ipip"}


def test_resolve_datapath(monkeypatch: pytest.MonkeyPatch) -> None:
    import labctl.features as features

    monkeypatch.setattr(features, "can_create", lambda kind: False)
    monkeypatch.setattr(features, "_bpf_problem", lambda: "clang not installed")
    assert resolve_datapath("ipip", "auto")[0] == "userspace"
    assert "no ipip module" in (resolve_datapath("ipip", "auto")[1] or "")
    with pytest.raises(MissingFeature, match="cannot create ipip"):
        resolve_datapath("ipip", "kernel")
    monkeypatch.setattr(features, "can_create", lambda kind: True)
    assert resolve_datapath("ipip", "auto") == ("kernel", None)
    assert resolve_datapath("ipip", "userspace")[0] == "userspace"
    with pytest.raises(BadDatapath):
        resolve_datapath(None, "userspace")
    assert resolve_datapath(None, "auto") == ("kernel", None)
