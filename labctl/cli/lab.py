"""Lab lifecycle verbs: modes, up, down, status."""

from __future__ import annotations

import time
from typing import Any

import click
from rich.table import Table

from labctl import lifecycle, state, store
from labctl.cli.common import NAME, OUTPUT, emit_json, err, guarded, out
from labctl.features import resolve_datapath
from labctl.modes import DATAPATHS, MODES, get_mode
from labctl.services.apply import PROXY_MODES, check_proxy_mode
from labctl.state import LabError
from labctl.topology import load_topology, resolve_path


@click.command()
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
                    "parts": {
                        "podNetwork": m.network.name,
                        "policy": m.policy.name if m.policy else None,
                    },
                }
                for m in MODES.values()
            ]
        )
        return
    t = Table(title="labctl modes")
    for col in ("mode", "node datapath", "on the wire", "pod MTU", "NetworkPolicy"):
        t.add_column(col)
    for m in MODES.values():
        enforced = f"enforced ({m.policy.name})" if m.policy else "not enforced"
        t.add_row(m.name, m.summary, m.wire, str(m.pod_mtu()), enforced)
    out.print(t)


@click.command()
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
    help="For modes that need a kernel device this kernel may lack (ipip): kernel, bpf "
    "(TC-BPF programs, kernel speed), userspace (TUN + raw socket, last resort), or auto: "
    "the fastest this kernel has. All put the same bytes on the wire.",
)
@click.option(
    "--proxy-mode",
    type=click.Choice(PROXY_MODES),
    default="nftables",
    show_default=True,
    help="kube-proxy's mode on every node: nftables (the kube-proxy table) or iptables "
    "(KUBE-* chains); ipvs only where the kernel has IPVS.",
)
@OUTPUT
@guarded
def up(
    mode: str, topology: str, lab: str | None, datapath: str, proxy_mode: str, output: str
) -> None:
    """Build a lab in MODE and wait until it is ready; the lab keeps running."""
    m = get_mode(mode)
    check_proxy_mode(proxy_mode)
    path = resolve_path(topology)
    topo = load_topology(path)
    lab = state.check_lab_name(lab or topo.name)
    lifecycle.check_environment()
    chosen, why = resolve_datapath(m.kernel_feature, datapath)
    notes = [why] if why else []
    started = time.monotonic()
    if output == "json":
        st = lifecycle.up(lab, m, path, topo, lambda _: None, chosen, notes, proxy_mode)
    else:
        with out.status(f"bringing up {lab} ({m.name})") as status:
            st = lifecycle.up(
                lab,
                m,
                path,
                topo,
                lambda p: status.update(f"{lab}: {p}"),
                chosen,
                notes,
                proxy_mode,
            )
    took = time.monotonic() - started
    if output == "json":
        emit_json(
            {
                "lab": lab,
                "mode": m.name,
                "datapath": st.datapath,
                "proxyMode": st.proxy_mode,
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
        f"[green]lab {lab} is up[/green] in {took:.2f}s: {m.name} on {path.name} "
        f"(datapath {st.datapath}), "
        f"{sum(1 for r in st.namespaces.values() if r.role == 'node')} nodes, "
        f"{sum(1 for r in st.namespaces.values() if r.role == 'pod')} pods. "
        f"Next: labctl verify -n {lab}"
    )


@click.command()
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


@click.command()
@NAME
@OUTPUT
@guarded
def status(lab: str | None, output: str) -> None:
    """Show the lab: mode, nodes, routers, external hosts, pods (for people, every lab when -n
    is not given)."""
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
            f"({doc['status']}, datapath {doc['datapath']}"
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
        for x in doc["externals"]:
            t.add_row(f"{x['name']} (external)", x["ip"], "-", x["gateway"] or "-")
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
    objects = store.load(lab)
    return {
        "lab": lab,
        "mode": st.mode,
        "topology": st.topology_name,
        "status": st.status,
        "datapath": st.datapath,
        "proxyMode": st.proxy_mode,
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
        "externals": [
            {
                "name": x,
                "ip": str(ext.ip),
                "segment": ext.segment,
                "gateway": str(topo.external_gateway(x) or "") or None,
            }
            for x, ext in topo.externals.items()
        ],
        "namespaces": [{"name": n, "labels": ns.labels} for n, ns in objects.namespaces.items()],
        "pods": [
            {
                "name": p.name,
                "namespace": p.namespace,
                "node": p.node,
                "ip": p.ip,
                "labels": p.labels,
                "ports": [f"{x.containerPort}/{x.protocol}" for x in p.ports],
            }
            for p in objects.pods.values()
        ],
        "networkPolicies": len(objects.networkpolicies),
        "enforcesPolicy": get_mode(st.mode).enforces_policy,
        "processes": st.processes,
    }
