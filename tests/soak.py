"""The soak and fault pass (scripts/soak.sh; opt-in, a short run is in CI's integration tests).

It proves that nothing leaks: after every step the host namespace (links, addresses, routes,
rules, neighbours, sysctls, nftables, iptables) is compared with the snapshot taken before the
pass, and the lab's processes, namespace and state must be gone.

- cycles: `up` + probe + `down` across modes and topologies;
- kills: SIGKILL of `up` half-way, of the supervisor, of a userspace datapath and of bgpd at a
  random moment (with traffic), then `down`;
- together: two and three labs at once, each probed while the others run;
- iperf: a long iperf3 run through each userspace datapath; the lab must still verify after.

Lab names end in the run's suffix, so the pass never touches other labs.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from labctl import state
from labctl.lifecycle import _lab_pids
from tests.integration.conftest import RUN, cli_argv, host_snapshot, run_name

CYCLE_MATRIX = [
    ("flannel-vxlan", "default"),
    ("flannel-host-gw", "two-node"),
    ("flannel-udp", "two-node"),
    ("flannel-ipip", "two-node"),
    ("flannel-vxlan-directrouting", "cross-subnet"),
    ("calico-bgp", "default"),
    ("calico-vxlan", "cross-subnet"),
    ("canal", "two-node"),
]
KILLS = ("up", "supervisor", "datapath", "bgpd")
#: Datapaths that are processes of the lab: mode -> extra `up` arguments.
USERSPACE = {"flannel-udp": (), "flannel-ipip": ("--datapath", "userspace")}


class SoakFailure(AssertionError):
    """Something leaked or a lab broke; the message says what and after which step."""


@dataclass
class Report:
    """What the pass did; `leftovers` must stay 0."""

    cycles: int = 0
    kills: dict[str, int] = field(default_factory=dict)
    together: list[int] = field(default_factory=list)
    iperf: dict[str, float] = field(default_factory=dict)
    leftovers: int = 0
    seconds: float = 0.0

    def lines(self) -> list[str]:
        """The summary a person reads (and the README quotes)."""
        kills = ", ".join(f"{k} {v}" for k, v in self.kills.items()) or "none"
        iperf = ", ".join(f"{m} {g:.2f} Gbit/s" for m, g in self.iperf.items()) or "none"
        return [
            f"up/down cycles: {self.cycles}",
            f"SIGKILLs then down: {kills}",
            f"labs at once: {', '.join(map(str, self.together)) or 'none'}",
            f"iperf3 through userspace datapaths: {iperf}",
            f"leftovers: {self.leftovers}",
            f"took {self.seconds:.0f} s",
        ]


def cli(*args: str, check: bool = True, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cli_argv(*args), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise SoakFailure(f"labctl {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
    return proc


class Soak:
    """One pass; `step` compares the host after each action."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.baseline = host_snapshot()
        self.report = Report()
        self.last_up: subprocess.CompletedProcess[str] | None = None

    def assert_clean(self, what: str, labs: list[str]) -> None:
        """The host is as before and the labs left nothing (processes, namespace, state)."""
        now = host_snapshot()
        problems = [f"host {k} changed" for k in self.baseline if now[k] != self.baseline[k]]
        for base in labs:
            name = run_name(base)
            if _lab_pids(name):
                problems.append(f"processes of {name} survived")
            if Path(f"/run/netns/{state.netns_name(name)}").exists():
                problems.append(f"namespace of {name} survived")
            if state.lab_dir(name).exists():
                problems.append(f"state of {name} survived")
        if problems:
            self.report.leftovers += len(problems)
            raise SoakFailure(f"after {what}: " + "; ".join(problems))

    @contextmanager
    def lab(self, base: str, mode: str, topology: str, *extra: str) -> Iterator[str]:
        """A lab up for the block, down after whatever happened."""
        try:
            self.last_up = cli("up", mode, "-t", topology, "-n", base, *extra)
            yield base
        finally:
            down = cli("down", "-n", base, check=False)
            if down.returncode != 0:
                # A lab that will not go down is the leak this pass looks for: say why.
                raise SoakFailure(f"down -n {base} exited {down.returncode}: {down.stderr}")

    def cycles(self, count: int) -> None:
        for i in range(count):
            mode, topology = CYCLE_MATRIX[i % len(CYCLE_MATRIX)]
            with self.lab("soak", mode, topology):
                probe = cli("probe", "-n", "soak", check=False)
                if probe.returncode != 0:
                    tail = " | ".join((probe.stdout + probe.stderr).strip().splitlines()[-4:])
                    up_out = self.last_up.stdout if self.last_up else ""
                    said = " | ".join(up_out.strip().splitlines()[-3:])
                    raise SoakFailure(
                        f"cycle {i} ({mode}, {topology}): probe failed: {tail} (up said: {said})"
                    )
            self.assert_clean(f"cycle {i} ({mode}, {topology})", ["soak"])
            self.report.cycles += 1

    def kill(self, what: str) -> None:
        """SIGKILL `what` at a random moment, then `down`; the host must be clean."""
        mode = {"bgpd": "calico-bgp", "datapath": "flannel-udp"}.get(what, "flannel-vxlan")
        name = run_name("soakk")
        if what == "up":
            proc = subprocess.Popen(
                cli_argv("up", mode, "-n", "soakk"),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            _wait(lambda: (state.lab_dir(name) / "state.json").exists(), 10)
            time.sleep(self.rng.uniform(0, 0.5))
            proc.kill()
            proc.wait()
        else:
            cli("up", mode, "-n", "soakk")
            traffic = subprocess.Popen(
                cli_argv("probe", "-n", "soakk"),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(self.rng.uniform(0, 0.3))
            self._kill_in_lab(name, what)
            traffic.wait(60)
        cli("down", "-n", "soakk")
        self.assert_clean(f"SIGKILL of {what}", ["soakk"])
        self.report.kills[what] = self.report.kills.get(what, 0) + 1

    def _kill_in_lab(self, name: str, what: str) -> None:
        st = state.load(name)
        if what == "supervisor":
            pids = [st.supervisor_pid] if st.supervisor_pid else []
        else:
            comm = {"datapath": "python", "bgpd": "bgpd"}[what]
            pids = [p for p in _lab_pids(name) if _matches(p, what, comm)]
        if not pids:
            raise SoakFailure(f"no {what} process found in lab {name}")
        for pid in pids:
            subprocess.run(["kill", "-KILL", str(pid)], check=False)

    def together(self, count: int) -> None:
        bases = [f"soakt{i}" for i in range(count)]
        modes = ["flannel-vxlan", "flannel-host-gw", "calico-bgp"]
        try:
            for i, base in enumerate(bases):
                cli("up", modes[i % len(modes)], "-t", "two-node", "-n", base)
            for base in bases:
                if cli("probe", "-n", base, check=False).returncode != 0:
                    raise SoakFailure(f"{count} labs at once: {base} lost traffic")
        finally:
            for base in bases:
                cli("down", "-n", base, check=False)
        self.assert_clean(f"{count} labs at once", bases)
        self.report.together.append(count)

    def iperf(self, mode: str, seconds: int) -> None:
        with self.lab("soaki", mode, "two-node", *USERSPACE[mode]):
            server = subprocess.Popen(
                cli_argv("exec", "-n", "soaki", "default/pod-b", "--", "iperf3", "-s", "-1"),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                _wait(lambda: bool(_listening("soaki")), 10)
                argv = ["iperf3", "-c", "10.1.20.2", "-t", str(seconds), "-f", "g"]
                run = cli("exec", "-n", "soaki", "default/pod-a", "--", *argv,
                          timeout=seconds + 60)  # fmt: skip
            finally:
                server.kill()
                server.wait()
            receiver = [ln for ln in run.stdout.splitlines() if "receiver" in ln]
            if not receiver:
                raise SoakFailure(f"iperf3 through {mode}: no receiver summary")
            gbits = float(receiver[-1].split("Gbits/sec")[0].split()[-1])
            if cli("verify", "-n", "soaki", "--no-mtu", check=False).returncode != 0:
                raise SoakFailure(f"{mode}: the lab no longer verifies after {seconds} s of iperf3")
            status = json.loads(cli("status", "-n", "soaki", "-o", "json").stdout)
            if [w for w in status["warnings"] if "restarted" in w]:
                raise SoakFailure(f"{mode}: the datapath was restarted under load")
        self.assert_clean(f"iperf3 through {mode}", ["soaki"])
        self.report.iperf[mode] = gbits


def _listening(base: str) -> str:
    argv = ("exec", "-n", base, "default/pod-b", "--", "ss", "-Hltn", "sport = :5201")
    return cli(*argv, check=False).stdout.strip()


def _matches(pid: int, what: str, comm: str) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        name = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return False
    if what == "datapath":
        return "labctl.datapath" in cmdline
    return name == comm


def _wait(cond: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise SoakFailure(f"not within {timeout} s")
        time.sleep(0.01)


def run(
    cycles: int,
    kills: Sequence[str],
    together: Sequence[int],
    iperf_seconds: int,
    seed: int = 1,
) -> Report:
    """The whole pass; raises SoakFailure at the first leak or broken lab."""
    began = time.monotonic()
    soak = Soak(seed)
    soak.cycles(cycles)
    for what in kills:
        soak.kill(what)
    for count in together:
        soak.together(count)
    if iperf_seconds:
        for mode in USERSPACE:
            soak.iperf(mode, iperf_seconds)
    soak.report.seconds = time.monotonic() - began
    return soak.report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/soak.sh", description=__doc__)
    parser.add_argument("--cycles", type=int, default=100, help="up/down cycles (100)")
    parser.add_argument("--kills", type=int, default=8, help="SIGKILLs, round robin (8)")
    parser.add_argument("--iperf-seconds", type=int, default=600, help="per datapath (600)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        kills = [KILLS[i % len(KILLS)] for i in range(args.kills)]
        report = run(args.cycles, kills, (2, 3), args.iperf_seconds, args.seed)
    except SoakFailure as e:
        print(f"soak FAILED (run {RUN}): {e}", file=sys.stderr)
        return 1
    print("\n".join(report.lines()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
