"""The lab's live object store: namespaces, pods, labels and NetworkPolicies as they are now.

`up` seeds it from the topology; `apply`, `delete` and `label` change it; every command that
needs the cluster's objects (status, probe, verify, policy sync) reads it instead of
re-deriving them from the topology. It is one JSON file in the lab's state directory,
changed under a lock and replaced atomically, so concurrent commands never lose an update.
"""

from __future__ import annotations

import fcntl
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

from labctl import state
from labctl.modes.podnet import PodNetwork
from labctl.policy.model import NamedPort, NetworkPolicy, PodInfo
from labctl.services.model import Service
from labctl.topology import PodPort, Topology
from labctl.workloads.model import DEFAULT_IMAGE, Deployment

#: Set by Kubernetes on every namespace, immutable, equal to the namespace's name.
NAME_LABEL = "kubernetes.io/metadata.name"
_Obj = TypeVar("_Obj", NetworkPolicy, Deployment, Service)
STORE_FILE = "store.json"


class NamespaceRecord(BaseModel):
    labels: dict[str, str] = {}


class PodRecord(BaseModel):
    name: str
    namespace: str
    node: str
    ip: str
    labels: dict[str, str] = {}
    ports: list[PodPort] = []
    iface: str  # host-side interface
    # Set for pods created through the API (topology pods exist from `up` and have none).
    uid: str | None = None
    creationTimestamp: str | None = None
    owner: str | None = None  # the Deployment (name) whose replica this is
    container: str = "app"
    image: str = DEFAULT_IMAGE

    @property
    def key(self) -> str:
        """`namespace/name`."""
        return f"{self.namespace}/{self.name}"

    def manifest(self, host_ip: str) -> dict[str, Any]:
        """The pod as `kubectl get pod -o json` shows it (`host_ip`: its node's address)."""
        meta: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if self.labels:
            meta["labels"] = dict(self.labels)
        if self.uid:
            meta["uid"] = self.uid
        if self.creationTimestamp:
            meta["creationTimestamp"] = self.creationTimestamp
        if self.owner:
            meta["ownerReferences"] = [
                {
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "name": self.owner,
                    "controller": True,
                }
            ]
        ports = [p.model_dump(exclude_none=True) for p in self.ports]
        container: dict[str, Any] = {"name": self.container, "image": self.image}
        if ports:
            container["ports"] = ports
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": meta,
            "spec": {"nodeName": self.node, "containers": [container]},
            "status": {
                "phase": "Running",
                "hostIP": host_ip,
                "podIP": self.ip,
                "podIPs": [{"ip": self.ip}],
                "conditions": [{"type": "Ready", "status": "True"}],
            },
        }

    def info(self) -> PodInfo:
        """The pod as policy code sees it."""
        return PodInfo(
            namespace=self.namespace,
            name=self.name,
            ip=self.ip,
            node=self.node,
            labels=dict(self.labels),
            ports=tuple(NamedPort(p.name, p.containerPort, p.protocol) for p in self.ports),
            iface=self.iface,
        )


class Store(BaseModel):
    """Every live object of one lab."""

    namespaces: dict[str, NamespaceRecord] = {}
    pods: dict[str, PodRecord] = {}
    networkpolicies: dict[str, NetworkPolicy] = {}
    deployments: dict[str, Deployment] = {}
    services: dict[str, Service] = {}
    #: Node -> the pod address IPAM handed out last there (host-local's last_reserved_ip).
    last_reserved: dict[str, str] = {}
    #: Bumped on every change, as the API server's resourceVersion.
    resourceVersion: int = 0

    def namespace_labels(self) -> dict[str, dict[str, str]]:
        """Namespace name -> labels (with the automatic kubernetes.io/metadata.name)."""
        return {name: dict(ns.labels) for name, ns in self.namespaces.items()}

    def pod_infos(self) -> list[PodInfo]:
        """All pods, in the order they were created."""
        return [p.info() for p in self.pods.values()]

    def policies(self) -> list[NetworkPolicy]:
        """All NetworkPolicies, sorted by namespace/name."""
        return [self.networkpolicies[k] for k in sorted(self.networkpolicies)]

    def bump(self) -> str:
        """Record a change; return the new resourceVersion."""
        self.resourceVersion += 1
        return str(self.resourceVersion)


def from_topology(topo: Topology, network: PodNetwork) -> Store:
    """The objects a freshly built lab holds: the topology's namespaces and pods."""
    store = Store()
    names = ["default", *topo.namespaces, *(p.namespace for p in topo.pods)]
    created = now().isoformat().replace("+00:00", "Z")
    for name in dict.fromkeys(names):
        store.namespaces[name] = NamespaceRecord(labels=topo.namespace_labels(name))
    for pod in topo.pods:
        store.pods[pod.key] = PodRecord(
            name=pod.name,
            namespace=pod.namespace,
            node=pod.node,
            ip=str(topo.pod_ips[pod.key]),
            labels=dict(pod.labels),
            ports=list(pod.ports),
            iface=network.iface(pod),
            uid=str(uuid.uuid4()),
            creationTimestamp=created,
        )
    return store


def now() -> datetime:
    """A creation timestamp, to the second as the API server writes it."""
    return datetime.now(UTC).replace(microsecond=0)


def stamp(policy: _Obj, old: _Obj | None, version: str) -> _Obj:
    """Server-set metadata, as the API server fills it: uid and creation time kept from the
    stored object, generation bumped when the spec changes."""
    meta = policy.metadata.model_copy(
        update={
            "uid": old.metadata.uid if old else str(uuid.uuid4()),
            "creationTimestamp": (old.metadata.creationTimestamp if old else now()),
            "generation": (
                1 if old is None else (old.metadata.generation or 1) + (old.spec != policy.spec)
            ),
            "resourceVersion": version,
        }
    )
    return policy.model_copy(update={"metadata": meta})


def _path(lab: str) -> Path:
    return state.lab_dir(lab) / STORE_FILE


def load(lab: str) -> Store:
    """The recorded objects of `lab`."""
    try:
        return Store.model_validate_json(_path(lab).read_bytes())
    except FileNotFoundError:
        raise state.LabError(
            f"lab {lab!r} has no object store; is it up? (labctl status)"
        ) from None


def save(lab: str, store: Store) -> None:
    """Write atomically, so a reader never sees half a file."""
    path = _path(lab)
    tmp = path.with_name(f".{STORE_FILE}.{os.getpid()}")
    tmp.write_text(store.model_dump_json(indent=1, by_alias=True, exclude_none=True))
    os.replace(tmp, path)


@contextmanager
def locked(lab: str) -> Iterator[Store]:
    """Load the store under the lab's lock: changes made meanwhile by others wait. The caller
    saves what it changed (`save`) before leaving the block."""
    lock = state.lab_dir(lab) / "store.lock"
    if not state.lab_dir(lab).is_dir():
        raise state.LabError(f"no lab named {lab!r} is up (see 'labctl status')")
    with open(lock, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield load(lab)
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
