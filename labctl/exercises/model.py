"""The schema of `exercise.yaml`: setup and solution steps, hints and checks. Loading is strict
(unknown keys are errors) and every error is one line naming the field."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

EXERCISES_ROOT = Path(__file__).resolve().parents[2] / "exercises"
NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class ExerciseError(Exception):
    """An exercise file that does not load, or an exercise that does not exist."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Exec(_Strict):
    """A command inside a lab target (node, router or NS/POD), as `labctl exec`. Arguments may
    name lab addresses: `{ip:node1}`, `{ip:default/web-2}`, `{podcidr:node3}`."""

    target: str
    argv: list[str] = Field(min_length=1)


class Capture(_Strict):
    """Capture `target`'s eth0 for `duration` seconds while the `during` commands run."""

    target: str
    filter: str | None = None
    duration: float = Field(default=3.0, gt=0, le=60)
    write: str = Field(description="pcap file name, in the lab's state directory")
    during: list[Exec] = []

    @field_validator("write")
    @classmethod
    def _plain(cls, v: str) -> str:
        return _file_name(v)


def _file_name(v: str) -> str:
    # Kept inside the lab's state directory, so `down` removes it with the lab.
    if not v or Path(v).name != v or v in (".", ".."):
        raise ValueError(f"{v!r}: give a plain file name, no directories")
    return v


#: What `field` reads from the first IP packet of a capture: its addresses, or how it crossed
#: the wire (`bare`, `vxlan`, `udp` for flannel's udp backend, `ipip`).
PcapField = Literal["ip.src", "ip.dst", "wire"]
SOURCES = ("value", "exec", "pcap_http_body", "capture")


class AnswerSource(_Strict):
    """Where a value comes from: a literal, a command's output, a pcap's inner HTTP body, or
    a capture taken now.

    From a command: its stdout, or the field at `json` (dotted path, list indexes as numbers)
    of its JSON output, or the first group of `pattern`; plus `add`, for numbers. From a
    capture: `field` of the first IP packet it caught.
    """

    value: str | None = None
    exec: Exec | None = None
    json_path: str | None = Field(default=None, alias="json")
    pattern: str | None = None
    add: int | None = None
    pcap_http_body: str | None = None
    capture: Capture | None = None
    field: PcapField | None = None

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("pcap_http_body")
    @classmethod
    def _plain(cls, v: str | None) -> str | None:
        return None if v is None else _file_name(v)

    @model_validator(mode="after")
    def _one_source(self) -> AnswerSource:
        given = [k for k in SOURCES if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(SOURCES)}")
        if (self.json_path or self.pattern or self.add is not None) and self.exec is None:
            raise ValueError("json, pattern and add only apply to exec")
        if (self.capture is None) != (self.field is None):
            raise ValueError("capture and field go together")
        if self.pattern is not None:
            try:
                re.compile(self.pattern)
            except re.error as e:
                raise ValueError(f"pattern: {e}") from None
        return self


class Record(AnswerSource):
    """A solution step that writes an answer into the student's answer file."""

    key: str


class Expect(_Strict):
    """What a command must show; every field given must hold."""

    stdout_contains: str | None = None
    stdout_lacks: str | None = None
    stdout_matches: str | None = None
    exit_code: int | None = None

    @model_validator(mode="after")
    def _something(self) -> Expect:
        fields = ("stdout_contains", "stdout_lacks", "stdout_matches", "exit_code")
        if all(getattr(self, k) is None for k in fields):
            raise ValueError(f"give at least one of {', '.join(fields)}")
        if self.stdout_matches is not None:
            try:
                re.compile(self.stdout_matches)
            except re.error as e:
                raise ValueError(f"stdout_matches: {e}") from None
        return self


class Wait(_Strict):
    """Run `exec` every half second until its output meets `expect`, for at most `timeout`
    seconds (a BGP hold timer, a session coming back): poll, never a fixed sleep."""

    exec: Exec
    expect: Expect
    timeout: float = Field(gt=0, le=120)


STEPS = ("exec", "apply", "delete", "capture", "answer", "wait")


class Step(_Strict):
    """One labctl-level action; exactly one of its fields is set. `apply` and `delete` take a
    manifest, as `labctl apply -f` and `labctl delete --ignore-not-found -f`."""

    exec: Exec | None = None
    apply: str | None = None
    delete: str | None = None
    capture: Capture | None = None
    answer: Record | None = None
    wait: Wait | None = None

    @model_validator(mode="after")
    def _one_action(self) -> Step:
        given = [k for k in STEPS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(STEPS)} (got {given})")
        return self


class FileContains(_Strict):
    """A file on the host (`~` expanded) holds `text`."""

    path: str
    text: str


class Probe(_Strict):
    """A connection from pod `src` to pod `dst` (both NS/POD) that must, or must not, work."""

    src: str
    dst: str
    protocol: Literal["tcp", "udp"] = "tcp"
    port: int | None = Field(default=None, ge=1, le=65535)
    expect: bool = True


class AnswerCheck(_Strict):
    """The student's answer `key` equals a value, compared case-insensitively."""

    key: str
    equals: AnswerSource


class Check(_Strict):
    """One condition the lab must meet; `says` is what the student is told when it does not."""

    says: str
    exec: Exec | None = None
    expect: Expect | None = None
    file_contains: FileContains | None = None
    probe: Probe | None = None
    answer: AnswerCheck | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Check:
        kinds = ("exec", "file_contains", "probe", "answer")
        given = [k for k in kinds if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(kinds)} (got {given})")
        if (self.exec is None) != (self.expect is None):
            raise ValueError("exec and expect go together")
        return self


class Exercise(_Strict):
    """One lesson: the lab it needs, how to prepare it, hints, a reference solution, checks."""

    name: str
    short: str | None = Field(default=None, max_length=21)
    title: str
    mode: str
    topology: str = "default"
    minutes: int = Field(gt=0, le=240)
    setup: list[Step] = []
    #: Undo what setup and solution changed, so the next exercise can use the same lab.
    cleanup: list[Step] = []
    hints: list[str] = Field(min_length=1)
    solution: list[Step] = Field(min_length=1)
    checks: list[Check] = Field(min_length=1)

    @field_validator("name", "short")
    @classmethod
    def _dns(cls, v: str | None) -> str | None:
        if v is not None and not NAME.match(v):
            raise ValueError("use lowercase letters, digits and '-'")
        return v

    @field_validator("mode")
    @classmethod
    def _known_mode(cls, v: str) -> str:
        from labctl.modes import MODES

        if v not in MODES:
            raise ValueError(f"unknown mode {v!r}; one of {', '.join(MODES)}")
        return v

    @property
    def lab(self) -> str:
        """The default lab name: `ex-` and the short name (else the name, cut to labctl's 24
        characters)."""
        return f"ex-{self.short or self.name}"[:24].rstrip("-")


def _where(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def parse(text: str, source: str) -> Exercise:
    """Validate one exercise document; ExerciseError naming the file and field otherwise."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ExerciseError(f"{source}: not YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ExerciseError(f"{source}: expected a mapping at the top level")
    try:
        return Exercise.model_validate(data)
    except pydantic.ValidationError as e:
        first = e.errors()[0]
        loc = first["loc"]
        msg = first["msg"].removeprefix("Value error, ")
        more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
        raise ExerciseError(f"{source}: {_where(loc) or '<top>'}: {msg}{more}") from None


def load(path: Path) -> Exercise:
    """Load `path` (an exercise.yaml, or its directory); its name must match its directory."""
    if path.is_dir():
        path = path / "exercise.yaml"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ExerciseError(f"{path}: {e.strerror}") from None
    ex = parse(text, str(path))
    if ex.name != path.parent.name:
        raise ExerciseError(f"{path}: name: {ex.name!r} differs from its directory")
    return ex


def catalogue(root: Path = EXERCISES_ROOT) -> dict[str, Exercise]:
    """Every shipped exercise by name."""
    return {p.name: load(p) for p in sorted(root.iterdir()) if (p / "exercise.yaml").is_file()}


def find(name: str, root: Path = EXERCISES_ROOT) -> Exercise:
    """The exercise called `name`; ExerciseError listing the known ones otherwise."""
    path = root / name
    if not (path / "exercise.yaml").is_file() or not NAME.match(name):
        known = ", ".join(p.name for p in sorted(root.iterdir()) if p.is_dir())
        raise ExerciseError(f"no exercise {name!r}; known: {known}")
    return load(path)
