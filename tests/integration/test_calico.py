"""Calico modes end to end (root): up, verify, down on every shipped fabric; BGP designs;
what verify says when the fabric cannot carry bare pod traffic; withdrawal and recovery when
a node's BGP speaker or link goes away (the measured seconds are printed: run with -s)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from labctl import frr, state
from labctl.bgp import BgpTimers
from labctl.checks import run as run_checks
from labctl.lifecycle import _lab_pids
from labctl.modes import get_mode
from labctl.modes.calico import ipam_block
from labctl.topology import TOPOLOGY_DIR, load_topology

from .conftest import labctl, labctl_json, run_name

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(frr.frr_available() is not None, reason=str(frr.frr_available())),
]

MODES = (
    "calico-bgp",
    "calico-ipip",
    "calico-ipip-crosssubnet",
    "calico-vxlan",
    "calico-vxlan-crosssubnet",
)
FRR_DAEMONS = set(frr.DAEMON_ORDER)
TIMERS = BgpTimers()  # what the lab configures (FRR's datacenter profile)
HOLD_TIME = float(TIMERS.hold)
# The flags labctl.frr.start gives bgpd inside a node.
BGPD_START = [
    str(frr.FRR_LIBDIR / "bgpd"),
    "-d",
    "-F",
    "datacenter",
    "-f",
    frr.CONF_PATH,
    "-i",
    f"{frr.RUN_DIR}/bgpd.pid",
    "-P",
    "0",
    "--log",
    f"file:{frr.RUN_DIR}/bgpd.log",
]


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _running(pid: int) -> bool:
    """Alive and not a zombie (a zombie holds no namespaces; init reaps it later)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def down_and_assert_clean(name: str, node_pids: list[int]) -> None:
    """`down` leaves no process (FRR daemons included), node namespace or state behind."""
    host_frr = set(Path("/run/frr").iterdir()) if Path("/run/frr").is_dir() else set()
    labctl("down", "-n", name)
    name = run_name(name)
    left = _lab_pids(name)
    assert not [p for p in left if _comm(p) in FRR_DAEMONS], "FRR daemons survived down"
    assert not left, f"processes of lab {name} survived: {left}"
    # FRR's directories were tmpfs mounts in the nodes' mount namespaces: gone with the nodes.
    assert not [p for p in node_pids if _running(p)]
    assert not Path(f"/run/netns/labctl-{name}").exists()
    assert not state.lab_dir(name).exists()
    if host_frr:
        assert set(Path("/run/frr").iterdir()) <= host_frr, "FRR wrote into the host's /run/frr"


def up(name: str, mode: str, topology: str) -> dict[str, int]:
    """Bring a lab up; return namespace pids."""
    labctl("up", mode, "-t", topology, "-n", name)
    return {n: r.pid for n, r in state.load(run_name(name)).namespaces.items()}


def failed(report: dict) -> dict[str, str]:
    return {c["name"]: c["detail"] for c in report["checks"] if not c["passed"]}


# ---------------------------------------------------------------- the matrix


# The default cluster in every mode is test_matrix.py (on its superset, `services`).
@pytest.mark.parametrize("topology", ["cross-subnet", "leaf-spine"])
@pytest.mark.parametrize("mode", MODES)
def test_up_verify_down(lab: list[str], mode: str, topology: str) -> None:
    lab.append("calit")
    pids = up("calit", mode, topology)
    report = labctl_json("verify", "-n", "calit")
    assert report["passed"], failed(report)
    names = [c["name"] for c in report["checks"]]
    assert any(n.startswith("wire ") for n in names)
    assert any(n.startswith("mtu ") for n in names)
    speakers = [n for n in names if n.startswith("bgp sessions ")]
    if mode in ("calico-vxlan", "calico-vxlan-crosssubnet"):
        assert "bgp design" not in names  # no BGP on the nodes
        assert any(n.startswith("felix routes ") for n in names)
    else:
        assert "bgp design" in names and speakers
    down_and_assert_clean("calit", list(pids.values()))


# ---------------------------------------------------------------- fabrics without BGP


def test_bgp_needs_routers_that_speak_bgp(lab: list[str], tmp_path: Path) -> None:
    """calico-bgp sends pod packets bare: a router without BGP has no route for them."""
    lab.append("calx")
    # The shipped cross-subnet.yaml has r1 speaking BGP (AS 65001; the matrix above passes):
    # take that away and the bare pod packets die at r1.
    topo = tmp_path / "cross-subnet-static.yaml"
    shipped = (TOPOLOGY_DIR / "cross-subnet.yaml").read_text()
    topo.write_text(shipped.replace("lan2: 10.0.1.1}, asn: 65001}", "lan2: 10.0.1.1}}"))
    assert "asn: 65001" not in topo.read_text()
    labctl("up", "calico-bgp", "-t", str(topo), "-n", "calx")
    bad = failed(labctl_json("verify", "-n", "calx", "--no-mtu", check=1))
    assert "connectivity node1 -> node3" in bad
    assert "connectivity node1 -> node2" not in bad  # same segment: no router involved
    assert "no asn" in bad["pod routes on router r1"]


def test_leaf_spine_without_bgp(lab: list[str]) -> None:
    lab.append("caln")
    labctl("up", "calico-bgp", "-t", "leaf-spine-no-bgp", "-n", "caln")
    bad = failed(labctl_json("verify", "-n", "caln", "--no-mtu", check=1))
    assert "connectivity node1 -> node3" in bad and "connectivity node4 -> node2" in bad
    assert "connectivity node1 -> node2" not in bad and "connectivity node3 -> node4" not in bad
    for router in ("leaf1", "leaf2", "spine"):
        assert "it has no asn" in bad[f"pod routes on router {router}"]
    # The mesh itself is fine: node IPs are routed statically.
    assert not [n for n in bad if n.startswith("bgp ")]
    labctl("down", "-n", "caln")
    for mode in ("calico-ipip", "calico-vxlan"):
        labctl("up", mode, "-t", "leaf-spine-no-bgp", "-n", "caln")
        report = labctl_json("verify", "-n", "caln")
        assert report["passed"], (mode, failed(report))
        labctl("down", "-n", "caln")


def test_felix_route_check_catches_a_foreign_route(lab: list[str]) -> None:
    """Negative: the route to node3's block still works but is no longer Felix's."""
    lab.append("calr")
    labctl("up", "calico-ipip", "-t", "cross-subnet", "-n", "calr")
    labctl(
        "exec", "-n", "calr", "node1", "--",
        "ip", "route", "replace", "10.244.2.0/26", "via", "10.0.1.33", "dev", "tunl0", "onlink",
        "proto", "bird",
    )  # fmt: skip
    bad = failed(labctl_json("verify", "-n", "calr", "--no-mtu", check=1))
    assert set(bad) == {"felix routes node1"}
    assert "10.244.2.0/26 via 10.0.1.33 dev tunl0 onlink proto 80" in bad["felix routes node1"]


# ---------------------------------------------------------------- route reflector


def test_route_reflector_sessions(lab: list[str]) -> None:
    lab.append("calrr")
    pids = up("calrr", "calico-bgp", "route-reflector")
    report = labctl_json("verify", "-n", "calrr")
    assert report["passed"], failed(report)
    checks = {c["name"]: c["detail"] for c in report["checks"]}
    assert checks["bgp sessions node1"] == "3/3 Established"
    assert "3/3 node-to-node sessions" in checks["bgp design"]
    reflector = frr.summary(pids["node1"])["ipv4Unicast"]["peers"]
    assert sorted(reflector) == ["10.0.0.12", "10.0.0.13", "10.0.0.14"]
    assert all(p["state"] == "Established" for p in reflector.values())
    ips = {"node1": "10.0.0.11", "node2": "10.0.0.12", "node3": "10.0.0.13", "node4": "10.0.0.14"}
    blocks = {"node1": "10.244.0.0/26", "node2": "10.244.1.0/26", "node3": "10.244.2.0/26"}
    blocks["node4"] = "10.244.3.0/26"
    for client in ("node2", "node3", "node4"):
        assert frr.peer_states(pids[client]) == {"10.0.0.11": "Established"}
        # Reflected routes keep the originating node as next hop: no detour via node1.
        routes = json.loads(
            labctl(
                "exec", "-n", "calrr", client, "--", "ip", "-j", "route", "show", "proto", "bgp"
            ).stdout
        )
        assert {r["dst"]: r["gateway"] for r in routes} == {
            blocks[n]: ips[n] for n in ips if n != client
        }
    down_and_assert_clean("calrr", list(pids.values()))


# ---------------------------------------------------------------- failure and recovery


def _seconds_until(cond: Callable[[], bool], timeout: float) -> float:
    began = time.monotonic()
    while not cond():
        if time.monotonic() - began > timeout:
            raise AssertionError(f"not within {timeout} s")
        time.sleep(0.05)
    return time.monotonic() - began


def test_withdraw_and_recover(lab: list[str]) -> None:
    """node1's speaker stops, then its link goes down: peers withdraw its block within the
    hold time and its pods become unreachable; both recover. Prints the convergence times."""
    lab.append("calf")
    pids = up("calf", "calico-bgp", "default")
    topo = load_topology("default")
    block = str(ipam_block(topo, "node1"))
    peers = (pids["master"], pids["node2"])
    peer_blocks = {str(ipam_block(topo, n)) for n in ("master", "node2")}

    def withdrawn() -> bool:
        return all(block not in frr.kernel_bgp_routes(p) for p in peers)

    def present() -> bool:
        # Both ways: a ping's reply needs node1 to have relearned the peers' blocks too.
        return all(block in frr.kernel_bgp_routes(p) for p in peers) and peer_blocks <= set(
            frr.kernel_bgp_routes(pids["node1"])
        )

    def ping_node1_pod() -> int:
        argv = ["exec", "-n", "calf", "default/web-1", "--", "ping", "-c1", "-W1", "10.244.1.2"]
        return labctl(*argv, check=False).returncode

    _seconds_until(present, 10)  # up waits for sessions; the routes follow within ms
    assert ping_node1_pod() == 0
    kill = "kill $(cat /var/run/frr/bgpd.pid)"  # by pidfile: a pkill would hit every lab
    labctl("exec", "-n", "calf", "node1", "--", "sh", "-c", kill)
    # A stopped bgpd says goodbye (NOTIFICATION): withdrawn at once, long before the hold time.
    # The bound is the hold time doubled: a margin for a loaded runner, not a benchmark.
    t_kill = _seconds_until(withdrawn, 2 * HOLD_TIME)
    assert ping_node1_pod() != 0
    # The mode's own checks, as verify runs them (without verify's probes, which would only
    # wait out their timeouts towards node1's pods).
    mode = get_mode("calico-bgp")
    results = run_checks(mode.checks, topo, mode.plan(topo), pids)
    bad = {c.name: c.detail for c in results if not c.passed}
    assert "does not answer" in bad["bgp sessions node1"]
    # master sees its session to node1 down (Idle, Active or Connect, depending on timing).
    assert "1/2 Established; not: 10.0.0.32 " in bad["bgp sessions master"]
    assert "missing 10.244.1.0/26" in bad["bgp routes master"]
    assert "1/3 node-to-node sessions" in bad["bgp design"]

    labctl("exec", "-n", "calf", "node1", "--", *BGPD_START)
    t_restart = _seconds_until(present, 30)
    assert ping_node1_pod() == 0

    # A silent failure: no NOTIFICATION, no RST; the peers notice by the hold timer.
    labctl("exec", "-n", "calf", "node1", "--", "ip", "link", "set", "eth0", "down")
    t_link = _seconds_until(withdrawn, 2 * HOLD_TIME)
    # Only the hold timer can notice: not before the last keepalive's hold time runs out.
    assert t_link >= HOLD_TIME - TIMERS.keepalive, f"withdrawn after {t_link:.2f} s"
    labctl("exec", "-n", "calf", "node1", "--", "ip", "link", "set", "eth0", "up")
    # Link down flushed node1's routes through eth0, among them the lab's stand-in for a
    # default route that proxy ARP needs; a real node's network manager restores its own.
    restore = ["ip", "route", "replace", "169.254.1.1", "dev", "eth0", "scope", "link"]
    labctl("exec", "-n", "calf", "node1", "--", *restore)
    t_link_up = _seconds_until(present, 30)
    assert ping_node1_pod() == 0
    report = labctl_json("verify", "-n", "calf", "--no-mtu")
    assert report["passed"], failed(report)
    print(
        f"\nconvergence (calico-bgp, default.yaml, node1's block {block}):"
        f"\n  bgpd stopped      -> withdrawn on master+node2 in {t_kill:.2f} s"
        f"\n  bgpd restarted    -> back in {t_restart:.2f} s"
        f"\n  node1 eth0 down   -> withdrawn in {t_link:.2f} s (hold time {HOLD_TIME:.0f} s)"
        f"\n  node1 eth0 up     -> back in {t_link_up:.2f} s"
    )
    # The restarted bgpd carries the lab marker (labctl exec sets it): down still stops it.
    down_and_assert_clean("calf", list(pids.values()))
