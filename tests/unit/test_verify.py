"""verify's pure parts: folding probe results and flow checks into readable checks (no root)."""

from __future__ import annotations

from pathlib import Path

import pytest

from labctl import probe
from labctl.probe import Result
from labctl.topology import load_topology
from labctl.verify import _merge, connectivity_checks, neighbour_check
from labctl.wire import CheckResult, Flow


def test_connectivity_groups_by_node_pair_and_names_the_reason() -> None:
    topo = load_topology("cross-subnet")
    results = [
        Result("default/web-1", "default/web-2", True, "ok"),
        Result("default/web-1", "default/web-3", False, "timeout (no tcp answer)"),
    ]
    warnings = [
        "node1: error adding route 10.244.2.0/24 via 10.0.1.33 dev eth0: Network is unreachable"
    ]
    pod_node = {p.key: p.node for p in topo.pods}
    checks = {c.name: c for c in connectivity_checks(results, topo, warnings, pod_node)}
    assert checks["connectivity node1 -> node2"].passed
    bad = checks["connectivity node1 -> node3"]
    assert not bad.passed
    assert "0/1 pod pairs as expected" in bad.detail and "Network is unreachable" in bad.detail


def test_connectivity_follows_the_policy_expectation() -> None:
    topo = load_topology("cross-subnet")
    pod_node = {p.key: p.node for p in topo.pods}
    blocked = Result("default/web-1", "default/web-2", False, "timeout (no tcp answer)")
    answered = Result("default/web-1", "default/web-2", True, "ok")
    want_blocked = {("default/web-1", "default/web-2"): False}
    (ok,) = connectivity_checks([blocked], topo, [], pod_node, want_blocked)
    assert ok.passed and "1 blocked by NetworkPolicy as expected" in ok.detail
    # A pair that answers although a policy blocks it is a failure (enforcement missing).
    (leak,) = connectivity_checks([answered], topo, [], pod_node, want_blocked)
    assert not leak.passed and "answered although NetworkPolicy blocks it" in leak.detail


def _flow() -> Flow:
    return Flow(
        "a/x", "a/y", "10.244.0.2", "10.244.1.2", "n1", "n2", "10.0.0.1", "10.0.0.2", "bare"
    )


def test_merge_passes_only_when_every_pair_passed() -> None:
    ok = CheckResult("wire a/x -> a/y", True, "a/x -> a/y: bare pod IPs: 3 packets src->dst")
    nok = CheckResult("wire a/x -> a/y", False, "expected bare, saw VXLAN")
    assert _merge("wire n1 -> n2", [(_flow(), ok), (_flow(), ok)], "p.pcap").passed
    merged = _merge("wire n1 -> n2", [(_flow(), ok), (_flow(), nok)], "p.pcap")
    assert (
        not merged.passed and "1/2 pod pairs ok" in merged.detail and "saw VXLAN" in merged.detail
    )


def test_neighbour_check() -> None:
    assert neighbour_check(5, 5, failures=3) is None  # no overflow: nothing to say
    assert neighbour_check(None, 9, failures=3) is None  # kernel without the statistic
    paced = neighbour_check(5, 9, failures=0)
    assert paced is not None and paced.passed
    failed = neighbour_check(5, 9, failures=3)
    assert failed is not None and not failed.passed
    assert "overflowed 4 times" in failed.detail and "gc_thresh3" in failed.detail


def test_arp_table_fulls_sums_every_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stats = tmp_path / "arp_cache"
    stats.write_text(
        "entries  allocs table_fulls\n00000010 00000002 0000000a\n00000010 00000003 00000005\n"
    )
    monkeypatch.setattr(probe, "ARP_STATS", str(stats))
    assert probe.arp_table_fulls() == 15
    stats.write_text("entries  allocs\n00000010 00000002\n")
    assert probe.arp_table_fulls() is None
