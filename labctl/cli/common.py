"""What every verb file shares: consoles, the common options, one-line errors with the
contract's exit codes, JSON output."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any, NoReturn

import click
from rich.console import Console

from labctl.errors import LabctlError

out = Console()
err = Console(stderr=True)

OUTPUT = click.option(
    "-o", "--output", type=click.Choice(["table", "json"]), default="table", help="Output format."
)
NAME = click.option(
    "-n", "--name", "lab", default=None, help="Lab name (default: the only lab up)."
)


def fail(message: str, code: int) -> NoReturn:
    """One line on stderr, then the exit code."""
    err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    sys.exit(code)


def guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Map the project's exceptions to one-line errors and the contract's exit codes."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except LabctlError as e:
            fail(str(e), e.exit_code)

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


def emit_json(doc: Any) -> None:
    """Print `doc` as indented JSON on stdout (the `-o json` form of every verb)."""
    click.echo(json.dumps(doc, indent=2, default=str))
