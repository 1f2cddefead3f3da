"""`labctl bench` end to end on one mode with tiny tests: the JSON holds real measurements
(plausible, non-zero; no speed is asserted), the files are written and everything it built
is gone afterwards."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import cli_argv, labctl, run_name

pytestmark = pytest.mark.root

LAB = "bn-it"
# An MTU black hole or a broken datapath moves kilobits, not this: a real path on veths
# moves gigabits even on a loaded machine.
MIN_GBPS = 0.05


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    captures = tmp_path_factory.mktemp("captures")
    res = subprocess.run(
        cli_argv("bench", "-n", LAB, "--modes", "flannel-host-gw",
                 "--duration", "1", "--repeats", "1", "-o", "json"),
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, LABCTL_CAPTURE_DIR=str(captures)),
    )  # fmt: skip
    labctl("down", "-n", LAB, check=False)  # only if the run broke half way
    assert res.returncode == 0, res.stderr
    yield dict(json.loads(res.stdout))


def test_rows_hold_real_figures(report: dict[str, Any]) -> None:
    rows = {r["name"]: r for r in report["rows"]}
    assert list(rows) == ["underlay", "reference host-gw", "flannel-host-gw"]
    for row in rows.values():
        (s,) = row["samples"]
        assert s["tcp1"] > MIN_GBPS and s["tcp4"] > MIN_GBPS, row["name"]
        assert s["rr"] > 100, row["name"]
        assert s["p99"] >= s["p50"] > 0, row["name"]
        assert s["cpuPerGbps"] > 0, row["name"]
    mode = rows["flannel-host-gw"]
    assert (mode["datapath"], mode["wire"], mode["overheadBytes"], mode["podMtu"]) == (
        "kernel",
        "bare",
        0,
        1500,
    )
    assert mode["reference"] == "reference host-gw"
    assert mode["withinReference"] in (True, False)
    assert mode["vsUnderlay"]["tcp1"] > 0


def test_files_written_and_nothing_left(report: dict[str, Any]) -> None:
    assert Path(report["files"]["png"]).read_bytes()[:4] == b"\x89PNG"
    saved = json.loads(Path(report["files"]["json"]).read_text())
    assert saved["rows"] == report["rows"]
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"{run_name(LAB)}-ref" not in netns
    assert not Path(f"/run/labctl/{run_name(LAB)}").exists()


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--modes", "nosuch"], "unknown mode"),
        (["--duration", "0.5"], "--duration"),
    ],
)
def test_bad_input_exits_2_before_building(args: list[str], needle: str) -> None:
    res = labctl("bench", "-n", "bn-bad", *args, check=2)
    assert needle in res.stderr
    assert not Path("/run/labctl/bn-bad").exists()


# ---- --control-plane: flannel-vxlan and calico-bgp side by side, one round ----

CP = "bn-cp"
TTL = 4  # LABCTL_LEASE_TTL for the flannel lab; calico-bgp keeps FRR's 9 s hold timer


@pytest.fixture(scope="module")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    captures = tmp_path_factory.mktemp("captures")
    env = dict(os.environ, LABCTL_CAPTURE_DIR=str(captures), LABCTL_LEASE_TTL=str(TTL))
    res = subprocess.run(
        cli_argv("bench", "-n", CP, "--control-plane", "--repeats", "1", "-o", "json"),
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    labctl("down", "-n", CP, check=False)  # only if the run broke half way
    assert res.returncode == 0, res.stderr
    yield dict(json.loads(res.stdout))


def test_control_plane_figures_follow_the_configured_timers(
    control_plane: dict[str, Any],
) -> None:
    rows = {r["mode"]: r for r in control_plane["rows"]}
    assert list(rows) == ["flannel-vxlan", "calico-bgp"]
    assert (rows["flannel-vxlan"]["timer"], rows["flannel-vxlan"]["timerSeconds"]) == (
        "lease TTL",
        TTL,
    )
    assert (rows["calico-bgp"]["timer"], rows["calico-bgp"]["timerSeconds"]) == (
        "BGP hold timer",
        9,
    )
    # A lease is renewed every TTL/2, so it expires about TTL/2 to TTL after the freeze (a
    # renewal a loaded machine delayed: sooner); a BGP peer waits its hold time from the last
    # keepalive (every 3 s). Far sooner, no timer dropped the routes; far later, the timer is
    # not what dropped them.
    for mode in ("flannel-vxlan", "calico-bgp"):
        row, timer = rows[mode], rows[mode]["timerSeconds"]
        assert timer / 4 <= row["dead"] <= 3 * timer, (mode, row["dead"])
        # Join, leave and the return are events: they wait for no timer.
        for key in ("join", "joinSeen", "leave", "leaveSeen", "back"):
            assert 0 <= row[key] < timer, (mode, key, row[key])
        assert row["joinSeen"] >= row["join"] and row["leaveSeen"] >= row["leave"], row
        assert row["etcdFrozenForwards"] is True and row["etcdFrozenPairs"] == 30, row
        assert row["etcdFrozenSeconds"] == timer + 1
    saved = json.loads(Path(control_plane["file"]).read_text())
    assert saved == control_plane["rows"]
    assert not Path(f"/run/labctl/{run_name(CP)}").exists()


def test_control_plane_refuses_a_mode_without_a_timer() -> None:
    # Nothing in calico-vxlan drops a dead node (Calico records have no TTL): no figure.
    res = labctl("bench", "-n", "bn-bad", "--control-plane", "--modes", "calico-vxlan", check=2)
    assert "calico-vxlan: not measured: Calico records have no TTL" in res.stderr
    assert not Path(f"/run/labctl/{run_name('bn-bad')}").exists()
