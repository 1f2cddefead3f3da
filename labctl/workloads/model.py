"""Pods (v1) and Deployments (apps/v1), validated as the API server validates the fields the
lab uses (`pkg/apis/core/validation`, `pkg/apis/apps/validation`).

The lab runs no images: every pod is the lab's pod server, which answers HTTP on each declared
TCP port and echoes its name on each UDP port. Pod-spec and container fields the lab has no use
for (resources, env, probes, volumes...) are accepted and ignored, so real manifests apply
unmodified; the fields the lab does use are checked strictly.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from labctl.k8s.manifests import register_kind
from labctl.k8s.meta import DNS1123_SUBDOMAIN, LabelSelector, ObjectMeta, check_dns1123_label

# IANA service name (RFC 6335): what a named container port must be.
_IANA_NAME = re.compile(r"^[-a-z0-9]+$")
#: What `image` means here: the lab's own answering server stands in for any image.
DEFAULT_IMAGE = "labctl/pod-server"


def check_port_name(name: str) -> str:
    """A named port is an IANA service name: 1-15 lowercase letters, digits and '-', at least
    one letter, no leading, trailing or double '-'."""
    if (
        len(name) > 15
        or not _IANA_NAME.match(name)
        or not re.search(r"[a-z]", name)
        or name.startswith("-")
        or name.endswith("-")
        or "--" in name
    ):
        raise ValueError(
            f"{name!r} is not a valid port name; use 1-15 lowercase letters, digits and '-', "
            "with at least one letter and no leading, trailing or double '-' (e.g. http)"
        )
    return name


class _Lenient(BaseModel):
    # Fields of the real API the lab does not interpret are accepted and kept out of the way.
    model_config = ConfigDict(extra="ignore")


class ContainerPort(_Lenient):
    name: str | None = None
    containerPort: Annotated[int, Field(ge=1, le=65535)]
    protocol: Literal["TCP", "UDP"] = "TCP"

    _name = field_validator("name")(
        classmethod(lambda cls, v: v if v is None else check_port_name(v))
    )


class Container(_Lenient):
    name: str
    image: str = DEFAULT_IMAGE
    ports: list[ContainerPort] = []

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_dns1123_label(v, example="app")


class PodSpec(_Lenient):
    containers: list[Container]
    nodeName: str | None = None

    @field_validator("containers")
    @classmethod
    def _containers(cls, v: list[Container]) -> list[Container]:
        if not v:
            raise ValueError("Required value: a pod needs at least one container")
        names = [c.name for c in v]
        dup = next((n for n in names if names.count(n) > 1), None)
        if dup:
            raise ValueError(f"Duplicate value: container name {dup!r}; give each a unique name")
        seen_names: set[str] = set()
        seen_ports: set[tuple[int, str]] = set()
        for c in v:
            for p in c.ports:
                if p.name is not None:
                    if p.name in seen_names:
                        raise ValueError(f"Duplicate value: port name {p.name!r} in this pod")
                    seen_names.add(p.name)
                if (p.containerPort, p.protocol) in seen_ports:
                    raise ValueError(
                        f"Duplicate value: containerPort {p.containerPort}/{p.protocol} is "
                        "declared twice in this pod"
                    )
                seen_ports.add((p.containerPort, p.protocol))
        return v

    def ports(self) -> list[ContainerPort]:
        """Every declared port of every container."""
        return [p for c in self.containers for p in c.ports]


class Pod(BaseModel):
    """A v1 Pod as applied (kind and apiVersion checked by the manifest reader)."""

    model_config = ConfigDict(extra="ignore")  # `status` of a `get -o yaml` is ignored

    apiVersion: Literal["v1"] = "v1"
    kind: Literal["Pod"] = "Pod"
    metadata: ObjectMeta
    spec: PodSpec

    @property
    def key(self) -> str:
        """`namespace/name`."""
        return f"{self.metadata.namespace}/{self.metadata.name}"


class PodTemplateMeta(BaseModel):
    model_config = ConfigDict(extra="ignore")

    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: dict[str, str]) -> dict[str, str]:
        # Same rules as object labels; reuse them through a throwaway ObjectMeta.
        ObjectMeta(name="x", labels=v)
        return v


class PodTemplate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    metadata: PodTemplateMeta = PodTemplateMeta()
    spec: PodSpec


class DeploymentSpec(_Lenient):
    replicas: Annotated[int, Field(ge=0)] = 1
    selector: LabelSelector
    template: PodTemplate

    @model_validator(mode="after")
    def _selector_matches(self) -> DeploymentSpec:
        if self.selector.is_empty():
            raise ValueError(
                "selector: Invalid value: {}: empty selector is invalid for deployment; "
                "select the template's labels (e.g. matchLabels: {app: myapp})"
            )
        if not self.selector.matches(self.template.metadata.labels):
            raise ValueError(
                "template.metadata.labels: Invalid value: "
                f"{self.template.metadata.labels}: `selector` does not match template `labels`; "
                "give the template the labels the selector asks for"
            )
        return self


class Deployment(BaseModel):
    """An apps/v1 Deployment: replicas of a pod template, spread over the nodes."""

    model_config = ConfigDict(extra="ignore")

    apiVersion: Literal["apps/v1"] = "apps/v1"
    kind: Literal["Deployment"] = "Deployment"
    metadata: ObjectMeta
    spec: DeploymentSpec

    @field_validator("metadata")
    @classmethod
    def _dns_name(cls, v: ObjectMeta) -> ObjectMeta:
        # Pod names derive from it (<name>-<hash>-<suffix>), so it must leave room for them.
        if not DNS1123_SUBDOMAIN.match(v.name) or len(v.name) > 253 - 17:
            raise ValueError(
                f"name: {v.name!r} is too long: pod names <name>-<hash>-<suffix> derive from it; "
                "use at most 236 characters"
            )
        return v

    @property
    def key(self) -> str:
        """`namespace/name`."""
        return f"{self.metadata.namespace}/{self.metadata.name}"

    def manifest(self, ready: int) -> dict[str, Any]:
        """The deployment as `kubectl get -o json` shows it, with `ready` replicas running."""
        data = self.model_dump(mode="json", exclude_none=True)
        data["status"] = {
            "replicas": ready,
            "readyReplicas": ready,
            "availableReplicas": ready,
            "updatedReplicas": ready,
            "observedGeneration": self.metadata.generation or 1,
        }
        return data


register_kind("v1", "Pod", Pod)
register_kind("apps/v1", "Deployment", Deployment)
