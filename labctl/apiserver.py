"""What the Kubernetes API server, its controllers and the node agents do for `apply`,
`delete`, `label` and `scale`: validate against the lab's live objects, change the store,
then make the nodes follow: the kubelets add and remove pod namespaces (CNI ADD/DEL), and
where the mode's policy part enforces NetworkPolicy every node's rules are recompiled.

All or nothing: an invalid object, an unknown namespace, a pod that cannot be wired or a
ruleset nft refuses leaves the store and the nodes as they were.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel

from labctl import control, state, store
from labctl.controlplane import members
from labctl.errors import LabctlError
from labctl.k8s.meta import parse_label_args
from labctl.modes import Mode, get_mode
from labctl.policy import apply as policy_apply
from labctl.policy.model import NetworkPolicy
from labctl.services import apply as proxy_apply
from labctl.services.endpoints import compute_slices
from labctl.services.model import Service, ServiceError, allocate
from labctl.store import NAME_LABEL, Store
from labctl.topology import Topology, load_topology
from labctl.workloads import controller
from labctl.workloads.model import Deployment, Pod
from labctl.workloads.schedule import SchedulingError

NOT_ENFORCED = (
    "{mode} does not enforce NetworkPolicy (Flannel has no policy agent): the policy is "
    "stored (labctl get networkpolicies) but no node changes; use a calico-* mode or canal "
    "to see it enforced"
)
RESOURCES = {
    "networkpolicies": "networkpolicies",
    "networkpolicy": "networkpolicies",
    "netpol": "networkpolicies",
    "pods": "pods",
    "pod": "pods",
    "po": "pods",
    "deployments": "deployments",
    "deployment": "deployments",
    "deploy": "deployments",
    "services": "services",
    "service": "services",
    "svc": "services",
    "endpointslices": "endpointslices",
    "endpointslice": "endpointslices",
}


class ObjectError(ValueError, LabctlError):
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
    #: Seconds the kubelets took to add and remove pods (CNI ADD/DEL), when pods changed.
    pods_seconds: float | None = None
    #: Seconds kube-proxy took to load every node's rules, and how many it loaded.
    proxy_seconds: float | None = None
    proxy_rules: int | None = None


@dataclass
class _Request:
    """One request's view of the lab: its mode and topology, for scheduling and IPAM."""

    lab: str
    mode: Mode
    topo: Topology

    @classmethod
    def of(cls, lab: str) -> _Request:
        st = state.load(lab)
        return cls(lab, get_mode(st.mode), load_topology(st.topology))


#: Per kind: the resource (store attribute and `get` name) and kubectl's group suffix.
_KINDS: dict[type[BaseModel], tuple[str, str]] = {
    NetworkPolicy: ("networkpolicies", "networkpolicy.networking.k8s.io"),
    Pod: ("pods", "pod"),
    Deployment: ("deployments", "deployment.apps"),
    Service: ("services", "service"),
}


def _kind_name(obj: BaseModel) -> str:
    return f"{_KINDS[type(obj)][1]}/{obj.metadata.name}"  # type: ignore[attr-defined]


def _program(
    lab: str, topo: Topology, objects: Store, outcome: Outcome, pods_changed: bool
) -> None:
    """Make the nodes follow `objects` (already saved): pods first, then policy, then
    kube-proxy. `topo` is the lab's topology (node addresses, pod CIDR)."""
    if pods_changed:
        outcome.pods_seconds = control.request(lab, "sync")["seconds"]
    st = state.load(lab)  # after the sync: new pods' namespaces are in it
    mode = get_mode(st.mode)
    if mode.enforces_policy:
        pids = {name: rec.pid for name, rec in st.namespaces.items()}
        nodes = [name for name, rec in st.namespaces.items() if rec.role == "node"]
        result = policy_apply.sync(objects, pids, nodes)
        outcome.enforced_seconds, outcome.rules = result.seconds, result.rules
    elif objects.networkpolicies:
        outcome.warnings.append(NOT_ENFORCED.format(mode=mode.name))
    proxied = proxy_apply.sync(
        list(objects.services.values()),
        objects.pod_infos(),
        {n: str(x.ip) for n, x in topo.nodes.items()},
        {name: rec.pid for name, rec in st.namespaces.items() if rec.role == "node"},
        topo.cluster.podCIDR,
        st.proxy_mode,
    )
    outcome.proxy_seconds, outcome.proxy_rules = proxied.seconds, proxied.rules


def _commit(lab: str, topo: Topology, before: Store, objects: Store, outcome: Outcome) -> None:
    """Record the changed store and program the nodes; on any failure put back `before` (the
    store, the pods and the rules) and re-raise."""
    pods_changed = set(before.pods) != set(objects.pods)
    store.save(lab, objects)
    try:
        _program(lab, topo, objects, outcome, pods_changed)
    except BaseException:
        store.save(lab, before)
        try:
            _program(lab, topo, before, Outcome(), pods_changed)
        except Exception as e:  # the first error is the one to report
            outcome.warnings.append(f"restoring the previous state failed too: {e}")
        raise


def _check_namespace(objects: Store, obj: BaseModel) -> None:
    ns = obj.metadata.namespace  # type: ignore[attr-defined]
    if ns not in objects.namespaces:
        raise ObjectError(
            f"{type(obj).__name__} {obj.key}: metadata.namespace: namespace {ns!r} does not "  # type: ignore[attr-defined]
            f"exist in this lab; use one of {', '.join(sorted(objects.namespaces))}"
        )


def _apply_one(req: _Request, objects: Store, obj: BaseModel) -> str:
    if isinstance(obj, NetworkPolicy):
        old = objects.networkpolicies.get(obj.key)
        if old is not None and old.spec == obj.spec and old.metadata.labels == obj.metadata.labels:
            return f"{_kind_name(obj)} unchanged"
        objects.networkpolicies[obj.key] = store.stamp(obj, old, objects.bump())
        return f"{_kind_name(obj)} {'configured' if old else 'created'}"
    if isinstance(obj, Service):
        old_svc = objects.services.get(obj.key)
        allocated = allocate(obj, objects.services, req.topo.cluster.serviceCIDR)
        if old_svc is not None and old_svc.spec == allocated.spec:
            return f"{_kind_name(obj)} unchanged"
        objects.services[obj.key] = store.stamp(allocated, old_svc, objects.bump())
        return f"{_kind_name(obj)} {'configured' if old_svc else 'created'}"
    if isinstance(obj, Pod):
        line = controller.apply_pod(objects, req.topo, req.mode, obj)
    elif isinstance(obj, Deployment):
        line = controller.apply_deployment(
            objects, req.topo, req.mode, obj, str(objects.resourceVersion + 1)
        )
    else:
        raise ObjectError(f"labctl cannot apply {type(obj).__name__} objects")
    if not line.endswith("unchanged"):
        objects.bump()
    return line


#: What the controllers and allocators refuse; the request answers with ObjectError (exit 2).
_REFUSED: tuple[type[Exception], ...] = (controller.WorkloadError, SchedulingError, ServiceError)


def apply(lab: str, objects_in: Sequence[BaseModel]) -> Outcome:
    """Create or update objects (kubectl apply)."""
    outcome = Outcome()
    req = _Request.of(lab)
    with store.locked(lab) as objects:
        before = objects.model_copy(deep=True)
        try:
            for obj in objects_in:
                _check_namespace(objects, obj)
                outcome.lines.append(_apply_one(req, objects, obj))
        except _REFUSED as e:
            raise ObjectError(str(e)) from None
        _commit(lab, req.topo, before, objects, outcome)
    return outcome


def delete(lab: str, objects_in: Sequence[BaseModel], ignore_not_found: bool = False) -> Outcome:
    """Delete objects by kind, namespace and name (kubectl delete -f). A deleted pod of a
    Deployment is replaced, as its ReplicaSet would."""
    outcome = Outcome()
    req = _Request.of(lab)
    with store.locked(lab) as objects:
        before = objects.model_copy(deep=True)
        for obj in objects_in:
            resource_name, group = _KINDS[type(obj)]
            held: dict[str, Any] = getattr(objects, resource_name)
            key = obj.key  # type: ignore[attr-defined]
            name = obj.metadata.name  # type: ignore[attr-defined]
            if key not in held:
                if ignore_not_found:
                    continue
                plural = {
                    "pod": "pods",
                    "deployment.apps": "deployments.apps",
                    "service": "services",
                }.get(group, "networkpolicies.networking.k8s.io")
                raise ObjectError(
                    f'{plural} "{name}" not found in namespace {key.split("/")[0]} (nothing was '
                    "deleted; --ignore-not-found skips missing objects)"
                )
            if isinstance(obj, Deployment):
                controller.delete_deployment(objects, key)
            else:
                del held[key]
            objects.bump()
            outcome.lines.append(f'{group} "{name}" deleted')
        try:
            controller.reconcile(objects, req.topo, req.mode)
        except _REFUSED as e:
            raise ObjectError(str(e)) from None
        _commit(lab, req.topo, before, objects, outcome)
    return outcome


def scale(lab: str, namespace: str, name: str, replicas: int) -> Outcome:
    """Set a deployment's replicas (kubectl scale deployment NAME --replicas N)."""
    if replicas < 0:
        raise ObjectError(f"--replicas={replicas}: must be 0 or more")
    outcome = Outcome()
    req = _Request.of(lab)
    with store.locked(lab) as objects:
        key = f"{namespace}/{name}"
        if key not in objects.deployments:
            raise ObjectError(
                f'deployments.apps "{name}" not found in namespace {namespace} '
                "(labctl get deployments -A lists them)"
            )
        before = objects.model_copy(deep=True)
        try:
            changed = controller.scale(objects, req.topo, req.mode, key, replicas)
        except _REFUSED as e:
            raise ObjectError(str(e)) from None
        outcome.lines.append(f"deployment.apps/{name} scaled")
        if changed:
            objects.bump()
            _commit(lab, req.topo, before, objects, outcome)
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
    req = _Request.of(lab)
    outcome = Outcome()
    with store.locked(lab) as objects:
        before = objects.model_copy(deep=True)
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
            _commit(lab, req.topo, before, objects, outcome)
    return outcome


def reset(lab: str, topo: Topology) -> Outcome:
    """Back to the objects `up` created: topology pods and labels, no policies, no workloads
    applied since (tests, exercises)."""
    outcome = Outcome()
    fresh = store.from_topology(topo, get_mode(state.load(lab).mode).network)
    with store.locked(lab) as objects:
        fresh.resourceVersion = objects.resourceVersion + 1
        _commit(lab, topo, objects, fresh, outcome)
    return outcome


def resource(name: str) -> str:
    """The canonical resource name for what the user typed (kubectl's short names too)."""
    try:
        return RESOURCES[name.lower()]
    except KeyError:
        raise ObjectError(
            f"unknown resource type {name!r}; labctl has: pods (po), deployments (deploy), "
            "services (svc), endpointslices, networkpolicies (netpol)"
        ) from None


def get(lab: str, kind: str, namespace: str | None) -> list[dict[str, Any]]:
    """Stored objects of `kind` as kubectl shows them (namespace None: all namespaces),
    sorted by namespace and name."""
    objects = store.load(lab)
    if namespace is not None and namespace not in objects.namespaces:
        raise ObjectError(f"namespace {namespace!r} not found in lab {lab}")
    kind = resource(kind)
    items: list[dict[str, Any]]
    if kind == "networkpolicies":
        items = [p.manifest() for p in objects.policies()]
    elif kind == "services":
        items = [s.manifest() for s in objects.services.values()]
    elif kind == "endpointslices":
        slices = compute_slices(objects.services.values(), objects.pod_infos())
        items = [s.manifest() for s in slices.values()]
    elif kind == "pods":
        topo = load_topology(state.load(lab).topology)
        items = [p.manifest(str(topo.nodes[p.node].ip)) for p in objects.pods.values()]
    else:
        items = [d.manifest(controller.ready(objects, d)) for d in objects.deployments.values()]
    items = [i for i in items if namespace is None or i["metadata"]["namespace"] == namespace]
    return sorted(items, key=lambda i: (i["metadata"]["namespace"], i["metadata"]["name"]))


def _node_change(lab: str) -> tuple[state.LabState, Mode, Topology, dict[str, Any]]:
    st = state.load(lab)
    if st.status != "ready":
        raise ObjectError(f"lab {lab} is {st.status}, not ready; see 'labctl status -n {lab}'")
    return st, get_mode(st.mode), load_topology(st.topology), members.read_raw(st.topology)


def add_node(
    lab: str, name: str, segment: str, ip: str, pod_cidr: str | None = None
) -> dict[str, Any]:
    """`labctl node add` (kubeadm join): the node validated as the topology loader would and
    its share of the re-plan checked here, so bad input changes nothing (exit 2); then the
    supervisor builds and starts it and waits until the other nodes have its routes."""
    st, mode, topo, raw = _node_change(lab)
    _, new = members.add_node(raw, topo, name, segment, ip, pod_cidr)
    members.replan(mode, st.datapath, state.read_plan(lab), topo, new)
    # Under the store's lock: no apply schedules or programs pods while the node joins.
    with store.locked(lab):
        return control.request(
            lab,
            "node-add",
            name=name,
            segment=segment,
            ip=str(new.nodes[name].ip),
            pod_cidr=str(new.node_pod_cidrs[name]),
        )


def remove_node(lab: str, name: str, force: bool = False) -> tuple[Outcome, dict[str, Any]]:
    """`labctl node remove` (kubectl drain, then kubectl delete node): pods of Deployments on
    the node are replaced on the other nodes, pods no controller manages are deleted only with
    `force` (kubectl drain refuses them otherwise); then the supervisor stops the node, the
    others drop it, and it is removed."""
    st, mode, topo, raw = _node_change(lab)
    plan = state.read_plan(lab)
    _, new = members.remove_node(raw, topo, name, any(ns.bgp for ns in plan.node_ns()))
    members.replan(mode, st.datapath, plan, topo, new)
    outcome = Outcome()
    with store.locked(lab) as objects:
        on_node = [p for p in objects.pods.values() if p.node == name]
        bare = [p.key for p in on_node if p.owner is None]
        if bare and not force:
            raise ObjectError(
                f"cannot drain node {name}: pods that declare no controller would be lost "
                f"({', '.join(bare)}); --force deletes them"
            )
        outcome.lines.append(f"node/{name} cordoned")
        if bare:
            outcome.warnings.append(f"deleting Pods that declare no controller: {', '.join(bare)}")
        before = objects.model_copy(deep=True)
        for p in on_node:
            del objects.pods[p.key]
            outcome.lines.append(f"pod/{p.name} evicted")
        try:
            # The ReplicaSets replace what the drain evicted, on the nodes that stay.
            controller.reconcile(objects, new, mode)
        except _REFUSED as e:
            raise ObjectError(f"cannot drain node {name}: {e}") from None
        outcome.lines += [
            f"pod/{p.name} created on {p.node} (replaces an evicted pod)"
            for k, p in objects.pods.items()
            if k not in before.pods
        ]
        if on_node:
            objects.bump()
            _commit(lab, topo, before, objects, outcome)
        outcome.lines.append(f"node/{name} drained")
        reply = control.request(lab, "node-remove", name=name)
    return outcome, reply
