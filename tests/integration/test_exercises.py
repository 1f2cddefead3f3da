"""Every shipped exercise on a real lab: start, check fails naming what is missing, solve,
check passes, clean. Exercises with the same mode and topology share one lab: `start` on it
runs only their setup, `clean` undoes what they changed for the next one."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from labctl.exercises.model import catalogue
from tests.integration.conftest import labctl

EXERCISES = catalogue()
# One lab per (mode, topology); its name is what `-n` gives every exercise sharing it.
LABS = {
    key: f"ex-t{i}"
    for i, key in enumerate(sorted({(x.mode, x.topology) for x in EXERCISES.values()}))
}


@pytest.fixture(scope="module")
def started(tmp_path_factory: pytest.TempPathFactory) -> Iterator[set[str]]:
    """Labs started so far; answer files go to a scratch HOME; every lab is removed after."""
    home = os.environ.get("HOME")
    os.environ["HOME"] = str(tmp_path_factory.mktemp("home"))
    up: set[str] = set()
    try:
        yield up
    finally:
        for name in up:
            labctl("down", "-n", name, check=False)
        if home is not None:
            os.environ["HOME"] = home


@pytest.mark.parametrize("name", sorted(EXERCISES))
def test_exercise_fails_then_solution_passes(name: str, started: set[str]) -> None:
    ex = EXERCISES[name]
    lab = LABS[ex.mode, ex.topology]
    started.add(lab)
    labctl("exercise", "start", name, "-n", lab, timeout=120)
    before = labctl("exercise", "check", name, "-n", lab, check=1)
    assert "missing" in before.stdout
    assert any(c.says in before.stdout for c in ex.checks), before.stdout
    hint = labctl("exercise", "hint", name, "-n", lab)
    assert f"hint 1/{len(ex.hints)}" in hint.stdout
    labctl("exercise", "solve", name, "-n", lab, timeout=60)
    after = labctl("exercise", "check", name, "-n", lab)
    assert f"{name}: solved" in after.stdout
    labctl("exercise", "clean", name, "-n", lab, timeout=60)
    if ex.cleanup:
        # Clean really restores: the checks that the solution made pass fail again.
        again = labctl("exercise", "check", name, "-n", lab, check=1)
        assert "missing" in again.stdout


def test_start_refuses_a_lab_in_another_mode(started: set[str]) -> None:
    vxlan = EXERCISES["flannel1-is-vxlan"]
    other = next(
        x for x in EXERCISES.values() if (x.mode, x.topology) != (vxlan.mode, vxlan.topology)
    )
    lab = LABS[vxlan.mode, vxlan.topology]
    if lab not in started:
        started.add(lab)
        labctl("exercise", "start", vxlan.name, "-n", lab, timeout=120)
    refused = labctl("exercise", "start", other.name, "-n", lab, check=1)
    assert f"lab {lab} runs {vxlan.mode} on {vxlan.topology}, not {other.mode}" in refused.stderr


def test_a_wrong_answer_on_the_claim_fails(started: set[str]) -> None:
    ex = EXERCISES["flannel1-is-vxlan"]
    lab = LABS[ex.mode, ex.topology]
    if lab not in started:
        started.add(lab)
        labctl("exercise", "start", ex.name, "-n", lab, timeout=120)
    wrong = labctl("exercise", "check", ex.name, "-n", lab, "--answer", "kind=tun", check=1)
    assert "answer kind='tun' does not match the lab" in wrong.stdout
    right = labctl("exercise", "check", ex.name, "-n", lab, "--answer", "kind=vxlan", check=False)
    assert "answer kind=" not in right.stdout
