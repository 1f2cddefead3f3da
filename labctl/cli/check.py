"""Proving what the dataplane does: verify and probe."""

from __future__ import annotations

import ipaddress
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import click
from rich.table import Table

from labctl import lifecycle, state, store
from labctl.cli.common import NAME, OUTPUT, emit_json, guarded, out
from labctl.modes import get_mode
from labctl.pairs import ALL_PAIRS_UP_TO, How
from labctl.state import LabError


def _check_pod_cidr(value: str) -> None:
    try:
        net = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise LabError(
            f"--pod-cidr {value!r}: not a CIDR; write address/prefix, e.g. 10.244.0.0/16"
        ) from None
    if net.version != 4:
        raise LabError(f"--pod-cidr {value!r}: labctl checks IPv4 captures; give an IPv4 CIDR")


@click.command()
@NAME
@OUTPUT
@click.option(
    "--pcap",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Check this capture (e.g. from a real cluster) instead of a lab.",
)
@click.option("--mode", "pcap_mode", help="With --pcap: the mode the capture should show.")
@click.option(
    "--pod-cidr",
    default="10.244.0.0/16",
    show_default=True,
    help="With --pcap: the cluster's pod CIDR.",
)
@click.option("--no-mtu", is_flag=True, help="Skip the MTU checks.")
@click.option(
    "--pairs",
    "how",
    type=click.Choice(["auto", "all", "sample"]),
    default="auto",
    show_default=True,
    help="Pod pairs to probe: all, a covering sample (every pod both ways, a ring of nodes, "
    "every segment pair and policy class pair), or auto: all up to "
    f"{ALL_PAIRS_UP_TO} pairs, else the sample.",
)
@guarded
def verify(
    lab: str | None,
    output: str,
    pcap: Path | None,
    pcap_mode: str | None,
    pod_cidr: str,
    no_mtu: bool,
    how: How,
) -> None:
    """Probe pod pairs, capture the underlay and check the wire against the mode."""
    from labctl import verify as verify_mod

    if pcap is not None:
        if not pcap_mode:
            raise LabError("--pcap needs --mode MODE (see 'labctl modes')")
        _check_pod_cidr(pod_cidr)
        report = verify_mod.verify_pcap(pcap, get_mode(pcap_mode).name, pod_cidr)
    else:
        lifecycle.check_environment()
        name = state.resolve(lab)
        with out.status(f"verifying {name}") if output != "json" else nullcontext():
            report = verify_mod.verify(name, with_mtu=not no_mtu, how=how)
    if output == "json":
        emit_json(report.to_dict())
    else:
        t = Table(title=f"verify {report.lab} ({report.mode})")
        t.add_column("check")
        t.add_column("result")
        t.add_column("detail", overflow="fold")
        for c in report.checks:
            t.add_row(c.name, "[green]pass[/green]" if c.passed else "[red]FAIL[/red]", c.detail)
        out.print(t)
        for n in report.notes:
            out.print(f"[cyan]note:[/cyan] {n}", highlight=False)
        failed = sum(not c.passed for c in report.checks)
        verdict = (
            "[green]passed[/green]" if report.passed else f"[red]failed[/red] ({failed} checks)"
        )
        pcaps = sorted({c.pcap for c in report.checks if c.pcap})
        out.print(f"verify {verdict} in {report.seconds:.2f}s; pcaps: {', '.join(pcaps) or '-'}")
    sys.exit(0 if report.passed else 1)


@click.command()
@NAME
@OUTPUT
@click.option("--protocol", type=click.Choice(["tcp", "udp"]), default="tcp", show_default=True)
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Port to probe (default: each pod's first port of that protocol).",
)
@guarded
def probe(lab: str | None, output: str, protocol: str, port: int | None) -> None:
    """Probe every pod from every pod, in parallel; print the truth table (rows: sources,
    columns: destinations, '.' reachable, 'X' blocked) and compare it with what Kubernetes
    NetworkPolicy semantics say the mode should show. Exit 1 on any difference."""
    from labctl.policy.checks import expected, probe_timeout, truth_table
    from labctl.probe import probe as run_probe

    lifecycle.check_environment()
    st = state.load(state.resolve(lab))
    objects = store.load(st.lab)
    mode = get_mode(st.mode)
    expect = expected(objects, mode.enforces_policy, protocol, port)
    pids = {k: r.pid for k, r in st.namespaces.items()}
    pods = list(objects.pods.values())
    started = time.monotonic()
    results = run_probe(pods, pids, protocol, port, timeout=probe_timeout(expect), expect=expect)
    table = truth_table(objects, mode, protocol, port, expect, results, time.monotonic() - started)
    if output == "json":
        emit_json(table.to_dict())
        sys.exit(0 if table.passed else 1)
    t = Table(
        title=f"{protocol.upper()} probe {st.lab} ({st.mode}): rows from, columns to; "
        ". reachable, X blocked, ! differs from Kubernetes' answer",
        title_justify="left",
    )
    t.add_column("")
    for k in table.pods:
        t.add_column(k, justify="center")
    for src, cells in table.rows():
        t.add_row(src, *(f"[red]{c}[/red]" if c.endswith("!") else c for c in cells))
    out.print(t)
    for d in table.differences:
        want = "reachable" if d.expected else "blocked"
        out.print(
            f"  [red]![/red] {d.src} -> {d.dst}: expected {want}, got {d.detail}", highlight=False
        )
    if table.note:
        out.print(f"[yellow]note:[/yellow] {table.note}", highlight=False)
    verdict = (
        "[green]as expected[/green]"
        if table.passed
        else f"[red]{len(table.differences)} differ[/red]"
    )
    out.print(f"{table.pairs} pairs in {table.seconds:.2f}s, {verdict}")
    sys.exit(0 if table.passed else 1)
