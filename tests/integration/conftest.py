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

#: This run's suffix for every lab the tests bring up (scripts/test.sh passes one so that it
#: can remove exactly its own labs after a crash): test labs never collide with a user's labs
#: or another run's, and nothing here touches a lab it did not create.
#: Under pytest-xdist each worker (gw0, gw1, ...) adds its number, so that workers running
#: side by side never share a lab name or see each other's labs as their own.
RUN = (os.environ.get("LABCTL_TEST_RUN") or f"{os.getpid() % 0x1000:03x}") + os.environ.get(
    "PYTEST_XDIST_WORKER", ""
).removeprefix("gw")
assert re.fullmatch(r"[a-z0-9]{1,5}", RUN), "LABCTL_TEST_RUN: 1-4 lowercase letters or digits"


# An unexpected exception in the CLI shows its traceback in a failing test's output.
os.environ.setdefault("LABCTL_DEBUG", "1")


def run_name(base: str) -> str:
    """The real name of the test lab the tests call `base`."""
    return f"{base}-{RUN}"


def cli_argv(*args: str) -> list[str]:
    """argv for the labctl CLI, with its `-n NAME` turned into this run's lab name (only
    labctl's own options: what follows `--` is a command's argv)."""
    out = list(args)
    end = out.index("--") if "--" in out else len(out)
    for i in range(end - 1):
        if out[i] == "-n":
            out[i + 1] = run_name(out[i + 1])
    return [LABCTL, *out]


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
        cli_argv(*args), capture_output=True, text=True, timeout=timeout, input=stdin
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
        # Only this run's lab namespaces: a user's labs and other suites' namespaces may come
        # and go meanwhile.
        "netns": "\n".join(
            x
            for x in _run("ip", "netns", "list").splitlines()
            if x.startswith("labctl-") and x.split()[0].endswith(f"-{RUN}")
        ),
    }
