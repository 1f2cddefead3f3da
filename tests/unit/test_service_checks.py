"""verify's service checks that need no lab: the wire check on capture indexes and the source
address rule of each traffic policy (no root)."""

from __future__ import annotations

from collections import Counter
from ipaddress import IPv4Network

from labctl.checker import CaptureIndex
from labctl.services.checks import _source, cluster_ip_wire_check

SVC = IPv4Network("10.96.0.0/12")


def index(*pairs: tuple[str, str]) -> CaptureIndex:
    return CaptureIndex(packets=len(pairs), pairs={p: Counter() for p in pairs})


def test_wire_check_passes_with_backend_ips_only() -> None:
    ok = cluster_ip_wire_check({"n1": index(("10.244.1.2", "10.244.2.4"))}, SVC, {"10.244.2.4"})
    assert ok.passed


def test_wire_check_fails_on_a_cluster_ip_or_without_backends() -> None:
    leak = cluster_ip_wire_check({"n1": index(("10.244.1.2", "10.96.0.2"))}, SVC, {"10.244.2.4"})
    assert not leak.passed and "n1: 10.244.1.2 -> 10.96.0.2" in leak.detail
    none = cluster_ip_wire_check({"n1": index(("10.0.0.1", "10.0.0.2"))}, SVC, {"10.244.2.4"})
    assert not none.passed and "no packet to a backend" in none.detail


def test_source_rules_of_the_traffic_policies() -> None:
    assert _source(("p", "10.0.0.100"), "10.0.0.100", True, "n") == []
    assert (
        "wanted the client's 10.0.0.100" in _source(("p", "10.0.0.31"), "10.0.0.100", True, "n")[0]
    )
    assert _source(("p", "10.0.0.31"), "10.0.0.100", False, "n") == []
    assert "Cluster must SNAT" in _source(("p", "10.0.0.100"), "10.0.0.100", False, "n")[0]
