"""Kernel features, detected at run time by trying them in a throwaway namespace."""

from __future__ import annotations

import ctypes
import os
import subprocess
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


@cache
def can_tc_bpf() -> bool:
    """Whether tc can attach the BPF datapath's programs here (clsact, cls_bpf, the helpers
    the verifier must accept), tried in a forked child's private namespace on a veth pair."""
    from labctl.datapath import bpf

    if bpf.missing_tools():
        return False
    obj = bpf.ensure_object()
    pid = os.fork()
    if pid == 0:  # child: never returns
        code = 1
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.unshare(CLONE_NEWNET) == 0:
                with IPRoute() as ip:
                    ip.link("add", ifname="probe0", kind="veth", peer="probe1")
                code = 0
                for hook, section in (bpf.ENCAP, bpf.DECAP):
                    for cmd in bpf.attach_argv("probe0", hook, section, obj):
                        if subprocess.run(cmd, capture_output=True).returncode != 0:
                            code = 1
        except Exception:
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


def _bpf_problem() -> str | None:
    """Why the BPF datapath cannot run here, or None if it can."""
    from labctl.datapath import bpf

    missing = bpf.missing_tools()
    if missing:
        return f"{', '.join(missing)} not installed (run 'bash scripts/install.sh' as root)"
    try:
        bpf.ensure_object()
    except bpf.BpfError as exc:
        return str(exc)
    if not can_tc_bpf():
        return "tc could not attach the BPF programs (clsact/cls_bpf or a helper missing)"
    return None


def resolve_datapath(feature: str | None, wanted: str) -> tuple[str, str | None]:
    """Pick the datapath for a mode needing `feature`; returns (datapath, note).

    `wanted` is auto, kernel, bpf or userspace. auto is the fastest this kernel has: the
    kernel's device, else the TC-BPF programs, else the userspace process. Raises
    MissingFeature when the one asked for cannot run here.
    """
    if feature is None:
        if wanted != "auto":
            raise BadDatapath(f"--datapath {wanted}: this mode has only one datapath; omit it")
        return "kernel", None
    present = can_create(feature)
    if wanted == "kernel" and not present:
        raise MissingFeature(
            f"--datapath kernel: this kernel cannot create {feature} devices (module missing "
            "and not loadable); use --datapath userspace, bpf or auto"
        )
    if wanted == "kernel" or (wanted == "auto" and present):
        return "kernel", None
    if wanted == "userspace":
        return "userspace", "datapath userspace: forced by --datapath userspace"
    problem = _bpf_problem()
    if wanted == "bpf":
        if problem:
            raise MissingFeature(f"--datapath bpf: {problem}; use --datapath userspace or auto")
        return "bpf", "datapath bpf: forced by --datapath bpf"
    if problem:
        return "userspace", (
            f"datapath userspace: this kernel has no {feature} module and the BPF datapath "
            f"cannot run: {problem}"
        )
    return "bpf", f"datapath bpf: this kernel has no {feature} module"


class MissingFeature(LabctlError):
    """The kernel lacks what was asked for (exit 3)."""

    exit_code = 3


class BadDatapath(ValueError, LabctlError):
    """A --datapath that does not apply (exit 2)."""
