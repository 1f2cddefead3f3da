"""`labctl trace`: walk one packet through the live lab, hop by hop, and prove the walk with
a real packet captured on every interface it names."""

from __future__ import annotations

import sys
from typing import Any

import click
from rich.markup import escape

from labctl import lifecycle, state, store
from labctl.capture import CAPTURE_ROOT, CaptureFailed
from labctl.cli.common import NAME, OUTPUT, emit_json, fail, guarded, out
from labctl.probe import default_port
from labctl.trace.capture import Proof, proof_json, prove
from labctl.trace.live import LiveReader
from labctl.trace.walk import PROTOCOLS, Endpoint, TraceInputError, resolve_endpoint, walk


def _port(dst: Endpoint, protocol: str, port: int | None, objects: store.Store) -> int | None:
    """The destination port: --port, else the Service's port, the pod's first port of that
    protocol, or 80 (what externals serve)."""
    if protocol == "icmp":
        if port is not None:
            raise TraceInputError("--port: ICMP has no ports; leave it out")
        return None
    if port is not None:
        return port
    if dst.kind == "service":
        return dst.port
    if dst.kind == "pod":
        return default_port(objects.pods[dst.name], protocol)
    return 80


def describe(packet: dict[str, Any]) -> str:
    """One line for a predicted or seen packet."""
    if not packet or "src" not in packet:
        return str(packet.get("problem") or packet.get("note") or "-")
    inner = f"{packet['src']} -> {packet['dst']}"
    encap = packet.get("encap", "bare")
    if encap == "vxlan":
        text = (
            f"VXLAN VNI {packet.get('vni')} UDP {packet.get('port')} "
            f"{packet.get('outer_src')} -> {packet.get('outer_dst')} [{inner}]"
        )
    elif encap == "udp":
        text = f"UDP {packet.get('port')} {packet.get('outer_src')} -> {packet.get('outer_dst')}"
        text += f" [{inner}]"
    elif encap == "ipip":
        text = f"IPIP {packet.get('outer_src')} -> {packet.get('outer_dst')} [{inner}]"
    else:
        text = f"{encap} {inner}"
    if packet.get("eth_dst"):
        text += f" to {packet['eth_dst']}"
    return text


def _print(proof: Proof, title: str) -> None:
    hops = proof.walk.hops
    out.print(f"[bold]{title}[/bold]", highlight=False, soft_wrap=True)
    ns_w = max(len(h.ns) for h in hops)
    dev_w = max(len(f"{h.in_dev or '-'} -> {h.out_dev or '-'}") for h in hops)
    act_w = max(len(h.action) for h in hops)
    for i, h in enumerate(hops, 1):
        devs = f"{h.in_dev or '-'} -> {h.out_dev or '-'}"
        line = f"{i:>2}  {h.ns:<{ns_w}}  {devs:<{dev_w}}  [bold]{h.action:<{act_w}}[/bold]  "
        out.print(line + escape(h.detail), highlight=False, soft_wrap=True)
    answer = f"[bold]one real packet: {escape(proof.answer.text)}[/bold]"
    out.print(answer, highlight=False, soft_wrap=True)
    cap_w = max(len(f"{h.ns}:{h.capture}") for h in hops)
    for i, h in enumerate(hops, 1):
        mark = "[green]ok  [/green]" if h.ok else "[red]FAIL[/red]"
        where = f"{h.ns}:{h.capture}" if h.capture else "-"
        seen = h.seen or {}
        shown = f"seen {seen.get('packets', 0)} pkt as predicted" if h.ok and "src" in seen else ""
        if not shown:
            shown = f"seen {describe(seen)}"
        text = f"{i:>2}  {mark}  {where:<{cap_w}}  {describe(h.predicted)}; {shown}"
        out.print(text, highlight=False, soft_wrap=True)
    if proof.endpoint:
        out.print(f"kube-proxy picked endpoint {proof.endpoint}", highlight=False)
    if proof.passed:
        out.print(
            f"[green]passed:[/green] {escape(proof.walk.reason)}", highlight=False, soft_wrap=True
        )
        return
    if not proof.walk.reached:
        out.print(
            f"[red]not delivered:[/red] {escape(proof.walk.reason)}",
            highlight=False,
            soft_wrap=True,
        )
    for i, h in enumerate(hops, 1):
        if not h.ok:
            problem = (h.seen or {}).get("problem", "not as predicted")
            where = f"{h.ns}:{h.capture}"
            out.print(
                f"[red]hop {i} failed:[/red] {where} ({h.action}): {escape(problem)}",
                highlight=False,
            )


@click.command(name="trace")
@NAME
@click.argument("src")
@click.argument("dst")
@click.option(
    "--protocol",
    type=click.Choice(PROTOCOLS),
    default=None,
    help="tcp (an HTTP GET), udp (a datagram) or icmp (one echo); default: tcp, or the "
    "Service port's protocol.",
)
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="Destination port.")
@OUTPUT
@guarded
def trace(
    lab: str | None, src: str, dst: str, protocol: str | None, port: int | None, output: str
) -> None:
    """Explain every hop from SRC to DST from live kernel state, then prove it: one real
    packet, captured on every interface of the walk.

    SRC: a pod (NS/POD), node, router or external host; DST: the same, svc/NS/NAME (its
    ClusterIP and first port) or an IP. Exit 1 when the packet does not arrive or a capture
    differs from the prediction.
    """
    lifecycle.check_environment()
    name = state.resolve(lab)
    st = state.load(name)
    plan = state.read_plan(name)
    objects = store.load(name)
    try:
        src_ep = resolve_endpoint(src, plan, objects, dst=False)
        dst_ep = resolve_endpoint(dst, plan, objects, dst=True)
        proto = protocol or dst_ep.protocol or "tcp"
        dport = _port(dst_ep, proto, port, objects)
        pids = {ns: rec.pid for ns, rec in st.namespaces.items()}
        predicted = walk(plan, objects, LiveReader(pids), src_ep, dst_ep, proto, dport)
    except TraceInputError as e:
        fail(str(e), 2)
    assert src_ep.ns is not None  # resolve_endpoint gives SRCs a namespace
    pod_ips = {key: pod.ip for key, pod in objects.pods.items()}
    try:
        proof = prove(
            name,
            predicted,
            pids,
            src_ep.ns,
            proto,
            dst_ep.ip,
            dport,
            CAPTURE_ROOT / name / "trace",
            pod_ips,
        )
    except CaptureFailed as e:
        fail(str(e), 1)
    if output == "json":
        emit_json(proof_json(proof, src_ep.name, dst_ep.name, proto, dport))
    else:
        where = f"{proto}/{dport}" if dport else proto
        title = (
            f"trace {src_ep.name} ({src_ep.ip}) -> {dst_ep.name} ({dst_ep.ip}) {where}, "
            f"lab {name} ({plan.mode})"
        )
        _print(proof, title)
    sys.exit(0 if proof.passed else 1)
