"""Measuring: bench."""

from __future__ import annotations

import click
from rich.table import Table

from labctl import lifecycle, state
from labctl.cli.common import OUTPUT, emit_json, guarded, out
from labctl.modes import get_mode
from labctl.state import LabError

#: The --policy row keys, as the table names them (one column per mode).
POLICY_FIGURES = (
    ("probeOpen", "netpol-xyz: 9x9 TCP probe, no policy (s)"),
    ("applyToEnforced", "apply deny-all in x to enforced on every node (s)"),
    ("rulesDenyAll", "rules over all nodes with deny-all"),
    ("probeWithPolicy", "9x9 TCP probe with deny-all (s)"),
    ("probesAsExpected", "both probes gave Kubernetes' answer"),
    ("pods", "large topology: pods"),
    ("rules0", "rules over all nodes, no policy"),
    ("rules1", "rules, 1 policy"),
    ("compile1", "compile 1 policy for every node (s)"),
    ("enforced1", "apply 1 policy: enforced on every node (s)"),
    ("apply1", "apply 1 policy: whole request (s)"),
    ("rules100", "rules, 100 policies"),
    ("compile100", "compile 100 policies for every node (s)"),
    ("enforced100", "apply 100 policies: enforced on every node (s)"),
    ("apply100", "apply 100 policies: whole request (s)"),
)

#: The --services row keys (one column per mode and kube-proxy mode).
SERVICE_FIGURES = (
    ("addPod", "apply one Pod: whole request (s)"),
    ("addPodWired", "  of which CNI ADD on the node (s)"),
    ("scale0to50", "scale a Deployment 0 -> 50: whole request (s)"),
    ("scale0to50Wired", "  of which CNI ADD of 50 pods (s)"),
    ("servicesRules", "100 Services x 10 endpoints: kube-proxy rules, 3 nodes"),
    ("servicesSync", "  load them on every node (s)"),
    ("endpointChangeSync", "  one endpoint more: resync every node (s)"),
    ("podIpRequestsPerS", "HTTP requests/s, pod to pod IP"),
    ("clusterIpRequestsPerS", "HTTP requests/s, pod to ClusterIP"),
)


@click.command()
@click.option(
    "--modes",
    "modes_",
    default=None,
    help="Comma-separated modes to measure [default: flannel-vxlan,flannel-host-gw; with "
    "--policy: calico-bgp,canal].",
)
@click.option(
    "--nodes",
    type=click.IntRange(2, 200),
    default=20,
    show_default=True,
    help="Nodes in the generated large topology.",
)
@click.option("--pods-per-node", type=click.IntRange(1, 200), default=10, show_default=True)
@click.option(
    "--iperf",
    type=click.IntRange(1, 120),
    default=None,
    metavar="SECONDS",
    help="Instead: iperf3 pod to pod for SECONDS in each mode (two-node.yaml).",
)
@click.option(
    "--policy",
    is_flag=True,
    help="Instead: NetworkPolicy figures (apply to enforced, 9x9 probe, 100 policies) per "
    "enforcing mode.",
)
@click.option(
    "--services",
    "services_",
    is_flag=True,
    help="Instead: Pod, Deployment and Service figures per mode, kube-proxy in iptables and "
    "nftables mode side by side.",
)
@OUTPUT
@guarded
def bench(
    modes_: str | None,
    nodes: int,
    pods_per_node: int,
    iperf: int | None,
    policy: bool,
    services_: bool,
    output: str,
) -> None:
    """Measure up, verify and down on the default topology and a generated large one;
    with --iperf, pod-to-pod throughput per mode instead; with --policy, NetworkPolicy
    figures; with --services, Pod, Deployment and kube-proxy figures."""
    from labctl import bench as bench_mod

    lifecycle.check_environment()
    if modes_ is None:
        modes_ = (
            "calico-bgp,canal"
            if policy
            else "flannel-vxlan"
            if services_
            else "flannel-vxlan,flannel-host-gw"
        )
    names = [get_mode(m.strip()).name for m in modes_.split(",") if m.strip()]
    if "bench" in state.list_labs():
        raise LabError("a lab named 'bench' is up; 'labctl down -n bench' first")
    if services_:
        with out.status("benchmarking Services") as status:
            srows = [
                bench_mod.services(m, proxy, lambda p: status.update(p))
                for m in names
                for proxy in ("iptables", "nftables")
            ]
        if output == "json":
            emit_json(srows)
            return
        cols = [f"{r['mode']} {r['proxyMode']}" for r in srows]
        t = Table("figure", *cols, title="labctl bench --services")
        for key, label in SERVICE_FIGURES:
            t.add_row(label, *(str(r[key]) for r in srows))
        out.print(t)
        return
    if policy:
        enforcing = [m for m in names if get_mode(m).enforces_policy]
        if not enforcing:
            raise LabError("--policy needs modes that enforce NetworkPolicy, e.g. calico-bgp,canal")
        with out.status("benchmarking NetworkPolicy") as status:
            prows = [
                bench_mod.policy(m, (nodes, pods_per_node), lambda p: status.update(p))
                for m in enforcing
            ]
        if output == "json":
            emit_json(prows)
            return
        t = Table("figure", *(r["mode"] for r in prows), title="labctl bench --policy")
        for key, label in POLICY_FIGURES:
            t.add_row(label, *(str(r[key]) for r in prows))
        out.print(t)
        return
    if iperf is not None:
        rows = [bench_mod.throughput(m, iperf) for m in names]
        base = next((r["gbps"] for r in rows if r["mode"] == "flannel-vxlan"), None)
        for r in rows:
            r["vsVxlan"] = round(r["gbps"] / base, 3) if base else None
        if output == "json":
            emit_json(rows)
            return
        t = Table("mode", "datapath", "Gbit/s", "vs flannel-vxlan", title="iperf3 pod to pod")
        for r in rows:
            t.add_row(r["mode"], r["datapath"], str(r["gbps"]), str(r["vsVxlan"] or "-"))
        out.print(t)
        return
    if output == "json":
        rows = bench_mod.run(names, (nodes, pods_per_node), lambda _: None)
        emit_json(rows)
        return
    with out.status("benchmarking") as status:
        rows = bench_mod.run(names, (nodes, pods_per_node), lambda p: status.update(p))
    t = Table(title="labctl bench (seconds)")
    for col in (
        "mode",
        "topology",
        "nodes",
        "pods",
        "pod pairs",
        "up",
        "verify",
        "down",
        "verified",
    ):
        t.add_column(col)
    for r in rows:
        t.add_row(
            r["mode"],
            r["topology"],
            str(r["nodes"]),
            str(r["pods"]),
            str(r.get("pairs", "-")),
            str(r.get("up", "-")),
            str(r.get("verify", "-")),
            str(r["down"]),
            "yes" if r.get("passed") else "[red]no[/red]",
        )
    out.print(t)
