"""Integration fixtures: real labs, built as root, always torn down."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

LABCTL = str(Path(sys.executable).parent / "labctl")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reasons = []
    if os.geteuid() != 0:
        reasons.append("needs root (builds network namespaces)")
    if shutil.which("mnexec") is None:
        reasons.append("Mininet is not installed (run scripts/install.sh)")
    if not reasons:
        return
    skip = pytest.mark.skip(reason="; ".join(reasons))
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(skip)


def labctl(
    *args: str, check: bool | int = True, timeout: float = 180, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the real CLI; `check` may be the exit code expected."""
    proc = subprocess.run(
        [LABCTL, *args], capture_output=True, text=True, timeout=timeout, input=stdin
    )
    want = 0 if check is True else check
    if check is not False and proc.returncode != want:
        raise AssertionError(
            f"labctl {' '.join(args)} exited {proc.returncode}, wanted {want}\n"
            f"stdout: {proc.stdout[-3000:]}\nstderr: {proc.stderr[-3000:]}"
        )
    return proc


def labctl_json(*args: str, check: bool | int = True) -> dict:
    return json.loads(labctl(*args, "-o", "json", check=check).stdout)


@pytest.fixture
def lab() -> Iterator[list[str]]:
    """Names of labs a test brings up; all are torn down afterwards, whatever happened."""
    names: list[str] = []
    yield names
    for name in names:
        labctl("down", "-n", name, check=False)


def _run(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True).stdout


def host_snapshot() -> dict[str, str]:
    """The host namespace's network state, as text, minus counters that move on their own."""
    sysctls = []
    for root, _, files in os.walk("/proc/sys/net"):
        for f in files:
            p = os.path.join(root, f)
            try:
                with open(p) as fh:
                    sysctls.append(f"{p}={fh.read().strip()}")
            except OSError:
                continue
    return {
        "links": re.sub(r"link-netnsid \d+", "", _run("ip", "-d", "-o", "link", "show")),
        "addresses": _run("ip", "-o", "addr", "show"),
        "routes": _run("ip", "route", "show", "table", "all"),
        "routes6": _run("ip", "-6", "route", "show", "table", "all"),
        "rules": _run("ip", "rule", "show"),
        "neighbours": _run("ip", "neigh", "show", "nud", "permanent"),
        "sysctls": "\n".join(
            s for s in sorted(sysctls) if "conntrack_count" not in s and "/stable_secret" not in s
        ),
        "nftables": _run("nft", "list", "ruleset"),
        "iptables": re.sub(r"\[\d+:\d+\]|^#.*$", "", _run("iptables-save"), flags=re.M),
        # Only lab namespaces: other suites may build their own test namespaces meanwhile.
        "netns": "\n".join(
            x for x in _run("ip", "netns", "list").splitlines() if x.startswith("labctl-")
        ),
    }
