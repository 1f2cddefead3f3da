"""Entering lab namespaces from Python: setns for this thread, sysctls, argv for nsenter."""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator
from contextlib import contextmanager

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def netns_path(pid: int) -> str:
    """The network namespace file of process `pid`."""
    return f"/proc/{pid}/ns/net"


@contextmanager
def in_netns(pid: int) -> Iterator[None]:
    """Run the body in the network namespace of `pid`, then come back.

    Sockets opened inside (netlink, TCP, raw) stay bound to that namespace afterwards, which
    is how one process serves and probes hundreds of pods.
    """
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(netns_path(pid), os.O_RDONLY)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(target)
        os.close(home)


def enter_netns_path(path: str) -> None:
    """Move this process for good into the namespace at `path` (used before exec)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        _setns(fd)
    finally:
        os.close(fd)


def sysctl_path(key: str) -> str:
    """/proc/sys path of a dotted key; like sysctl(8), '/' in a key stands for a '.' in a
    name (net.ipv4.conf.flannel/1.accept_ra)."""
    return "/proc/sys/" + "/".join(part.replace("/", ".") for part in key.split("."))


def write_sysctl(key: str, value: str) -> None:
    """Set a sysctl of the *current* network namespace (call inside `in_netns`)."""
    with open(sysctl_path(key), "w") as f:
        f.write(value)


def read_sysctl(key: str) -> str:
    """Read a sysctl of the current network namespace."""
    with open(sysctl_path(key)) as f:
        return f.read().strip()


def nsenter_argv(pid: int, argv: list[str], mount: bool = True) -> list[str]:
    """argv that runs `argv` inside the node/pod `pid` (network, and mount for private dirs)."""
    flags = ["-n", "-m"] if mount else ["-n"]
    return ["nsenter", "-t", str(pid), *flags, "--", *argv]
