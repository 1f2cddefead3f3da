"""Unit tests for labctl.policy.checks: the probe's truth table against Kubernetes' answer, and
the comparison of a node's kernel table with the compiled one (fed with nft JSON listings)."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from labctl import store
from labctl.k8s.manifests import Document, parse_objects
from labctl.modes import get_mode
from labctl.policy.checks import expected, probe_timeout, table_differences, truth_table
from labctl.policy.model import NetworkPolicy
from labctl.probe import Result
from labctl.topology import load_topology

# ---------------------------------------------------------------- truth table


def xyz(*policies: dict[str, Any]) -> store.Store:
    """netpol-xyz's objects (9 pods) with `policies` applied."""
    objects = store.from_topology(load_topology("netpol-xyz"), get_mode("calico-bgp").network)
    docs = [Document("<test>", i, d) for i, d in enumerate(policies, 1)]
    for obj in parse_objects(docs):
        assert isinstance(obj, NetworkPolicy)
        objects.networkpolicies[obj.key] = obj
    return objects


DENY_INGRESS_X = {
    "apiVersion": "networking.k8s.io/v1",
    "kind": "NetworkPolicy",
    "metadata": {"name": "deny", "namespace": "x"},
    "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
}


def results(objects: store.Store, open_: set[tuple[str, str]] | None = None) -> list[Result]:
    """One result per ordered pair: answered if in `open_` (default: every pair)."""
    keys = list(objects.pods)
    return [
        Result(s, d, ok, "ok" if ok else "timeout")
        for s in keys
        for d in keys
        if s != d
        for ok in [open_ is None or (s, d) in open_]
    ]


def test_truth_table_as_expected() -> None:
    objects = xyz(DENY_INGRESS_X)
    mode = get_mode("calico-bgp")
    expect = expected(objects, True, "tcp", None)
    allowed = {pair for pair, ok in expect.items() if ok}
    table = truth_table(objects, mode, "tcp", None, expect, results(objects, allowed), 1.23456)
    assert table.passed and table.differences == ()
    assert table.pairs == 72 and table.seconds == 1.235
    assert table.port == 80  # the first pod's first TCP port
    assert table.note == ""  # calico-bgp enforces: nothing "would" be blocked
    rows = dict(table.rows())
    assert list(rows) == list(table.pods) == list(objects.pods)
    # Rows from, columns to: everyone reaches y/a, no one reaches x/a.
    assert rows["x/b"][0] == "X" and rows["y/b"][0] == "X"
    assert rows["x/a"][0] == "-" and rows["x/a"][3] == "."
    doc = table.to_dict()
    assert list(doc) == [
        "protocol",
        "port",
        "matrix",
        "expected",
        "enforcesPolicy",
        "seconds",
        "mismatches",
    ]
    assert doc["matrix"]["y/a"]["x/a"] is False and doc["expected"]["y/a"]["x/a"] is False
    assert doc["mismatches"] == [] and doc["enforcesPolicy"] is True
    assert probe_timeout(expect) == 1.0


def test_truth_table_names_every_difference() -> None:
    objects = xyz(DENY_INGRESS_X)
    expect = expected(objects, True, "tcp", None)
    # Everything answered: the pairs the policy blocks differ.
    table = truth_table(objects, get_mode("canal"), "tcp", 81, expect, results(objects), 0.5)
    assert not table.passed
    assert {(d.src, d.dst) for d in table.differences} == {
        pair for pair, ok in expect.items() if not ok
    }
    assert all(d.observed and not d.expected and d.detail == "ok" for d in table.differences)
    assert table.port == 81
    assert dict(table.rows())["y/a"][:3] == [".!", ".!", ".!"]
    first = table.to_dict()["mismatches"][0]
    assert first == {"src": "x/a", "dst": "x/b", "observed": True, "detail": "ok"}


def test_truth_table_in_a_mode_that_enforces_nothing() -> None:
    objects = xyz(DENY_INGRESS_X)
    mode = get_mode("flannel-vxlan")
    expect = expected(objects, mode.enforces_policy, "tcp", None)
    assert all(expect.values()) and probe_timeout(expect) == 2.0
    table = truth_table(objects, mode, "tcp", None, expect, results(objects), 0.1)
    assert table.passed and not table.enforced
    # Each of x's 3 pods, isolated for ingress, would be closed to the 8 other pods.
    assert table.would_block == 3 * 8
    assert table.note == (
        "flannel-vxlan does not enforce NetworkPolicy: Kubernetes would block 24 of these 72 pairs"
    )


# ---------------------------------------------------------------- kernel table


def listing(handles: int = 0, reverse: bool = False) -> dict[str, Any]:
    """A small `nft -j list table ip calico`: a set, a dispatch map, two chains with rules.
    `handles` shifts every handle and `reverse` the element order, as a reload may."""
    elements = ["10.244.1.2", "10.244.2.3"]
    entries = [["cali1", {"goto": {"target": "filter-cali-tw-cali1"}}]]
    accept = [{"mangle": {"key": {"meta": {"key": "mark"}}, "value": 65536}}, {"return": None}]
    items: list[dict[str, Any]] = [
        {"metainfo": {"version": "1.0.6"}},
        {"table": {"family": "ip", "name": "calico", "handle": 1 + handles}},
        {
            "set": {
                "family": "ip",
                "name": "cali40s-abc",
                "table": "calico",
                "type": "ipv4_addr",
                "handle": 2 + handles,
                "flags": ["interval"],
                "elem": list(reversed(elements)) if reverse else elements,
            }
        },
        {
            "map": {
                "family": "ip",
                "name": "filter-cali-to-wl-dispatch",
                "table": "calico",
                "type": "ifname",
                "map": "verdict",
                "handle": 3 + handles,
                "elem": entries,
            }
        },
    ]
    for i, chain in enumerate(("filter-cali-tw-cali1", "filter-cali-pi-_knp.x.a")):
        items.append(
            {"chain": {"family": "ip", "table": "calico", "name": chain, "handle": 4 + i + handles}}
        )
    for i, (chain, expr) in enumerate(
        [
            ("filter-cali-tw-cali1", [{"jump": {"target": "filter-cali-pi-_knp.x.a"}}]),
            ("filter-cali-tw-cali1", [{"drop": None}]),
            ("filter-cali-pi-_knp.x.a", accept),
        ]
    ):
        items.append(
            {
                "rule": {
                    "family": "ip",
                    "table": "calico",
                    "chain": chain,
                    "handle": 10 + i + handles,
                    "expr": expr,
                }
            }
        )
    return {"nftables": items}


def diff(live: dict[str, Any], want: dict[str, Any] | None = None) -> list[str]:
    return table_differences(json.dumps(live), json.dumps(want or listing()))


def without(doc: dict[str, Any], keep: Any) -> dict[str, Any]:
    return {"nftables": [x for x in doc["nftables"] if keep(x)]}


def test_same_table_whatever_the_handles_and_element_order() -> None:
    assert diff(listing(handles=40, reverse=True)) == []


def test_flushed_chain_is_named() -> None:
    live = without(listing(), lambda x: x.get("rule", {}).get("chain") != "filter-cali-tw-cali1")
    assert diff(live) == ["chain filter-cali-tw-cali1 has 0 rules, compiled 2"]


def test_changed_rule_is_named() -> None:
    live = copy.deepcopy(listing())
    live["nftables"][-2]["rule"]["expr"] = [{"accept": None}]
    assert diff(live) == ["chain filter-cali-tw-cali1 rule 2 differs from the compiled one"]


@pytest.mark.parametrize(
    ("index", "elem", "problem"),
    [
        (2, ["10.244.1.2"], "set cali40s-abc differs: missing 10.244.2.3"),
        (
            2,
            ["10.244.1.2", "10.244.2.3", "10.244.9.9"],
            "set cali40s-abc differs: unexpected 10.244.9.9",
        ),
        (3, [], "map filter-cali-to-wl-dispatch differs: missing cali1"),
    ],
)
def test_changed_elements_are_named(index: int, elem: list[Any], problem: str) -> None:
    live = copy.deepcopy(listing())
    kind = "set" if index == 2 else "map"
    live["nftables"][index][kind]["elem"] = elem
    assert diff(live) == [problem]


def test_missing_and_unexpected_objects_are_named() -> None:
    live = copy.deepcopy(listing())
    live["nftables"].append({"chain": {"family": "ip", "table": "calico", "name": "extra"}})
    live = without(live, lambda x: "set" not in x)
    assert diff(live) == ["missing set cali40s-abc", "unexpected chain extra"]
