"""The `labctl` command line: one file per verb group, each only parsing, calling the
package and printing (rich for people, `-o json` for machines). Exit codes: 0 ok, 1 a check or
probe did not hold, 2 bad usage or input, 3 the machine lacks something."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any, NoReturn

import click

#: Verb -> (module in labctl.cli, attribute). A verb's module is imported only when that verb
#: runs (or help lists it), so `labctl exec` does not pay for Scapy, the planner or rich tables.
VERBS = {
    "modes": ("lab", "modes"),
    "up": ("lab", "up"),
    "down": ("lab", "down"),
    "status": ("lab", "status"),
    "exec": ("access", "exec_"),
    "capture": ("access", "capture"),
    "verify": ("check", "verify"),
    "probe": ("check", "probe"),
    "apply": ("objects", "apply"),
    "delete": ("objects", "delete"),
    "get": ("objects", "get"),
    "label": ("objects", "label"),
    "scale": ("objects", "scale"),
    "bench": ("bench", "bench"),
    "graph": ("graph", "graph_"),
    "trace": ("trace", "trace"),
    "exercise": ("exercise", "exercise"),
    "node": ("node", "node"),
    "config": ("node", "config"),
    "restart": ("node", "restart"),
}


class LazyGroup(click.Group):
    """A group whose commands are loaded from their verb file on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(VERBS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> Any:
        if cmd_name not in VERBS:
            return None
        module, attr = VERBS[cmd_name]
        return getattr(importlib.import_module(f"labctl.cli.{module}"), attr)

    def main(self, *args: Any, **kwargs: Any) -> NoReturn:
        """Every error is one line on stderr with the contract's exit code, never a
        traceback (LABCTL_DEBUG=1 shows the traceback of an unexpected one)."""
        kwargs["standalone_mode"] = False
        try:
            super().main(*args, **kwargs)
        except click.UsageError as e:
            # The program name may be a wrapper's (python -m, a test runner): say labctl.
            path = e.ctx.command_path.split()[1:] if e.ctx else []
            where = " ".join(["labctl", *path])
            _one_line(f"{e.format_message()} (see '{where} --help')", 2)
        except click.exceptions.Abort:
            _one_line("aborted", 1)
        except click.ClickException as e:
            _one_line(e.format_message(), e.exit_code)
        except click.exceptions.Exit as e:
            sys.exit(e.exit_code)
        except Exception as e:
            if os.environ.get("LABCTL_DEBUG"):
                raise
            _one_line(
                f"internal error: {type(e).__name__}: {e} (a bug: please report it; "
                "LABCTL_DEBUG=1 shows the traceback)",
                1,
            )
        sys.exit(0)


def _one_line(message: str, code: int) -> NoReturn:
    click.echo(f"error: {' '.join(message.split())}", err=True)
    sys.exit(code)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="labctl")
def main() -> None:
    """Build Kubernetes CNI dataplanes (Flannel, Calico, Canal) in network namespaces and
    prove on the wire how they move packets."""
