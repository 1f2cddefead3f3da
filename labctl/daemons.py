"""Long-running per-namespace processes of a lab (userspace datapaths, ...): started by the
supervisor inside their namespace, restarted when they die, stopped with the lab."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labctl import state
from labctl.controlplane import agent, felix
from labctl.datapath import bpf, ipip, udpproxy
from labctl.nsutil import enter_netns_path, netns_path
from labctl.plan import Daemon, NamespacePlan, Plan

# kind -> function(config_path) returning the argv to run.
ARGV: dict[str, Callable[[str], list[str]]] = {
    "udpproxy": udpproxy.argv,
    "ipip": ipip.argv,
    "ipip-bpf": bpf.argv,
    "flannel-agent": agent.argv,
    "calico-node": felix.argv,
}
#: The kinds above that move pod packets through a userspace process (a TUN proxy); the BPF
#: loader and the node agents only program the kernel, which moves the packets.
USERSPACE_DATAPATHS = frozenset({"udpproxy", "ipip"})
MAX_RESTARTS = 5
READY_TIMEOUT = 10.0
READY_PER_DAEMON = 0.5


@dataclass
class _Proc:
    name: str
    ns_pid: int
    argv: list[str]
    log: str
    popen: subprocess.Popen[bytes]
    restarts: int = 0


class Group:
    """The daemons of one lab."""

    def __init__(self, lab: str) -> None:
        self.lab = lab
        self.procs: list[_Proc] = []

    def _spawn(self, ns_pid: int, argv: list[str], log: str) -> subprocess.Popen[bytes]:
        path = netns_path(ns_pid)
        with open(log, "ab") as out:
            return subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                preexec_fn=lambda: enter_netns_path(path),
            )

    def start(self, plan: Plan, pids: dict[str, int], st: state.LabState) -> None:
        """Start every daemon the plan names, each inside its namespace."""
        for ns in plan.namespaces.values():
            self._start_ns(ns, pids[ns.name], st)
        # One deadline for the group: they all start at once and share the same cores.
        deadline = time.monotonic() + READY_TIMEOUT + READY_PER_DAEMON * len(self.procs)
        for p in self.procs:
            _wait_ready(p, deadline)

    def start_namespace(self, ns: NamespacePlan, pid: int, st: state.LabState) -> None:
        """Start the daemons of one namespace (a node that joined) and wait until ready."""
        started = self._start_ns(ns, pid, st)
        deadline = time.monotonic() + READY_TIMEOUT + READY_PER_DAEMON * len(started)
        for p in started:
            _wait_ready(p, deadline)

    def _start_ns(self, ns: NamespacePlan, pid: int, st: state.LabState) -> list[_Proc]:
        started = []
        for d in ns.daemons:
            name = f"{ns.name}:{d.kind}"
            cfg = config_path(st, ns.name, d.kind)
            cfg.write_text(json.dumps(d.config))
            argv = ARGV[d.kind](str(cfg))
            log = str(cfg.with_suffix(".log"))
            proc = _Proc(name, pid, argv, log, self._spawn(pid, argv, log))
            self.procs.append(proc)
            started.append(proc)
            st.processes[name] = proc.popen.pid
        return started

    def reconfigure(self, ns: str, daemon: Daemon, st: state.LabState) -> None:
        """Give a running daemon a new config (its peer table) and SIGHUP it to re-read it."""
        write_config(st, ns, daemon.kind, daemon.config)
        for p in self.procs:
            if p.name == f"{ns}:{daemon.kind}" and p.popen.poll() is None:
                p.popen.send_signal(signal.SIGHUP)

    def stop_namespace(self, ns: str, st: state.LabState, timeout: float = 3.0) -> list[str]:
        """Stop and forget the daemons of namespace `ns` (a node that leaves); their names."""
        mine = [p for p in self.procs if p.name.split(":", 1)[0] == ns]
        _terminate(mine, timeout)
        for p in mine:
            self.procs.remove(p)
            st.processes.pop(p.name, None)
        return [p.name for p in mine]

    def alive(self) -> dict[str, bool]:
        """Which daemons are running right now (for status)."""
        return {p.name: p.popen.poll() is None for p in self.procs}

    def check(self, st: state.LabState) -> bool:
        """Restart daemons that died; return True if anything changed."""
        changed = False
        for p in self.procs:
            code = p.popen.poll()
            if code is None:
                continue
            changed = True
            if p.restarts >= MAX_RESTARTS:
                msg = (
                    f"{p.name} exited with {code} and was restarted {MAX_RESTARTS} times; giving up"
                )
                if msg not in st.warnings:
                    st.warnings.append(msg)
                continue
            p.restarts += 1
            st.warnings.append(f"{p.name} exited with {code}; restarted ({p.restarts})")
            p.popen = self._spawn(p.ns_pid, p.argv, p.log)
            st.processes[p.name] = p.popen.pid
        return changed

    def stop(self, timeout: float = 3.0) -> None:
        """SIGTERM all, then SIGKILL what is left after `timeout`."""
        _terminate(self.procs, timeout)


def config_path(st: state.LabState, ns: str, kind: str) -> Path:
    ddir = st.dir / "daemons"
    ddir.mkdir(exist_ok=True)
    return ddir / f"{ns.replace('/', '_')}-{kind}.json"


def write_config(st: state.LabState, ns: str, kind: str, config: dict[str, Any]) -> None:
    """Replace a daemon's config file atomically: the supervisor and a node's agent both
    rewrite peer tables, and a SIGHUPed daemon must never read half a file."""
    path = config_path(st, ns, kind)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(config))
    os.replace(tmp, path)


def _terminate(procs: list[_Proc], timeout: float) -> None:
    """SIGTERM `procs`, then SIGKILL what is left after `timeout`."""
    for p in procs:
        if p.popen.poll() is None:
            # A frozen daemon (labctl node stop) acts on SIGTERM only once it runs again.
            p.popen.send_signal(signal.SIGCONT)
            p.popen.terminate()
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.popen.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.popen.kill()
            p.popen.wait()


class DaemonFailed(RuntimeError):
    """A daemon exited or never said it was ready."""


def _wait_ready(p: _Proc, deadline: float) -> None:
    """Block until the daemon prints its `ready` line (the datapaths' start-up handshake)."""
    while time.monotonic() < deadline:
        with open(p.log, "rb") as f:
            if b"ready\n" in f.read():
                return
        if p.popen.poll() is not None:
            with open(p.log, errors="replace") as f:
                tail = f.read().strip().splitlines()[-1:]
            raise DaemonFailed(f"{p.name} exited ({p.popen.returncode}): {' '.join(tail)}")
        time.sleep(0.01)
    raise DaemonFailed(f"{p.name} did not become ready in time (log {p.log})")
