"""Measuring one client/server pair of network namespaces: iperf3 with 1 and 4 streams, the
request/response test (labctl.bench.rr) and the CPU the throughput run cost.

CPU is process accounting, not the whole machine (shared with other work): the iperf3
client's and server's own rusage (iperf3 -J reports it; this kernel charges softirq work to
the task it interrupts, which on veths is the sender or receiver), plus the CPU of the given
datapath processes (a userspace proxy) and of ksoftirqd over the run. The whole machine's
busy cores are recorded beside it, to show how loaded the machine was."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from labctl.bench.model import Sample

IPERF_PORT = 5201
RR_PORT = 5301
HZ = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Pair:
    """Where to run the client and the server: argv prefixes entering each namespace, the
    server's address, and the processes besides iperf3 whose CPU the datapath costs."""

    name: str
    client: list[str]
    server: list[str]
    server_ip: str
    datapath_pids: Callable[[], list[int]] = field(default=lambda: [])
    env: dict[str, str] | None = None


def netns_argv(pid: int | None = None, name: str | None = None) -> list[str]:
    """argv prefix entering a network namespace by PID (lab) or by `ip netns` name."""
    if pid is not None:
        return ["nsenter", "-t", str(pid), "-n", "--"]
    return ["nsenter", f"--net=/run/netns/{name}", "--"]


def sample(pair: Pair, seconds: int) -> Sample:
    """One repeat: TCP with 1 and with 4 streams, then the round trips, each `seconds`."""
    tcp1, cores, host = _iperf3(pair, seconds, 1)
    tcp4, _, _ = _iperf3(pair, seconds, 4)
    rr = _rr(pair, seconds)
    return Sample(
        tcp1=round(tcp1, 3),
        tcp4=round(tcp4, 3),
        rr=rr["rate"],
        p50=rr["p50"],
        p99=rr["p99"],
        cpuPerGbps=round(cores / tcp1, 4) if tcp1 else 0.0,
        hostBusyCores=round(host, 2),
    )


def _iperf3(pair: Pair, seconds: int, streams: int) -> tuple[float, float, float]:
    """Gbit/s received, CPU cores busy (iperf3 both ends + datapath + ksoftirqd) and the
    whole machine's busy cores over the run."""
    server = subprocess.Popen(
        [*pair.server, "iperf3", "-s", "-1", "-p", str(IPERF_PORT)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=pair.env,
    )
    try:
        wait_listening(pair.server, IPERF_PORT)
        others = [*pair.datapath_pids(), *ksoftirqd_pids()]
        before, host0, t0 = proc_cpu(others), host_stat(), time.monotonic()
        argv = ["iperf3", "-c", pair.server_ip, "-p", str(IPERF_PORT), "-t", str(seconds)]
        res = subprocess.run(
            [*pair.client, *argv, "-P", str(streams), "-J"],
            capture_output=True,
            text=True,
            env=pair.env,
            timeout=seconds + 30,
        )
        wall = time.monotonic() - t0
        extra = (proc_cpu(others) - before) / wall
        host = (host_stat()[0] - host0[0]) / HZ / wall
        try:
            doc = json.loads(res.stdout)
        except json.JSONDecodeError:
            raise RuntimeError(f"iperf3 in {pair.name}: {res.stderr.strip()}") from None
        if "error" in doc:
            raise RuntimeError(f"iperf3 in {pair.name}: {doc['error']}")
        gbps = doc["end"]["sum_received"]["bits_per_second"] / 1e9
        cpu = doc["end"]["cpu_utilization_percent"]
        return gbps, (cpu["host_total"] + cpu["remote_total"]) / 100 + extra, host
    finally:
        server.kill()
        server.wait()


def _rr(pair: Pair, seconds: int) -> dict[str, float]:
    """The round-trip test: server in the server namespace, client in the client's."""
    py = [sys.executable, "-m", "labctl.bench.rr"]
    server = subprocess.Popen(
        [*pair.server, *py, "serve", str(RR_PORT)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=pair.env,
    )
    try:
        assert server.stdout is not None
        if server.stdout.readline().strip() != "ready":
            raise RuntimeError(f"round-trip server in {pair.name} did not start")
        res = subprocess.run(
            [*pair.client, *py, "client", pair.server_ip, str(RR_PORT), str(seconds)],
            capture_output=True,
            text=True,
            env=pair.env,
            timeout=seconds + 30,
        )
        if res.returncode != 0:
            raise RuntimeError(f"round-trip client in {pair.name}: {res.stderr.strip()[-300:]}")
        return dict(json.loads(res.stdout))
    finally:
        server.kill()
        server.wait()


def wait_listening(enter: list[str], port: int, timeout: float = 5.0) -> None:
    """iperf3 has no readiness signal: poll the namespace's sockets until it listens."""
    argv = [*enter, "ss", "-Hltn", f"sport = :{port}"]
    deadline = time.monotonic() + timeout
    while not subprocess.run(argv, capture_output=True, text=True).stdout.strip():
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing listened on port {port} within {timeout:.0f}s")
        time.sleep(0.02)


def proc_cpu(pids: list[int]) -> float:
    """CPU seconds (user + system) the processes used so far; gone processes count 0."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / HZ


def ksoftirqd_pids() -> list[int]:
    """The per-CPU softirq threads: they run network work the interrupted task did not."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().startswith("ksoftirqd/"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def host_stat() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from /proc/stat (busy: not idle, iowait or steal)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    total = sum(values[:8])  # guest time is already inside user
    return total - values[3] - values[4] - values[7], total
