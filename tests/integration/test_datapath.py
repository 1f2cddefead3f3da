"""Integration tests for the userspace datapaths (labctl.datapath.udpproxy and .ipip).

Each test builds two node namespaces joined by a veth, a pod namespace behind each node, the
persistent TUN device as the engine would create it, and starts the datapath process inside the
node namespace (see ``benchmarks/datapath_throughput.py:TwoNodeLab``). Everything is named
``lctest-dp-*`` and removed in ``finally``/``__exit__``; the host namespace is never touched.

Markers: ``root`` on every lab test; ``slow`` on the 30-second iperf3 soak
(deselect with ``-m "not slow"``).
"""

from __future__ import annotations

import importlib.util
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, TypeAlias

import pytest
from scapy.layers.inet import ICMP, IP, UDP
from scapy.utils import rdpcap

from labctl.datapath import RouteTable, decrement_ttl, internet_checksum, net_unreachable
from labctl.datapath import ipip as ipip_module
from labctl.datapath import udpproxy as udpproxy_module

REPO = Path(__file__).resolve().parents[2]


def _load_bench() -> ModuleType:
    """The lab builder lives in the benchmark script, which is not a package."""
    path = REPO / "benchmarks" / "datapath_throughput.py"
    spec = importlib.util.spec_from_file_location("datapath_throughput", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


bench = _load_bench()
#: ``bench.TwoNodeLab``; mypy can't see through a module loaded by path.
Lab: TypeAlias = Any


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    if not os.path.exists("/dev/net/tun"):
        return "no /dev/net/tun"
    for tool in ("ip", "tcpdump", "iperf3", "ping"):
        if shutil.which(tool) is None:
            return f"{tool} not installed"
    return None


needs_lab = pytest.mark.skipif(_missing() is not None, reason=_missing() or "")
KINDS = ["udp", "ipip"]


@pytest.fixture(params=KINDS)
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    """A running two-node lab for one userspace datapath kind."""
    with bench.TwoNodeLab(request.param) as built:
        yield built
    assert not [ns for ns in _netns() if ns.startswith(built.prefix)], "namespaces left behind"


def _netns() -> list[str]:
    out = bench.sh("ip", "netns", "list").stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _in(ns: str, *cmd: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return bench.sh("ip", "netns", "exec", ns, *cmd, check=False, timeout=timeout)


def _ping(lab: Lab, dst: str, count: int = 3) -> subprocess.CompletedProcess[str]:
    return _in(lab.nodes[0].pod_ns, "ping", "-c", str(count), "-i", "0.2", "-W", "2", dst)


def _tcp_ok(lab: Lab) -> None:
    """A short iperf3 run: TCP both ways with full-size segments, so MTUs must be right."""
    # An MTU black hole stalls TCP after its first window (~15 kB, 0.0001 Gbit/s in 1 s);
    # a working path moves hundreds of MB even in userspace. 0.05 Gbit/s is far from both.
    assert lab.iperf3(1) > 0.05


def _capture(ns: str, iface: str, bpf: str, pcap: Path, count: int) -> subprocess.Popen[str]:
    cmd = ["ip", "netns", "exec", ns, "tcpdump", "-U", "-n", "-i", iface, "-c", str(count),
           "-w", str(pcap), bpf]  # fmt: skip
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    line = proc.stderr.readline()  # "listening on ..." once the filter is attached
    assert "listening" in line, line
    return proc


# --- pure functions: no root needed -------------------------------------------------------


def test_decrement_ttl_checksum_stays_valid() -> None:
    """The incremental update equals a recomputation for every TTL and checksum carry case."""
    for ttl in (2, 3, 64, 255):
        for ident in range(0, 0x10000, 251):
            hdr = bytearray(b"\x45\x00\x00\x54" + ident.to_bytes(2, "big") + b"\x40\x00")
            hdr += bytes([ttl, 17, 0, 0]) + bytes([10, 244, 1, 2, 10, 244, 2, 2])
            hdr[10:12] = internet_checksum(bytes(hdr)).to_bytes(2, "big")
            assert decrement_ttl(hdr)
            assert hdr[8] == ttl - 1
            assert internet_checksum(bytes(hdr)) == 0
    assert not decrement_ttl(bytearray(b"\x45" + bytes(7) + b"\x01" + bytes(11)))


def test_route_table_longest_prefix() -> None:
    """The longest matching prefix wins, misses return None."""
    table = RouteTable(
        [
            (ipaddress.IPv4Network("10.244.0.0/16"), "wide"),
            (ipaddress.IPv4Network("10.244.2.0/24"), "node2"),
            (ipaddress.IPv4Network("10.244.2.128/25"), "node3"),
        ]
    )
    addr = lambda s: int(ipaddress.IPv4Address(s))  # noqa: E731
    assert table.lookup(addr("10.244.2.5")) == "node2"
    assert table.lookup(addr("10.244.2.200")) == "node3"
    assert table.lookup(addr("10.244.7.1")) == "wide"
    assert table.lookup(addr("10.245.0.1")) is None


def test_net_unreachable_packet() -> None:
    """Type 3 code 0, valid checksums, quoting the header + 8 bytes, addressed to the sender."""
    offender = bytes(
        IP(src="10.244.1.2", dst="10.244.9.9", ttl=63) / UDP(sport=1, dport=2) / (b"x" * 40)
    )
    reply = net_unreachable(memoryview(offender))
    assert reply is not None
    pkt = IP(reply)
    assert (pkt.src, pkt.dst, pkt[ICMP].type, pkt[ICMP].code) == ("10.244.9.9", "10.244.1.2", 3, 0)
    assert internet_checksum(reply[:20]) == 0 and internet_checksum(reply[20:]) == 0
    assert reply[28:] == offender[:28]
    errors = bytes(IP(src="10.244.1.2", dst="10.244.9.9") / ICMP(type=3, code=1) / (b"q" * 28))
    assert net_unreachable(memoryview(errors)) is None
    echo = bytes(IP(src="10.244.1.2", dst="10.244.9.9") / ICMP(type=8))
    assert net_unreachable(memoryview(echo)) is not None


def test_argv() -> None:
    """The supervisor's command lines run this interpreter with -m and the config."""
    assert udpproxy_module.argv("/x.json") == [
        sys.executable, "-m", "labctl.datapath.udpproxy", "--config", "/x.json"
    ]  # fmt: skip
    assert ipip_module.argv("/x.json")[1:3] == ["-m", "labctl.datapath.ipip"]


# --- labs ------------------------------------------------------------------------------------


@pytest.mark.root
@needs_lab
def test_ping_and_tcp_between_pods(lab: Lab) -> None:
    """Pod to pod across the nodes: ICMP and TCP."""
    result = _ping(lab, lab.nodes[1].pod_ip)
    assert result.returncode == 0, result.stdout + lab.log(lab.nodes[0])
    _tcp_ok(lab)


@pytest.mark.root
@needs_lab
def test_wire_format(lab: Lab, tmp_path: Path) -> None:
    """On node 1's underlay: UDP 8285 carrying the bare inner packet / IP protocol 4."""
    n1, n2 = lab.nodes
    pcap = tmp_path / "wire.pcap"
    bpf = "udp dst port 8285" if lab.kind == "udp" else "ip proto 4"
    dump = _capture(n1.ns, "eth0", f"src host {n1.ip} and {bpf}", pcap, count=3)
    try:
        assert _ping(lab, n2.pod_ip).returncode == 0
        dump.wait(10)
    finally:
        if dump.poll() is None:
            dump.kill()
            dump.wait()
    packets = rdpcap(str(pcap))
    assert len(packets) == 3
    for frame in packets:
        outer = frame[IP]
        assert (outer.src, outer.dst) == (n1.ip, n2.ip)
        if lab.kind == "udp":
            assert outer[UDP].dport == 8285
            inner = IP(bytes(outer[UDP].payload))
            # flannel's proxy decrements once on each side (the node's forwarding did once).
            assert inner.ttl == 62
        else:
            assert outer.proto == 4
            inner = outer.payload
            assert isinstance(inner, IP)
            # tunl0 is "ttl inherit nopmtudisc": outer TTL and DF come from the inner packet.
            assert outer.ttl == inner.ttl == 63
            assert outer.flags.DF == inner.flags.DF
            assert outer.id != 0
        assert (inner.src, inner.dst) == (n1.pod_ip, n2.pod_ip)
        assert inner[ICMP].type == 8
        assert internet_checksum(bytes(inner)[: inner.ihl * 4]) == 0


@pytest.mark.root
@needs_lab
def test_unknown_destination_gets_net_unreachable(lab: Lab) -> None:
    """A destination routed to the TUN but absent from the config: ICMP type 3 code 0.

    ping only prints the error if the kernel accepted both checksums and could match the
    quoted header and ICMP id/sequence to its socket.
    """
    result = _ping(lab, "10.244.9.9", count=1)
    assert result.returncode != 0
    assert re.search(r"From 10\.244\.9\.9 icmp_seq=1 Destination Net Unreachable", result.stdout), (
        result.stdout
    )


@pytest.mark.root
@needs_lab
def test_kill_and_restart_restores_traffic(lab: Lab) -> None:
    """SIGKILL leaves the persistent TUN and its routes; a new process carries traffic again."""
    n1, n2 = lab.nodes
    lab.stop(n1, signal.SIGKILL)
    assert _ping(lab, n2.pod_ip, count=1).returncode != 0
    assert lab.device in bench.sh("ip", "-n", n1.ns, "link", "show").stdout
    assert lab.device in bench.sh("ip", "-n", n1.ns, "route", "show").stdout
    lab.start(n1)
    assert _ping(lab, n2.pod_ip).returncode == 0, lab.log(n1)
    _tcp_ok(lab)


@pytest.mark.root
@needs_lab
def test_sighup_reloads_routes(lab: Lab) -> None:
    """Dropping the peer from the config and sending SIGHUP makes it unreachable; back again."""
    n1, n2 = lab.nodes
    assert n1.process is not None
    original = Path(n1.config).read_text()
    config = json.loads(original)
    config["routes"] = []
    Path(n1.config).write_text(json.dumps(config))
    n1.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10  # the reload is asynchronous: poll, not a fixed sleep
    while True:
        result = _in(n1.pod_ns, "ping", "-c", "1", "-W", "2", n2.pod_ip)
        if "Destination Net Unreachable" in result.stdout or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert "Destination Net Unreachable" in result.stdout, result.stdout + lab.log(n1)
    Path(n1.config).write_text(original)
    n1.process.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    assert _ping(lab, n2.pod_ip).returncode == 0


@pytest.mark.root
@needs_lab
def test_sigterm_exits_zero(lab: Lab) -> None:
    """SIGTERM: exit code 0, the device stays for the next process."""
    for node in lab.nodes:
        assert lab.stop(node, signal.SIGTERM) == 0, lab.log(node)
        assert lab.device in bench.sh("ip", "-n", node.ns, "link", "show").stdout


@pytest.mark.root
@needs_lab
def test_ipip_from_unknown_host_is_dropped() -> None:
    """IPIP whose outer source is not a configured node never reaches the pod, and is counted."""
    with bench.TwoNodeLab("ipip") as lab:
        n1, n2 = lab.nodes
        forged = (
            "from scapy.all import IP, ICMP, send; "
            f"send(IP(src='10.99.0.77', dst='{n1.ip}') / IP(src='{n2.pod_ip}', "
            f"dst='{n1.pod_ip}') / ICMP(type=8, id=4242), count=3, verbose=False)"
        )
        pcap = Path(lab.workdir) / "pod.pcap"
        dump = _capture(n1.pod_ns, "eth0", "icmp and icmp[4:2] == 4242", pcap, count=1)
        try:
            assert _in(n2.ns, sys.executable, "-c", forged).returncode == 0
            time.sleep(1)
        finally:
            dump.kill()
            dump.wait()
        assert not pcap.exists() or len(rdpcap(str(pcap))) == 0
        assert lab.stop(n1) == 0
        log = lab.log(n1)
        assert "dropping IPIP from 10.99.0.77: not a known node" in log, log
        assert "dropped from unknown hosts: 3" in log, log


@pytest.mark.root
@pytest.mark.slow
@needs_lab
def test_iperf3_keeps_the_lab(lab: Lab) -> None:
    """10 s of bulk TCP through the userspace datapath; afterwards the lab still works (the
    soak pass, scripts/soak.sh, runs 10 minutes)."""
    gbps = lab.iperf3(10, timeout=60)
    assert gbps > 0.01
    for node in lab.nodes:
        assert node.process is not None and node.process.poll() is None, lab.log(node)
    assert _ping(lab, lab.nodes[1].pod_ip).returncode == 0
