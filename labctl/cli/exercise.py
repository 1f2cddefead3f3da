"""Classroom exercises: labctl exercise list|start|check|hint|solve|reset."""

from __future__ import annotations

import sys
from dataclasses import asdict

import click
from rich.table import Table

from labctl import state
from labctl.cli.common import OUTPUT, emit_json, fail, guarded, out
from labctl.exercises import engine
from labctl.exercises.model import Exercise, ExerciseError, catalogue, find

ACTIONS = ("list", "start", "check", "hint", "solve", "clean", "reset")


def _answers(pairs: tuple[str, ...]) -> dict[str, str]:
    given = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            fail(f"--answer {pair!r}: use KEY=VALUE", 2)
        given[key] = value
    return given


def _list(output: str) -> None:
    exercises = catalogue()
    if output == "json":
        emit_json(
            [
                {
                    "name": x.name,
                    "title": x.title,
                    "mode": x.mode,
                    "topology": x.topology,
                    "minutes": x.minutes,
                    "lab": x.lab,
                }
                for x in exercises.values()
            ]
        )
        return
    t = Table()
    t.add_column("exercise", no_wrap=True)  # the name students type: never cut
    for col in ("title", "mode", "topology", "minutes"):
        t.add_column(col)
    for x in exercises.values():
        t.add_row(x.name, x.title, x.mode, x.topology, str(x.minutes))
    out.print(t)


def _check(ex: Exercise, lab: str, given: dict[str, str], output: str) -> None:
    results = engine.check(ex, lab, given)
    missing = [r for r in results if not r.ok]
    if output == "json":
        emit_json(
            {
                "exercise": ex.name,
                "lab": lab,
                "passed": not missing,
                "checks": [asdict(r) for r in results],
            }
        )
    else:
        for r in results:
            mark = "[green]done[/green]" if r.ok else "[red]missing[/red]"
            tail = "" if r.ok else f": {r.detail}"
            out.print(f"{mark} {r.says}{tail}", highlight=False, soft_wrap=True)
        verdict = "[green]solved[/green]" if not missing else f"{len(missing)} still missing"
        out.print(f"{ex.name}: {verdict}", highlight=False)
    sys.exit(1 if missing else 0)


@click.command()
@click.argument("action", type=click.Choice(ACTIONS))
@click.argument("exercise", required=False)
@click.option("-n", "--name", "lab", default=None, help="Lab name (default: ex-<exercise>).")
@click.option(
    "--answer",
    "answers",
    multiple=True,
    metavar="KEY=VALUE",
    help="check: an answer, instead of (or over) ~/.labctl/answers/<exercise>.yaml.",
)
@OUTPUT
@guarded
def exercise(
    action: str, exercise: str | None, lab: str | None, answers: tuple[str, ...], output: str
) -> None:
    """Classroom exercises: list them, start one (up + setup; on a lab already up in the same
    mode and topology, setup only), check your work, get the next hint, run the reference
    solution, clean up after it (for the next exercise on the same lab), or reset the lab."""
    if action == "list":
        _list(output)
        return
    if exercise is None:
        fail(f"exercise {action}: name the exercise (see 'labctl exercise list')", 2)
    try:
        ex = find(exercise)
    except ExerciseError as e:
        fail(str(e), 2)
    name = state.check_lab_name(lab or ex.lab)
    try:
        if action == "check":
            _check(ex, name, _answers(answers), output)
        elif action == "hint":
            n, text = engine.hint(ex, name)
            if output == "json":
                emit_json({"exercise": ex.name, "hint": n, "of": len(ex.hints), "text": text})
            else:
                out.print(f"hint {n}/{len(ex.hints)}: {text}", highlight=False, soft_wrap=True)
        elif action == "solve":
            engine.solve(ex, name)
            _done(output, ex, name, "solution applied; run: labctl exercise check")
        elif action == "clean":
            engine.clean(ex, name)
            _done(output, ex, name, "cleaned up; the lab is ready for another exercise")
        else:
            run = engine.start if action == "start" else engine.reset
            if output == "json":
                run(ex, name, lambda _: None)
            else:
                with out.status(f"{action} {ex.name} in lab {name}") as status:
                    run(ex, name, lambda p: status.update(f"{name}: {p}"))
            _done(output, ex, name, f"ready ({ex.minutes} min); read exercises/{ex.name}/README.md")
    except ExerciseError as e:
        # A setup or solution step that failed on the live lab: the lab, not the input.
        fail(str(e), 1)


def _done(output: str, ex: Exercise, lab: str, message: str) -> None:
    if output == "json":
        emit_json({"exercise": ex.name, "lab": lab, "message": message})
    else:
        out.print(f"[green]{ex.name}[/green] in lab {lab}: {message}", highlight=False)
