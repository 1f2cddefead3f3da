"""Every shipped exercise on a real lab: start, check fails naming what is missing, solve,
check passes, clean (and the checks fail again). Exercises with the same mode and topology
share one lab: `start` on it runs only their setup, `clean` undoes what they changed.

The labs come up in parallel, through the CLI. One exercise goes through every verb of the CLI;
the others call the engine the CLI calls, in this process: a CLI run costs about a second of
start-up, and there are five per exercise.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest

from labctl.exercises import engine
from labctl.exercises.model import Exercise, catalogue
from tests.integration.conftest import cli_argv, labctl, run_name

EXERCISES = catalogue()
# One lab per (mode, topology); its name is what `-n` gives every exercise sharing it.
LABS = {
    key: f"ex-t{i}"
    for i, key in enumerate(sorted({(x.mode, x.topology) for x in EXERCISES.values()}))
}
# Walked through the CLI verbs (start on a shared lab, check, hint, solve, check, clean, reset).
BY_CLI = "udp-proxy-is-the-datapath"


def _lab(ex: Exercise) -> str:
    return LABS[ex.mode, ex.topology]


@pytest.fixture(scope="module", autouse=True)
def labs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Every lab up at once (each with its first exercise's start); answer files go to a
    scratch HOME; every lab is removed after, in parallel."""
    home = os.environ.get("HOME")
    os.environ["HOME"] = str(tmp_path_factory.mktemp("home"))
    first = {lab: min(n for n, x in EXERCISES.items() if _lab(x) == lab) for lab in LABS.values()}
    try:
        ups = {
            lab: subprocess.Popen(
                cli_argv("exercise", "start", name, "-n", lab, "-o", "json"),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for lab, name in first.items()
        }
        failed = {lab: p.communicate(timeout=180)[1][-2000:] for lab, p in ups.items()}
        failed = {lab: err for lab, err in failed.items() if ups[lab].returncode != 0}
        assert not failed, failed
        yield
    finally:
        downs = [subprocess.Popen(cli_argv("down", "-n", lab)) for lab in LABS.values()]
        for p in downs:
            p.wait(120)
        if home is not None:
            os.environ["HOME"] = home


def _missing(ex: Exercise, lab: str) -> list[str]:
    return [r.says for r in engine.check(ex, run_name(lab)) if not r.ok]


@pytest.mark.parametrize("name", sorted(set(EXERCISES) - {BY_CLI}))
def test_exercise_fails_then_solution_passes(name: str) -> None:
    ex = EXERCISES[name]
    lab = _lab(ex)
    engine.start(ex, run_name(lab), lambda _: None)  # the lab is up: only the setup runs
    before = _missing(ex, lab)
    assert before, f"{name}: every check passes before the solution"
    engine.solve(ex, run_name(lab))
    assert _missing(ex, lab) == []
    # Every answer is compared with the lab, not merely required: a wrong one fails.
    answered = ex.model_copy(update={"checks": [c for c in ex.checks if c.answer]})
    wrong = {c.answer.key: "wrong" for c in answered.checks if c.answer}
    assert all(not r.ok for r in engine.check(answered, run_name(lab), wrong))
    engine.clean(ex, run_name(lab))
    if ex.cleanup:
        assert _missing(ex, lab), f"{name}: clean left the solution in place"


def test_every_verb_of_the_cli() -> None:
    ex = EXERCISES[BY_CLI]
    lab = _lab(ex)
    labctl("exercise", "start", ex.name, "-n", lab)
    before = labctl("exercise", "check", ex.name, "-n", lab, check=1)
    assert "missing" in before.stdout
    assert any(c.says in before.stdout for c in ex.checks), before.stdout
    hint = labctl("exercise", "hint", ex.name, "-n", lab)
    assert f"hint 1/{len(ex.hints)}" in hint.stdout
    labctl("exercise", "solve", ex.name, "-n", lab, timeout=60)
    after = labctl("exercise", "check", ex.name, "-n", lab)
    assert f"{ex.name}: solved" in after.stdout
    labctl("exercise", "clean", ex.name, "-n", lab)
    assert "missing" in labctl("exercise", "check", ex.name, "-n", lab, check=1).stdout
    # reset rebuilds the lab: a solution in place is gone after it.
    engine.solve(ex, run_name(lab))
    labctl("exercise", "reset", ex.name, "-n", lab, timeout=120)
    assert _missing(ex, lab)


def test_a_wrong_answer_on_the_claim_fails() -> None:
    ex = EXERCISES["flannel1-is-vxlan"]
    lab = _lab(ex)
    wrong = labctl("exercise", "check", ex.name, "-n", lab, "--answer", "kind=tun", check=1)
    assert "answer kind='tun' does not match the lab" in wrong.stdout
    right = labctl("exercise", "check", ex.name, "-n", lab, "--answer", "kind=vxlan", check=False)
    assert "answer kind=" not in right.stdout


def test_start_refuses_a_lab_in_another_mode() -> None:
    vxlan = EXERCISES["flannel1-is-vxlan"]
    other = next(x for x in EXERCISES.values() if _lab(x) != _lab(vxlan))
    lab = _lab(vxlan)
    refused = labctl("exercise", "start", other.name, "-n", lab, check=1)
    want = f"lab {run_name(lab)} runs {vxlan.mode} on {vxlan.topology}, not {other.mode}"
    assert want in refused.stderr
