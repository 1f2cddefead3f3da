"""The TC-BPF IPIP datapath's pure parts: the plan, the datapath choice, the maps' contents
and the commands the loader runs (no root; the integration tests attach it for real)."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address
from pathlib import Path

import pytest

import labctl.features as features
from labctl.datapath import bpf
from labctl.features import MissingFeature, resolve_datapath
from labctl.modes import get_mode
from labctl.topology import Topology, load_topology
from tests.unit.plan_helpers import topology_flows


@pytest.fixture(scope="module")
def topo() -> Topology:
    return load_topology("default")


@pytest.mark.parametrize(
    ("mode", "dev"),
    [
        ("calico-ipip", "tunl0"),
        ("calico-ipip-crosssubnet", "tunl0"),
        ("flannel-ipip", "flannel.ipip"),
    ],
)
def test_bpf_plan_keeps_the_real_device_and_routes(topo: Topology, mode: str, dev: str) -> None:
    plan = get_mode(mode).plan(topo, "bpf")
    node = plan.namespaces["master"]
    link = next(x for x in node.links if x.name == dev)
    assert link.kind == "tun" and link.mtu == 1480
    (daemon,) = [d for d in node.daemons if d.kind == "ipip-bpf"]
    assert daemon.config["tun"] == dev and daemon.config["underlay"] == "eth0"
    assert daemon.config["local_ip"] == "10.0.0.31"
    # The peers the decap program accepts: every other node, whatever the route to it.
    assert {r["node_ip"] for r in daemon.config["routes"]} == {"10.0.0.32", "10.0.0.33"}
    # The routes still point at the device with the peer as gateway: the encap program's
    # outer destination comes from them (cross-subnet: none here, all nodes share a segment).
    tunnel_routes = [r for r in node.routes if r.dev == dev]
    assert bool(tunnel_routes) == (mode != "calico-ipip-crosssubnet")
    assert all(r.via in {"10.0.0.32", "10.0.0.33"} for r in tunnel_routes)
    assert any("BPF IPIP datapath" in n and dev in n for n in plan.notes)
    assert {f.encap for f in topology_flows(plan, topo)} <= {"ipip", "bare"}


@pytest.fixture
def no_ipip(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.setattr(features, "can_create", lambda kind: False)
    return monkeypatch


def test_auto_prefers_kernel_then_bpf_then_userspace(no_ipip: pytest.MonkeyPatch) -> None:
    no_ipip.setattr(features, "_bpf_problem", lambda: None)
    chosen, note = resolve_datapath("ipip", "auto")
    assert chosen == "bpf" and note and "no ipip module" in note
    no_ipip.setattr(features, "_bpf_problem", lambda: "clang not installed")
    chosen, note = resolve_datapath("ipip", "auto")
    assert chosen == "userspace" and note and "clang not installed" in note
    no_ipip.setattr(features, "can_create", lambda kind: True)
    assert resolve_datapath("ipip", "auto") == ("kernel", None)


def test_explicit_bpf(no_ipip: pytest.MonkeyPatch) -> None:
    no_ipip.setattr(features, "_bpf_problem", lambda: "bpftool not installed")
    with pytest.raises(MissingFeature, match="--datapath bpf: bpftool not installed"):
        resolve_datapath("ipip", "bpf")
    with pytest.raises(MissingFeature, match="use --datapath userspace, bpf or auto"):
        resolve_datapath("ipip", "kernel")
    no_ipip.setattr(features, "_bpf_problem", lambda: None)
    assert resolve_datapath("ipip", "bpf")[0] == "bpf"
    assert resolve_datapath("ipip", "userspace")[0] == "userspace"


def test_map_contents() -> None:
    value = bpf.config_value(IPv4Address("10.0.0.31"), 2, 7)
    # struct config { __be32 local_ip; __u32 underlay; __u32 tunnel; }: network-order IP.
    assert value == bytes([10, 0, 0, 31]) + struct.pack("=II", 2, 7)
    routes = [
        {"subnet": "10.244.1.0/26", "node_ip": "10.0.0.32"},
        {"subnet": "10.244.1.64/26", "node_ip": "10.0.0.32"},
        {"subnet": "10.244.2.0/26", "node_ip": "10.0.0.33"},
    ]
    assert bpf.peer_keys(routes) == [bytes([10, 0, 0, 32]), bytes([10, 0, 0, 33])]


def test_loader_argv() -> None:
    obj = Path("/x/ipip.bpf.o")
    qdisc, flt = bpf.attach_argv("tunl0", "egress", "tc/encap", obj)
    assert qdisc == ["tc", "qdisc", "replace", "dev", "tunl0", "clsact"]
    assert flt[:6] == ["tc", "filter", "replace", "dev", "tunl0", "egress"]
    assert flt[-6:] == ["bpf", "direct-action", "obj", "/x/ipip.bpf.o", "sec", "tc/encap"]
    assert bpf.detach_argv("eth0") == ["tc", "qdisc", "del", "dev", "eth0", "clsact"]
    update = bpf.map_update_argv(12, bytes([10, 0, 0, 32]), b"\x01\0\0\0")
    assert update == ["bpftool", "map", "update", "id", "12", "key", "hex", "0a", "00", "00",
                      "20", "value", "hex", "01", "00", "00", "00"]  # fmt: skip
    assert bpf.map_delete_argv(3, b"\x0a\0\0\x20")[-5:] == ["hex", "0a", "00", "00", "20"]
    assert bpf.argv("/c.json")[1:] == ["-m", "labctl.datapath.bpf", "--config", "/c.json"]
    argv = bpf.compile_argv(Path("/s.c"), obj)
    assert argv[0] == "clang" and argv[argv.index("-target") + 1] == "bpf"
    assert argv[-4:] == ["-c", "/s.c", "-o", "/x/ipip.bpf.o"]


def test_object_is_rebuilt_when_stale_and_clang_absence_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, obj = tmp_path / "p.bpf.c", tmp_path / "out" / "p.bpf.o"
    src.write_text("int x;\n")
    assert bpf.is_stale(src, obj)
    monkeypatch.setattr(bpf.shutil, "which", lambda name: None)
    with pytest.raises(bpf.BpfError, match="clang, which is not installed"):
        bpf.ensure_object(src, obj)
    obj.parent.mkdir()
    obj.write_bytes(b"")
    assert not bpf.is_stale(src, obj)
    assert bpf.ensure_object(src, obj) == obj  # up to date: no clang needed
