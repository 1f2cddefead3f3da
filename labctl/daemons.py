"""Long-running per-namespace processes of a lab (userspace datapaths, ...): started by the
supervisor inside their namespace, restarted when they die, stopped with the lab."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

from labctl import state
from labctl.controlplane import agent, felix
from labctl.datapath import bpf, ipip, udpproxy
from labctl.nsutil import enter_netns_path, netns_path
from labctl.plan import Plan

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
        ddir = st.dir / "daemons"
        for ns in plan.namespaces.values():
            for d in ns.daemons:
                ddir.mkdir(exist_ok=True)
                name = f"{ns.name}:{d.kind}"
                cfg = ddir / f"{ns.name.replace('/', '_')}-{d.kind}.json"
                cfg.write_text(json.dumps(d.config))
                argv = ARGV[d.kind](str(cfg))
                log = str(cfg.with_suffix(".log"))
                popen = self._spawn(pids[ns.name], argv, log)
                self.procs.append(_Proc(name, pids[ns.name], argv, log, popen))
                st.processes[name] = popen.pid
        # One deadline for the group: they all start at once and share the same cores.
        deadline = time.monotonic() + READY_TIMEOUT + READY_PER_DAEMON * len(self.procs)
        for p in self.procs:
            _wait_ready(p, deadline)

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
        for p in self.procs:
            if p.popen.poll() is None:
                p.popen.terminate()
        deadline = time.monotonic() + timeout
        for p in self.procs:
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
