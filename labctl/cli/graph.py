"""Drawing a lab: graph (svg, png, dot or mermaid)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import click

from labctl import frr, graph, state, store
from labctl.cli.common import err, fail, guarded, out
from labctl.modes import get_mode
from labctl.plan import Plan
from labctl.topology import load_topology, resolve_path

DEFAULT_MODE = "flannel-vxlan"
IMAGES = ("svg", "png")
NO_ANSWER = "no answer"


def live_bgp_states(plan: Plan, pids: dict[str, int]) -> dict[str, dict[str, str]]:
    """Per speaker of `plan`, its neighbors' session states as its FRR reports them (`show bgp
    summary json` in the node); every session of a speaker whose bgpd does not answer is
    "no answer"."""
    states: dict[str, dict[str, str]] = {}
    for ns in plan.namespaces.values():
        if ns.bgp is None or not ns.bgp.neighbors:
            continue
        try:
            states[ns.name] = frr.peer_states(pids[ns.name])
        except (frr.FrrError, ValueError, OSError, subprocess.TimeoutExpired):
            states[ns.name] = {str(n.ip): NO_ANSWER for n in ns.bgp.neighbors}
    return states


@click.command(name="graph")
@click.option(
    "-t",
    "--topology",
    default=None,
    help="Topology file, or the name of one in topologies/ (default: default). Not with -n.",
)
@click.option(
    "-n",
    "--name",
    "lab",
    default=None,
    help="Draw this lab as it runs: its topology, mode, plan, pods and live BGP sessions.",
)
@click.option("-m", "--mode", default=None, help=f"Mode (default: {DEFAULT_MODE}). Not with -n.")
@click.option(
    "-o",
    "--output",
    type=click.Choice(["svg", "png", "dot", "mermaid"]),
    default="svg",
    show_default=True,
    help="svg and png need Graphviz's dot; dot and mermaid are text.",
)
@click.option(
    "--overlay",
    type=click.Choice(graph.OVERLAYS),
    default=None,
    help="Node-to-node layer: tunnels (how pod packets cross the wire), bgp (sessions), none "
    "(default: bgp for calico-bgp, tunnels otherwise).",
)
@click.option(
    "-f",
    "--file",
    "path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write here (default: <lab>.svg / .png in the current directory; dot and mermaid "
    "go to stdout).",
)
@guarded
def graph_(
    topology: str | None,
    lab: str | None,
    mode: str | None,
    output: str,
    overlay: graph.Overlay | None,
    path: Path | None,
) -> None:
    """Draw a lab: segments, routers, nodes, pods, external hosts, and the tunnels or BGP
    sessions between the nodes; from a topology file before any lab is up, or (-n) a lab."""
    if output in IMAGES and shutil.which("dot") is None:
        fail(
            f"-o {output} needs Graphviz's dot, which is not installed: apt-get install "
            "graphviz (or bash scripts/install.sh), or use -o dot / -o mermaid",
            3,
        )
    st: state.LabState | None = None
    if lab is not None:
        if topology is not None or mode is not None:
            fail("-n draws the lab with the topology and mode it was built with; drop -t/-m", 2)
        name = state.check_lab_name(lab)
        st = state.load(name)
        topo = load_topology(st.topology)
        plan = state.read_plan(name)
        # The store, not the topology: it has the pods applied (or deleted) since up.
        pods = [graph.PodView(p.key, p.node, p.ip) for p in store.load(name).pods.values()]
    else:
        m = get_mode(mode or DEFAULT_MODE)
        topo = load_topology(resolve_path(topology or "default"))
        plan = m.plan(topo)
        pods = graph.topology_pods(topo)
        name = topo.name
    chosen = overlay or graph.default_overlay(plan)
    states: dict[str, dict[str, str]] | None = None
    if chosen == "bgp" and not any(ns.bgp is not None for ns in plan.namespaces.values()):
        err.print(f"[yellow]note:[/yellow] {plan.mode} runs no BGP: no sessions to draw")
    elif chosen == "bgp" and st is not None:
        if st.status != "ready":
            err.print(f"[yellow]note:[/yellow] lab {name} is {st.status}: sessions as planned")
        elif os.geteuid() != 0:
            # Reading FRR means entering the nodes' namespaces.
            err.print("[yellow]note:[/yellow] not root: sessions as planned, not their state")
        else:
            states = live_bgp_states(plan, {n: r.pid for n, r in st.namespaces.items()})
    picture = graph.build(topo, plan, pods, chosen, states, name)

    if output in IMAGES:
        data = _image(graph.to_dot(picture), output)
    else:
        text = graph.to_dot(picture) if output == "dot" else graph.to_mermaid(picture)
        if path is None:
            click.echo(text, nl=False)
            return
        data = text.encode()
    target = path or Path(f"{name}.{output}")
    try:
        target.write_bytes(data)
    except OSError as e:
        fail(f"-f {target}: cannot write it ({e.strerror})", 2)
    out.print(f"wrote {target} ({picture.title})", highlight=False, soft_wrap=True)


def _image(dot_text: str, fmt: str) -> bytes:
    """`dot_text` laid out by Graphviz as `fmt` (svg, png)."""
    proc = subprocess.run(
        ["dot", f"-T{fmt}"], input=dot_text.encode(), capture_output=True, timeout=120
    )
    if proc.returncode != 0:
        fail(f"dot -T{fmt} failed: {proc.stderr.decode(errors='replace').strip()}", 1)
    return proc.stdout
