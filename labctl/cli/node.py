"""The live control plane's verbs: node stop|start, config set backend, restart agents."""

from __future__ import annotations

import click

from labctl import control, state
from labctl.cli.common import NAME, OUTPUT, emit_json, guarded, out
from labctl.controlplane.dynamics import BACKEND_CHOICES
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
    """Freeze and thaw a node's control plane (its agent and daemons)."""


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
