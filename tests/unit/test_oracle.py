"""The wire oracle (labctl.oracle): independent of the planner, written from the reference,
and in agreement with the planner for every mode on every shipped fabric (two sources)."""

from __future__ import annotations

import ast
import dataclasses
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from labctl import oracle
from labctl.modes import MODES, get_mode
from labctl.plan import UNDERLAY_IF, Plan, flows_for
from labctl.topology import load_topology, parse_topology
from labctl.verify import mtu_verdict, oracle_flows, oracle_wire_specs

TOPOLOGIES = ("default", "two-node", "cross-subnet", "leaf-spine", "leaf-spine-no-bgp")
# Modules that hold the planner's constants: the oracle must know none of them.
PLANNER = ("labctl.modes", "labctl.plan", "labctl.wire", "labctl.checks", "labctl.engine")


# ---------------------------------------------------------------- independence


def test_oracle_imports_only_the_topology_model() -> None:
    tree = ast.parse(Path(oracle.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative import in labctl.oracle"
            imported.add(node.module or "")
            imported |= {f"{node.module}.{a.name}" for a in node.names}
    ours = {m for m in imported if m == "labctl" or m.startswith("labctl.")}
    assert ours <= {"labctl.topology", "labctl.topology.Topology"}, ours


def test_importing_the_oracle_loads_no_planner_module() -> None:
    # Transitively too: a fresh interpreter, then look at what got imported.
    code = "import sys, labctl.oracle; print('\\n'.join(sorted(sys.modules)))"
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert not [m for m in loaded if m.startswith(PLANNER)]


def test_the_oracle_covers_every_mode() -> None:
    assert set(oracle.MODES) == set(MODES)
    with pytest.raises(oracle.NoOracleError, match="no entry for mode 'nope'"):
        oracle.mode_wire("nope")


# ---------------------------------------------------------------- the reference's numbers


@pytest.mark.parametrize(
    ("mode", "mtu"),
    [
        # Reference section 2 (FLANNEL_MTU) and 11 (Calico) on a 1500-byte underlay.
        ("flannel-vxlan", 1450),
        ("flannel-udp", 1472),
        ("flannel-ipip", 1480),
        ("flannel-host-gw", 1500),
        ("calico-ipip", 1480),
        ("calico-vxlan", 1450),
        ("calico-bgp", 1500),
        # The smallest of the *enabled* encapsulations, even for pairs that go bare.
        ("calico-vxlan-crosssubnet", 1450),
        ("flannel-vxlan-directrouting", 1450),
    ],
)
def test_pod_mtu_from_header_sizes_matches_the_reference(mode: str, mtu: int) -> None:
    assert oracle.pod_mtu(mode, 1500) == mtu
    assert oracle.pod_mtu(mode, 9000) == mtu + 7500


def test_carriers_are_the_references() -> None:
    assert (oracle.FLANNEL_VXLAN.port, oracle.FLANNEL_VXLAN.vni) == (8472, 1)
    assert (oracle.CALICO_VXLAN.port, oracle.CALICO_VXLAN.vni) == (4789, 4096)
    assert oracle.FLANNEL_UDP.port == 8285
    assert oracle.mode_wire("canal").carriers == (oracle.FLANNEL_VXLAN,)
    assert oracle.mode_wire("calico-ipip-crosssubnet").carriers == (oracle.IPIP, oracle.BARE)


def test_which_pairs_go_bare() -> None:
    topo = load_topology("cross-subnet")  # node1, node2 on lan1; node3 behind router r1

    def hop(mode: str, a: str, b: str) -> tuple[str, str | None]:
        p = oracle.path(mode, topo, a, b)
        return p.carrier.encap, p.next_hop

    assert hop("flannel-vxlan-directrouting", "node1", "node2") == ("bare", "node2")
    assert hop("flannel-vxlan-directrouting", "node1", "node3") == ("vxlan", None)
    assert hop("calico-vxlan-crosssubnet", "node3", "node1") == ("vxlan", None)
    assert hop("calico-ipip-crosssubnet", "node2", "node1") == ("bare", "node1")
    assert hop("calico-ipip-crosssubnet", "node2", "node3") == ("ipip", None)
    # BGP across a router: the router is the next hop (not pinned); host-gw has no route
    # but via the peer itself, so anything else on the wire is wrong.
    assert hop("calico-bgp", "node1", "node3") == ("bare", None)
    assert hop("flannel-host-gw", "node1", "node3") == ("bare", "node3")
    assert hop("calico-vxlan", "node1", "node2") == ("vxlan", None)


# ---------------------------------------------------------------- planner vs oracle


@dataclass
class _Pod:
    key: str
    ip: str
    node: str


def _pods(topology: str) -> list[_Pod]:
    topo = load_topology(topology)
    return [_Pod(p.key, str(topo.pod_ips[p.key]), p.node) for p in topo.pods]


def disagreements(mode: str, topology: str, plan: Plan) -> list[str]:
    """Where `plan` (the planner's output) differs from the oracle: wire specs, per-node pod
    MTU, VXLAN device VNI/port, and every pod pair's flow."""
    topo = load_topology(topology)
    out = []
    if set(plan.wire) != set(oracle_wire_specs(mode)):
        out.append(f"wire specs {plan.wire} != {oracle_wire_specs(mode)}")
    for node, mtu in plan.node_pod_mtu.items():
        want = oracle.node_pod_mtu(mode, topo, node)
        if mtu != want:
            out.append(f"{node}: pod MTU {mtu} != {want}")
    tunnel = oracle.mode_wire(mode).tunnel
    for ns in plan.namespaces.values():
        for link in ns.links:
            if link.kind == "vxlan" and (
                tunnel is None or (link.vni, link.port) != (tunnel.vni, tunnel.port)
            ):
                out.append(f"{ns.name} {link.name}: VNI {link.vni} port {link.port}")
    macs = {a.ns: a.mac for a in plan.attachments if a.ifname == UNDERLAY_IF}
    pods = _pods(topology)
    planned, expected = flows_for(pods, plan, topo), oracle_flows(pods, mode, topo, macs)
    out += [f"{p} != {e}" for p, e in zip(planned, expected, strict=True) if p != e]
    return out


@pytest.mark.parametrize("topology", TOPOLOGIES)
@pytest.mark.parametrize("mode", sorted(MODES))
def test_planner_agrees_with_the_oracle(mode: str, topology: str) -> None:
    plan = get_mode(mode).plan(load_topology(topology))
    assert disagreements(mode, topology, plan) == []


def test_planner_agrees_on_a_jumbo_segment() -> None:
    topo = parse_topology(
        {
            "name": "jumbo",
            "segments": {"a": {"cidr": "10.0.0.0/24", "mtu": 9000}, "b": {"cidr": "10.0.1.0/24"}},
            "routers": {"r": {"interfaces": {"a": "10.0.0.1", "b": "10.0.1.1"}}},
            "nodes": {
                "n1": {"segment": "a", "ip": "10.0.0.11"},
                "n2": {"segment": "b", "ip": "10.0.1.12"},
            },
        }
    )
    for mode in MODES:
        plan = get_mode(mode).plan(topo)
        assert plan.node_pod_mtu == {n: oracle.node_pod_mtu(mode, topo, n) for n in topo.nodes}


def test_the_cross_check_catches_a_wrong_planner_constant() -> None:
    """Negative: a planner that got one constant wrong disagrees with the oracle."""
    good = get_mode("calico-vxlan").plan(load_topology("default"))
    assert disagreements("calico-vxlan", "default", good) == []
    small_mtu = dataclasses.replace(good, node_pod_mtu={**good.node_pod_mtu, "node1": 1449})
    assert disagreements("calico-vxlan", "default", small_mtu) == ["node1: pod MTU 1449 != 1450"]
    wrong_vni = {k: {**v, "vni": 1} for k, v in good.paths.items()}
    found = disagreements("calico-vxlan", "default", dataclasses.replace(good, paths=wrong_vni))
    assert len(found) == 24 and all("vni=1" in d for d in found)  # every cross-node pod pair


# ---------------------------------------------------------------- the MTU verdict


REASON = "underlay 1500 - 50 for VXLAN VNI 1 on UDP 8472"


def test_mtu_verdict_passes_the_exact_mtu() -> None:
    ok = mtu_verdict("mtu a -> b", 1450, REASON, 1450, fits=True, over=False)
    assert ok.passed
    assert ok.detail.startswith("1450-byte DF packet passed, 1451-byte was refused")
    assert f"pod eth0 MTU 1450 ({REASON})" in ok.detail


def test_mtu_one_byte_too_small_fails() -> None:
    # Pod MTU 1449 in vxlan: the 1450-byte DF ping cannot leave the pod.
    bad = mtu_verdict("mtu a -> b", 1450, REASON, 1449, fits=False, over=False)
    assert not bad.passed
    assert "1450-byte DF packet FAILED" in bad.detail
    assert "pod eth0 MTU 1449 is too small: expected 1450" in bad.detail
    # Even if the path somehow carried it, the wrong eth0 MTU alone fails the check.
    assert not mtu_verdict("m", 1450, REASON, 1449, fits=True, over=False).passed


def test_mtu_one_byte_too_big_fails() -> None:
    # Pod MTU 1451: the node's 1450-byte tunnel refuses 1451 bytes, so the pings alone look
    # right; the pod's eth0 MTU gives it away.
    bad = mtu_verdict("mtu a -> b", 1450, REASON, 1451, fits=True, over=False)
    assert not bad.passed
    assert "pod eth0 MTU 1451 is too large: expected 1450" in bad.detail
    leaky = mtu_verdict("mtu a -> b", 1450, REASON, 1450, fits=True, over=True)
    assert not leaky.passed and "1451-byte PASSED (MTU too large)" in leaky.detail


def test_mtu_reason_names_the_encapsulation() -> None:
    topo = load_topology("default")
    assert oracle.mtu_reason("calico-vxlan", topo, "node1") == (
        "underlay 1500 - 50 for VXLAN VNI 4096 on UDP 4789"
    )
    assert oracle.mtu_reason("calico-bgp", topo, "node1") == "underlay 1500, no encapsulation"
