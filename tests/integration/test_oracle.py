"""The wire oracle on a live lab (root): verify proves calico-vxlan's UDP 4789 / VNI 4096 on
the wire, and fails naming the VNI when one node's vxlan.calico carries VNI 1 instead. One
two-node lab for the module."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import pytest
from scapy.layers.inet import UDP
from scapy.layers.vxlan import VXLAN
from scapy.utils import rdpcap

from labctl import state
from labctl.nsutil import nsenter_argv

from .conftest import labctl, labctl_json, run_name

pytestmark = pytest.mark.root

DEV = "vxlan.calico"


@pytest.fixture(scope="module")
def vxlan_lab() -> Iterator[str]:
    # A name of its own, so the test runs beside anyone else's labs.
    name = "oracle"
    labctl("up", "calico-vxlan", "-t", "two-node", "-n", name)
    try:
        yield name
    finally:
        labctl("down", "-n", name, check=False)


def _run(pid: int, *argv: str) -> str:
    # nsenter straight from the test: a `labctl exec` per command costs a CLI start each.
    return subprocess.run(
        nsenter_argv(pid, list(argv)), capture_output=True, text=True, check=True
    ).stdout


def recreate_with_vni(lab: str, node: str, vni: int) -> None:
    """Replace `node`'s vxlan.calico by one identical but for its VNI (the kernel cannot
    change a VNI in place), with its address, neighbours, FDB entries and routes."""
    pid = state.load(run_name(lab)).namespaces[node].pid

    def js(*argv: str) -> list[dict]:
        return json.loads(_run(pid, *argv))

    (link,) = js("ip", "-j", "-d", "link", "show", DEV)
    info = link["linkinfo"]["info_data"]
    (addr,) = js("ip", "-j", "addr", "show", "dev", DEV)
    cmds = [
        f"ip link del {DEV}",
        f"ip link add {DEV} address {link['address']} mtu {link['mtu']} type vxlan id {vni} "
        f"dev {info['link']} local {info['local']} dstport {info['port']} nolearning",
        *(f"ip addr add {a['local']}/{a['prefixlen']} dev {DEV}" for a in addr["addr_info"]),
        f"ip link set {DEV} up",
        *(
            f"ip neigh replace {n['dst']} lladdr {n['lladdr']} dev {DEV} nud permanent"
            for n in js("ip", "-j", "neigh", "show", "dev", DEV)
        ),
        *(
            f"bridge fdb append {f['mac']} dev {DEV} dst {f['dst']} self permanent"
            for f in js("bridge", "-j", "fdb", "show", "dev", DEV)
            if "dst" in f
        ),
        *(
            f"ip route replace {r['dst']} via {r['gateway']} dev {DEV} onlink"
            for r in js("ip", "-j", "route", "show", "dev", DEV)
        ),
    ]
    _run(pid, "sh", "-ec", "; ".join(cmds))
    (link,) = js("ip", "-j", "-d", "link", "show", DEV)
    assert link["linkinfo"]["info_data"]["id"] == vni


def test_calico_vxlan_is_4789_vni_4096_on_the_wire(vxlan_lab: str) -> None:
    report = labctl_json("verify", "-n", vxlan_lab)
    checks = {c["name"]: c for c in report["checks"]}
    assert report["passed"], {n: c["detail"] for n, c in checks.items() if not c["passed"]}
    wire = checks["wire host1 -> host2"]
    assert "VXLAN VNI 4096 on UDP 4789 between 192.168.0.100 and 192.168.0.200" in wire["detail"]
    # The same, read straight from the pcap with Scapy (which decodes VXLAN on 4789 itself).
    vnis = {p[VXLAN].vni for p in rdpcap(wire["pcap"]) if VXLAN in p and p[UDP].dport == 4789}
    assert vnis == {4096}
    mtu = checks["mtu default/pod-a -> default/pod-b"]["detail"]
    assert "pod eth0 MTU 1450 (underlay 1500 - 50 for VXLAN VNI 4096 on UDP 4789)" in mtu


def test_a_node_on_vni_1_fails_verify_naming_the_vni(vxlan_lab: str) -> None:
    """Negative: host1 sends VNI 1 (flannel's), host2 drops it; verify says what it saw."""
    recreate_with_vni(vxlan_lab, "host1", 1)
    report = labctl_json("verify", "-n", vxlan_lab, "--no-mtu", check=1)
    failed = {c["name"]: c["detail"] for c in report["checks"] if not c["passed"]}
    # Both captures hold host1's VNI 1 packets (sent on one, received on the other).
    for name in ("wire host1 -> host2", "wire host2 -> host1"):
        assert "expected VXLAN VNI 4096 on UDP 4789" in failed[name]
        assert "saw VXLAN VNI 1 on UDP 4789" in failed[name]
    assert "as VXLAN VNI 1 on UDP 4789" in failed["nothing else on host1's wire (wire: no leaks)"]
