"""The supervisor's control socket: how `apply`, `delete` and `scale` ask a running lab's
node agents to act now (CNI ADD/DEL), and hear back when they are done or why they failed.

One JSON request and one JSON reply per connection over a Unix socket in the lab's state
directory (root only, like the directory)."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from labctl import state
from labctl.errors import LabctlError

SOCKET = "control.sock"
#: A pod's CNI ADD takes tens of milliseconds; scaling to 100 pods a few seconds.
TIMEOUT = 120.0


class ControlError(RuntimeError, LabctlError):
    """The supervisor refused or failed the request (names what and why)."""

    exit_code = 1


def path(lab: str) -> Path:
    """Where lab `lab`'s supervisor listens."""
    return state.lab_dir(lab) / SOCKET


def listen(lab: str) -> socket.socket:
    """The supervisor's listening socket (non-blocking, for its selector loop)."""
    p = path(lab)
    p.unlink(missing_ok=True)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(p))
    p.chmod(0o600)
    s.listen(8)
    s.setblocking(False)
    return s


def handle(server: socket.socket, handler: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """Answer one waiting request with `handler`; an exception becomes {"error": ...}."""
    try:
        conn, _ = server.accept()
    except BlockingIOError:
        return
    with conn:
        conn.settimeout(5)
        try:
            req = json.loads(_read_line(conn))
            reply = handler(req)
        except Exception as e:  # the supervisor must survive a bad request
            reply = {"error": f"{type(e).__name__}: {e}" if not str(e) else str(e)}
        conn.settimeout(TIMEOUT)
        conn.sendall(json.dumps(reply).encode() + b"\n")


def request(lab: str, op: str, timeout: float = TIMEOUT, **args: Any) -> dict[str, Any]:
    """Send `op` to lab `lab`'s supervisor and wait for its reply."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(str(path(lab)))
    except OSError as e:
        s.close()
        raise ControlError(
            f"lab {lab}'s supervisor does not answer ({e.strerror}); see 'labctl status -n {lab}'"
        ) from None
    with s:
        s.sendall(json.dumps({"op": op, **args}).encode() + b"\n")
        try:
            reply: dict[str, Any] = json.loads(_read_line(s))
        except (OSError, ValueError) as e:
            raise ControlError(f"lab {lab}'s supervisor did not reply to {op}: {e}") from None
    if "error" in reply:
        raise ControlError(f"lab {lab}: {op}: {reply['error']}")
    return reply


def _read_line(conn: socket.socket) -> bytes:
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = conn.recv(65536)
        if not chunk:
            break
        buf += chunk
    return buf
