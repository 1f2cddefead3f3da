"""Kubernetes objects in a running lab, kubectl style: apply, delete, get, label.

`-n` is the lab's name, as in every labctl verb; a Kubernetes namespace is `--namespace`."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, Literal

import click
import yaml
from pydantic import BaseModel
from rich.table import Table

from labctl import apiserver, lifecycle, state
from labctl.apiserver import Outcome
from labctl.cli.common import NAME, emit_json, err, guarded, out
from labctl.k8s.manifests import parse_objects, read_documents

FILES = click.option(
    "-f",
    "--filename",
    "files",
    multiple=True,
    required=True,
    help="Manifest file, directory (its *.yaml, *.yml, *.json) or '-' for stdin; repeatable.",
)


def _objects(files: tuple[str, ...]) -> list[BaseModel]:
    docs = [d for f in files for d in read_documents(f, sys.stdin if f == "-" else None)]
    return parse_objects(docs)


def _report(outcome: Outcome) -> None:
    for line in outcome.lines:
        out.print(line, highlight=False)
    for w in outcome.warnings:
        err.print(f"[yellow]warning:[/yellow] {w}", highlight=False, soft_wrap=True)
    if outcome.pods_seconds is not None:
        err.print(f"pods wired by the node agents in {outcome.pods_seconds * 1000:.0f} ms")
    if outcome.proxy_seconds is not None and outcome.lines:
        err.print(
            f"kube-proxy rules loaded on every node in {outcome.proxy_seconds * 1000:.0f} ms "
            f"({outcome.proxy_rules} rules)",
            highlight=False,
        )
    if outcome.enforced_seconds is not None:
        err.print(
            f"enforced on every node in {outcome.enforced_seconds * 1000:.0f} ms "
            f"({outcome.rules} nft rules)",
            highlight=False,
        )


@click.command()
@NAME
@FILES
@guarded
def apply(lab: str | None, files: tuple[str, ...]) -> None:
    """Create or update Pods, Deployments, Services and NetworkPolicies from manifests
    (multi-document YAML). Nothing is applied if any document is invalid."""
    objs = _objects(files)  # validated before the lab is touched
    lifecycle.check_environment()
    _report(apiserver.apply(state.resolve(lab), objs))


@click.command()
@NAME
@FILES
@click.option("--ignore-not-found", is_flag=True, help="Treat a missing object as deleted.")
@guarded
def delete(lab: str | None, files: tuple[str, ...], ignore_not_found: bool) -> None:
    """Delete the objects the manifests name (kind, namespace, name)."""
    objs = _objects(files)
    lifecycle.check_environment()
    _report(apiserver.delete(state.resolve(lab), objs, ignore_not_found))


@click.command()
@NAME
@click.argument("resource")
@click.option(
    "--namespace", "namespace", default=None, help="Kubernetes namespace (default: default)."
)
@click.option("-A", "--all-namespaces", is_flag=True, help="Objects of every namespace.")
@click.option(
    "-o", "--output", type=click.Choice(["table", "wide", "json", "yaml"]), default="table"
)
@guarded
def get(
    lab: str | None, resource: str, namespace: str | None, all_namespaces: bool, output: str
) -> None:
    """List the lab's objects, like kubectl get (RESOURCE: pods, deployments, services,
    endpointslices, networkpolicies; short names po, deploy, svc, netpol)."""
    kind = apiserver.resource(resource)
    ns = None if all_namespaces else (namespace or "default")
    items = apiserver.get(state.resolve(lab), kind, ns)
    if output in ("json", "yaml"):
        doc = {"apiVersion": "v1", "kind": "List", "items": items, "metadata": {}}
        if output == "json":
            emit_json(doc)
        else:
            click.echo(yaml.safe_dump(doc, sort_keys=False), nl=False)
        return
    if not items:
        where = "any namespace" if ns is None else f"namespace {ns}"
        err.print(f"No resources found in {where}.")
        return
    columns = COLUMNS[kind]
    t = Table(box=None, header_style="bold")
    names = (["NAMESPACE"] if ns is None else []) + [
        c for c, _, wide_only in columns if output == "wide" or not wide_only
    ]
    rows = []
    for item in items:
        row = [item["metadata"]["namespace"]] if ns is None else []
        row += [cell(item) for _, cell, wide_only in columns if output == "wide" or not wide_only]
        rows.append(row)
    for i, c in enumerate(names):
        # kubectl never shortens a name: columns keep their widest cell even on a narrow screen.
        t.add_column(c, no_wrap=True, min_width=max(len(c), *(len(r[i]) for r in rows)))
    for row in rows:
        t.add_row(*row)
    out.print(t, crop=False)


def _name(item: dict[str, Any]) -> str:
    return str(item["metadata"]["name"])


def _created(item: dict[str, Any]) -> str:
    return _age(item["metadata"].get("creationTimestamp"))


def _replicas(item: dict[str, Any]) -> str:
    return f"{item['status']['readyReplicas']}/{item['spec'].get('replicas', 1)}"


def _service_ports(item: dict[str, Any]) -> str:
    ports = []
    for p in item["spec"]["ports"]:
        node = f":{p['nodePort']}" if p.get("nodePort") else ""
        ports.append(f"{p['port']}{node}/{p.get('protocol', 'TCP')}")
    return ",".join(ports)


def _endpoints(item: dict[str, Any]) -> str:
    addrs = [a for e in item.get("endpoints") or [] for a in e["addresses"]]
    more = f" + {len(addrs) - 3} more..." if len(addrs) > 3 else ""
    return ",".join(addrs[:3]) + more if addrs else "<unset>"


def _labels(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in labels.items()) or "<none>"


#: Per resource, kubectl's columns: (header, cell, shown only with -o wide).
COLUMNS: dict[str, list[tuple[str, Callable[[dict[str, Any]], str], bool]]] = {
    "networkpolicies": [
        ("NAME", _name, False),
        ("POD-SELECTOR", lambda i: _selector(i["spec"].get("podSelector", {})), False),
        ("POLICY-TYPES", lambda i: ",".join(i["spec"].get("policyTypes", [])), True),
        ("AGE", _created, False),
    ],
    "pods": [
        ("NAME", _name, False),
        ("READY", lambda i: "1/1", False),
        ("STATUS", lambda i: str(i["status"]["phase"]), False),
        ("RESTARTS", lambda i: "0", False),
        ("AGE", _created, False),
        ("IP", lambda i: str(i["status"]["podIP"]), True),
        ("NODE", lambda i: str(i["spec"]["nodeName"]), True),
    ],
    "services": [
        ("NAME", _name, False),
        ("TYPE", lambda i: str(i["spec"]["type"]), False),
        ("CLUSTER-IP", lambda i: str(i["spec"].get("clusterIP", "<none>")), False),
        ("EXTERNAL-IP", lambda i: ",".join(i["spec"].get("externalIPs", [])) or "<none>", False),
        ("PORT(S)", _service_ports, False),
        ("AGE", _created, False),
        ("SELECTOR", lambda i: _labels(i["spec"].get("selector") or {}), True),
    ],
    "endpointslices": [
        ("NAME", _name, False),
        ("ADDRESSTYPE", lambda i: str(i["addressType"]), False),
        (
            "PORTS",
            lambda i: ",".join(str(p["port"]) for p in i.get("ports") or []) or "<unset>",
            False,
        ),
        ("ENDPOINTS", _endpoints, False),
        ("AGE", _created, False),
    ],
    "deployments": [
        ("NAME", _name, False),
        ("READY", _replicas, False),
        ("UP-TO-DATE", lambda i: str(i["status"]["updatedReplicas"]), False),
        ("AVAILABLE", lambda i: str(i["status"]["availableReplicas"]), False),
        ("AGE", _created, False),
        ("SELECTOR", lambda i: _selector(i["spec"]["selector"]), True),
    ],
}


def _selector(sel: dict[str, Any]) -> str:
    from labctl.k8s.meta import LabelSelector

    return LabelSelector.model_validate(sel).describe() or "<none>"


def _age(created: str | None) -> str:
    from datetime import UTC, datetime

    if not created:
        return "<unknown>"
    secs = int((datetime.now(UTC) - datetime.fromisoformat(created)).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return f"{secs // size}{unit}"
    return f"{secs}s"


@click.command()
@NAME
@click.argument("kind", type=click.Choice(["namespace", "ns", "pod", "pods"]))
@click.argument("target")
@click.argument("labels", nargs=-1, required=True)
@click.option("--overwrite", is_flag=True, help="Allow changing a label that already has a value.")
@guarded
def label(
    lab: str | None, kind: str, target: str, labels: tuple[str, ...], overwrite: bool
) -> None:
    """Set (k=v) or remove (k-) labels: `label namespace NS k=v`, `label pod NS/POD k-`.
    Policies are re-evaluated on every node at once."""
    lifecycle.check_environment()
    which: Literal["namespace", "pod"] = "namespace" if kind in ("namespace", "ns") else "pod"
    _report(apiserver.label(state.resolve(lab), which, target, labels, overwrite))


@click.command()
@NAME
@click.argument("kind", type=click.Choice(["deployment", "deployments", "deploy"]))
@click.argument("target")
@click.option("--replicas", type=click.IntRange(min=0), required=True, help="Desired pods.")
@click.option(
    "--namespace", "namespace", default="default", help="Kubernetes namespace (default: default)."
)
@guarded
def scale(lab: str | None, kind: str, target: str, replicas: int, namespace: str) -> None:
    """Set a Deployment's replicas: `scale deployment NAME --replicas N`. Pods are added and
    removed on the nodes before this returns."""
    lifecycle.check_environment()
    _report(apiserver.scale(state.resolve(lab), namespace, target, replicas))
