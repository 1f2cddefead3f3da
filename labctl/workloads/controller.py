"""What the API server, the Deployment/ReplicaSet controllers and the scheduler decide when
Pods and Deployments are applied, deleted or scaled: pure changes to the object store. The
kubelet (in the supervisor) then makes the namespaces match the store.
"""

from __future__ import annotations

import uuid
from collections import Counter

from labctl.modes import Mode
from labctl.store import PodRecord, Store, now, stamp
from labctl.topology import DEFAULT_PORTS, PodPort, Topology
from labctl.topology import Pod as TopoPod
from labctl.workloads.model import Deployment, Pod, PodSpec
from labctl.workloads.schedule import (
    allocate_ip,
    pod_names,
    spread,
    template_hash,
)

TEMPLATE_HASH_LABEL = "pod-template-hash"


class WorkloadError(ValueError):
    """A request the API server refuses (immutable field, unknown node); exit 2."""

    exit_code = 2


def _ports(spec: PodSpec) -> list[PodPort]:
    declared = [
        PodPort(name=p.name, containerPort=p.containerPort, protocol=p.protocol)
        for p in spec.ports()
    ]
    # The lab's pod server stands in for the image: with no declared port it listens where
    # the seed's myapp image does, on 80.
    return declared or list(DEFAULT_PORTS)


def _record(
    objects: Store,
    topo: Topology,
    mode: Mode,
    namespace: str,
    name: str,
    node: str,
    labels: dict[str, str],
    spec: PodSpec,
    owner: str | None = None,
) -> PodRecord:
    used = {p.ip for p in objects.pods.values() if p.node == node}
    ip = allocate_ip(node, mode.pod_pool(topo, node), used, objects.last_reserved.get(node))
    objects.last_reserved[node] = str(ip)
    iface = mode.network.iface(TopoPod(name=name, namespace=namespace, node=node))
    return PodRecord(
        name=name,
        namespace=namespace,
        node=node,
        ip=str(ip),
        labels=labels,
        ports=_ports(spec),
        iface=iface,
        uid=str(uuid.uuid4()),
        creationTimestamp=now().isoformat().replace("+00:00", "Z"),
        owner=owner,
        container=spec.containers[0].name,
        image=spec.containers[0].image,
    )


def _load(objects: Store) -> Counter[str]:
    return Counter(p.node for p in objects.pods.values())


def apply_pod(objects: Store, topo: Topology, mode: Mode, pod: Pod) -> str:
    """Create a pod (scheduled and addressed now), or update its labels; kubectl's line."""
    old = objects.pods.get(pod.key)
    what = f"pod/{pod.metadata.name}"
    if old is not None:
        if pod.spec.nodeName not in (None, old.node) or _ports(pod.spec) != old.ports:
            raise WorkloadError(
                f"Pod {pod.key}: spec: Forbidden: pod updates may not change fields other than "
                "labels and annotations; delete the pod and apply it again"
            )
        if old.labels == pod.metadata.labels:
            return f"{what} unchanged"
        old.labels = dict(pod.metadata.labels)
        return f"{what} configured"
    node = pod.spec.nodeName
    if node is None:
        node = spread(topo.nodes, _load(objects), 1)[0]
    elif node not in topo.nodes:
        raise WorkloadError(
            f"Pod {pod.key}: spec.nodeName: Invalid value: {node!r}: no such node; "
            f"use one of {', '.join(topo.nodes)} or leave it out"
        )
    meta = pod.metadata
    objects.pods[pod.key] = _record(
        objects, topo, mode, meta.namespace, meta.name, node, dict(meta.labels), pod.spec
    )
    return f"{what} created"


def _replica_set(deploy: Deployment) -> str:
    return f"{deploy.metadata.name}-{template_hash(deploy)}"


def _owned(objects: Store, deploy: Deployment) -> list[PodRecord]:
    prefix = f"{deploy.metadata.name}-"
    return [
        p
        for p in objects.pods.values()
        if p.namespace == deploy.metadata.namespace
        and p.owner is not None
        and p.owner.startswith(prefix)
        and p.owner.count("-") == deploy.metadata.name.count("-") + 1
    ]


def reconcile(objects: Store, topo: Topology, mode: Mode) -> None:
    """The Deployment and ReplicaSet controllers: each deployment ends up with exactly
    `replicas` pods of its current template (a changed template replaces them all; a missing
    pod is re-created; surplus pods go, newest first)."""
    for deploy in objects.deployments.values():
        rs = _replica_set(deploy)
        owned = _owned(objects, deploy)
        for p in owned:
            if p.owner != rs:
                del objects.pods[p.key]
        current = [p for p in owned if p.owner == rs]
        want = deploy.spec.replicas
        current.sort(key=lambda p: p.creationTimestamp or "")
        for p in current[want:]:
            del objects.pods[p.key]
        missing = want - len(current)
        if missing <= 0:
            continue
        ns = deploy.metadata.namespace
        taken = {p.name for p in objects.pods.values() if p.namespace == ns}
        names = pod_names(rs, missing, taken)
        labels = dict(deploy.spec.template.metadata.labels)
        labels[TEMPLATE_HASH_LABEL] = rs.rsplit("-", 1)[1]
        for name, node in zip(names, spread(topo.nodes, _load(objects), missing), strict=True):
            rec = _record(
                objects, topo, mode, ns, name, node, labels, deploy.spec.template.spec, owner=rs
            )
            objects.pods[f"{ns}/{name}"] = rec


def apply_deployment(
    objects: Store, topo: Topology, mode: Mode, deploy: Deployment, version: str
) -> str:
    """Create or update a deployment, then reconcile its pods; kubectl's line."""
    old = objects.deployments.get(deploy.key)
    what = f"deployment.apps/{deploy.metadata.name}"
    if (
        old is not None
        and old.spec == deploy.spec
        and old.metadata.labels == deploy.metadata.labels
    ):
        return f"{what} unchanged"
    if old is not None and old.spec.selector != deploy.spec.selector:
        raise WorkloadError(
            f"Deployment {deploy.key}: spec.selector: Invalid value: field is immutable; "
            "delete the deployment and apply it again"
        )
    objects.deployments[deploy.key] = stamp(deploy, old, version)
    reconcile(objects, topo, mode)
    return f"{what} {'configured' if old else 'created'}"


def delete_deployment(objects: Store, key: str) -> None:
    """Remove a deployment and its pods (kubectl delete's default cascade)."""
    deploy = objects.deployments.pop(key)
    for p in _owned(objects, deploy):
        del objects.pods[p.key]


def scale(objects: Store, topo: Topology, mode: Mode, key: str, replicas: int) -> bool:
    """Set a deployment's replicas; False if it already had that many."""
    deploy = objects.deployments[key]
    if deploy.spec.replicas == replicas:
        return False
    spec = deploy.spec.model_copy(update={"replicas": replicas})
    meta = deploy.metadata.model_copy(update={"generation": (deploy.metadata.generation or 1) + 1})
    objects.deployments[key] = deploy.model_copy(update={"spec": spec, "metadata": meta})
    reconcile(objects, topo, mode)
    return True


def ready(objects: Store, deploy: Deployment) -> int:
    """Running pods of the deployment's current template."""
    rs = _replica_set(deploy)
    return sum(1 for p in _owned(objects, deploy) if p.owner == rs)
