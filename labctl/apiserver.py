"""What the Kubernetes API server and the node agents do for `apply`, `delete` and `label`:
validate against the lab's live objects, change the store, and (where the mode's policy part
enforces NetworkPolicy) recompile and program every node before the change is recorded.

All or nothing: an invalid object, an unknown namespace or a ruleset nft refuses leaves the
store and the nodes as they were.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel

from labctl import state, store
from labctl.k8s.meta import parse_label_args
from labctl.modes import get_mode
from labctl.policy import apply as policy_apply
from labctl.policy.model import NetworkPolicy
from labctl.store import NAME_LABEL, Store
from labctl.topology import Topology

NOT_ENFORCED = (
    "{mode} does not enforce NetworkPolicy (Flannel has no policy agent): the policy is "
    "stored (labctl get networkpolicies) but no node changes; use a calico-* mode or canal "
    "to see it enforced"
)
RESOURCES = {
    "networkpolicies": "networkpolicies",
    "networkpolicy": "networkpolicies",
    "netpol": "networkpolicies",
}


class ObjectError(ValueError):
    """A request the lab refuses (unknown namespace, no such object, immutable label); exit 2."""

    exit_code = 2


@dataclass
class Outcome:
    """What a request did, in kubectl's words, plus what the nodes were told."""

    lines: list[str] = field(default_factory=list)  # "networkpolicy.networking.k8s.io/x created"
    warnings: list[str] = field(default_factory=list)
    #: Seconds from the start of programming to enforced on every node (enforcing modes).
    enforced_seconds: float | None = None
    rules: int | None = None


def _kind_name(obj: BaseModel) -> str:
    assert isinstance(obj, NetworkPolicy)
    return f"networkpolicy.networking.k8s.io/{obj.metadata.name}"


def _commit(lab: str, objects: Store, outcome: Outcome) -> None:
    """Program the nodes from the changed store (enforcing modes), then record it."""
    st = state.load(lab)
    mode = get_mode(st.mode)
    if mode.enforces_policy:
        pids = {name: rec.pid for name, rec in st.namespaces.items()}
        nodes = [name for name, rec in st.namespaces.items() if rec.role == "node"]
        result = policy_apply.sync(objects, pids, nodes)
        outcome.enforced_seconds, outcome.rules = result.seconds, result.rules
    elif objects.networkpolicies:
        outcome.warnings.append(NOT_ENFORCED.format(mode=mode.name))
    store.save(lab, objects)


def _check_namespace(objects: Store, obj: NetworkPolicy) -> None:
    ns = obj.metadata.namespace
    if ns not in objects.namespaces:
        raise ObjectError(
            f"NetworkPolicy {obj.key}: metadata.namespace: namespace {ns!r} does not exist in "
            f"this lab; use one of {', '.join(sorted(objects.namespaces))}"
        )


def apply(lab: str, objects_in: Sequence[BaseModel]) -> Outcome:
    """Create or update objects (kubectl apply)."""
    outcome = Outcome()
    with store.locked(lab) as objects:
        for obj in objects_in:
            assert isinstance(obj, NetworkPolicy)
            _check_namespace(objects, obj)
            old = objects.networkpolicies.get(obj.key)
            if (
                old is not None
                and old.spec == obj.spec
                and old.metadata.labels == obj.metadata.labels
            ):
                outcome.lines.append(f"{_kind_name(obj)} unchanged")
                continue
            objects.networkpolicies[obj.key] = store.stamp(obj, old, objects.bump())
            outcome.lines.append(f"{_kind_name(obj)} {'configured' if old else 'created'}")
        _commit(lab, objects, outcome)
    return outcome


def delete(lab: str, objects_in: Sequence[BaseModel], ignore_not_found: bool = False) -> Outcome:
    """Delete objects by kind, namespace and name (kubectl delete -f)."""
    outcome = Outcome()
    with store.locked(lab) as objects:
        for obj in objects_in:
            assert isinstance(obj, NetworkPolicy)
            if obj.key not in objects.networkpolicies:
                if ignore_not_found:
                    continue
                raise ObjectError(
                    f'networkpolicies.networking.k8s.io "{obj.metadata.name}" not found in '
                    f"namespace {obj.metadata.namespace} (nothing was deleted; "
                    "--ignore-not-found skips missing objects)"
                )
            del objects.networkpolicies[obj.key]
            objects.bump()
            outcome.lines.append(f'networkpolicy.networking.k8s.io "{obj.metadata.name}" deleted')
        _commit(lab, objects, outcome)
    return outcome


def label(
    lab: str,
    kind: Literal["namespace", "pod"],
    target: str,
    args: Sequence[str],
    overwrite: bool = False,
) -> Outcome:
    """Set (k=v) and remove (k-) labels of a namespace or a pod (NS/POD), like kubectl label;
    policies are re-evaluated at once."""
    try:
        add, remove = parse_label_args(args)
    except ValueError as e:
        raise ObjectError(str(e)) from None
    outcome = Outcome()
    with store.locked(lab) as objects:
        if kind == "namespace":
            if target not in objects.namespaces:
                raise ObjectError(
                    f"namespace {target!r} not found; namespaces: {', '.join(objects.namespaces)}"
                )
            labels = objects.namespaces[target].labels
            if NAME_LABEL in add or NAME_LABEL in remove:
                raise ObjectError(
                    f"{NAME_LABEL} is set by Kubernetes to the namespace's name and is immutable"
                )
        else:
            if target not in objects.pods:
                raise ObjectError(
                    f"pod {target!r} not found; give NS/POD, e.g. "
                    f"{next(iter(objects.pods), 'default/web-1')} (see 'labctl status')"
                )
            labels = objects.pods[target].labels
        for key, value in add.items():
            if key in labels and labels[key] != value and not overwrite:
                raise ObjectError(
                    f"'{key}' already has a value ({labels[key]}), and --overwrite is false"
                )
        changed = any(labels.get(k) != v for k, v in add.items()) or any(
            k in labels for k in remove
        )
        labels.update(add)
        for key in remove:
            labels.pop(key, None)
        outcome.lines.append(f"{kind}/{target} {'labeled' if changed else 'not labeled'}")
        if changed:
            objects.bump()
            _commit(lab, objects, outcome)
    return outcome


def reset(lab: str, topo: Topology) -> Outcome:
    """Back to the objects `up` created: topology labels, no policies (tests, exercises)."""
    outcome = Outcome()
    fresh = store.from_topology(topo, get_mode(state.load(lab).mode).network)
    with store.locked(lab) as objects:
        fresh.resourceVersion = objects.resourceVersion + 1
        _commit(lab, fresh, outcome)
    return outcome


def resource(name: str) -> str:
    """The canonical resource name for what the user typed (kubectl's short names too)."""
    try:
        return RESOURCES[name.lower()]
    except KeyError:
        raise ObjectError(
            f"unknown resource type {name!r}; labctl has: networkpolicies (netpol)"
        ) from None


def get(lab: str, kind: str, namespace: str | None) -> list[dict[str, Any]]:
    """Stored objects of `kind` as kubectl shows them (namespace None: all namespaces)."""
    objects = store.load(lab)
    if namespace is not None and namespace not in objects.namespaces:
        raise ObjectError(f"namespace {namespace!r} not found in lab {lab}")
    assert resource(kind) == "networkpolicies"
    return [
        p.manifest()
        for p in objects.policies()
        if namespace is None or p.metadata.namespace == namespace
    ]
