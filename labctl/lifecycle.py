"""Bringing a lab up and down from the CLI side: the lab's private namespace, the
supervisor that holds it, and a cleanup that works from the recorded state alone."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from labctl import state
from labctl.errors import LabctlError
from labctl.nsutil import enter_netns_path
from labctl.state import LAB_ENV, LabError, LabState

# The planner, the object store and pyroute2 are imported where used: `exec` and `down` run
# often (every test, every exercise step) and need none of them.
if TYPE_CHECKING:
    from labctl.modes import Mode
    from labctl.topology import Topology

REQUIRED_TOOLS = ("mnexec", "brctl", "nsenter", "tcpdump", "ping", "etcd")
UP_TIMEOUT = 600.0


class EnvironmentProblem(LabctlError):
    """The machine lacks something (root, a tool, a kernel feature); exit 3."""

    exit_code = 3


def check_environment() -> None:
    """Root and the external tools a lab needs, with the fix named."""
    if os.geteuid() != 0:
        raise EnvironmentProblem(
            "labctl needs root to build namespaces; run it as root (e.g. with sudo)"
        )
    missing = [t for t in REQUIRED_TOOLS if shutil.which(t) is None]
    if missing:
        raise EnvironmentProblem(
            f"missing tools: {', '.join(missing)}; run 'bash scripts/install.sh' as root"
        )
    try:
        import mininet.net  # noqa: F401
    except ImportError:
        raise EnvironmentProblem(
            "the Mininet Python module is not importable; run 'bash scripts/install.sh' as root "
            "and use .venv/bin/labctl (a venv made from /usr/bin/python3 with system site-packages)"
        ) from None


def _lab_pids(lab: str) -> list[int]:
    """PIDs of every process that carries the lab's environment marker."""
    marker = f"{LAB_ENV}={lab}".encode()
    me = os.getpid()
    out = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            env = Path(entry.path, "environ").read_bytes()
        except OSError:
            continue
        if marker in env.split(b"\0"):
            out.append(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    """Running, not merely a zombie waiting for whoever adopted it to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def up(
    lab: str,
    mode: Mode,
    topology_file: Path,
    topo: Topology,
    progress: Callable[[str], None],
    datapath: str = "kernel",
    notes: list[str] | None = None,
    proxy_mode: str = "nftables",
) -> LabState:
    """Plan the lab, record the plan and the cluster's objects, start its supervisor and wait
    until it is ready.

    A plan that cannot be made is bad input and fails before anything is built; on any later
    failure everything built so far is removed before the error is raised.
    """
    from pyroute2 import netns as pr_netns

    from labctl import capacity, store

    plan = mode.plan(topo, datapath)
    # Refuse before building: past these limits a lab fails in ways that look like bugs.
    capacity.check(capacity.demand(plan), capacity.host_limits())
    objects = store.from_topology(topo, mode.network)
    if lab in state.list_labs() or os.path.exists(f"/run/netns/{state.netns_name(lab)}"):
        raise LabError(f"lab {lab!r} is already up; 'labctl down -n {lab}' first, or pick -n NAME")
    st = LabState(
        lab=lab,
        mode=mode.name,
        topology="",
        topology_name=topo.name,
        datapath=datapath,
        proxy_mode=proxy_mode,
    )
    st.notes = list(notes or [])
    st.dir.mkdir(parents=True, exist_ok=True)
    copy = st.dir / "topology.yaml"
    shutil.copyfile(topology_file, copy)
    st.topology = str(copy)
    st.netns = state.netns_name(lab)
    st.save()
    state.write_plan(lab, plan)
    store.save(lab, objects)
    try:
        pr_netns.create(st.netns)
        env = dict(os.environ, **{LAB_ENV: lab})
        nspath = f"/run/netns/{st.netns}"

        def child_setup() -> None:
            os.setsid()
            enter_netns_path(nspath)

        with open(st.dir / "supervisor.log", "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "labctl.supervisor", lab],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
                preexec_fn=child_setup,
                cwd="/",
            )
        st.supervisor_pid = proc.pid
        last = ""
        deadline = time.monotonic() + UP_TIMEOUT
        while True:
            cur = state.load(lab)
            if cur.phase and cur.phase != last:
                progress(cur.phase)
                last = cur.phase
            if cur.status == "ready":
                return cur
            if cur.status == "failed":
                err = LabError(cur.error)
                err.exit_code = cur.error_code
                raise err
            if proc.poll() is not None:
                tail = (st.dir / "supervisor.log").read_text(errors="replace").strip().splitlines()
                raise LabError(
                    f"the lab supervisor exited ({proc.returncode}): {tail[-1] if tail else ''}"
                )
            if time.monotonic() > deadline:
                raise LabError(f"lab did not become ready within {UP_TIMEOUT:.0f}s (last: {last})")
            time.sleep(0.02)
    except BaseException:
        down(lab)
        raise


def down(lab: str, timeout: float = 5.0) -> list[str]:
    """Remove everything of `lab`: processes (by marker), its namespace, its state.

    Works from the record alone, so it also cleans up after a supervisor killed with SIGKILL.
    Returns what was removed, for the user.
    """
    removed: list[str] = []
    try:
        st: LabState | None = state.load(lab)
    except LabError:
        st = None
    if st and st.supervisor_pid and st.supervisor_pid in _lab_pids(lab):
        # Graceful first: the supervisor stops its daemons cleanly.
        os.kill(st.supervisor_pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _alive(st.supervisor_pid) and time.monotonic() < deadline:
            time.sleep(0.02)
    deadline = time.monotonic() + timeout
    killed: set[int] = set()
    while True:
        pids = _lab_pids(lab)
        if not pids:
            break
        killed.update(pids)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise LabError(f"processes of lab {lab} would not die: {pids}")
        time.sleep(0.02)
    if killed:
        removed.append(f"{len(killed)} leftover process(es)")
    from pyroute2 import netns as pr_netns

    netns = state.netns_name(lab)
    if netns in pr_netns.listnetns():
        pr_netns.remove(netns)
        removed.append(f"namespace {netns}")
    if state.lab_dir(lab).exists():
        state.remove(lab)
        removed.append(f"state {state.lab_dir(lab)}")
    return removed


def stale_netns() -> list[str]:
    """Lab namespaces with no state directory (left by a crash during 'up')."""
    from pyroute2 import netns as pr_netns

    labs = set(state.list_labs())
    return [
        n.removeprefix("labctl-")
        for n in pr_netns.listnetns()
        if n.startswith("labctl-") and n.removeprefix("labctl-") not in labs
    ]
