"""Kubernetes manifests in, validated objects out.

`read_documents` splits files, directories or stdin into YAML/JSON documents; `parse_objects`
turns them into the registered models, all or nothing. Every error is a `ManifestError` of one
line: `<source> (document N[, Kind ns/name]): <field.path>: <problem>; <fix>`.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from labctl.errors import LabctlError
from labctl.k8s.meta import ObjectMeta
from labctl.topology import _Loader  # SafeLoader that rejects duplicate mapping keys

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")

KINDS: dict[tuple[str, str], type[BaseModel]] = {}


class ManifestError(ValueError, LabctlError):
    """A manifest that cannot be used; the message is one line naming source, document, field."""


@dataclass(frozen=True)
class Document:
    """One parsed YAML/JSON document and where it came from."""

    source: str  # file path, or "<stdin>"
    index: int  # 1-based position in its file
    data: Any
    item: int | None = None  # 0-based position in a `kind: List`'s items, if it came from one

    def where(self, label: str = "") -> str:
        """`<source> (document N[, items[M]][, label])`, the prefix of every error about it."""
        parts = [f"document {self.index}"]
        if self.item is not None:
            parts.append(f"items[{self.item}]")
        if label:
            parts.append(label)
        return f"{self.source} ({', '.join(parts)})"


def register_kind(api_version: str, kind: str, model: type[BaseModel]) -> None:
    """Make `parse_objects` accept documents of this apiVersion and kind as `model`."""
    KINDS[(api_version, kind)] = model


def read_documents(ref: str, stdin: IO[str] | None = None) -> list[Document]:
    """The non-empty documents of a file, of `-` (stdin) or of a directory's *.yaml, *.yml and
    *.json files (sorted, not recursive); `kind: List` documents are expanded into their items."""
    if ref == "-":
        return _split("<stdin>", (stdin or sys.stdin).read())
    path = Path(ref)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in MANIFEST_SUFFIXES and p.is_file())
        if not files:
            raise ManifestError(f"{ref}: no *.yaml, *.yml or *.json files in this directory")
        return [doc for f in files for doc in _split(str(f), _read(f))]
    return _split(ref, _read(path))


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ManifestError(
            f"{path}: no such file or directory; give a manifest file, a directory of them, "
            "or - for stdin"
        ) from None
    except UnicodeDecodeError:
        raise ManifestError(f"{path}: not UTF-8 text; give a YAML or JSON manifest") from None
    except OSError as e:
        raise ManifestError(f"{path}: cannot read ({e.strerror})") from None


def _split(source: str, text: str) -> list[Document]:
    docs: list[Document] = []
    index = 0
    try:
        # Empty documents (a trailing '---') still count, so numbers match the file's separators.
        for index, data in enumerate(yaml.load_all(text, Loader=_Loader), 1):
            if data is not None:
                docs.extend(_expand(Document(source, index, data)))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or getattr(e, "reason", None) or str(e)
        problem = " ".join(str(problem).split())
        raise ManifestError(
            f"{source}{line} (document {index + 1}): not valid YAML ({problem}); fix the syntax "
            "there"
        ) from None
    return docs


def _expand(doc: Document) -> list[Document]:
    """A `kind: List` (as `kubectl get -o yaml` prints) becomes one document per item."""
    data = doc.data
    if not (isinstance(data, dict) and data.get("kind") == "List" and "items" in data):
        return [doc]
    items = data["items"]
    if not isinstance(items, list):
        raise ManifestError(f"{doc.where('List')}: items: must be a list of objects")
    return [Document(doc.source, doc.index, item, i) for i, item in enumerate(items)]


def parse_objects(docs: Sequence[Document]) -> list[BaseModel]:
    """Validate every document as its registered kind; the first invalid one raises
    ManifestError and nothing is returned. Two documents for one object are an error too."""
    objects: list[BaseModel] = []
    seen: dict[tuple[str, str, str], Document] = {}
    for doc in docs:
        obj = _parse(doc)
        meta = getattr(obj, "metadata", None)
        if isinstance(meta, ObjectMeta):
            kind = doc.data["kind"]
            key = (kind, meta.namespace, meta.name)
            if key in seen:
                raise ManifestError(
                    f"{doc.where(f'{kind} {meta.namespace}/{meta.name}')}: metadata.name: "
                    f"same object as {seen[key].where()}; give each object its own name, or "
                    "keep one of the two"
                )
            seen[key] = doc
        objects.append(obj)
    return objects


def _parse(doc: Document) -> BaseModel:
    data = doc.data
    if not isinstance(data, dict):
        raise ManifestError(
            f"{doc.where()}: not an object; each document must be a mapping with apiVersion, "
            "kind, metadata and spec"
        )
    api, kind = data.get("apiVersion"), data.get("kind")
    if not (isinstance(api, str) and api and isinstance(kind, str) and kind):
        field = "kind" if isinstance(api, str) and api else "apiVersion"
        raise ManifestError(
            f"{doc.where()}: {field}: required field is missing or not a string; "
            f"labctl applies: {_supported()}"
        )
    model = KINDS.get((api, kind))
    if model is None:
        served = sorted(a for a, k in KINDS if k == kind)
        if served:
            raise ManifestError(
                f"{doc.where(kind)}: apiVersion: {kind} is not served as {api}; "
                f"write apiVersion: {served[0]}"
            )
        raise ManifestError(
            f'{doc.where()}: kind "{kind}" (apiVersion {api}) is not supported; '
            f"labctl applies: {_supported()}"
        )
    try:
        return model.model_validate(data)
    except ValidationError as e:
        err = dict(e.errors()[0])
        loc = _loc(err)
        where = doc.where(f"{kind} {_raw_key(data)}".rstrip())
        raise ManifestError(f"{where}: {loc + ': ' if loc else ''}{_explain(err, model)}") from None


def _supported() -> str:
    return ", ".join(f"{api} {kind}" for api, kind in sorted(KINDS))


def _raw_key(data: dict[str, Any]) -> str:
    """`namespace/name` from unvalidated data, or "" when the name is unusable."""
    meta = data.get("metadata")
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str):
        return ""
    namespace = meta.get("namespace", "default")
    return f"{namespace}/{meta['name']}"


def _loc(err: dict[str, Any]) -> str:
    """pydantic's error location as a field path: spec.ingress[0].from[1].ipBlock.cidr."""
    parts: list[str] = []
    for p in err.get("loc", ()):
        if p == "[key]":  # marks an invalid dict key: name the dict; the message names the key
            parts.pop()
            continue
        if isinstance(p, int):
            parts.append(f"[{p}]")
        else:
            parts.append(("." if parts else "") + str(p))
    return "".join(parts)


def _explain(err: dict[str, Any], model: type[BaseModel]) -> str:
    kind = err.get("type", "")
    value = err.get("input")
    if kind == "extra_forbidden":
        fields = _fields_at(model, err.get("loc", ())[:-1])
        return f"unknown field; check the spelling and indentation (fields here: {fields})"
    if kind == "missing":
        return "required field is missing; add it"
    if kind == "string_type":
        what = "key " if "[key]" in err.get("loc", ()) else ""
        return f"{what}{value!r} is not a string; quote it"
    if kind == "literal_error":
        return f"{value!r} is not supported; use {err.get('ctx', {}).get('expected', '?')}"
    if kind == "list_type":
        return "must be a list; write each entry on its own line starting with '- '"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return "must be a mapping; write key: value lines"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"{value!r} is not an integer; write a whole number"
    return str(err.get("msg", "invalid value")).removeprefix("Value error, ")


def _fields_at(model: type[BaseModel], loc: Sequence[Any]) -> str:
    """The field names (aliases) accepted at `loc` inside `model`, for unknown-field errors."""
    current: type[BaseModel] | None = model
    for part in loc:
        if isinstance(part, int) or current is None:
            continue
        field = next(
            (f for n, f in current.model_fields.items() if part in (n, f.alias)),
            None,
        )
        current = _submodel(field.annotation) if field is not None else None
    if current is None:
        return "?"
    return ", ".join(f.alias or n for n, f in current.model_fields.items())


def _submodel(annotation: Any) -> type[BaseModel] | None:
    """The model inside an annotation such as `list[X]` or `X | None`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) in (list, Union, types.UnionType):
        for arg in get_args(annotation):
            found = _submodel(arg)
            if found is not None:
                return found
    return None
