"""Every flannel backend on every shipped topology, and the cross-subnet teaching table
(root, real labs)."""

from __future__ import annotations

import subprocess

import pytest

from labctl.features import can_create

from .conftest import cli_argv, labctl, labctl_json

pytestmark = pytest.mark.root

# What a student should learn on cross-subnet.yaml (two nodes on lan1, one behind router r1):
# True = verify passes. host-gw cannot cross the router; everything that encapsulates can;
# DirectRouting mixes bare (same segment) and VXLAN (across the router).
TEACHING_TABLE = {
    "flannel-vxlan": True,
    "flannel-host-gw": False,
    "flannel-udp": True,
    "flannel-ipip": True,
    "flannel-vxlan-directrouting": True,
}


@pytest.mark.parametrize("mode", sorted(TEACHING_TABLE))
def test_cross_subnet_teaching_table(lab: list[str], mode: str) -> None:
    lab.append("tt")
    labctl("up", mode, "-t", "cross-subnet", "-n", "tt")
    report = labctl_json("verify", "-n", "tt", check=0 if TEACHING_TABLE[mode] else 1)
    assert report["passed"] is TEACHING_TABLE[mode]
    checks = {c["name"]: c for c in report["checks"]}
    if mode == "flannel-vxlan-directrouting":
        assert "bare" in checks["wire node1 -> node2"]["detail"]
        assert "VXLAN VNI 1 on UDP 8472" in checks["wire node1 -> node3"]["detail"]
    if mode == "flannel-host-gw":
        assert not checks["connectivity node1 -> node3"]["passed"]
        assert checks["connectivity node1 -> node2"]["passed"]


@pytest.mark.parametrize("mode", ["flannel-udp", "flannel-ipip"])
@pytest.mark.parametrize("topology", ["two-node"])  # default: test_matrix.py
def test_userspace_backends_verify(lab: list[str], mode: str, topology: str) -> None:
    lab.append("ub")
    # IPIP would pick the BPF datapath here (test_bpf_datapath.py): ask for the last resort.
    forced = ["--datapath", "userspace"] if mode == "flannel-ipip" else []
    up = labctl_json("up", mode, "-t", topology, "-n", "ub", *forced)
    report = labctl_json("verify", "-n", "ub")
    assert report["passed"], [c for c in report["checks"] if not c["passed"]]
    want = (
        "UDP 8285 carrying the bare IP packet" if mode == "flannel-udp" else "IPIP (IP protocol 4)"
    )
    wire = [c for c in report["checks"] if c["name"].startswith("wire ") and "->" in c["name"]]
    assert wire and all(want in c["detail"] for c in wire), wire
    if mode == "flannel-ipip":
        assert up["datapath"] == "userspace"
        # Said in up, status and verify output.
        assert any("userspace" in n for n in up["notes"])
        assert any("userspace" in n for n in labctl_json("status", "-n", "ub")["notes"])
        assert any("userspace" in n for n in report["notes"])


def test_udp_proxy_is_supervised(lab: list[str]) -> None:
    """Kill a node's proxy: the supervisor restarts it and traffic recovers."""
    lab.append("sup")
    labctl("up", "flannel-udp", "-t", "two-node", "-n", "sup")
    before = labctl_json("status", "-n", "sup")["processes"]["host1:udpproxy"]
    subprocess.run(["kill", "-9", str(before)], check=True)
    probe = None
    for _ in range(40):
        probe = subprocess.run(cli_argv("probe", "-n", "sup", "-o", "json"), capture_output=True)
        if probe.returncode == 0:
            break
    assert probe is not None and probe.returncode == 0
    status = labctl_json("status", "-n", "sup")
    assert status["processes"]["host1:udpproxy"] != before
    assert any("restarted" in w for w in status["warnings"])


def test_datapath_kernel_without_ipip_exits_3() -> None:
    if can_create("ipip"):
        pytest.skip("this kernel has ipip: the missing-feature path cannot be exercised here")
    proc = labctl("up", "flannel-ipip", "--datapath", "kernel", "-n", "nok", check=3)
    assert "cannot create ipip" in proc.stderr and "--datapath userspace" in proc.stderr


def test_ipip_kernel_datapath(lab: list[str]) -> None:
    if not can_create("ipip"):
        pytest.skip("this kernel cannot create ipip devices (no module): kernel path untestable")
    lab.append("kip")
    labctl("up", "flannel-ipip", "--datapath", "kernel", "-n", "kip")
    assert labctl_json("verify", "-n", "kip")["passed"]


def test_datapath_option_rejected_where_meaningless() -> None:
    proc = labctl("up", "flannel-vxlan", "--datapath", "userspace", "-n", "nodp", check=2)
    assert "--datapath userspace" in proc.stderr
