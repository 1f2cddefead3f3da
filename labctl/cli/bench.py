"""Measuring: bench."""

from __future__ import annotations

from typing import Any

import click
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from labctl import lifecycle, state
from labctl.cli.common import OUTPUT, emit_json, err, guarded, out
from labctl.modes import MODES, get_mode
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
    help="Comma-separated modes to measure [default: every mode in 'labctl modes'; with "
    "--lifecycle: flannel-vxlan,flannel-host-gw; --policy: calico-bgp,canal; --services: "
    "flannel-vxlan; --control-plane: flannel-vxlan,calico-bgp].",
)
@click.option(
    "--duration",
    # iperf3 takes whole seconds (and -t 0 means forever)
    type=click.IntRange(1, 60),
    default=1,
    show_default=True,
    metavar="SECONDS",
    help="Length of each throughput and request/response test.",
)
@click.option(
    "--repeats",
    type=click.IntRange(1, 20),
    default=3,
    show_default=True,
    help="Times each test runs; the table shows the median and the spread.",
)
@click.option(
    "-n",
    "--name",
    "lab",
    default="bench",
    show_default=True,
    help="Name of the lab each mode is brought up as, in turn (results: captures/NAME/bench/).",
)
@click.option(
    "--nodes",
    type=click.IntRange(2, 200),
    default=20,
    show_default=True,
    help="Nodes in the generated large topology (--lifecycle, --policy).",
)
@click.option(
    "--pods-per-node",
    type=click.IntRange(1, 200),
    default=None,
    help="Pods on each node of the generated topologies [default: 10; --scale: 1].",
)
@click.option(
    "--lifecycle",
    "lifecycle_",
    is_flag=True,
    help="Instead: up, verify and down times on the default topology and a generated large one.",
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
@click.option(
    "--scale",
    is_flag=True,
    help="Instead: calico-bgp plan time and memory up to 500 nodes/5,000 pods, and up, BGP "
    "convergence, verify and down for --sizes nodes, full mesh vs 2 route reflectors.",
)
@click.option(
    "--sizes",
    default="3,10,30,100",
    show_default=True,
    metavar="N,N,...",
    help="Node counts of the --scale live rows (a size this host cannot hold is reported as "
    "refused, as 'up' would refuse it).",
)
@click.option(
    "--control-plane",
    "control_plane",
    is_flag=True,
    help="Instead: how fast the other nodes follow a node that joins, leaves, dies (lease TTL, "
    "BGP hold timer) and comes back, and whether pods reach each other while etcd is frozen.",
)
@OUTPUT
@guarded
def bench(
    modes_: str | None,
    duration: int,
    repeats: int,
    lab: str,
    nodes: int,
    pods_per_node: int | None,
    lifecycle_: bool,
    policy: bool,
    services_: bool,
    scale: bool,
    sizes: str,
    control_plane: bool,
    output: str,
) -> None:
    """The answer table: for every mode, pod-to-pod TCP throughput (1 and 4 streams),
    request/response rate and latency, CPU per Gbit/s, overhead and pod MTU, next to the
    underlay and a hand-built reference of the same datapath (JSON and chart saved under
    captures/NAME/bench/). --lifecycle, --policy, --services, --scale and --control-plane
    measure other things."""
    lifecycle.check_environment()
    if sum((lifecycle_, policy, services_, scale, control_plane)) > 1:
        raise click.UsageError(
            "--lifecycle, --policy, --services, --scale and --control-plane: pick one"
        )
    default = (
        "flannel-vxlan,calico-bgp"
        if control_plane
        else "calico-bgp,canal"
        if policy
        else "flannel-vxlan"
        if services_
        else "flannel-vxlan,flannel-host-gw"
        if lifecycle_
        else ",".join(MODES)
    )
    names = [get_mode(m.strip()).name for m in (modes_ or default).split(",") if m.strip()]
    if not names:
        raise click.BadParameter("name at least one mode", param_hint="--modes")
    if lab in state.list_labs():
        raise LabError(f"a lab named {lab!r} is up; 'labctl down -n {lab}' first, or pick -n NAME")
    if control_plane:
        _control_plane(lab, names, repeats, output)
    elif scale:
        _scale(lab, _sizes(sizes), pods_per_node or 1, output)
    elif services_:
        _services(names, output)
    elif policy:
        _policy(names, (nodes, pods_per_node or 10), output)
    elif lifecycle_:
        _lifecycle(names, (nodes, pods_per_node or 10), output)
    else:
        _answer(lab, names, duration, repeats, output)


def _answer(lab: str, names: list[str], duration: int, repeats: int, output: str) -> None:
    from labctl.bench import answer, table

    columns = (TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task("planning", total=None)

        def progress(what: str, done: int, total: int) -> None:
            bar.update(task, description=what, completed=done, total=total)

        report = answer.save(answer.run(lab, names, duration, repeats, progress))
    if output == "json":
        emit_json(report.model_dump())
        return
    out.print(table.render(report))


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        sizes = []
    if not sizes or any(not 2 <= n <= 1000 for n in sizes):
        raise click.BadParameter("node counts from 2 to 1000, e.g. 3,10,30", param_hint="--sizes")
    return sizes


def _scale(lab: str, sizes: list[int], pods_per_node: int, output: str) -> None:
    from labctl.bench import save_figures, scale

    with out.status("benchmarking scale") as status:
        result = scale.run(sizes, pods_per_node, lab, lambda p: status.update(p))
    path = save_figures(lab, "scale", result)
    if output == "json":
        emit_json({**result, "file": str(path)})
        return
    t = Table(title="labctl bench --scale: planning calico-bgp (10 pods per node)")
    for col in ("design", "nodes", "pods", "plan (s)", "peak MB", "BGP sessions", "ARP entries"):
        t.add_column(col)
    t.add_column("this host")
    for r in result["plan"]:
        t.add_row(
            *(str(r[k]) for k in ("design", "nodes", "pods", "planSeconds", "planPeakMB")),
            *(str(r[k]) for k in ("bgpSessions", "neighbours")),
            r["refused"] or "fits",
        )
    out.print(t)
    t = Table(title=f"live calico-bgp labs, {pods_per_node} pod(s) per node (seconds)")
    for col in ("design", "nodes", "BGP sessions", "up", "of which BGP", "verify", "down"):
        t.add_column(col)
    t.add_column("pairs probed")
    t.add_column("verified")
    for r in result["live"]:
        if r.get("refused"):
            t.add_row(r["design"], str(r["nodes"]), str(r["bgpSessions"]), r["refused"])
            continue
        t.add_row(
            *(str(r[k]) for k in ("design", "nodes", "bgpSessions", "up", "converge", "verify")),
            str(r["down"]),
            f"{r['pairsProbed']}/{r['pairs']}",
            "yes" if r["verified"] else "[red]no[/red]",
        )
    out.print(t)
    for r in result["live"]:
        for failed in r.get("failed", []):
            out.print(f"{r['design']} {r['nodes']} nodes, failed: {failed}")
    out.print(f"saved {path}")


def _control_plane(lab: str, names: list[str], repeats: int, output: str) -> None:
    from labctl.bench import controlplane, save_figures

    for name in names:
        try:
            controlplane.timer_kind(name)
        except controlplane.UnsupportedMode as e:
            raise click.BadParameter(str(e), param_hint="--modes") from None
    with out.status("benchmarking the control plane") as status:
        rows = controlplane.run(names, repeats, lab, lambda p: status.update(p))
    path = save_figures(lab, "control-plane", rows)
    if output == "json":
        emit_json({"rows": rows, "file": str(path)})
        return
    t = Table("figure (seconds)", *(r["mode"] for r in rows), title="labctl bench --control-plane")
    labels = [label for _, label in controlplane.FIGURES]
    labels += ["what drops a dead node", "pods reach each other while etcd is frozen"]
    for label, *values in zip(labels, *(controlplane.cells(r) for r in rows), strict=True):
        t.add_row(label, *values)
    out.print(t)
    if repeats > 1:
        out.print(f"median of {repeats} (min-max)", highlight=False)
    for r in rows:
        for failed in r["etcdFrozenFailed"]:
            out.print(f"{r['mode']}, etcd frozen, failed: {failed}", highlight=False)
    out.print(f"saved {path}")


def _services(names: list[str], output: str) -> None:
    from labctl.bench import cluster

    with out.status("benchmarking Services") as status:
        rows = [
            cluster.services(m, proxy, lambda p: status.update(p))
            for m in names
            for proxy in ("iptables", "nftables")
        ]
    if output == "json":
        emit_json(rows)
        return
    cols = [f"{r['mode']} {r['proxyMode']}" for r in rows]
    _figures("labctl bench --services", cols, SERVICE_FIGURES, rows)


def _policy(names: list[str], large: tuple[int, int], output: str) -> None:
    from labctl.bench import cluster

    enforcing = [m for m in names if get_mode(m).enforces_policy]
    if not enforcing:
        raise LabError("--policy needs modes that enforce NetworkPolicy, e.g. calico-bgp,canal")
    with out.status("benchmarking NetworkPolicy") as status:
        rows = [cluster.policy(m, large, lambda p: status.update(p)) for m in enforcing]
    if output == "json":
        emit_json(rows)
        return
    _figures("labctl bench --policy", [r["mode"] for r in rows], POLICY_FIGURES, rows)


def _figures(
    title: str, cols: list[str], figures: tuple[tuple[str, str], ...], rows: list[dict[str, Any]]
) -> None:
    t = Table("figure", *cols, title=title)
    for key, label in figures:
        t.add_row(label, *(str(r[key]) for r in rows))
    out.print(t)


def _lifecycle(names: list[str], large: tuple[int, int], output: str) -> None:
    from labctl.bench import cluster

    if output == "json":
        emit_json(cluster.run(names, large, lambda _: None))
        return
    with out.status("benchmarking") as status:
        rows = cluster.run(names, large, lambda p: status.update(p))
    t = Table(title="labctl bench --lifecycle (seconds)")
    for col in ("mode", "topology", "nodes", "pods", "pairs probed", "up", "verify", "down"):
        t.add_column(col)
    t.add_column("verified")
    for r in rows:
        t.add_row(
            r["mode"],
            r["topology"],
            str(r["nodes"]),
            str(r["pods"]),
            f"{r['pairsProbed']}/{r['pairs']}" if "pairs" in r else "-",
            str(r.get("up", "-")),
            str(r.get("verify", "-")),
            str(r["down"]),
            f"refused: {r['refused']}"
            if r.get("refused")
            else "yes"
            if r.get("passed")
            else "[red]no[/red]",
        )
    out.print(t)
