"""`labctl trace` on real labs (root): the walk's hops and one real packet seen on every
one of them, in flannel-vxlan (and a Service), calico-vxlan across a router, and
flannel-host-gw across a router (where it must stop and say why)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from labctl.plan import stable_mac

from .conftest import labctl

pytestmark = pytest.mark.root

# The Service the vxlan lab gets: every web pod (web-1..3 serve HTTP on 80) behind one port.
WEB_SERVICE = """
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  selector: {app: web}
  ports: [{port: 80}]
"""


def _lab(name: str, *up: str) -> Iterator[str]:
    labctl("up", *up, "-n", name)
    try:
        yield name
    finally:
        labctl("down", "-n", name, check=False)


@pytest.fixture(scope="module")
def vxlan() -> Iterator[str]:
    yield from _lab("tr-itfv", "flannel-vxlan")


@pytest.fixture(scope="module")
def calico_routed() -> Iterator[str]:
    yield from _lab("tr-itcv", "calico-vxlan", "-t", "cross-subnet")


@pytest.fixture(scope="module")
def host_gw_routed() -> Iterator[str]:
    yield from _lab("tr-ithg", "flannel-host-gw", "-t", "cross-subnet")


def trace(lab: str, *args: str, check: int = 0) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(
        labctl("trace", "-n", lab, *args, "-o", "json", check=check).stdout
    )
    return doc


def steps(doc: dict[str, Any]) -> list[tuple[str, str | None, str | None, str]]:
    return [(h["ns"], h["in_dev"], h["out_dev"], h["action"]) for h in doc["hops"]]


def assert_seen_everywhere(doc: dict[str, Any]) -> None:
    for hop in doc["hops"]:
        assert hop["ok"], hop
        assert hop["seen"]["packets"] >= 1, hop


def test_flannel_vxlan_walk_and_every_hop_seen(vxlan: str) -> None:
    doc = trace(vxlan, "default/web-1", "default/web-3")
    assert doc["passed"] and doc["answer"].startswith("HTTP 200 from default/web-3")
    assert steps(doc) == [
        ("default/web-1", None, "eth0", "route"),
        ("master", "cni0", "flannel.1", "encapsulate"),
        ("master", None, "eth0", "route"),
        ("node2", "eth0", "flannel.1", "decapsulate"),
        ("node2", "flannel.1", "cni0", "route"),
        ("default/web-3", "eth0", None, "deliver"),
    ]
    assert_seen_everywhere(doc)
    wire = doc["hops"][2]["seen"]
    assert (wire["encap"], wire["port"], wire["vni"]) == ("vxlan", 8472, 1)
    assert (wire["outer_src"], wire["outer_dst"]) == ("10.0.0.31", "10.0.0.33")


def test_missing_fdb_entry_fails_naming_the_hop(vxlan: str) -> None:
    vtep = stable_mac("node2", "flannel.1")
    fdb = ("bridge", "fdb")
    labctl("exec", "-n", vxlan, "master", "--", *fdb, "del", vtep, "dev", "flannel.1")
    try:
        doc = trace(vxlan, "default/web-1", "default/web-3", "--protocol", "icmp", check=1)
    finally:
        labctl(
            "exec", "-n", vxlan, "master", "--", *fdb, "append", vtep, "dev", "flannel.1",
            "dst", "10.0.0.33", "self", "permanent",
        )  # fmt: skip
    assert not doc["passed"]
    assert steps(doc)[-1] == ("master", "cni0", None, "drop")
    assert f"flannel.1 has no FDB entry for {vtep}" in doc["hops"][-1]["detail"]
    assert doc["reason"].startswith(f"master: flannel.1 has no FDB entry for {vtep}")
    # The packet still arrived where the walk says it stopped.
    assert_seen_everywhere(doc)
    assert trace(vxlan, "default/web-1", "default/web-3", "--protocol", "icmp")["passed"]


def test_cluster_ip_is_followed_to_the_endpoint_that_answered(vxlan: str) -> None:
    labctl("apply", "-n", vxlan, "-f", "-", stdin=WEB_SERVICE)
    doc = trace(vxlan, "default/web-1", "svc/default/web")
    assert doc["passed"] and doc["protocol"] == "tcp" and doc["port"] == 80
    assert_seen_everywhere(doc)
    answered = doc["answer"].removeprefix("HTTP 200 from ").split(" ")[0]
    assert doc["hops"][-1]["ns"] == answered
    assert doc["endpoint"].split(":")[0] == doc["hops"][-1]["seen"]["dst"]
    dnat = next(h for h in doc["hops"] if h["ns"] == "master")
    assert "kube-proxy (nftables): " in dnat["detail"] and "numgen random mod 3" in dnat["detail"]


def test_bad_names_exit_2(vxlan: str) -> None:
    proc = labctl("trace", "-n", vxlan, "nosuch", "default/web-3", check=2)
    assert "SRC 'nosuch' is not a pod" in proc.stderr
    labctl("trace", "-n", vxlan, "web-1", "web-3", "--protocol", "icmp", "--port", "80", check=2)


def test_calico_vxlan_across_a_router(calico_routed: str) -> None:
    doc = trace(calico_routed, "default/web-1", "default/web-3")
    assert doc["passed"]
    assert [(h["ns"], h["action"]) for h in doc["hops"]] == [
        ("default/web-1", "route"),
        ("node1", "encapsulate"),
        ("node1", "route"),
        ("r1", "route"),
        ("node3", "decapsulate"),
        ("node3", "route"),
        ("default/web-3", "deliver"),
    ]
    assert_seen_everywhere(doc)
    routed = doc["hops"][3]["seen"]
    assert (routed["encap"], routed["port"], routed["vni"]) == ("vxlan", 4789, 4096)
    assert "policy chains on cali" in doc["hops"][1]["detail"]


def test_host_gw_across_a_router_stops_and_says_why(host_gw_routed: str) -> None:
    doc = trace(host_gw_routed, "default/web-1", "default/web-3", "--protocol", "icmp", check=1)
    assert not doc["passed"]
    assert steps(doc) == [
        ("default/web-1", None, "eth0", "route"),
        ("node1", "cni0", "eth0", "route"),
        ("r1", "eth0", None, "drop"),
    ]
    assert "node1: no route to 10.244.2.0/24" in doc["reason"]
    assert "host-gw needs peer node3 (10.0.1.33) on the same L2 segment" in doc["reason"]
    assert_seen_everywhere(doc)  # up to r1, which drops it
    same_segment = trace(host_gw_routed, "default/web-1", "default/web-2")
    assert same_segment["passed"]
    assert same_segment["hops"][1]["seen"]["eth_dst"] == stable_mac("node2", "eth0")
