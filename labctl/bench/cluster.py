"""`labctl bench --lifecycle`, `--policy`, `--services`: how long `up`, `verify` and `down`
take, NetworkPolicy and Service figures. Figures, not pass/fail: speed is measured here,
never in timed tests."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from labctl import apiserver, capacity, lifecycle, state, store
from labctl.features import resolve_datapath
from labctl.k8s.manifests import Document, parse_objects
from labctl.modes import get_mode
from labctl.policy import checks as policy_checks
from labctl.probe import http_get, probe
from labctl.topology import dump_topology, load_topology, resolve_path
from labctl.verify import verify


def large_topology(nodes: int = 20, pods_per_node: int = 10) -> dict[str, Any]:
    """A flat cluster: `nodes` nodes on one /24 and `pods_per_node` pods on each."""
    return {
        "name": f"large-{nodes}x{pods_per_node}",
        "cluster": {"podCIDR": "10.244.0.0/16", "nodeCIDRSize": 24},
        "segments": {"lan1": {"cidr": "10.0.0.0/24"}},
        "nodes": {f"node{i}": {"segment": "lan1", "ip": f"10.0.0.{10 + i}"} for i in range(nodes)},
        "pods": [
            {"name": f"pod-{i}-{j}", "node": f"node{i}", "labels": {"app": f"app{j % 3}"}}
            for i in range(nodes)
            for j in range(pods_per_node)
        ],
    }


def measure(mode: str, topology: Path, lab: str, with_mtu: bool = True) -> dict[str, Any]:
    """Time up, verify and down of one lab; the lab is always removed."""
    topo = load_topology(topology)
    row: dict[str, Any] = {
        "mode": mode,
        "topology": topo.name,
        "nodes": len(topo.nodes),
        "pods": len(topo.pods),
    }
    t0 = time.monotonic()
    try:
        try:
            lifecycle.up(lab, get_mode(mode), topology, topo, lambda _: None, _datapath(mode))
        except capacity.CapacityError as e:
            row["refused"] = e.short  # this host cannot hold it: a figure too
            return row
        t1 = time.monotonic()
        report = verify(lab, with_mtu=with_mtu)
        t2 = time.monotonic()
        row.update(
            up=round(t1 - t0, 2),
            verify=round(t2 - t1, 2),
            passed=report.passed,
            checks=len(report.checks),
            # TCP pod pairs verify probed, of all ordered pairs (it samples large labs).
            pairsProbed=report.pairs["tcp"][0],
            pairs=report.pairs["tcp"][1],
        )
    finally:
        t3 = time.monotonic()
        lifecycle.down(lab)
        row["down"] = round(time.monotonic() - t3, 2)
    return row


def _datapath(mode: str) -> str:
    return resolve_datapath(get_mode(mode).kernel_feature, "auto")[0]


def run(
    modes: list[str], large: tuple[int, int], progress: Callable[[str], None]
) -> list[dict[str, Any]]:
    """Benchmark each mode on the default topology and on a generated large one."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        big = Path(tmp) / "large.yaml"
        big.write_text(dump_topology(large_topology(*large)))
        for mode in modes:
            for topo in (resolve_path("default"), big):
                progress(f"{mode} on {topo.stem}")
                rows.append(measure(mode, topo, "bench"))
    return rows


DENY_ALL_X = {
    "apiVersion": "networking.k8s.io/v1",
    "kind": "NetworkPolicy",
    "metadata": {"name": "deny-all", "namespace": "x"},
    "spec": {"podSelector": {}},
}


def _policies(count: int) -> list[BaseModel]:
    """`count` NetworkPolicies over the large topology's pods: each isolates the pods of one
    app label and lets one other app reach port 80 (rules, not pod pairs, grow with count)."""
    docs = [
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": f"bench-{i}", "namespace": "default"},
            "spec": {
                "podSelector": {"matchLabels": {"app": f"app{i % 3}"}},
                "ingress": [
                    {
                        "from": [{"podSelector": {"matchLabels": {"app": f"app{(i + 1) % 3}"}}}],
                        "ports": [{"port": 80 + i}],
                    }
                ],
            },
        }
        for i in range(count)
    ]
    return parse_objects([Document("<bench>", i, d) for i, d in enumerate(docs, 1)])


def _probe(lab: str, mode: str) -> tuple[float, bool]:
    """Seconds for a TCP probe of every pod pair, and whether it matched Kubernetes' answer."""
    st, objects, m = state.load(lab), store.load(lab), get_mode(mode)
    expect = policy_checks.expected(objects, m.enforces_policy, "tcp", None)
    pods = list(objects.pods.values())
    pids = {k: r.pid for k, r in st.namespaces.items()}
    t0 = time.monotonic()
    results = probe(pods, pids, "tcp", timeout=policy_checks.probe_timeout(expect), expect=expect)
    took = time.monotonic() - t0
    table = policy_checks.truth_table(objects, m, "tcp", None, expect, results, took)
    return table.seconds, table.passed


def policy(mode: str, large: tuple[int, int], progress: Callable[[str], None]) -> dict[str, Any]:
    """NetworkPolicy figures in `mode`: apply-to-enforced and the 9x9 TCP probe on
    netpol-xyz (and whether both probes gave Kubernetes' answer); then, on the large
    topology, rule count for 0, 1 and 100 policies, and for 1 and 100 the compile time, the
    time to enforced on every node (compile, `nft -c`, `nft -f`) and the whole request's."""
    (deny,) = parse_objects([Document("<bench>", 1, {**DENY_ALL_X})])
    row: dict[str, Any] = {"mode": mode}
    xyz = resolve_path("netpol-xyz")
    try:
        progress(f"{mode}: netpol-xyz")
        lifecycle.up("bench", get_mode(mode), xyz, load_topology(xyz), lambda _: None)
        row["probeOpen"], open_ok = _probe("bench", mode)
        done = apiserver.apply("bench", [deny])
        row["applyToEnforced"] = done.enforced_seconds
        row["rulesDenyAll"] = done.rules
        row["probeWithPolicy"], policy_ok = _probe("bench", mode)
        row["probesAsExpected"] = open_ok and policy_ok
    finally:
        lifecycle.down("bench")
    with tempfile.TemporaryDirectory() as tmp:
        big = Path(tmp) / "large.yaml"
        big.write_text(dump_topology(large_topology(*large)))
        topo = load_topology(big)
        row["pods"] = len(topo.pods)
        try:
            progress(f"{mode}: {len(topo.nodes)} nodes, {len(topo.pods)} pods")
            lifecycle.up("bench", get_mode(mode), big, topo, lambda _: None)
            row["rules0"] = apiserver.reset("bench", topo).rules
            for count in (1, 100):
                apiserver.reset("bench", topo)
                t0 = time.monotonic()
                done = apiserver.apply("bench", _policies(count))
                row[f"apply{count}"] = round(time.monotonic() - t0, 3)
                row[f"enforced{count}"] = done.enforced_seconds
                row[f"rules{count}"] = done.rules
                # The compile step alone, as apply ran it (the lab's objects, every node).
                objects = store.load("bench")
                t0 = time.monotonic()
                policy_checks.compiled(objects, list(topo.nodes))
                row[f"compile{count}"] = round(time.monotonic() - t0, 3)
        finally:
            lifecycle.down("bench")
    return row


def _doc(data: dict[str, Any]) -> BaseModel:
    (obj,) = parse_objects([Document("<bench>", 1, data)])
    return obj


def _deployment(name: str, replicas: int) -> BaseModel:
    labels = {"app": name}
    return _doc(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [{"name": "app", "ports": [{"containerPort": 80}]}]},
                },
            },
        }
    )


def _service(name: str, app: str) -> BaseModel:
    return _doc(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name},
            "spec": {"selector": {"app": app}, "ports": [{"port": 80}]},
        }
    )


def _request_rate(pid: int, ip: str, seconds: float) -> float:
    """Sequential HTTP requests per second from the namespace of `pid` to `ip`:80."""
    done, t0 = 0, time.monotonic()
    while time.monotonic() - t0 < seconds:
        http_get(pid, ip, 80, 2.0)
        done += 1
    return round(done / (time.monotonic() - t0))


def services(
    mode: str, proxy_mode: str, progress: Callable[[str], None], count: int = 100
) -> dict[str, Any]:
    """Workload and Service figures in `mode` with kube-proxy in `proxy_mode` (services.yaml):
    one pod added, a Deployment scaled 0 -> 50, `count` Services x 10 endpoints loaded, one
    endpoint change with all of them in place, and ClusterIP vs pod-IP request rates."""
    row: dict[str, Any] = {"mode": mode, "proxyMode": proxy_mode}
    path = resolve_path("services")
    topo = load_topology(path)
    try:
        progress(f"{mode} ({proxy_mode}): pods")
        lifecycle.up("bench", get_mode(mode), path, topo, lambda _: None, proxy_mode=proxy_mode)
        pod = _doc(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "one"},
                "spec": {"containers": [{"name": "app"}]},
            }
        )
        t0 = time.monotonic()
        done = apiserver.apply("bench", [pod])
        row["addPod"], row["addPodWired"] = round(time.monotonic() - t0, 3), done.pods_seconds
        apiserver.apply("bench", [_deployment("scale", 0)])
        t0 = time.monotonic()
        done = apiserver.scale("bench", "default", "scale", 50)
        row["scale0to50"], row["scale0to50Wired"] = (
            round(time.monotonic() - t0, 3),
            done.pods_seconds,
        )
        apiserver.delete("bench", [_deployment("scale", 0), pod])
        progress(f"{mode} ({proxy_mode}): {count} services x 10 endpoints")
        apiserver.apply("bench", [_deployment("web", 10)])
        done = apiserver.apply("bench", [_service(f"s{i}", "web") for i in range(count)])
        row["servicesSync"], row["servicesRules"] = done.proxy_seconds, done.proxy_rules
        done = apiserver.scale("bench", "default", "web", 11)
        row["endpointChangeSync"] = done.proxy_seconds
        progress(f"{mode} ({proxy_mode}): request rates")
        st = state.load("bench")
        objects = store.load("bench")
        client = st.namespaces["default/web-1"].pid
        backend = next(p for p in objects.pods.values() if p.labels.get("app") == "web")
        vip = objects.services["default/s0"].spec.clusterIP or ""
        row["podIpRequestsPerS"] = _request_rate(client, backend.ip, 2.0)
        row["clusterIpRequestsPerS"] = _request_rate(client, vip, 2.0)
    finally:
        lifecycle.down("bench")
    return row
