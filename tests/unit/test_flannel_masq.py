"""Unit tests for flannel's ipMasq and forward rules (reference section 9): the iptables-restore
text every flannel node (Canal's too) carries, rule for rule, and what it does to a packet."""

from __future__ import annotations

import shlex
from functools import cache
from ipaddress import IPv4Address, IPv4Network

import pytest

from labctl.modes import MODES, get_mode
from labctl.plan import Plan
from labctl.topology import load_topology

FLANNEL_MODES = [m.name for m in MODES.values() if m.cni in ("flannel", "canal")]

# Reference section 9 for node1 of the default cluster (lease 10.244.1.0/24, network
# 10.244.0.0/16), as iptables-save prints flanneld's rules: every rule with its comment.
NODE1_RULES = """\
*nat
:FLANNEL-POSTRTG - [0:0]
-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG
-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s 10.244.1.0/24 -d 10.244.0.0/16 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s 10.244.0.0/16 -d 10.244.1.0/24 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG ! -s 10.244.0.0/16 -d 10.244.1.0/24 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s 10.244.0.0/16 ! -d 224.0.0.0/4 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully
-A FLANNEL-POSTRTG ! -s 10.244.0.0/16 -d 10.244.0.0/16 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully
COMMIT
*filter
:FLANNEL-FWD - [0:0]
-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD
-A FLANNEL-FWD -s 10.244.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT
-A FLANNEL-FWD -d 10.244.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT
COMMIT
"""  # noqa: E501 - rules are compared as iptables-save prints them, one per line


@cache
def plan(mode: str, topology: str) -> Plan:
    return get_mode(mode).plan(load_topology(topology))


def rules(text: str) -> str:
    """The restore input without its comment lines (what iptables-restore acts on)."""
    return "".join(line + "\n" for line in text.splitlines() if not line.startswith("#"))


def test_node1_rules_are_the_references() -> None:
    text = plan("flannel-vxlan", "default").namespaces["node1"].netfilter
    assert rules(text) == NODE1_RULES
    # The header says whose rules they are and how they are loaded.
    assert text.startswith("# labctl: flanneld's masquerade and forward rules of node node1.\n")
    assert "iptables-restore --noflush" in text


@pytest.mark.parametrize("mode", FLANNEL_MODES)
@pytest.mark.parametrize("topology", ["default", "services", "cross-subnet", "two-node"])
def test_every_flannel_node_carries_its_own_lease(mode: str, topology: str) -> None:
    p = plan(mode, topology)
    topo = load_topology(topology)
    network = str(topo.cluster.podCIDR)
    for node in p.node_ns():
        lease = str(topo.node_pod_cidrs[node.name])
        expected = NODE1_RULES.replace("10.244.1.0/24", lease).replace("10.244.0.0/16", network)
        assert rules(node.netfilter) == expected, node.name
        # subnet.env promises what the rules do.
        assert "FLANNEL_IPMASQ=true\n" in node.files["/run/flannel/subnet.env"]
    # Only nodes run flanneld: routers, pods and external hosts get no rules.
    others = [ns for ns in p.namespaces.values() if ns.role != "node"]
    assert others and not any(ns.netfilter for ns in others)


def test_two_node_rules_use_its_network() -> None:
    text = rules(plan("flannel-host-gw", "two-node").namespaces["host2"].netfilter)
    assert "-A FLANNEL-POSTRTG -s 10.1.20.0/24 -d 10.1.0.0/16 " in text
    assert "-A FLANNEL-FWD -d 10.1.0.0/16 " in text
    assert "10.244." not in text


# ---------------------------------------------------------------- what the rules do


def _matches(spec: list[str], src: IPv4Address, dst: IPv4Address, mark: int) -> bool:
    """Whether one rule's match part (-s, -d, ! negations, -m mark) holds for a packet."""
    i, negate = 0, False
    while i < len(spec):
        tok = spec[i]
        if tok == "!":
            negate = True
            i += 1
            continue
        if tok in ("-s", "-d"):
            inside = (src if tok == "-s" else dst) in IPv4Network(spec[i + 1])
            if inside == negate:
                return False
            i += 2
        elif spec[i : i + 3] == ["-m", "mark", "--mark"]:
            value, mask = (int(x, 16) for x in spec[i + 3].split("/"))
            if (mark & mask) != value:
                return False
            i += 4
        elif spec[i : i + 2] == ["-m", "comment"]:
            i += 4
        else:
            raise AssertionError(f"unexpected token {tok!r} in {spec}")
        negate = False
    return True


def postrouting_verdict(text: str, src: str, dst: str, mark: int = 0) -> str:
    """The target FLANNEL-POSTRTG picks for a packet (first match, as iptables walks it)."""
    for line in text.splitlines():
        if not line.startswith("-A FLANNEL-POSTRTG "):
            continue
        words = shlex.split(line)
        j = words.index("-j")
        if _matches(words[2:j], IPv4Address(src), IPv4Address(dst), mark):
            return words[j + 1]
    return "none"


NODE1 = plan("flannel-vxlan", "services").namespaces["node1"].netfilter


@pytest.mark.parametrize(
    ("src", "dst", "mark", "verdict", "why"),
    [
        ("10.244.1.2", "192.168.100.10", 0, "MASQUERADE", "pod -> internet"),
        ("10.244.1.2", "10.0.0.100", 0, "MASQUERADE", "pod -> laptop on the nodes' segment"),
        ("10.244.1.2", "10.0.0.33", 0, "MASQUERADE", "pod -> another node's address"),
        ("10.244.1.2", "10.244.2.2", 0, "RETURN", "pod -> pod on another node"),
        ("10.244.1.2", "10.244.1.3", 0, "RETURN", "pod -> pod on this node"),
        ("10.244.2.2", "10.244.1.2", 0, "RETURN", "remote pod -> local pod"),
        ("10.0.0.100", "10.244.1.2", 0, "RETURN", "laptop -> local pod keeps its source"),
        ("10.0.0.100", "10.244.2.2", 0, "MASQUERADE", "outside -> remote pod through node1"),
        ("10.244.1.2", "224.0.0.251", 0, "none", "pod multicast"),
        ("10.244.1.2", "192.168.100.10", 0x4000, "RETURN", "kube-proxy marked it"),
        ("10.0.0.32", "192.168.100.10", 0, "none", "the node's own traffic"),
    ],
)
def test_masquerade_decisions(src: str, dst: str, mark: int, verdict: str, why: str) -> None:
    assert postrouting_verdict(NODE1, src, dst, mark) == verdict, why


def test_the_evaluator_sees_a_missing_masquerade() -> None:
    # The negative the integration test makes on a live node: without the MASQUERADE rule a
    # pod's packet to the outside leaves with the pod's own address.
    without = "\n".join(line for line in NODE1.splitlines() if "! -d 224.0.0.0/4" not in line)
    assert postrouting_verdict(without, "10.244.1.2", "192.168.100.10") == "none"
