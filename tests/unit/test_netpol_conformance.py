"""The upstream e2e NetworkPolicy cases (and the course's seeds) against labctl's evaluator.

The expectations in tests/netpol_cases.py are upstream's own; this test runs every case's steps
on an in-memory cluster and compares labctl.policy.evaluate.matrix with them at each probe.
It also proves the harness can fail (a flipped cell, a policy in the wrong namespace).
"""

from __future__ import annotations

from collections import Counter

import pytest
import yaml

from labctl.k8s.manifests import Document, parse_objects
from labctl.policy.model import NetworkPolicy
from labctl.topology import load_topology
from tests.netpol_cases import (
    CASES,
    DENY_INGRESS_X,
    EXAMPLES,
    PODS,
    SEED_CASES,
    SEED_PODS,
    Apply,
    Case,
    Cluster,
    LabelNamespace,
    LabelPod,
    Peer,
    Probe,
    Reachability,
    check,
    diff,
    materialize,
    render,
    report,
)

XYZ_IPS = {k: str(v) for k, v in load_topology("netpol-xyz").pod_ips.items()}
SEED_IPS = {k: str(v) for k, v in load_topology("netpol-seed").pod_ips.items()}

RUNNABLE = [c for c in (*CASES, *SEED_CASES) if not c.skip]


def _ids(cases: list[Case] | tuple[Case, ...]) -> list[str]:
    return [c.id for c in cases]


# ---------------------------------------------------------------- the table itself


def test_models_match_the_topologies() -> None:
    assert tuple(XYZ_IPS) == PODS
    assert tuple(SEED_IPS) == SEED_PODS
    topo = load_topology("netpol-xyz")
    for pod in topo.pods:
        assert pod.labels == {"pod": pod.name}
        assert {(p.name, p.containerPort, p.protocol) for p in pod.ports} == {
            ("serve-80-tcp", 80, "TCP"),
            ("serve-81-tcp", 81, "TCP"),
            ("serve-80-udp", 80, "UDP"),
            ("serve-81-udp", 81, "UDP"),
        }
    # Every node holds one pod of every namespace.
    for node in topo.nodes:
        assert sorted(p.namespace for p in topo.pods_on(node)) == ["x", "y", "z"]
    assert {ns: topo.namespace_labels(ns) for ns in "xyz"} == {
        ns: {"ns": ns, "kubernetes.io/metadata.name": ns} for ns in "xyz"
    }


def test_every_upstream_case_is_listed_once() -> None:
    counts = Counter((c.context, c.name) for c in CASES)
    assert [k for k, n in counts.items() if n > 1] == []
    per_context = Counter(c.context for c in CASES)
    # network_policy.go @ 9db638c: 42 It()s in the TCP context plus the pre-split SCTP name,
    # 3 in "... using UDP", 3 in "... using SCTP".
    assert per_context == {"TCP": 43, "UDP": 3, "SCTP": 3}
    assert {c.name for c in CASES if c.skip} == {c.name for c in CASES if c.context == "SCTP"}
    for case in (*CASES, *SEED_CASES):
        assert case.probes, case.id
        assert isinstance(case.steps[0], Apply), case.id


@pytest.mark.parametrize("case", [*CASES, *SEED_CASES], ids=_ids([*CASES, *SEED_CASES]))
def test_policies_are_valid_networkpolicy_yaml(case: Case) -> None:
    ips = SEED_IPS if case.topology == "netpol-seed" else XYZ_IPS
    for text in case.policy_yaml:
        data = [d for d in yaml.safe_load_all(materialize(text, ips)) if d is not None]
        objects = parse_objects([Document(case.id, i, d) for i, d in enumerate(data, 1)])
        assert objects and all(isinstance(o, NetworkPolicy) for o in objects)
        for d in data:
            assert d["apiVersion"] == "networking.k8s.io/v1"
            assert d["metadata"]["namespace"], "every case names its namespace"


def test_label_steps_name_known_targets() -> None:
    for case in CASES:
        for step in case.steps:
            if isinstance(step, LabelPod):
                assert step.pod in PODS
            if isinstance(step, LabelNamespace):
                assert step.namespace in "xyz"


# ---------------------------------------------------------------- against the evaluator


@pytest.mark.parametrize("case", RUNNABLE, ids=_ids(RUNNABLE))
def test_case_matches_upstream_expectations(case: Case) -> None:
    failures = check(case)
    assert not failures, "\n\n".join(failures)


@pytest.mark.parametrize(
    "case", [c for c in CASES if c.skip], ids=_ids([c for c in CASES if c.skip])
)
def test_skipped_case(case: Case) -> None:
    pytest.skip(case.skip)


# ---------------------------------------------------------------- the harness can fail


def test_a_flipped_cell_is_detected() -> None:
    case = CASES[0]  # default-deny-ingress
    probe = case.probes[0]
    wrong = Reachability().expect_peer(Peer(), Peer("x"), False).expect("y/a", "x/b", True)
    expected, flipped = probe.expect.matrix(), wrong.matrix()
    assert diff(expected, flipped) == ["y/a -> x/b: expected blocked, observed allowed"]
    bad = Case(case.name, case.context, (*case.steps[:-1], Probe("TCP", 80, wrong)))
    failures = check(bad)
    assert len(failures) == 1
    assert "1 of 72 pairs wrong" in failures[0]
    assert "x/b: expected allowed, observed blocked" in failures[0]


def test_a_policy_in_the_wrong_namespace_changes_the_matrix() -> None:
    case = CASES[0]
    in_y = DENY_INGRESS_X.replace("namespace: x", "namespace: y")
    moved = Case(case.name, case.context, (Apply(in_y), *case.steps[1:]))
    failures = check(moved)
    assert len(failures) == 1
    # The 24 pairs into x are now allowed, the 24 into y blocked.
    wrong = [line for line in failures[0].splitlines() if " -> " in line]
    assert len(wrong) == 48
    assert "x/a -> x/b: expected blocked, observed allowed" in wrong
    assert "x/a -> y/b: expected allowed, observed blocked" in wrong


def test_a_missing_probe_step_is_not_silently_passed() -> None:
    expected = Reachability().matrix()
    observed = {s: dict(row) for s, row in expected.items()}
    del observed["z/c"]["z/a"]
    assert diff(expected, observed) == ["z/c -> z/a: expected allowed, observed missing"]


# ---------------------------------------------------------------- the builder mirrors upstream


def test_reachability_helpers() -> None:
    m = Reachability().matrix()
    assert len(m) == 9 and all(len(row) == 8 and s not in row for s, row in m.items())
    assert all(v for row in m.values() for v in row.values())

    m = Reachability().expect_peer(Peer("x"), Peer("x", "a"), False).matrix()
    assert {(s, d) for s, row in m.items() for d, v in row.items() if not v} == {
        ("x/b", "x/a"),
        ("x/c", "x/a"),
    }
    m = Reachability().expect_all_egress("x/a", False).expect("x/a", "y/b", True).matrix()
    assert [d for d, v in m["x/a"].items() if v] == ["y/b"]
    m = Reachability(default=False).expect_all_ingress("z/c", True).matrix()
    assert sum(v for row in m.values() for v in row.values()) == 8
    with pytest.raises(ValueError, match="unknown pod 'x/d'"):
        Reachability().expect("x/d", "x/a", False)
    with pytest.raises(ValueError, match="unknown pod"):
        Reachability(pods=SEED_PODS).expect_all_ingress("x/a", False)


def test_render_is_the_cyclonus_grid() -> None:
    m = Reachability(pods=("x/a", "x/b", "y/a")).expect_all_ingress("x/a", False).matrix()
    assert render(m) == "\n".join(
        [
            "    x/a x/b y/a",
            "x/a -   .   .",
            "x/b X   -   .",
            "y/a X   .   -",
        ]
    )
    text = report("t", m, Reachability(pods=("x/a", "x/b", "y/a")).matrix())
    assert text.splitlines()[0] == "t: 2 of 6 pairs wrong"
    assert "x/b -> x/a: expected blocked, observed allowed" in text


def test_materialize_fills_pod_addresses() -> None:
    text = 'cidr: "{{cidr32:y/b}}" ip: {{ip:x/a}} big: "{{cidr4:x/a}}" n: "{{ cidr24:z/c }}"'
    assert materialize(text, XYZ_IPS) == (
        'cidr: "10.244.3.3/32" ip: 10.244.1.2 big: "0.0.0.0/4" n: "10.244.2.0/24"'
    )
    with pytest.raises(KeyError, match="no pod x/d"):
        materialize("{{ip:x/d}}", XYZ_IPS)
    with pytest.raises(ValueError, match="prefix length"):
        materialize("{{cidr40:x/a}}", XYZ_IPS)
    with pytest.raises(ValueError, match="unknown placeholder"):
        materialize("{{address:x/a}}", XYZ_IPS)


# ---------------------------------------------------------------- the in-memory cluster


def test_cluster_labels_like_kubectl() -> None:
    cluster = Cluster()
    assert cluster.namespace_labels["y"] == {"ns": "y", "kubernetes.io/metadata.name": "y"}
    cluster.run(LabelNamespace("y", ("ns2=updated",)))
    assert cluster.namespace_labels["y"]["ns2"] == "updated"
    cluster.run(LabelNamespace("y", ("ns2-",)))
    assert "ns2" not in cluster.namespace_labels["y"]
    with pytest.raises(ValueError, match="--overwrite"):
        cluster.run(LabelPod("x/b", ("pod=b",)))
    with pytest.raises(ValueError, match=r"metadata\.name"):
        cluster.run(LabelNamespace("y", ("kubernetes.io/metadata.name-",)))
    with pytest.raises(KeyError, match="pod x/d"):
        cluster.run(LabelPod("x/d", ("a=b",)))


def test_cluster_apply_replaces_and_delete_removes() -> None:
    cluster = Cluster()
    cluster.apply(DENY_INGRESS_X)
    cluster.apply(DENY_INGRESS_X)
    assert list(cluster.policies) == ["x/deny-ingress"]
    cluster.delete(DENY_INGRESS_X)
    assert cluster.policies == {}
    with pytest.raises(KeyError, match="not found"):
        cluster.delete(DENY_INGRESS_X)
    with pytest.raises(ValueError, match="namespace w does not exist"):
        cluster.apply(DENY_INGRESS_X.replace("namespace: x", "namespace: w"))


# ---------------------------------------------------------------- the seed examples


def test_every_example_is_a_seed_case_and_says_what_it_does() -> None:
    files = sorted(EXAMPLES.glob("*.yaml"))
    assert files
    seeded = {c.name.partition(":")[0] for c in SEED_CASES}
    assert {f.stem for f in files} == seeded
    for f in files:
        text = f.read_text()
        assert text.startswith("# "), f"{f.name} opens with a comment"
        assert "Expected effect" in text, f.name
        assert "{{" not in text, f"{f.name} applies unmodified"
    readme = (EXAMPLES / "README.md").read_text()
    for f in files:
        assert f.name in readme, f"README.md lists {f.name}"


def test_v3_and_v4_differ_by_one_dash() -> None:
    v3 = yaml.safe_load((EXAMPLES / "test-network-policy-v3.yaml").read_text())
    v4 = yaml.safe_load((EXAMPLES / "test-network-policy-v4.yaml").read_text())
    assert len(v3["spec"]["ingress"][0]["from"]) == 1
    assert len(v4["spec"]["ingress"][0]["from"]) == 2
    peer = v3["spec"]["ingress"][0]["from"][0]
    assert [{k: v} for k, v in peer.items()] == v4["spec"]["ingress"][0]["from"]
