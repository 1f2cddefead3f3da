"""Every mode on one shared lab each (root): the `services` topology is the default cluster
plus a laptop, router r1 and an internet host, so one lab per mode proves the dataplane
(verify: connectivity, wire, MTU, mode checks), Services (the seed's damo.yml answers from both
replicas through its ClusterIP, externalIP and a NodePort), NAT to the outside, and a clean
`down`. Other topologies are covered per family (test_lab, test_calico, test_flannel_backends).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from labctl import frr
from labctl.modes import MODES

from .conftest import labctl, labctl_json
from .test_calico import down_and_assert_clean, failed, up
from .test_services import DAMO, EXAMPLES, answers, cluster_ip

pytestmark = pytest.mark.root

#: The carrier verify must name on the wire between nodes (all on one segment here).
CARRIER = {
    "calico-bgp": "bare",
    "calico-ipip": "IPIP (IP protocol 4)",
    "calico-ipip-crosssubnet": "bare",
    "calico-vxlan": "VXLAN VNI 4096 on UDP 4789",
    "calico-vxlan-crosssubnet": "bare",
    "flannel-vxlan": "VXLAN VNI 1 on UDP 8472",
    "flannel-vxlan-directrouting": "bare",
    "flannel-udp": "UDP 8285 carrying the bare IP packet",
    "flannel-ipip": "IPIP (IP protocol 4)",
    "flannel-host-gw": "bare",
    "canal": "VXLAN VNI 1 on UDP 8472",
}


def _needs_frr(mode: str) -> list[pytest.MarkDecorator]:
    why = frr.frr_available()
    return [pytest.mark.skip(reason=str(why))] if why and mode.startswith("calico") else []


@pytest.mark.parametrize(
    "mode", [pytest.param(m, marks=_needs_frr(m), id=m) for m in MODES if m in CARRIER]
)
def test_every_mode_end_to_end(mode: str) -> None:
    lab = f"mx{list(MODES).index(mode)}"
    pids = up(lab, mode, "services")
    try:
        report = labctl_json("verify", "-n", lab)
        assert report["passed"], failed(report)
        checks = {c["name"]: c for c in report["checks"]}
        assert any(n.startswith("mtu ") for n in checks)
        wire = [c for n, c in checks.items() if n.startswith("wire ") and "->" in n]
        assert wire and all(CARRIER[mode] in c["detail"] for c in wire), wire
        assert all(Path(c["pcap"]).stat().st_size > 24 for c in wire)  # more than a header
        if mode in ("calico-vxlan", "calico-vxlan-crosssubnet"):
            assert "bgp design" not in checks  # no BGP on the nodes: Felix programs routes
            assert any(n.startswith("felix routes ") for n in checks)
        elif mode.startswith("calico"):
            assert "bgp design" in checks
            assert any(n.startswith("bgp sessions ") for n in checks)
        if report.get("datapath") == "userspace" or any("userspace" in n for n in report["notes"]):
            # A fallback datapath is said in up's record, status and verify.
            assert any("userspace" in n for n in labctl_json("status", "-n", lab)["notes"])

        labctl("apply", "-n", lab, "-f", "-", "-f", str(EXAMPLES / "nodeport.yaml"), stdin=DAMO)
        replicas = {
            f"default/{i['metadata']['name']}"
            for i in labctl_json("get", "pods", "-n", lab)["items"]
            if i["metadata"]["name"].startswith("demo2-")
        }
        assert len(replicas) == 2
        ip = cluster_ip(lab, "myservice")
        assert answers(lab, "test/db-3", f"http://{ip}/") == replicas
        # From outside: the externalIP (routed to master), then a NodePort on node2.
        assert answers(lab, "laptop", "http://203.0.113.10/") == replicas
        assert answers(lab, "laptop", "http://10.0.0.33:30080/", tries=4) <= replicas
        # Pods reach the outside as their node.
        body = labctl("exec", "-n", lab, "default/web-3", "--", "curl", "-s", "-m", "2",
                      "http://192.168.100.10/").stdout  # fmt: skip
        assert body.splitlines()[1].startswith("client 10.0.0.33:")
    except BaseException:
        labctl("down", "-n", lab, check=False)
        raise
    down_and_assert_clean(lab, list(pids.values()))
