"""The `labctl` command line: one function per verb, rich output for people, `-o json` for
machines. Exit codes: 0 ok, 1 a check or probe failed, 2 bad usage or input, 3 the machine
lacks something."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.table import Table

from labctl import lifecycle, state
from labctl.features import BadDatapath, MissingFeature, resolve_datapath
from labctl.modes import DATAPATHS, MODES, UnknownModeError, get_mode
from labctl.nsutil import nsenter_argv
from labctl.state import LAB_ENV, LabError
from labctl.topology import TopologyError, load_topology, resolve_path

out = Console()
err = Console(stderr=True)

OUTPUT = click.option(
    "-o", "--output", type=click.Choice(["table", "json"]), default="table", help="Output format."
)
NAME = click.option(
    "-n", "--name", "lab", default=None, help="Lab name (default: the only lab up)."
)


def fail(message: str, code: int) -> NoReturn:
    """One line on stderr, then the exit code."""
    err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    sys.exit(code)


def guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Map the project's exceptions to one-line errors and the contract's exit codes."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (TopologyError, UnknownModeError, BadDatapath) as e:
            fail(str(e), 2)
        except LabError as e:
            fail(str(e), getattr(e, "exit_code", 2))
        except (lifecycle.EnvironmentProblem, MissingFeature) as e:
            fail(str(e), 3)

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


def emit_json(doc: Any) -> None:
    """Print `doc` as indented JSON on stdout (the `-o json` form of every verb)."""
    click.echo(json.dumps(doc, indent=2, default=str))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="labctl")
def main() -> None:
    """Build Kubernetes CNI dataplanes (Flannel, Calico) in network namespaces and prove on
    the wire how they move packets."""


@main.command()
@OUTPUT
@guarded
def modes(output: str) -> None:
    """List the dataplane modes."""
    if output == "json":
        emit_json(
            [
                {
                    "name": m.name,
                    "cni": m.cni,
                    "summary": m.summary,
                    "wire": m.wire,
                    "podMTU": m.pod_mtu(),
                    "enforcesPolicy": m.enforces_policy,
                }
                for m in MODES.values()
            ]
        )
        return
    t = Table(title="labctl modes")
    for col in ("mode", "node datapath", "on the wire", "pod MTU"):
        t.add_column(col)
    for m in MODES.values():
        t.add_row(m.name, m.summary, m.wire, str(m.pod_mtu()))
    out.print(t)


@main.command()
@click.argument("mode")
@click.option(
    "-t",
    "--topology",
    default="default",
    show_default=True,
    help="Topology file, or the name of one in topologies/.",
)
@click.option("-n", "--name", "lab", default=None, help="Lab name (default: the topology's name).")
@click.option(
    "--datapath",
    type=click.Choice(["auto", *DATAPATHS]),
    default="auto",
    show_default=True,
    help="For modes that need a kernel device this kernel may lack (ipip): kernel, "
    "userspace (TUN + raw socket, same bytes on the wire), or auto.",
)
@OUTPUT
@guarded
def up(mode: str, topology: str, lab: str | None, datapath: str, output: str) -> None:
    """Build a lab in MODE and wait until it is ready; the lab keeps running."""
    m = get_mode(mode)
    path = resolve_path(topology)
    topo = load_topology(path)
    lab = state.check_lab_name(lab or topo.name)
    lifecycle.check_environment()
    chosen, why = resolve_datapath(m.kernel_feature, datapath)
    m.plan(topo, chosen)  # a plan that cannot be made is bad input: fail before building
    started = time.monotonic()
    if output == "json":
        st = lifecycle.up(
            lab, m.name, path, topo.name, lambda _: None, chosen, [why] if why else []
        )
    else:
        with out.status(f"bringing up {lab} ({m.name})") as status:
            st = lifecycle.up(
                lab,
                m.name,
                path,
                topo.name,
                lambda p: status.update(f"{lab}: {p}"),
                chosen,
                [why] if why else [],
            )
    took = time.monotonic() - started
    if output == "json":
        emit_json(
            {
                "lab": lab,
                "mode": m.name,
                "datapath": st.datapath,
                "seconds": round(took, 3),
                "warnings": st.warnings,
                "notes": st.notes,
            }
        )
        return
    for w in st.warnings:
        err.print(f"[yellow]warning:[/yellow] {w}", highlight=False, soft_wrap=True)
    for n in st.notes:
        out.print(f"[cyan]note:[/cyan] {n}", highlight=False)
    out.print(
        f"[green]lab {lab} is up[/green] in {took:.2f}s: {m.name} on {path.name}, "
        f"{sum(1 for r in st.namespaces.values() if r.role == 'node')} nodes, "
        f"{sum(1 for r in st.namespaces.values() if r.role == 'pod')} pods. "
        f"Next: labctl verify -n {lab}"
    )


@main.command()
@NAME
@click.option("--all", "all_", is_flag=True, help="Remove every lab, including crashed ones.")
@OUTPUT
@guarded
def down(lab: str | None, all_: bool, output: str) -> None:
    """Remove everything a lab created."""
    lifecycle.check_environment()
    if all_:
        labs = sorted(set(state.list_labs()) | set(lifecycle.stale_netns()))
    else:
        name = state.check_lab_name(lab) if lab else None
        if name and name not in state.list_labs() and name not in lifecycle.stale_netns():
            raise LabError(f"no lab named {name!r} is up (see 'labctl status')")
        labs = [name or state.resolve(None)]
    done = {lab_: lifecycle.down(lab_) for lab_ in labs}
    if output == "json":
        emit_json({"removed": done})
    elif not labs:
        out.print("no labs are up")
    for lab_ in done if output != "json" else []:
        out.print(f"[green]lab {lab_} is down[/green]")


@main.command()
@NAME
@OUTPUT
@guarded
def status(lab: str | None, output: str) -> None:
    """Show the lab: mode, nodes, routers, pods (for people, every lab when -n is not given)."""
    if output == "json":
        # One document, for the one lab meant (the contract: -n, or the only lab up).
        emit_json(_status_doc(state.resolve(lab)))
        return
    names = [state.resolve(lab)] if lab else state.list_labs()
    if not names:
        out.print("no labs are up")
        return
    docs = [_status_doc(n) for n in names]
    for doc in docs:
        out.print(
            f"[bold]lab {doc['lab']}[/bold]: {doc['mode']} on {doc['topology']} "
            f"({doc['status']}"
            + (f", ready in {doc['readySeconds']}s" if doc["readySeconds"] else "")
            + ")"
        )
        for w in doc["warnings"]:
            out.print(f"  [yellow]warning:[/yellow] {w}", highlight=False)
        for n in doc["notes"]:
            out.print(f"  [cyan]note:[/cyan] {n}", highlight=False)
        t = Table("node", "ip", "podCIDR", "gateway")
        for n in doc["nodes"]:
            t.add_row(n["name"], n["ip"], n["podCIDR"], n["gateway"] or "-")
        for r in doc["routers"]:
            t.add_row(f"{r['name']} (router)", ", ".join(r["interfaces"]), "-", "-")
        out.print(t)
        t = Table("pod", "node", "ip", "labels", "ports")
        for p in doc["pods"]:
            labels = ",".join(f"{k}={v}" for k, v in p["labels"].items())
            t.add_row(
                f"{p['namespace']}/{p['name']}", p["node"], p["ip"], labels, " ".join(p["ports"])
            )
        out.print(t)


def _status_doc(lab: str) -> dict[str, Any]:
    st = state.load(lab)
    topo = load_topology(st.topology)
    return {
        "lab": lab,
        "mode": st.mode,
        "topology": st.topology_name,
        "status": st.status,
        "datapath": st.datapath,
        "readySeconds": st.ready_after,
        "warnings": st.warnings,
        "notes": st.notes,
        "nodes": [
            {
                "name": n,
                "ip": str(node.ip),
                "podCIDR": str(topo.node_pod_cidrs[n]),
                "segment": node.segment,
                "gateway": str(topo.node_gateway(n) or "") or None,
            }
            for n, node in topo.nodes.items()
        ],
        "routers": [
            {
                "name": r,
                "interfaces": [f"{s}:{ip}" for s, ip in router.interfaces.items()],
                "asn": router.asn,
            }
            for r, router in topo.routers.items()
        ],
        "pods": [
            {
                "name": p.name,
                "namespace": p.namespace,
                "node": p.node,
                "ip": str(topo.pod_ips[p.key]),
                "labels": p.labels,
                "ports": [f"{x.containerPort}/{x.protocol}" for x in p.ports],
            }
            for p in topo.pods
        ],
        "processes": st.processes,
    }


@main.command(name="exec", context_settings={"ignore_unknown_options": True})
@NAME
@click.argument("target")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@guarded
def exec_(lab: str | None, target: str, command: tuple[str, ...]) -> None:
    """Run COMMAND inside TARGET (node, router or NS/POD), like kubectl exec.

    Streams are passed through unchanged and the exit code is COMMAND's:
    labctl exec node1 -- tcpdump -w - | wireshark -k -i -
    """
    lifecycle.check_environment()
    name = state.resolve(lab)
    st = state.load(name)
    pid = st.pid_of(target)
    os.environ[LAB_ENV] = name  # so 'down' can find anything started here
    argv = nsenter_argv(pid, list(command))
    os.execvp(argv[0], argv)


@main.command()
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
@guarded
def verify(
    lab: str | None,
    output: str,
    pcap: Path | None,
    pcap_mode: str | None,
    pod_cidr: str,
    no_mtu: bool,
) -> None:
    """Probe every pod pair, capture the underlay and check the wire against the mode."""
    from labctl import verify as verify_mod

    if pcap is not None:
        if not pcap_mode:
            raise LabError("--pcap needs --mode MODE (see 'labctl modes')")
        report = verify_mod.verify_pcap(pcap, get_mode(pcap_mode).name, pod_cidr)
    else:
        lifecycle.check_environment()
        name = state.resolve(lab)
        with out.status(f"verifying {name}") if output != "json" else nullcontext():
            report = verify_mod.verify(name, with_mtu=not no_mtu)
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


@main.command()
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
    """Probe every pod from every pod; print the reachability matrix."""
    from labctl.probe import default_port
    from labctl.probe import probe as run_probe

    lifecycle.check_environment()
    st = state.load(state.resolve(lab))
    topo = load_topology(st.topology)
    pids = {k: r.pid for k, r in st.namespaces.items()}
    results = run_probe(topo, pids, protocol, port)
    matrix: dict[str, dict[str, bool]] = {p.key: {} for p in topo.pods}
    for r in results:
        matrix[r.src][r.dst] = r.ok
    ok = all(r.ok for r in results)
    if output == "json":
        emit_json(
            {
                "protocol": protocol,
                "port": port or (default_port(topo.pods[0], protocol) if topo.pods else None),
                "matrix": matrix,
                "failures": [
                    {"src": r.src, "dst": r.dst, "detail": r.detail} for r in results if not r.ok
                ],
            }
        )
    else:
        keys = [p.key for p in topo.pods]
        t = Table(title=f"{protocol.upper()} probe, {st.lab} ({st.mode}): . reachable, X not")
        t.add_column("from \\ to")
        for i, _ in enumerate(keys):
            t.add_column(str(i), justify="center")
        for i, src in enumerate(keys):
            t.add_row(
                f"{i} {src}",
                *(
                    "-" if src == dst else ("." if matrix[src][dst] else "[red]X[/red]")
                    for dst in keys
                ),
            )
        out.print(t)
        for r in results:
            if not r.ok:
                out.print(f"  [red]X[/red] {r.src} -> {r.dst}: {r.detail}", highlight=False)
    sys.exit(0 if ok else 1)


@main.command()
@NAME
@click.argument("target")
@click.option(
    "-w",
    "--write",
    "outfile",
    default=None,
    help="pcap file to write ('-' for stdout; default: captures/<lab>/<target>.pcap).",
)
@click.option("--filter", "bpf", default=None, help="BPF capture filter, e.g. 'udp port 8472'.")
@click.option(
    "--duration",
    type=click.FloatRange(0.1, 3600),
    default=None,
    help="Stop after S seconds (default: until Ctrl-C).",
)
@guarded
def capture(
    lab: str | None, target: str, outfile: str | None, bpf: str | None, duration: float | None
) -> None:
    """Capture TARGET[:IFACE] (default interface eth0) to a pcap."""
    import signal
    import subprocess

    from labctl.capture import CAPTURE_ROOT, tcpdump_argv

    lifecycle.check_environment()
    name = state.resolve(lab)
    st = state.load(name)
    node, _, iface = target.partition(":")
    iface = iface or "eth0"
    pid = st.pid_of(node)
    if outfile is None:
        path = CAPTURE_ROOT / name / f"{node.replace('/', '_')}-{iface}.pcap"
        path.parent.mkdir(parents=True, exist_ok=True)
        outfile = str(path)
    argv = tcpdump_argv(pid, iface, outfile, bpf, snaplen=0)
    env = dict(os.environ, **{LAB_ENV: name})
    proc = subprocess.Popen(argv, env=env)
    try:
        proc.wait(duration)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        proc.wait()
    except KeyboardInterrupt:
        proc.wait()
    if outfile != "-":
        err.print(f"wrote {outfile}")
    sys.exit(0 if proc.returncode in (0, -signal.SIGINT, 130) else proc.returncode)


@main.command()
@click.option(
    "--modes",
    "modes_",
    default="flannel-vxlan,flannel-host-gw",
    show_default=True,
    help="Comma-separated modes to measure.",
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
@OUTPUT
@guarded
def bench(modes_: str, nodes: int, pods_per_node: int, iperf: int | None, output: str) -> None:
    """Measure up, verify and down on the default topology and a generated large one;
    with --iperf, pod-to-pod throughput per mode instead."""
    from labctl import bench as bench_mod

    lifecycle.check_environment()
    names = [get_mode(m.strip()).name for m in modes_.split(",") if m.strip()]
    if "bench" in state.list_labs():
        raise LabError("a lab named 'bench' is up; 'labctl down -n bench' first")
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


if __name__ == "__main__":
    main()
