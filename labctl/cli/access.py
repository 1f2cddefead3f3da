"""Getting inside a lab: exec and capture."""

from __future__ import annotations

import os
import sys

import click

from labctl import lifecycle, state
from labctl.cli.common import NAME, err, guarded
from labctl.nsutil import nsenter_argv
from labctl.state import LAB_ENV


@click.command(name="exec", context_settings={"ignore_unknown_options": True})
@NAME
@click.argument("target")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@guarded
def exec_(lab: str | None, target: str, command: tuple[str, ...]) -> None:
    """Run COMMAND inside TARGET (node, router, external host or NS/POD), like kubectl exec.

    Streams are passed through unchanged and the exit code is COMMAND's:
    labctl exec node1 -- tcpdump -w - | wireshark -k -i -
    """
    lifecycle.check_environment()
    name = state.resolve(lab)
    st = state.load(name)
    pid = st.pid_of(target)
    os.environ[LAB_ENV] = name  # so 'down' can find anything started here
    argv = nsenter_argv(pid, list(command))
    os.execvp(argv[0], argv)


@click.command()
@NAME
@click.argument("target")
@click.option(
    "-w",
    "--write",
    "outfile",
    default=None,
    help="pcap file to write ('-' for stdout; default: captures/<lab>/<target>.pcap).",
)
@click.option("--filter", "bpf", default=None, help="BPF capture filter, e.g. 'udp port 8472'.")
@click.option(
    "--duration",
    type=click.FloatRange(0.1, 3600),
    default=None,
    help="Stop after S seconds (default: until Ctrl-C).",
)
@guarded
def capture(
    lab: str | None, target: str, outfile: str | None, bpf: str | None, duration: float | None
) -> None:
    """Capture TARGET[:IFACE] (default interface eth0) to a pcap."""
    import signal
    import subprocess

    from labctl.capture import CAPTURE_ROOT, tcpdump_argv

    lifecycle.check_environment()
    name = state.resolve(lab)
    st = state.load(name)
    node, _, iface = target.partition(":")
    iface = iface or "eth0"
    pid = st.pid_of(node)
    if outfile is None:
        path = CAPTURE_ROOT / name / f"{node.replace('/', '_')}-{iface}.pcap"
        path.parent.mkdir(parents=True, exist_ok=True)
        outfile = str(path)
    argv = tcpdump_argv(pid, iface, outfile, bpf, snaplen=0)
    env = dict(os.environ, **{LAB_ENV: name})
    proc = subprocess.Popen(argv, env=env)
    try:
        proc.wait(duration)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        proc.wait()
    except KeyboardInterrupt:
        proc.wait()
    if outfile != "-":
        err.print(f"wrote {outfile}")
    sys.exit(0 if proc.returncode in (0, -signal.SIGINT, 130) else proc.returncode)
