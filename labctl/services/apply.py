"""Programming kube-proxy's rules into the nodes: one transaction per node, all checked first.

A sync compiles every node's rules (iptables mode reads each node's `iptables-save` first, so it
inserts only missing hooks and deletes chains of Services that are gone), checks them all
(`iptables-restore --test --noflush` / `nft -c -f -`) and only then loads them all. If one node's
check fails nothing is loaded anywhere. Nodes are worked on in parallel, as each node's
kube-proxy works on its own.

Note that iptables-nft 1.8.9's `--test` parses the input and loads its extensions but does not
ask the kernel (a jump to a missing chain passes it); the compiler declares every chain it jumps
to, and the unit tests hold it to that.

IPVS mode is refused, never replaced silently by another mode: this kernel has no IPVS, and
labctl does not program IPVS where there is one.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from ipaddress import IPv4Network
from pathlib import Path

from labctl.errors import LabctlError
from labctl.nsutil import nsenter_argv
from labctl.policy.model import PodInfo
from labctl.services import proxy_iptables, proxy_nftables
from labctl.services.endpoints import compute_slices
from labctl.services.model import Service

PROXY_MODES = ("iptables", "nftables", "ipvs")
IP_VS = Path("/proc/net/ip_vs")
# One node's restore or nft run; generous, a lab node's table loads in milliseconds.
_TIMEOUT = 60

_SAVE = ["iptables-save"]
_CHECK = {
    "iptables": ["iptables-restore", "--test", "--noflush"],
    "nftables": ["nft", "-c", "-f", "-"],
}
_LOAD = {"iptables": ["iptables-restore", "--noflush"], "nftables": ["nft", "-f", "-"]}


class ProxyModeError(LabctlError):
    """A --proxy-mode labctl cannot run here: exit 3 for IPVS, 2 for an unknown mode."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class ProxyApplyError(RuntimeError, LabctlError):
    """A node refused its rules (or could not be reached); names each node and the tool's
    complaint. Nothing was loaded when the check pass fails."""

    exit_code = 1


@dataclass(frozen=True)
class SyncResult:
    """What one sync programmed, and how long it took from start to loaded on every node."""

    seconds: float
    rules: int  # over all nodes
    texts: dict[str, str]  # node -> the restore / nft input it loaded


def check_proxy_mode(mode: str, ip_vs: Path = IP_VS) -> None:
    """Raise ProxyModeError unless labctl can program `mode` on this machine.

    `ip_vs` is the file the kernel's IPVS module provides (a parameter for tests).
    """
    if mode not in PROXY_MODES:
        raise ProxyModeError(
            f"--proxy-mode {mode}: unknown proxy mode; use one of {', '.join(PROXY_MODES[:2])}",
            2,
        )
    if mode != "ipvs":
        return
    if not ip_vs.exists():
        raise ProxyModeError(
            f"--proxy-mode ipvs: this kernel has no IPVS ({ip_vs} is absent: the ip_vs module "
            "is not loaded or not built); use --proxy-mode nftables|iptables",
            3,
        )
    raise ProxyModeError(
        "--proxy-mode ipvs: labctl does not program IPVS virtual servers; use --proxy-mode "
        "nftables|iptables (the same Services, in kube-proxy's other two layouts)",
        3,
    )


def compile_all(
    services: Sequence[Service],
    pods: Sequence[PodInfo],
    nodes: Mapping[str, str],
    cluster_cidr: IPv4Network,
    proxy_mode: str,
    saved: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Every node's rules (node -> text) for `proxy_mode` ("iptables" or "nftables").

    `nodes` maps a node to its IP; `saved` holds each node's `iptables-save` output (iptables
    mode; a node without an entry is treated as having no kube-proxy rules yet). Pure.
    """
    slices = compute_slices(services, pods)
    if proxy_mode == "iptables":
        return {
            node: proxy_iptables.compile_node(
                node, ip, cluster_cidr, services, slices, (saved or {}).get(node, "")
            )
            for node, ip in nodes.items()
        }
    return {
        node: proxy_nftables.compile_node(node, ip, cluster_cidr, services, slices)
        for node, ip in nodes.items()
    }


def count_rules(text: str, proxy_mode: str) -> int:
    """Rules in one node's text."""
    if proxy_mode == "iptables":
        return proxy_iptables.count_rules(text)
    return proxy_nftables.count_rules(text)


def _run(pid: int, argv: list[str], text: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        nsenter_argv(pid, argv, mount=False),
        input=text,
        capture_output=True,
        text=True,
        timeout=_TIMEOUT,
    )


def _run_all(
    jobs: Mapping[str, tuple[int, str]], argv: list[str]
) -> dict[str, subprocess.CompletedProcess[str]]:
    """`argv` in every node (node -> (pid, stdin)) at once; ProxyApplyError naming every node
    where it failed."""
    with ThreadPoolExecutor(max_workers=max(len(jobs), 1)) as pool:
        futures = {node: pool.submit(_run, pid, argv, text) for node, (pid, text) in jobs.items()}
    results = {}
    errors = []
    for node, future in futures.items():
        try:
            proc = future.result()
        except (OSError, subprocess.TimeoutExpired) as e:
            errors.append(f"{node}: {' '.join(argv)}: {e}")
            continue
        if proc.returncode != 0:
            lines = [x for x in proc.stderr.splitlines() if x.strip()][:2]
            why = "; ".join(lines) or f"exit {proc.returncode}"
            errors.append(f"{node}: {' '.join(argv)}: {why}")
        results[node] = proc
    if errors:
        raise ProxyApplyError(" | ".join(errors))
    return results


def sync(
    services: Sequence[Service],
    pods: Sequence[PodInfo],
    nodes: Mapping[str, str],
    pids: Mapping[str, int],
    cluster_cidr: IPv4Network,
    proxy_mode: str,
) -> SyncResult:
    """Compile kube-proxy's rules for every node in `nodes` (node -> IP) and program them into
    the network namespaces of `pids` (node -> pid): check all, then load all.

    Raises ProxyModeError for a mode labctl cannot run, ProxyApplyError when a node refuses
    (after the check pass: nothing loaded).
    """
    started = time.monotonic()
    check_proxy_mode(proxy_mode)
    missing = sorted(set(nodes) - set(pids))
    if missing:
        raise ProxyApplyError(f"no process for node(s) {', '.join(missing)}; is the lab up?")
    saved = None
    if proxy_mode == "iptables":
        dumps = _run_all({node: (pids[node], "") for node in nodes}, _SAVE)
        saved = {node: proc.stdout for node, proc in dumps.items()}
    texts = compile_all(services, pods, nodes, cluster_cidr, proxy_mode, saved)
    jobs = {node: (pids[node], text) for node, text in texts.items()}
    _run_all(jobs, _CHECK[proxy_mode])
    _run_all(jobs, _LOAD[proxy_mode])
    rules = sum(count_rules(t, proxy_mode) for t in texts.values())
    return SyncResult(round(time.monotonic() - started, 4), rules, texts)
