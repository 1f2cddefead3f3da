"""A short run of the soak and fault pass (scripts/soak.sh runs the long one): one cycle, a
SIGKILL of a userspace datapath and of bgpd under traffic (SIGKILL of up and of the supervisor,
and two labs at once, are in test_lab.py), a few seconds of iperf3 through each userspace
datapath; nothing may leak."""

from __future__ import annotations

import pytest

from labctl import frr, state
from tests import soak
from tests.integration.conftest import run_name

pytestmark = pytest.mark.root


def test_short_soak_leaves_nothing() -> None:
    kills = ["datapath", "bgpd"] if frr.frr_available() is None else ["datapath"]
    report = soak.run(cycles=1, kills=kills, together=(), iperf_seconds=2)
    assert report.leftovers == 0
    assert report.cycles == 1 and sorted(report.kills) == sorted(kills)
    # More than an MTU black hole moves (a few packets a second); not a benchmark.
    assert all(g > 0.05 for g in report.iperf.values()), report.iperf


def test_a_leak_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """The comparison can fail: a changed host and a lab's left-over state are both reported
    (simulated: a leak must never be made in the host's own namespace)."""
    s = soak.Soak(seed=1)
    changed = dict(s.baseline, links=s.baseline["links"] + "99: leak0: <BROADCAST>\n")
    monkeypatch.setattr(soak, "host_snapshot", lambda: changed)
    with pytest.raises(soak.SoakFailure, match="host links changed"):
        s.assert_clean("a simulated leak", [])
    monkeypatch.undo()
    left = state.lab_dir(run_name("soakleak"))
    left.mkdir(parents=True)
    try:
        with pytest.raises(soak.SoakFailure, match=r"state of soakleak-\w+ survived"):
            s.assert_clean("a lab's state left behind", ["soakleak"])
    finally:
        left.rmdir()
    s.assert_clean("after removing it", ["soakleak"])
