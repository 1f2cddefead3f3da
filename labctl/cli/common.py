"""What every verb file shares: consoles, the common options, one-line errors with the
contract's exit codes, JSON output."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any, NoReturn

import click
from rich.console import Console

from labctl import lifecycle
from labctl.apiserver import ObjectError
from labctl.checker import CaptureError
from labctl.control import ControlError
from labctl.features import BadDatapath, MissingFeature
from labctl.k8s.manifests import ManifestError
from labctl.modes import UnknownModeError
from labctl.policy.apply import PolicyApplyError
from labctl.services.apply import ProxyApplyError, ProxyModeError
from labctl.state import LabError
from labctl.topology import TopologyError

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
        except (
            TopologyError,
            UnknownModeError,
            BadDatapath,
            ManifestError,
            ObjectError,
            CaptureError,
        ) as e:
            fail(str(e), 2)
        except (PolicyApplyError, ControlError, ProxyApplyError) as e:
            fail(str(e), 1)
        except ProxyModeError as e:
            fail(str(e), e.exit_code)
        except LabError as e:
            fail(str(e), getattr(e, "exit_code", 2))
        except (lifecycle.EnvironmentProblem, MissingFeature) as e:
            fail(str(e), 3)

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


def emit_json(doc: Any) -> None:
    """Print `doc` as indented JSON on stdout (the `-o json` form of every verb)."""
    click.echo(json.dumps(doc, indent=2, default=str))
