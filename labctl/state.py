"""Per-lab state: one directory per lab recording everything the lab created, so any later
`labctl` call finds the lab and `down` removes exactly it, even after a crash."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pydantic
from pydantic import TypeAdapter

from labctl.errors import LabctlError

if TYPE_CHECKING:
    from labctl.plan import Plan

STATE_ROOT = Path(os.environ.get("LABCTL_STATE_DIR", "/run/labctl"))
LAB_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,22}[a-z0-9])?$")
# Every process a lab starts carries this in its environment: that, not a PID or a namespace
# inode (both reused by the kernel), is how `down` recognises the lab's processes.
LAB_ENV = "LABCTL_LAB"


@cache
def _plan_adapter() -> TypeAdapter[Plan]:
    # Built on first use: commands that never read the plan (exec, down) skip the planner.
    from labctl.plan import Plan

    return TypeAdapter(Plan)


class LabError(LabctlError):
    """A lab-level problem for the user (no such lab, ambiguous lab, already up)."""

    exit_code = 2


def check_lab_name(name: str) -> str:
    """Lab names end up in namespace names and paths: keep them short DNS-1123 labels."""
    if not LAB_NAME.match(name):
        raise LabError(
            f"--name {name!r}: use 1-24 lowercase letters, digits or '-', "
            "starting and ending with a letter or digit"
        )
    return name


def netns_name(lab: str) -> str:
    """The named network namespace that holds a lab's switches and its supervisor."""
    return f"labctl-{lab}"


@dataclass
class NsRecord:
    pid: int
    role: str
    node: str | None = None


@dataclass
class LabState:
    """What `labctl` knows about one lab; saved as state.json in the lab's directory."""

    lab: str
    mode: str
    topology: str  # path of the topology copy in the state dir
    topology_name: str = ""
    datapath: str = "kernel"
    proxy_mode: str = "nftables"  # kube-proxy's --proxy-mode on every node
    status: str = "starting"  # starting | ready | failed | stopping
    phase: str = ""
    error: str = ""
    error_code: int = 1
    supervisor_pid: int = 0
    netns: str = ""
    namespaces: dict[str, NsRecord] = field(default_factory=dict)
    processes: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    created: float = field(default_factory=time.time)
    ready_after: float = 0.0

    @property
    def dir(self) -> Path:
        """This lab's runtime directory."""
        return lab_dir(self.lab)

    def save(self) -> None:
        """Write atomically, so a reader never sees half a file."""
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".state.json.{os.getpid()}"
        tmp.write_text(json.dumps(asdict(self), indent=1))
        os.replace(tmp, self.dir / "state.json")

    def pid_of(self, target: str) -> int:
        """PID whose namespaces are those of a node, router or `ns/pod`; `etcd` is the lab's
        etcd (in the lab namespace, where etcdctl's default endpoint reaches it)."""
        if target == "etcd" and "etcd" in self.processes:
            return self.processes["etcd"]
        rec = self.namespaces.get(target)
        if rec is None:
            pods = [k for k in self.namespaces if "/" in k and k.split("/", 1)[1] == target]
            if len(pods) == 1:
                rec = self.namespaces[pods[0]]
        if rec is None:
            known = ", ".join(sorted(self.namespaces)[:12])
            raise LabError(
                f"{target!r} is not a node, router or NS/POD of lab {self.lab} ({known}, ...)"
            )
        return rec.pid


def lab_dir(lab: str) -> Path:
    """Runtime directory of lab `lab` (state.json, private dirs, logs)."""
    return STATE_ROOT / lab


def load(lab: str) -> LabState:
    """The recorded state of `lab`; LabError if there is none."""
    path = lab_dir(lab) / "state.json"
    try:
        raw: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise LabError(f"no lab named {lab!r} is up (see 'labctl status')") from None
    raw["namespaces"] = {k: NsRecord(**v) for k, v in raw.get("namespaces", {}).items()}
    return LabState(**raw)


PLAN_FILE = "plan.json"


def write_plan(lab: str, plan: Plan) -> None:
    """Record the lab's plan: what `up` programs, and what every later command reads."""
    path = lab_dir(lab) / PLAN_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_plan_adapter().dump_json(plan))


def read_plan(lab: str) -> Plan:
    """The plan recorded at `up`."""
    try:
        return _plan_adapter().validate_json((lab_dir(lab) / PLAN_FILE).read_bytes())
    except FileNotFoundError:
        raise LabError(f"lab {lab!r} has no recorded plan; is it up? (labctl status)") from None
    except pydantic.ValidationError as e:
        raise LabError(
            f"lab {lab!r}: its recorded plan is unreadable ({e.error_count()} error(s)); "
            f"'labctl down -n {lab}' and up again"
        ) from None


def list_labs() -> list[str]:
    """Names of labs with a state directory (up, starting or left behind by a crash)."""
    if not STATE_ROOT.is_dir():
        return []
    return sorted(p.name for p in STATE_ROOT.iterdir() if (p / "state.json").exists())


def resolve(name: str | None) -> str:
    """The lab a command means: the named one, else the only one that is up."""
    if name:
        return check_lab_name(name)
    labs = list_labs()
    if len(labs) == 1:
        return labs[0]
    if not labs:
        raise LabError("no lab is up; start one with 'labctl up MODE'")
    raise LabError(f"several labs are up ({', '.join(labs)}); pick one with -n NAME")


def remove(lab: str) -> None:
    """Delete the runtime directory of lab `lab`, if any."""
    shutil.rmtree(lab_dir(lab), ignore_errors=True)
