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
