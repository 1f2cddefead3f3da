"""Kernel features, detected at run time by trying them in a throwaway namespace."""

from __future__ import annotations

import ctypes
import os
from functools import cache

from pyroute2 import IPRoute

from labctl.errors import LabctlError

CLONE_NEWNET = 0x40000000


@cache
def can_create(kind: str) -> bool:
    """Whether this kernel can create a `kind` link (ipip, gre, ...), without loading modules
    into or touching the host: the attempt runs in a forked child's private namespace."""
    pid = os.fork()
    if pid == 0:  # child: never returns
        code = 1
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.unshare(CLONE_NEWNET) == 0:
                with IPRoute() as ip:
                    ip.link("add", ifname="probe0", kind=kind)
                    code = 0
        except Exception:
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


def resolve_datapath(feature: str | None, wanted: str) -> tuple[str, str | None]:
    """Pick kernel or userspace for a mode needing `feature`; returns (datapath, note).

    `wanted` is auto, kernel or userspace. Raises MissingFeature for kernel on a kernel
    without the feature.
    """
    if feature is None:
        if wanted != "auto":
            raise BadDatapath(f"--datapath {wanted}: this mode has only one datapath; omit it")
        return "kernel", None
    present = can_create(feature)
    if wanted == "kernel" and not present:
        raise MissingFeature(
            f"--datapath kernel: this kernel cannot create {feature} devices (module missing "
            "and not loadable); use --datapath userspace or auto"
        )
    if wanted == "userspace" or (wanted == "auto" and not present):
        why = (
            "forced by --datapath userspace"
            if wanted == "userspace"
            else (f"this kernel has no {feature} module")
        )
        return "userspace", f"datapath userspace: {why}"
    return "kernel", None


class MissingFeature(LabctlError):
    """The kernel lacks what was asked for (exit 3)."""

    exit_code = 3


class BadDatapath(ValueError, LabctlError):
    """A --datapath that does not apply (exit 2)."""
