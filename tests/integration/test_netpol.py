"""NetworkPolicy conformance on real labs (root): every upstream e2e case and every seed
scenario of tests/netpol_cases.py, run through the lab's own apply/delete/label path, and the
observed truth table (real TCP/UDP probes between pod namespaces) compared with the case's
expectation, which was written from the upstream test, not from labctl's evaluator.

One lab per mode and topology serves all its cases (reset between them), so the whole
matrix costs a few minutes, not a lab per case.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import yaml
from pydantic import BaseModel

from labctl import apiserver, state, store
from labctl.k8s.manifests import Document, parse_objects
from labctl.policy.compile import TABLE, endpoint_chain
from labctl.probe import probe
from labctl.topology import load_topology

from ..netpol_cases import (
    CASES,
    DENY_INGRESS_X,
    SEED_CASES,
    Apply,
    Case,
    Delete,
    LabelNamespace,
    LabelPod,
    Probe,
    materialize,
    report,
)
from .conftest import labctl, labctl_json, run_name

pytestmark = pytest.mark.root

ENFORCING = ("calico-bgp", "canal")


def _objects(text: str, pod_ips: dict[str, str]) -> list[BaseModel]:
    data = [d for d in yaml.safe_load_all(materialize(text, pod_ips)) if d is not None]
    return parse_objects([Document("<case>", i, d) for i, d in enumerate(data, 1)])


def run_case(lab: str, case: Case) -> list[str]:
    """Carry out `case` in the lab; return a report per probe that differed."""
    topo = load_topology(case.topology)
    pod_ips = {k: str(v) for k, v in topo.pod_ips.items()}
    apiserver.reset(run_name(lab), topo)
    st = state.load(run_name(lab))
    pids = {k: r.pid for k, r in st.namespaces.items()}
    failures = []
    for step in case.steps:
        if isinstance(step, Apply):
            apiserver.apply(run_name(lab), _objects(step.yaml, pod_ips))
        elif isinstance(step, Delete):
            apiserver.delete(run_name(lab), _objects(step.yaml, pod_ips))
        elif isinstance(step, LabelNamespace):
            apiserver.label(run_name(lab), "namespace", step.namespace, step.args)
        elif isinstance(step, LabelPod):
            apiserver.label(run_name(lab), "pod", step.pod, step.args)
        else:
            assert isinstance(step, Probe)
            want = step.expect.matrix()
            expect = {(s, d): ok for s, row in want.items() for d, ok in row.items()}
            pods = [p for p in store.load(run_name(lab)).pods.values() if p.key in want]
            results = probe(pods, pids, step.protocol.lower(), step.port, 1.0, expect)
            seen: dict[str, dict[str, bool]] = {p.key: {} for p in pods}
            for r in results:
                seen[r.src][r.dst] = r.ok
            if seen != want:
                failures.append(report(f"{case.id} {step.protocol} {step.port}", want, seen))
    return failures


@pytest.fixture(scope="module", params=ENFORCING)
def xyz_lab(request: pytest.FixtureRequest) -> Iterator[str]:
    name = f"np-{request.param.split('-')[0]}"
    labctl("up", request.param, "-t", "netpol-xyz", "-n", name)
    try:
        yield name
    finally:
        labctl("down", "-n", name, check=False)


@pytest.mark.parametrize("case", [c for c in CASES if not c.skip], ids=lambda c: c.id)
def test_upstream_case(xyz_lab: str, case: Case) -> None:
    failures = run_case(xyz_lab, case)
    assert not failures, "\n".join(failures)


def test_verify_notices_a_tampered_policy_table(xyz_lab: str) -> None:
    """verify compares each node's kernel table with the compiled one, rule by rule: flushing
    one endpoint chain keeps every chain name and dispatched interface, yet fails the node's
    "policy table" check (and probe sees the pairs it opened); a reset restores the table."""
    topo = load_topology("netpol-xyz")
    apiserver.reset(run_name(xyz_lab), topo)
    try:
        labctl("apply", "-n", xyz_lab, "-f", "-", stdin=DENY_INGRESS_X)
        target = store.load(run_name(xyz_lab)).pods["x/a"]
        # x/a's ingress: the chain that jumps to the deny policy and then drops.
        chain = endpoint_chain(target.iface, "ingress")
        labctl(
            "exec", "-n", xyz_lab, target.node, "--", "nft", "flush", "chain", "ip", TABLE, chain
        )

        report = labctl_json("verify", "-n", xyz_lab, "--no-mtu", check=1)
        tables = {c["name"]: c for c in report["checks"] if c["name"].startswith("policy table")}
        assert set(tables) == {f"policy table {n}" for n in topo.nodes}
        assert not tables[f"policy table {target.node}"]["passed"]
        assert (
            f"chain {chain} has 0 rules, compiled 6"
            in tables[f"policy table {target.node}"]["detail"]
        )
        assert all(c["passed"] for name, c in tables.items() if not name.endswith(target.node))

        # With its ingress chain empty, x/a answers everyone the deny policy blocks.
        doc = labctl_json("probe", "-n", xyz_lab, check=1)
        others = {p.key for p in topo.pods} - {"x/a"}
        assert {(m["src"], m["dst"]) for m in doc["mismatches"]} == {(k, "x/a") for k in others}
    finally:
        apiserver.reset(run_name(xyz_lab), topo)
    report = labctl_json("verify", "-n", xyz_lab, "--no-mtu")
    assert report["passed"], [c for c in report["checks"] if not c["passed"]]


def test_sampled_verify_holds_and_catches_a_tampered_chain(xyz_lab: str) -> None:
    """`verify --pairs sample` probes a covering sample (every pod both ways, every policy
    class pair): with x isolated it passes, and it still catches one pod's emptied ingress
    chain by probing, not only by the table check."""
    topo = load_topology("netpol-xyz")
    apiserver.reset(run_name(xyz_lab), topo)
    try:
        labctl("apply", "-n", xyz_lab, "-f", "-", stdin=DENY_INGRESS_X)
        report = labctl_json("verify", "-n", xyz_lab, "--no-mtu", "--pairs", "sample")
        assert report["passed"], [c for c in report["checks"] if not c["passed"]]
        (note,) = [n for n in report["notes"] if n.startswith("TCP: probed")]
        assert "covering sample" in note and "policy class pairs" in note, note
        target = store.load(run_name(xyz_lab)).pods["x/a"]
        chain = endpoint_chain(target.iface, "ingress")
        labctl(
            "exec", "-n", xyz_lab, target.node, "--", "nft", "flush", "chain", "ip", TABLE, chain
        )
        report = labctl_json("verify", "-n", xyz_lab, "--no-mtu", "--pairs", "sample", check=1)
        bad = [c for c in report["checks"] if not c["passed"]]
        assert any(
            c["name"].startswith("connectivity") and "x/a: answered although" in c["detail"]
            for c in bad
        ), bad
    finally:
        apiserver.reset(run_name(xyz_lab), topo)


@pytest.fixture(scope="module", params=(*ENFORCING, "flannel-vxlan"))
def seed_lab(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    name = f"seed-{request.param.split('-')[0]}"
    labctl("up", request.param, "-t", "netpol-seed", "-n", name)
    try:
        yield name, request.param
    finally:
        labctl("down", "-n", name, check=False)


@pytest.mark.parametrize("case", SEED_CASES, ids=lambda c: c.id)
def test_seed_scenario(seed_lab: tuple[str, str], case: Case) -> None:
    lab, mode = seed_lab
    if mode.startswith("flannel"):
        # Flannel stores the policy, warns, and changes nothing: every pair stays open.
        topo = load_topology(case.topology)
        apiserver.reset(run_name(lab), topo)
        for step in case.steps:
            if isinstance(step, Apply):
                out = labctl("apply", "-n", lab, "-f", "-", stdin=step.yaml)
                assert "does not enforce NetworkPolicy" in out.stderr
        doc = labctl_json("probe", "-n", lab)
        assert all(all(row.values()) for row in doc["matrix"].values())
        assert not doc["mismatches"]
        return
    failures = run_case(lab, case)
    assert not failures, "\n".join(failures)
