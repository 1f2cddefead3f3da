"""capture, probe, modes, status and verify --pcap through the real CLI (root)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from labctl.checker import index_pcap

from .conftest import cli_argv, labctl, labctl_json

pytestmark = pytest.mark.root


def test_capture_probe_and_pcap_verify(lab: list[str], tmp_path: Path) -> None:
    lab.append("cli")
    labctl("up", "flannel-vxlan", "-t", "two-node", "-n", "cli")
    out = tmp_path / "host1.pcap"
    cap = subprocess.Popen(
        cli_argv(
            "capture",
            "-n",
            "cli",
            "host1",
            "-w",
            str(out),
            "--filter",
            "udp port 8472",
            "--duration",
            "3",
        ),
        stderr=subprocess.PIPE,
        text=True,
    )
    # Probe a few times while the capture runs (tcpdump needs a moment to start listening).
    for _ in range(5):
        matrix = labctl_json("probe", "-n", "cli")
        subprocess.run(["sleep", "0.3"], check=True)
    assert cap.wait(15) == 0, cap.stderr.read() if cap.stderr else ""
    assert matrix["protocol"] == "tcp" and matrix["port"] == 80
    assert matrix["matrix"] == {
        "default/pod-a": {"default/pod-b": True},
        "default/pod-b": {"default/pod-a": True},
    }
    index = index_pcap(out)
    assert index.packets > 0
    # The filter was applied: only VXLAN, and the right mode's check accepts it.
    assert labctl_json(
        "verify", "--pcap", str(out), "--mode", "flannel-vxlan", "--pod-cidr", "10.1.0.0/16"
    )["passed"]
    wrong = labctl_json(
        "verify",
        "--pcap",
        str(out),
        "--mode",
        "flannel-host-gw",
        "--pod-cidr",
        "10.1.0.0/16",
        check=1,
    )
    assert not wrong["passed"]
    assert "--mode" in labctl("verify", "--pcap", str(out), check=2).stderr


def test_exec_streams_a_capture_to_stdout(lab: list[str], tmp_path: Path) -> None:
    """`labctl exec node -- tcpdump -w -` is binary-safe: its stdout is a valid pcap."""
    lab.append("cls")
    labctl("up", "flannel-host-gw", "-t", "two-node", "-n", "cls")
    proc = subprocess.Popen(
        cli_argv(
            "exec",
            "-n",
            "cls",
            "host1",
            "--",
            "tcpdump",
            "-i",
            "eth0",
            "-U",
            "-c",
            "4",
            "-w",
            "-",
            "icmp",
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    # tcpdump says "listening on eth0" on stderr once its socket is open: ping only then.
    assert proc.stderr is not None and b"listening on" in proc.stderr.readline()
    labctl("exec", "-n", "cls", "default/pod-a", "--", "ping", "-c", "3", "-i", "0.2", "10.1.20.2")
    data, _ = proc.communicate(timeout=15)
    pcap = tmp_path / "stream.pcap"
    pcap.write_bytes(data)
    assert data[:4] in (b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4")  # pcap magic
    assert index_pcap(pcap).packets == 4


def test_modes_and_status_json(lab: list[str]) -> None:
    modes = {m["name"]: m for m in labctl_json("modes")}
    assert modes["flannel-vxlan"]["podMTU"] == 1450
    assert modes["calico-ipip"]["podMTU"] == 1480
    assert not modes["flannel-host-gw"]["enforcesPolicy"]
    lab.append("cst")
    labctl("up", "flannel-vxlan", "-n", "cst")
    status = labctl_json("status", "-n", "cst")
    assert status["mode"] == "flannel-vxlan"
    assert {n["name"]: n["podCIDR"] for n in status["nodes"]} == {
        "master": "10.244.0.0/24",
        "node1": "10.244.1.0/24",
        "node2": "10.244.2.0/24",
    }
    pod = next(p for p in status["pods"] if p["name"] == "db-2")
    assert (pod["namespace"], pod["node"], pod["ip"], pod["labels"]) == (
        "test",
        "node1",
        "10.244.1.3",
        {"app": "db"},
    )
