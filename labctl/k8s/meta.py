"""Object metadata, labels and label selectors, validated as the Kubernetes API server does.

Errors are `ValueError`s with one line: what is wrong and how to write it instead.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator

from labctl.topology import DNS1123_LABEL, LABEL_KEY, LABEL_VALUE

DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
# The API server caps the total size of an object's annotations (keys plus values).
ANNOTATIONS_MAX_BYTES = 256 * 1024


def check_label_key(key: str) -> None:
    """Raise ValueError unless `key` is a valid label key (optional DNS prefix and '/', name)."""
    if not LABEL_KEY.match(key) or len(key.rpartition("/")[0]) > 253:
        raise ValueError(
            f"{key!r} is not a valid label key; write an optional DNS subdomain prefix of at most "
            "253 characters and '/', then 1-63 letters, digits, '-', '_' or '.', starting and "
            "ending with a letter or digit (e.g. app or example.com/tier)"
        )


def check_label_value(key: str, value: str) -> None:
    """Raise ValueError unless `value` is a valid value for label `key`."""
    if not LABEL_VALUE.match(value):
        raise ValueError(
            f"{key}={value!r}: not a valid label value; write an empty value or 1-63 letters, "
            "digits, '-', '_' or '.', starting and ending with a letter or digit"
        )


def check_dns1123_label(value: str, example: str = "") -> str:
    """`value` if it is a DNS-1123 label (namespace, container name), else ValueError."""
    if not DNS1123_LABEL.match(value):
        raise ValueError(
            f"{value!r} is not a DNS-1123 label; use at most 63 lowercase letters, digits and "
            "'-', starting and ending with a letter or digit"
            + (f" (e.g. {example})" if example else "")
        )
    return value


def _check_labels(labels: dict[str, str]) -> dict[str, str]:
    for key, value in labels.items():
        check_label_key(key)
        check_label_value(key, value)
    return labels


def parse_label_args(args: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """Parse kubectl-label arguments: `key=value` sets a label, `key-` removes one.

    Returns (labels to set, keys to remove); raises ValueError naming the bad argument.
    """
    add: dict[str, str] = {}
    remove: list[str] = []
    for arg in args:
        if "=" in arg:
            key, _, value = arg.partition("=")
            if "=" in value:
                raise ValueError(f"{arg!r}: one '=' per label; write key=value")
            check_label_key(key)
            check_label_value(key, value)
            if add.get(key, value) != value:
                raise ValueError(f"{arg!r}: label {key} is already set to {add[key]!r} here")
            add[key] = value
        elif arg.endswith("-"):
            key = arg[:-1]
            check_label_key(key)
            if key not in remove:
                remove.append(key)
        else:
            raise ValueError(f"{arg!r}: not a label change; write key=value to set, key- to remove")
    both = sorted(set(add) & set(remove))
    if both:
        raise ValueError(f"label {both[0]} is both set and removed; keep one of the two")
    return add, remove


class LabelSelectorRequirement(BaseModel):
    """One `matchExpressions` entry: key, operator and (for In/NotIn) values."""

    # validate_default: an absent `values` must still be checked against In/NotIn.
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    key: str
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] = []

    @field_validator("key")
    @classmethod
    def _key(cls, v: str) -> str:
        check_label_key(v)
        return v

    @field_validator("values")
    @classmethod
    def _values(cls, v: list[str], info: ValidationInfo) -> list[str]:
        op = info.data.get("operator")
        if op in ("In", "NotIn") and not v:
            raise ValueError(
                "must be specified when `operator` is 'In' or 'NotIn'; list at least one value, "
                "or use Exists/DoesNotExist"
            )
        if op in ("Exists", "DoesNotExist") and v:
            raise ValueError(
                "may not be specified when `operator` is 'Exists' or 'DoesNotExist'; drop values, "
                "or use In/NotIn"
            )
        for value in v:
            check_label_value(info.data.get("key", "<key>"), value)
        return v

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether a label set satisfies this requirement (NotIn holds when the key is absent)."""
        if self.operator == "In":
            return self.key in labels and labels[self.key] in self.values
        if self.operator == "NotIn":
            return self.key not in labels or labels[self.key] not in self.values
        if self.operator == "Exists":
            return self.key in labels
        return self.key not in labels

    def describe(self) -> str:
        """kubectl's text for this requirement, e.g. `tier in (a,b)`, `!foo`."""
        values = ",".join(sorted(set(self.values)))
        return {
            "In": f"{self.key} in ({values})",
            "NotIn": f"{self.key} notin ({values})",
            "Exists": self.key,
            "DoesNotExist": f"!{self.key}",
        }[self.operator]


class LabelSelector(BaseModel):
    """A Kubernetes label selector; all terms are ANDed and an empty selector matches all."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    matchLabels: dict[str, str] = {}
    matchExpressions: list[LabelSelectorRequirement] = []

    _labels = field_validator("matchLabels")(classmethod(lambda cls, v: _check_labels(v)))

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether a pod or namespace with `labels` is selected."""
        return all(labels.get(k) == v for k, v in self.matchLabels.items()) and all(
            r.matches(labels) for r in self.matchExpressions
        )

    def is_empty(self) -> bool:
        """True for `{}`, which selects everything."""
        return not self.matchLabels and not self.matchExpressions

    def describe(self) -> str:
        """kubectl-style text, e.g. `app=web,tier in (a,b),!foo`; "" for the empty selector."""
        terms = [(k, f"{k}={v}") for k, v in self.matchLabels.items()]
        terms += [(r.key, r.describe()) for r in self.matchExpressions]
        # kubectl sorts the requirements by key (stable, so duplicates keep their order).
        return ",".join(text for _, text in sorted(terms, key=lambda t: t[0]))


class ObjectMeta(BaseModel):
    """`metadata` of a namespaced object.

    The server-set fields are accepted (and ignored by labctl) so that `get -o yaml` output can
    be applied again.
    """

    model_config = ConfigDict(extra="forbid")

    name: str
    namespace: str = "default"
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}
    uid: str | None = None
    resourceVersion: str | None = None
    generation: int | None = None
    creationTimestamp: datetime | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if len(v) > 253 or not DNS1123_SUBDOMAIN.match(v):
            raise ValueError(
                f"{v!r} is not a DNS-1123 subdomain; use at most 253 lowercase letters, digits, "
                "'-' and '.', starting and ending with a letter or digit (e.g. allow-web)"
            )
        return v

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, v: str) -> str:
        return check_dns1123_label(v)

    _labels = field_validator("labels")(classmethod(lambda cls, v: _check_labels(v)))

    @field_validator("annotations")
    @classmethod
    def _annotations(cls, v: dict[str, str]) -> dict[str, str]:
        for key in v:
            check_label_key(key)
        size = sum(len(k.encode()) + len(x.encode()) for k, x in v.items())
        if size > ANNOTATIONS_MAX_BYTES:
            raise ValueError(
                f"annotations take {size} bytes, more than the {ANNOTATIONS_MAX_BYTES} allowed; "
                "shorten or drop some"
            )
        return v
