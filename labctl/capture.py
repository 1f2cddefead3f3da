"""Packet capture inside lab namespaces with tcpdump: real pcaps that tcpdump and Wireshark
read, started in parallel and confirmed listening before traffic is sent."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from labctl.nsutil import nsenter_argv
from labctl.state import LAB_ENV

CAPTURE_ROOT = Path(
    os.environ.get("LABCTL_CAPTURE_DIR", Path(__file__).resolve().parent.parent / "captures")
)
SETTLE = 0.1  # let the last packets of a probe reach tcpdump before stopping it
SNAPLEN = 256  # headers of outer + inner packets, not payloads: small pcaps


class CaptureFailed(RuntimeError):
    pass


def tcpdump_argv(
    pid: int, iface: str, out: str, bpf: str | None, snaplen: int = SNAPLEN
) -> list[str]:
    """tcpdump writing `iface` of namespace `pid` to `out` ('-' = stdout), packet-buffered."""
    # --immediate-mode: without it TPACKET_V3 hands packets over in ~1 s blocks, and a
    # capture stopped right after a probe would lose them.
    argv = ["tcpdump", "-i", iface, "--immediate-mode", "-U", "-n", "-s", str(snaplen), "-w", out]
    if bpf:
        argv.append(bpf)
    return nsenter_argv(pid, argv, mount=False)


@dataclass
class Capture:
    """tcpdump processes on several (namespace, interface) pairs at once."""

    lab: str
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)

    def start(
        self, targets: dict[str, tuple[int, str]], outdir: Path, bpf: str | None = None
    ) -> None:
        """Start one tcpdump per target name -> (pid, iface) and wait until all listen."""
        outdir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, **{LAB_ENV: self.lab})
        for name, (pid, iface) in targets.items():
            path = outdir / f"{name}-{iface}.pcap"
            self.files[name] = path
            self.procs[name] = subprocess.Popen(
                tcpdump_argv(pid, iface, str(path), bpf),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                env=env,
            )
        deadline = time.monotonic() + 10
        pending = dict(self.procs)
        while pending:
            if time.monotonic() > deadline:
                self.stop()
                raise CaptureFailed(f"tcpdump did not start on {', '.join(pending)}")
            fds = {p.stderr.fileno(): n for n, p in pending.items() if p.stderr}
            ready, _, _ = select.select(list(fds), [], [], 0.5)
            for fd in ready:
                name = fds[fd]
                line = os.read(fd, 4096).decode(errors="replace")
                if "listening on" in line:
                    pending.pop(name)
                elif pending[name].poll() is not None:
                    self.stop()
                    raise CaptureFailed(f"tcpdump on {name} failed: {line.strip()}")

    def stop(self) -> dict[str, Path]:
        """Stop all captures (SIGINT flushes the pcap) and return the files."""
        time.sleep(SETTLE)
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in self.procs.values():
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            if p.stderr:
                p.stderr.close()
        return self.files
