"""The live control plane's verbs: node add|remove|stop|start, config set backend, restart
agents."""

from __future__ import annotations

import click

from labctl import control, state
from labctl.cli.common import NAME, OUTPUT, emit_json, err, guarded, out
from labctl.controlplane.dynamics import BACKEND_CHOICES, switch_refusal
from labctl.modes.flannel import VXLAN_DEV
from labctl.state import LabError


def _lab_with_node(lab: str | None, node: str) -> str:
    name = state.resolve(lab)
    st = state.load(name)
    nodes = [n for n, r in st.namespaces.items() if r.role == "node"]
    if node not in nodes:
        raise LabError(f"NAME {node!r} is not a node of lab {name}; pick one of {', '.join(nodes)}")
    return name


@click.group()
def node() -> None:
    """Nodes of a running lab: add and remove them live (every mode), freeze and thaw their
    control plane (stop, start)."""


@node.command()
@NAME
@OUTPUT
@click.argument("name")
@click.option("--segment", required=True, help="The segment the node plugs into.")
@click.option("--ip", required=True, help="The node's address, a free host address of SEGMENT.")
@click.option(
    "--pod-cidr",
    default=None,
    help="The node's pod CIDR (default: the next free one of cluster.podCIDR, as allocated at up).",
)
@guarded
def add(
    lab: str | None, output: str, name: str, segment: str, ip: str, pod_cidr: str | None
) -> None:
    """Join node NAME to the running lab: its namespace, its link to SEGMENT, its share of the
    plan and its daemons. Flannel and canal: its agent takes a subnet lease and the other
    agents program it from their lease watch; calico-ipip/-vxlan: its calico-node writes its
    Node record and claims its block, and the other calico-nodes program its route and VTEP;
    calico-bgp: its FRR peers with the mesh or route reflectors and the others gain it as a
    neighbour. Returns once every other node has its routes; new Deployment pods may land on
    it."""
    from labctl import apiserver

    reply = apiserver.add_node(state.resolve(lab), name, segment, ip, pod_cidr)
    if output == "json":
        emit_json(reply)
        return
    out.print(
        f"node/{name} joined: {reply['ip']} on {segment}, pod CIDR {reply['podCIDR']}; every "
        f"other node has its routes ({reply['by']}) {reply['converged']:.2f}s after it started "
        f"({reply['seconds']:.2f}s in all)",
        highlight=False,
    )


@node.command()
@NAME
@OUTPUT
@click.argument("name")
@click.option(
    "--force",
    is_flag=True,
    help="Also delete pods no Deployment manages (kubectl drain --force); without it they "
    "make the drain refuse.",
)
@guarded
def remove(lab: str | None, output: str, name: str, force: bool) -> None:
    """Drain node NAME and remove it, as kubectl drain and kubectl delete node: its Deployment
    pods are replaced on the other nodes, bare pods refuse the drain unless --force deletes
    them; then its daemons stop, its lease (flannel, canal) or its Node, block and affinity
    records (Calico) are deleted and its BGP sessions close, the others drop its routes and
    VTEP, and its namespace goes. The last node and the only route reflector are refused."""
    from labctl import apiserver

    outcome, reply = apiserver.remove_node(state.resolve(lab), name, force)
    if output == "json":
        emit_json({"drain": outcome.lines, "warnings": outcome.warnings, **reply})
        return
    for w in outcome.warnings:
        err.print(f"[yellow]Warning:[/yellow] {w}", highlight=False)
    for line in outcome.lines:
        out.print(line, highlight=False)
    out.print(
        f"node/{name} removed: its routes gone from every other node ({reply['by']}) "
        f"{reply['converged']:.2f}s after it stopped ({reply['seconds']:.2f}s in all)",
        highlight=False,
    )


def _freeze(lab: str | None, name: str, action: str, output: str) -> None:
    lab_name = _lab_with_node(lab, name)
    reply = control.request(lab_name, "node", name=name, action=action)
    if output == "json":
        emit_json(reply)
        return
    verb = "stopped (agent and daemons frozen)" if action == "stop" else "started again"
    out.print(f"node {name} {verb}: {reply['processes']} process(es)")


@node.command()
@NAME
@OUTPUT
@click.argument("name")
@guarded
def stop(lab: str | None, output: str, name: str) -> None:
    """SIGSTOP NAME's agent and daemons: its lease expires and the others drop its routes."""
    _freeze(lab, name, "stop", output)


@node.command()
@NAME
@OUTPUT
@click.argument("name")
@guarded
def start(lab: str | None, output: str, name: str) -> None:
    """SIGCONT NAME's agent and daemons: it renews its lease and the others program it again."""
    _freeze(lab, name, "start", output)


@click.group()
def config() -> None:
    """Change the lab's network config in etcd (/coreos.com/network/config)."""


@config.command(name="set")
@NAME
@OUTPUT
@click.argument("key", type=click.Choice(["backend"]))
@click.argument("value", type=click.Choice(BACKEND_CHOICES))
@guarded
def set_(lab: str | None, output: str, key: str, value: str) -> None:
    """Switch the flannel backend in place: the agents restart with it; what the old backend
    made (flannel.1) stays, as flanneld leaves it, and verify points it out."""
    name = state.resolve(lab)
    # Refused here, as bad input (exit 2), before the supervisor is asked: the lab's mode and
    # the devices its plan gave the nodes say whether the agents can switch in place.
    mode = state.load(name).mode
    nodes = state.read_plan(name).node_ns()
    refused = switch_refusal(
        mode,
        f"flannel-{value}",
        lambda: all(any(link.name == VXLAN_DEV for link in ns.links) for ns in nodes),
    )
    if refused:
        raise LabError(refused)
    reply = control.request(name, "set-backend", value=value)
    if output == "json":
        emit_json(reply)
        return
    out.print(
        f"backend {reply['from']} -> {reply['to']}: agents restarted, every peer programmed "
        f"again in {reply['converged']:.2f}s"
    )


@click.command()
@NAME
@OUTPUT
@click.argument("what", type=click.Choice(["agents"]))
@guarded
def restart(lab: str | None, output: str, what: str) -> None:
    """Restart every node's agent (each re-reads the network config from etcd)."""
    name = state.resolve(lab)
    reply = control.request(name, "restart-agents")
    if output == "json":
        emit_json(reply)
        return
    out.print(f"agents restarted; every peer programmed again in {reply['converged']:.2f}s")
