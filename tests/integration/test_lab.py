"""Real labs end to end: up, verify, down, isolation and cleanup (root)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from labctl import state
from labctl.lifecycle import _lab_pids

from .conftest import cli_argv, host_snapshot, labctl, labctl_json, run_name

pytestmark = pytest.mark.root


def assert_gone(base: str) -> None:
    name = run_name(base)
    assert not _lab_pids(name), f"processes of lab {name} survived"
    assert not Path(f"/run/netns/labctl-{name}").exists()
    assert not state.lab_dir(name).exists()


@pytest.mark.parametrize(
    ("mode", "topology"),
    [
        # The default cluster in every mode is test_matrix.py (on its superset, `services`);
        # DirectRouting across a router is the teaching table in test_flannel_backends.py.
        ("flannel-vxlan", "two-node"),
        ("flannel-host-gw", "two-node"),
    ],
)
def test_up_verify_down(lab: list[str], mode: str, topology: str) -> None:
    lab.append("it")
    labctl("up", mode, "-t", topology, "-n", "it")
    report = labctl_json("verify", "-n", "it")
    assert report["passed"], [c for c in report["checks"] if not c["passed"]]
    names = [c["name"] for c in report["checks"]]
    assert any(n.startswith("wire ") for n in names)
    assert any(n.startswith("mtu ") for n in names)
    for c in report["checks"]:
        if c["name"].startswith("wire ") and "->" in c["name"]:
            assert Path(c["pcap"]).stat().st_size > 24  # more than a pcap header
    labctl("down", "-n", "it")
    assert_gone("it")


def test_host_gw_across_router_fails_with_reason(lab: list[str]) -> None:
    lab.append("hgw")
    up = labctl("up", "flannel-host-gw", "-t", "cross-subnet", "-n", "hgw")
    # Like flanneld: the refused route is logged as a warning and the lab still comes up.
    assert (
        "error adding route 10.244.2.0/24 via 10.0.1.33 dev eth0: Network is unreachable"
        in up.stderr
    )
    report = labctl_json("verify", "-n", "hgw", check=1)
    assert not report["passed"]
    failed = {c["name"] for c in report["checks"] if not c["passed"]}
    assert "connectivity node1 -> node3" in failed
    assert "connectivity node3 -> node2" in failed
    assert "connectivity node1 -> node2" not in failed  # same segment still works
    why = next(c["detail"] for c in report["checks"] if c["name"] == "connectivity node1 -> node3")
    assert "Network is unreachable" in why and "same L2 segment" in why


def test_host_namespace_unchanged(lab: list[str]) -> None:
    before = host_snapshot()
    lab.append("iso")
    labctl("up", "flannel-vxlan", "-n", "iso")
    during = host_snapshot()
    labctl("verify", "-n", "iso", "--no-mtu")
    labctl("down", "-n", "iso")
    after = host_snapshot()
    for key in before:
        if key != "netns":  # the lab's own named namespace is expected while it is up
            assert during[key] == before[key], f"host {key} changed while the lab was up"
        assert after[key] == before[key], f"host {key} changed by up+down"


def test_two_labs_at_once(lab: list[str]) -> None:
    lab += ["la", "lb"]
    labctl("up", "flannel-vxlan", "-n", "la")
    labctl("up", "flannel-host-gw", "-n", "lb")
    # Without -n there is no single lab to pick: exit 2 naming both.
    amb = labctl("verify", check=2)
    assert "la" in amb.stderr and "lb" in amb.stderr
    assert labctl_json("verify", "-n", "la", "--no-mtu")["passed"]
    assert labctl_json("verify", "-n", "lb", "--no-mtu")["passed"]
    assert labctl_json("status", "-n", "lb")["mode"] == "flannel-host-gw"
    labctl("down", "-n", "la")
    assert_gone("la")
    assert labctl_json("verify", "-n", "lb", "--no-mtu")["passed"]


def test_down_after_sigkill_of_supervisor(lab: list[str]) -> None:
    lab.append("kill")
    labctl("up", "flannel-vxlan", "-n", "kill")
    st = state.load(run_name("kill"))
    # Something long-running inside a pod, as a student would leave behind.
    sleeper = subprocess.Popen(
        cli_argv("exec", "-n", "kill", "default/web-1", "--", "sleep", "300")
    )
    time.sleep(0.3)
    os.kill(st.supervisor_pid, signal.SIGKILL)
    labctl("down", "-n", "kill")
    sleeper.wait(5)
    assert_gone("kill")


def test_down_after_sigkill_of_up(lab: list[str]) -> None:
    lab.append("killup")
    proc = subprocess.Popen(
        cli_argv("up", "flannel-vxlan", "-n", "killup"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # Kill it mid-way: once its state exists, before the lab is ready.
    deadline = time.monotonic() + 10
    while (
        not (state.lab_dir(run_name("killup")) / "state.json").exists()
        and time.monotonic() < deadline
    ):
        time.sleep(0.005)
    # The kill must land half-way, or this test proves nothing: state written, up still running.
    assert (state.lab_dir(run_name("killup")) / "state.json").exists(), "up never wrote state"
    assert proc.poll() is None, "up finished before it could be killed half-way"
    proc.kill()
    proc.wait()
    labctl("down", "-n", "killup")
    assert_gone("killup")


SEG = "name: x\nsegments: {lan: {cidr: 10.0.0.0/24}}\n"
BAD = {
    "unknown key": (
        SEG + "nodes: {a: {segment: lan, ip: 10.0.0.2, colour: red}}\n",
        "nodes.a.colour",
    ),
    "bad name": (
        SEG + "nodes: {Node_A: {segment: lan, ip: 10.0.0.2}}\n",
        "DNS-1123",
    ),
    "ip outside segment": (
        SEG + "nodes: {a: {segment: lan, ip: 10.9.0.2}}\n",
        "nodes.a.ip",
    ),
    "pod on unknown node": (
        SEG + "nodes: {a: {segment: lan, ip: 10.0.0.2}}\npods: [{name: p, node: b}]\n",
        "pods[0].node",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_topology_exit_2_nothing_left(tmp_path: Path, case: str) -> None:
    text, field = BAD[case]
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    proc = labctl("up", "flannel-vxlan", "-t", str(f), "-n", "bad", check=2)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and field in lines[0], proc.stderr
    assert_gone("bad")


def test_bad_cli_input() -> None:
    assert "unknown mode" in labctl("up", "flannel-nope", "-n", "x", check=2).stderr
    assert "--name" in labctl("up", "flannel-vxlan", "-n", "Bad_Name", check=2).stderr
    assert "no lab named" in labctl("down", "-n", "ghost", check=2).stderr
    assert "no such topology" in labctl("up", "flannel-vxlan", "-t", "nope", check=2).stderr


def test_exec_files_exit_codes_and_binary_streams(lab: list[str]) -> None:
    lab.append("ex")
    labctl("up", "flannel-vxlan", "-n", "ex")
    env = labctl("exec", "-n", "ex", "node1", "--", "cat", "/run/flannel/subnet.env").stdout
    assert "FLANNEL_SUBNET=10.244.1.1/24" in env and "FLANNEL_MTU=1450" in env
    conf = labctl(
        "exec", "-n", "ex", "master", "--", "cat", "/etc/cni/net.d/10-flannel.conflist"
    ).stdout
    assert '"cbr0"' in conf
    assert (
        not Path("/run/flannel/subnet.env").exists()
        or "10.244.1.1" not in Path("/run/flannel/subnet.env").read_text()
    )
    assert labctl("exec", "-n", "ex", "master", "--", "sh", "-c", "exit 7", check=7).returncode == 7
    blob = subprocess.run(
        cli_argv("exec", "-n", "ex", "default/web-2", "--", "head", "-c", "4096", "/dev/urandom"),
        capture_output=True,
        check=True,
    ).stdout
    assert len(blob) == 4096
    routes = labctl("exec", "-n", "ex", "master", "--", "ip", "route").stdout
    assert "10.244.1.0/24 via 10.244.1.0 dev flannel.1 onlink" in routes


def test_wire_check_catches_a_tampered_dataplane(lab: list[str]) -> None:
    """Negative: make master send node1's pods bare (host-gw style) in a vxlan lab."""
    lab.append("neg")
    labctl("up", "flannel-vxlan", "-n", "neg")
    labctl(
        "exec",
        "-n",
        "neg",
        "master",
        "--",
        "ip",
        "route",
        "replace",
        "10.244.1.0/24",
        "via",
        "10.0.0.32",
        "dev",
        "eth0",
    )
    report = labctl_json("verify", "-n", "neg", "--no-mtu", check=1)
    failed = {c["name"]: c["detail"] for c in report["checks"] if not c["passed"]}
    assert "wire master -> node1" in failed
    assert "saw bare packets" in failed["wire master -> node1"]
    assert "wire master -> node2" not in failed


def test_mtu_check_catches_a_wrong_tunnel_mtu(lab: list[str]) -> None:
    """Negative: a tunnel MTU below the pod MTU black-holes full-size packets."""
    lab.append("mtu")
    labctl("up", "flannel-vxlan", "-t", "two-node", "-n", "mtu")
    labctl("exec", "-n", "mtu", "host1", "--", "ip", "link", "set", "flannel.1", "mtu", "1400")
    report = labctl_json("verify", "-n", "mtu", check=1)
    failed = {c["name"]: c["detail"] for c in report["checks"] if not c["passed"]}
    assert "mtu default/pod-a -> default/pod-b" in failed
    assert "1450-byte DF packet FAILED" in failed["mtu default/pod-a -> default/pod-b"]


def test_segment_mtu_sets_the_pod_mtu(lab: list[str], tmp_path: Path) -> None:
    """A jumbo-frame segment: flannel derives the pod MTU from the node's interface."""
    topo = tmp_path / "jumbo.yaml"
    topo.write_text(
        "name: jumbo\nsegments: {lan1: {cidr: 10.0.0.0/24, mtu: 9000}}\n"
        "nodes: {a: {segment: lan1, ip: 10.0.0.11}, b: {segment: lan1, ip: 10.0.0.12}}\n"
        "pods: [{name: p1, node: a}, {name: p2, node: b}]\n"
    )
    lab.append("jumbo")
    labctl("up", "flannel-vxlan", "-t", str(topo), "-n", "jumbo")
    env = labctl("exec", "-n", "jumbo", "a", "--", "cat", "/run/flannel/subnet.env").stdout
    assert "FLANNEL_MTU=8950" in env
    report = labctl_json("verify", "-n", "jumbo")
    assert report["passed"]
    mtu = next(c for c in report["checks"] if c["name"] == "mtu default/p1 -> default/p2")
    assert mtu["detail"].startswith("8950-byte DF packet passed, 8951-byte was refused")


def test_up_failing_half_way_removes_what_it_built(monkeypatch: pytest.MonkeyPatch) -> None:
    """The supervisor fails after the lab's namespace exists (here: the plan it reads is
    corrupt); up reports the error and leaves nothing behind."""
    from labctl import lifecycle
    from labctl.modes import get_mode
    from labctl.state import LabError
    from labctl.topology import TOPOLOGY_DIR, load_topology

    def corrupt(lab: str, plan: object) -> None:
        (state.lab_dir(lab) / state.PLAN_FILE).write_text("{")

    monkeypatch.setattr(state, "write_plan", corrupt)
    topo_file = TOPOLOGY_DIR / "default.yaml"
    with pytest.raises(LabError, match="recorded plan is unreadable"):
        lifecycle.up(
            run_name("halfway"),
            get_mode("flannel-vxlan"),
            topo_file,
            load_topology("default"),
            lambda _: None,
        )
    assert_gone("halfway")


def test_up_refuses_a_lab_that_is_already_up(lab: list[str]) -> None:
    lab.append("twice")
    labctl("up", "flannel-vxlan", "-n", "twice")
    again = labctl("up", "flannel-host-gw", "-n", "twice", check=2)
    assert "already up" in again.stderr
    assert labctl_json("status", "-n", "twice")["mode"] == "flannel-vxlan"


def test_up_refuses_a_topology_the_host_cannot_hold(tmp_path: Path) -> None:
    """More nodes on one segment than the kernel's shared neighbour table holds: refused in
    one line with exit 2 before anything is built (no namespace, no state, no process)."""
    from labctl import capacity

    cap = int(capacity.GC_THRESH3.read_text())
    nodes = next(n for n in range(2, 1000) if n * (n - 1) + 2 * n > cap)
    topo = tmp_path / "big.yaml"
    topo.write_text(
        "name: big\nsegments: {lan1: {cidr: 10.0.0.0/16}}\nnodes:\n"
        + "".join(
            f"  n{i}: {{segment: lan1, ip: 10.0.{i // 200}.{i % 200 + 10}}}\n" for i in range(nodes)
        )
        + "pods:\n"
        + "".join(f"  - {{name: p{i}, node: n{i}}}\n" for i in range(nodes))
    )
    before = host_snapshot()
    refused = labctl("up", "calico-bgp", "-t", str(topo), "-n", "toobig", check=2)
    assert "gc_thresh3" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    assert_gone("toobig")
    assert host_snapshot() == before
