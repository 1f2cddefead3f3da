"""Kubernetes objects in a running lab, kubectl style: apply, delete, get, label.

`-n` is the lab's name, as in every labctl verb; a Kubernetes namespace is `--namespace`."""

from __future__ import annotations

import sys
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
    """Create or update NetworkPolicies from manifests (multi-document YAML). Nothing is
    applied if any document is invalid."""
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
    """List stored objects, like kubectl get (RESOURCE: networkpolicies, netpol)."""
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
    t = Table(box=None, header_style="bold")
    cols = ["NAMESPACE"] if ns is None else []
    cols += ["NAME", "POD-SELECTOR"]
    if output == "wide":
        cols += ["POLICY-TYPES"]
    cols += ["AGE"]
    for c in cols:
        t.add_column(c)
    for item in items:
        row = [item["metadata"]["namespace"]] if ns is None else []
        row += [item["metadata"]["name"], _selector(item["spec"].get("podSelector", {}))]
        if output == "wide":
            row.append(",".join(item["spec"].get("policyTypes", [])))
        row.append(_age(item["metadata"].get("creationTimestamp")))
        t.add_row(*row)
    out.print(t)


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
