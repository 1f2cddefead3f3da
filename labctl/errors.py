"""The base of every error the CLI reports as one line (so the CLI needs no module's import
to recognise them, and a verb loads only what it uses)."""

from __future__ import annotations


class LabctlError(Exception):
    """A refused input or a failed action; `exit_code` is the contract's code for it (2 bad
    usage or input, 1 a check or action did not hold, 3 the machine lacks something)."""

    exit_code: int = 2
