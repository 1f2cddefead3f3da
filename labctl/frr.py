"""Running FRR: the lab's BGP speakers and router daemons as processes.

One integrated ``frr.conf`` per node is rendered by ``labctl.bgp``, checked by FRR's own
dry-run (``check``), and started inside the node with ``start``. A node is a process whose
network and mount namespaces the daemons join with ``nsenter -t PID -n -m``; ``/etc/frr``
and ``/var/run/frr`` must be private mounts in that node (Mininet ``privateDirs``), so FRR's
default paths, and ``vtysh`` on the node, are the node's own.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable, Sequence
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

from labctl.bgp import DAEMON_ORDER, BgpSpeaker, render

FRR_LIBDIR = Path("/usr/lib/frr")
VTYSH = "vtysh"

#: Directories that must be private to each node (Mininet ``privateDirs``). The last one is
#: optional: FRR keeps per-daemon crash-log directories there, which otherwise pile up in the
#: host's /var/tmp/frr when a daemon is killed.
PRIVATE_DIRS = ("/etc/frr", "/var/run/frr", "/var/tmp/frr")

CONF_PATH = "/etc/frr/frr.conf"
RUN_DIR = "/var/run/frr"
CRASHLOG_DIR = "/var/tmp/frr"


class FrrError(RuntimeError):
    """FRR is missing, a daemon did not start, or a node's daemons did not answer."""


class FrrConfigError(FrrError):
    """FRR's own dry-run rejected a configuration; the message is FRR's complaint."""


# --------------------------------------------------------------------------- dry run

_REJECTED_LINE = re.compile(r"on config line (\d+): (.*)$")


def _binary(name: str) -> str:
    path = FRR_LIBDIR / name
    if not os.access(path, os.X_OK):
        raise FrrError(f"{path} not found: install FRR (apt-get install frr)")
    return str(path)


def _vtysh() -> str:
    path = shutil.which(VTYSH)
    if path is None:
        raise FrrError("vtysh not found: install FRR (apt-get install frr)")
    return path


def frr_available() -> str | None:
    """None when FRR's binaries are installed, else why not (for skips and exit code 3)."""
    try:
        _vtysh()
        for daemon in DAEMON_ORDER:
            _binary(daemon)
    except FrrError as exc:
        return str(exc)
    return None


def _dry_run(daemon: str, conf: Path, scratch: Path) -> subprocess.CompletedProcess[str]:
    cmd = [
        _binary(daemon),
        "-C",
        "-f",
        str(conf),
        # Scratch sockets and pidfile: a dry run must never reach a running zebra.
        "-z",
        str(scratch / "zserv.api"),
        "--vty_socket",
        str(scratch),
        "-i",
        str(scratch / f"{daemon}.pid"),
    ]
    if daemon == "bgpd":
        # -p 0: do not listen on TCP 179 in the caller's namespace; -S: no user switch,
        # which is all that needs root, so bgpd's check runs for anyone.
        cmd += ["-p", "0", "-S"]
    else:
        # zebra dumps links and routes at start-up; a scratch netns gives it nothing to read.
        cmd = ["unshare", "--net", "--", *cmd]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        # FRR leaves a crash-log directory named after the pid (unshare execs, same pid).
        shutil.rmtree(f"{CRASHLOG_DIR}/{daemon}.{proc.pid}", ignore_errors=True)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, "")


def check(config_text: str) -> tuple[str, ...]:
    """Validate an integrated config with FRR's own dry-runs; return the checks that ran.

    ``vtysh -C`` parses every line against all daemons' grammars (syntax). ``bgpd -C``
    then applies the config and catches semantic errors such as a route-reflector client
    that is not iBGP. ``zebra -C`` and ``staticd -C`` need root (FRR's privilege setup) and
    only run as root. Daemon dry-runs exit 0 even on errors, and each reports every line
    it does not own, all under the label of the worst error, so a line counts as rejected
    only when no checked daemon accepts it. Raises ``FrrConfigError`` with FRR's message.
    """
    daemons = ["zebra", "staticd", "bgpd"] if os.geteuid() == 0 else ["bgpd"]
    with tempfile.TemporaryDirectory(prefix="labctl-frr-") as tmp:
        scratch = Path(tmp)
        # zebra and staticd read the file after switching to user frr.
        scratch.chmod(0o755)
        conf = scratch / "frr.conf"
        conf.write_text(config_text)
        conf.chmod(0o644)
        proc = subprocess.run(
            [_vtysh(), "-C", "-f", str(conf)], capture_output=True, text=True, timeout=30
        )
        if proc.returncode != 0:
            lines = [
                ln.strip()
                for ln in (proc.stdout + proc.stderr).splitlines()
                if ln.strip() and "vtysh.conf" not in ln  # unreadable vtysh.conf as non-root
            ]
            raise FrrConfigError("vtysh: " + "; ".join(lines))

        rejected: dict[str, dict[int, str]] = {}
        complaints: dict[str, list[str]] = {}
        for daemon in daemons:
            out = _dry_run(daemon, conf, scratch).stdout
            if "can't open configuration file" in out:
                # Otherwise a daemon that read nothing would pass the config.
                raise FrrError(f"{daemon} -C could not read the config: {out.strip()}")
            rejected[daemon] = {}
            complaints[daemon] = []
            for ln in out.splitlines():
                if ln.startswith("%"):
                    complaints[daemon].append(ln.strip())
                elif m := _REJECTED_LINE.search(ln):
                    rejected[daemon][int(m.group(1))] = m.group(2).strip()
        said = [f"{d}: " + "; ".join(c) for d, c in complaints.items() if c]
        # Without root only bgpd runs, and a line it rejects may well be zebra's.
        orphans = (
            sorted(
                (n, text)
                for n, text in rejected["bgpd"].items()
                if all(n in rejected[d] for d in daemons)
            )
            if len(daemons) > 1
            else []
        )
        if said or orphans:
            where = "; ".join(f"line {n}: {text}" for n, text in orphans)
            raise FrrConfigError(
                " / ".join(said or ["no FRR daemon accepts it"]) + (f" [{where}]" if where else "")
            )
    return ("vtysh", *daemons)


# --------------------------------------------------------------------------- run


def _nsenter(pid: int, *cmd: str) -> list[str]:
    return ["nsenter", "-t", str(pid), "-n", "-m", "--", *cmd]


def node_path(pid: int, path: str) -> Path:
    """``path`` as seen inside node ``pid``, reachable from here.

    /proc/PID/root walks PID's mount namespace, but an absolute symlink met on the way
    (/var/run -> /run on Debian) would restart at *our* root, i.e. in the host's files.
    So symlinks are resolved here, component by component, against the node's root.
    """
    root = f"/proc/{pid}/root"
    todo = [p for p in path.split("/") if p not in ("", ".")]
    done: list[str] = []
    hops = 0
    while todo:
        part = todo.pop(0)
        if part == "..":
            if done:
                done.pop()
            continue
        here = "/".join([root, *done, part])
        if os.path.islink(here):
            hops += 1
            if hops > 40:
                raise FrrError(f"too many symlinks resolving {path} in node {pid}")
            target = os.readlink(here)
            if target.startswith("/"):
                done = []
            todo = [p for p in target.split("/") if p not in ("", ".")] + todo
            continue
        done.append(part)
    return Path("/".join([root, *done]))


def _is_private(pid: int, path: str) -> bool:
    """True when ``path`` is a mount point of its own inside the node."""
    try:
        inner = os.stat(node_path(pid, path))
        parent = os.stat(node_path(pid, os.path.dirname(path)))
    except FileNotFoundError:
        return False
    return inner.st_dev != parent.st_dev


def _pid_alive(pid: int) -> bool:
    """True while any thread of ``pid`` runs. A zombie leader alone does not count (init
    reaps it later), but FRR's other threads may still be cleaning up behind one."""
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except (FileNotFoundError, ProcessLookupError):
        return False
    for task in tasks:
        try:
            state = (task / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if state not in ("Z", "X"):
            return True
    return False


def _read_pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def _log_tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""


def _launch(pid: int, daemon: str, profile: str) -> subprocess.Popen[str]:
    cmd = _nsenter(
        pid,
        _binary(daemon),
        "-d",
        "-F",
        profile,
        "-f",
        CONF_PATH,
        "-i",
        f"{RUN_DIR}/{daemon}.pid",
        # No TCP vty: vtysh talks over the node's private unix sockets.
        "-P",
        "0",
        "--log",
        f"file:{RUN_DIR}/{daemon}.log",
    )
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _await_daemon(pid: int, daemon: str, proc: subprocess.Popen[str], deadline: float) -> int:
    """Wait for a daemon's pidfile and vty socket; return its pid."""
    pidfile = node_path(pid, f"{RUN_DIR}/{daemon}.pid")
    vty = node_path(pid, f"{RUN_DIR}/{daemon}.vty")
    log = node_path(pid, f"{RUN_DIR}/{daemon}.log")
    # With -d the launcher exits once the daemon has read its config and is serving
    # (FRR's daemonize handshake), so most of the wait is here, not in the poll below.
    try:
        out, _ = proc.communicate(timeout=max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise FrrError(
            f"{daemon} in node {pid}: no start-up within the deadline: {out.strip()} "
            f"{_log_tail(log)}"
        ) from None
    if proc.returncode != 0:
        raise FrrError(
            f"{daemon} in node {pid} exited {proc.returncode}: "
            f"{' | '.join(out.strip().splitlines()[-5:])} {_log_tail(log)}"
        )
    while True:
        daemon_pid = _read_pid(pidfile)
        if daemon_pid is not None and vty.exists() and _pid_alive(daemon_pid):
            return daemon_pid
        if time.monotonic() > deadline:
            raise FrrError(
                f"{daemon} in node {pid}: no pidfile/vty socket in {RUN_DIR}: {_log_tail(log)}"
            )
        time.sleep(0.02)


def start(
    pid: int, speaker: BgpSpeaker, *, timeout: float = 15.0, dry_run: bool = True
) -> list[int]:
    """Write the speaker's config into node ``pid`` and start its daemons there.

    Requires ``/etc/frr`` and ``/var/run/frr`` to be private mounts in the node (so the
    host's FRR config is never overwritten). The daemons run as user ``frr`` as in Debian's
    packaging; the node's private FRR directories are handed to that user. Returns the
    daemon pids in start order (zebra first). ``dry_run`` checks the config first.
    """
    if not _pid_alive(pid):
        raise FrrError(f"node process {pid} does not exist")
    for path in PRIVATE_DIRS[:2]:
        if not _is_private(pid, path):
            raise FrrError(
                f"{path} is not a private mount in node {pid}: add it to the node's "
                f"privateDirs ({', '.join(PRIVATE_DIRS)})"
            )
    config = render(speaker)
    if dry_run:
        check(config)
    frr = pwd.getpwnam("frr")
    for path in PRIVATE_DIRS:
        if _is_private(pid, path):
            os.chown(node_path(pid, path), frr.pw_uid, frr.pw_gid)
    for name, text in (("frr.conf", config), ("vtysh.conf", "service integrated-vtysh-config\n")):
        target = node_path(pid, f"/etc/frr/{name}")
        target.write_text(text)
        os.chown(target, frr.pw_uid, frr.pw_gid)
        target.chmod(0o640)

    deadline = time.monotonic() + timeout
    daemons = speaker.daemons()
    started: list[int] = []
    try:
        zebra = _launch(pid, "zebra", speaker.profile)
        started.append(_await_daemon(pid, "zebra", zebra, deadline))
        # zebra's clients only need its socket; start them together.
        clients = [(d, _launch(pid, d, speaker.profile)) for d in daemons[1:]]
        for daemon, proc in clients:
            started.append(_await_daemon(pid, daemon, proc, deadline))
    except BaseException:
        # stop() also finds, by pidfile, a client that started but was not awaited yet.
        stop(pid, started)
        raise
    return started


def stop(pid: int, daemon_pids: Sequence[int], *, timeout: float = 5.0) -> None:
    """Stop node ``pid``'s FRR daemons: SIGTERM, SIGKILL after ``timeout``.

    Pids found in the node's pidfiles are stopped too, so ``stop(pid, [])`` cleans a node
    whose start was interrupted. A clean exit removes a daemon's pidfile, sockets and crash-log
    directory, and zebra's removes its kernel routes; whatever a killed daemon leaves is
    removed here. Logs in /var/run/frr are kept for post-mortems.
    """
    run = node_path(pid, RUN_DIR)
    pids = list(daemon_pids)
    if run.is_dir():
        for daemon in DAEMON_ORDER:
            found = _read_pid(run / f"{daemon}.pid")
            if found is not None and found not in pids:
                pids.append(found)
    live = [p for p in pids if _frr_daemon(p) is not None]
    # Read before the kill. The directory is named after the pre-fork pid, not the daemon's.
    crashlogs = [d for p in live for d in _crashlog_dirs(p)]
    remaining = list(live)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in remaining:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, sig)
        end = time.monotonic() + timeout
        while any(_pid_alive(p) for p in remaining) and time.monotonic() < end:
            time.sleep(0.02)
        remaining = [p for p in remaining if _pid_alive(p)]
        if not remaining:
            break
    if remaining:
        raise FrrError(f"FRR daemons {remaining} in node {pid} survived SIGKILL")
    if run.is_dir():
        for leftover in run.iterdir():
            if leftover.suffix in (".pid", ".vty", ".api") or leftover.is_socket():
                leftover.unlink(missing_ok=True)
    if _is_private(pid, CRASHLOG_DIR):
        # The node's own directory: also catches what daemons killed before stop() left.
        crashlogs = [
            f"{CRASHLOG_DIR}/{entry.name}" for entry in node_path(pid, CRASHLOG_DIR).iterdir()
        ]
    for crashlog in crashlogs:
        shutil.rmtree(node_path(pid, crashlog), ignore_errors=True)


def _crashlog_dirs(pid: int) -> list[str]:
    """The crash-log directories daemon ``pid`` holds open (paths as the node sees them)."""
    found = []
    with contextlib.suppress(FileNotFoundError, ProcessLookupError, PermissionError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith(CRASHLOG_DIR + "/"):
                    found.append(target)
    return sorted(set(found))


def _frr_daemon(pid: int) -> str | None:
    """The daemon name of a live FRR daemon, else None (guards against pid reuse)."""
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return comm if comm in DAEMON_ORDER and _pid_alive(pid) else None


# --------------------------------------------------------------------------- observe


def vtysh(pid: int, command: str, *, timeout: float = 10.0) -> str:
    """Run one vtysh command against node ``pid``'s daemons and return its output."""
    proc = subprocess.run(
        _nsenter(pid, _vtysh(), "-c", command),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise FrrError(
            f"vtysh -c {command!r} in node {pid} failed ({proc.returncode}): "
            f"{(proc.stderr or proc.stdout).strip()}"
        )
    return proc.stdout


def summary(pid: int) -> dict[str, Any]:
    """``show bgp summary json`` of node ``pid``, parsed."""
    data = json.loads(vtysh(pid, "show bgp summary json") or "{}")
    if not isinstance(data, dict):
        raise FrrError(f"unexpected show bgp summary output in node {pid}: {data!r}")
    return data


def peer_states(pid: int) -> dict[str, str]:
    """Session state per neighbor address (IPv4 unicast), e.g. ``{"10.0.0.2": "Established"}``."""
    peers = summary(pid).get("ipv4Unicast", {}).get("peers", {})
    return {ip: str(info.get("state", "?")) for ip, info in peers.items()}


def established_count(pid: int) -> int:
    """Number of IPv4 unicast sessions in state Established on node ``pid``."""
    return sum(state == "Established" for state in peer_states(pid).values())


def wait_established(pid: int, expected: int, timeout: float = 30.0) -> float:
    """Wait until ``expected`` sessions are Established; return the seconds it took."""
    began = time.monotonic()
    while True:
        states = peer_states(pid)
        if sum(s == "Established" for s in states.values()) >= expected:
            return time.monotonic() - began
        if time.monotonic() - began > timeout:
            raise TimeoutError(
                f"node {pid}: {expected} BGP sessions not Established after {timeout:.0f} s: "
                f"{states}"
            )
        time.sleep(0.05)


def kernel_bgp_routes(pid: int) -> list[str]:
    """Destinations of the routes with protocol bgp in node ``pid``'s main table."""
    proc = subprocess.run(
        ["nsenter", "-t", str(pid), "-n", "--", "ip", "-j", "-4", "route", "show", "proto", "bgp"],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    return sorted(str(r["dst"]) for r in json.loads(proc.stdout or "[]"))


def wait_kernel_routes(
    pid: int, prefixes: Iterable[IPv4Network | str], timeout: float = 30.0
) -> float:
    """Wait until node ``pid``'s kernel has exactly ``prefixes`` as bgp routes; seconds taken."""
    want = sorted(str(ipaddress.ip_network(str(p))) for p in prefixes)
    began = time.monotonic()
    while True:
        have = kernel_bgp_routes(pid)
        if have == want:
            return time.monotonic() - began
        if time.monotonic() - began > timeout:
            raise TimeoutError(f"node {pid}: bgp routes {have}, expected {want}")
        time.sleep(0.05)


# --------------------------------------------------------------------------- reconfigure


def neighbor_commands(before: BgpSpeaker, after: BgpSpeaker) -> list[str]:
    """vtysh commands taking a running speaker from `before`'s neighbours to `after`'s: the
    lines the rendered config has for each new neighbour (session, then address family), and
    ``no neighbor`` for each one gone. Empty when the neighbours are the same."""
    old = {n.ip for n in before.neighbors}
    new = {n.ip for n in after.neighbors}
    if old == new:
        return []
    session: list[str] = []
    family: list[str] = []
    for line in render(after).splitlines():
        words = line.split()
        if len(words) < 3 or words[0] != "neighbor":
            continue
        if ipaddress.IPv4Address(words[1]) in new - old:
            # One leading space: `router bgp`; two: `address-family ipv4 unicast`.
            (family if line.startswith("  ") else session).append(line.strip())
    gone = [f"no neighbor {ip}" for ip in sorted(old - new)]
    cmds = ["configure terminal", f"router bgp {after.asn}", *gone, *session]
    if family:
        cmds += ["address-family ipv4 unicast", *family, "exit-address-family"]
    return [*cmds, "end"]


def reconfigure(pid: int, before: BgpSpeaker, after: BgpSpeaker) -> list[str]:
    """Give node ``pid``'s running FRR `after`'s neighbours: the re-rendered frr.conf written
    (as calico's confd re-renders BIRD's config) and the difference applied live with vtysh
    (as BIRD's reload does). Returns the commands run."""
    cmds = neighbor_commands(before, after)
    if not cmds:
        return []
    node_path(pid, CONF_PATH).write_text(render(after))
    argv = [_vtysh()] + [x for c in cmds for x in ("-c", c)]
    proc = subprocess.run(_nsenter(pid, *argv), capture_output=True, text=True, timeout=30)
    if proc.returncode != 0 or "%" in proc.stdout:
        raise FrrError(
            f"vtysh in node {pid} refused the neighbour change: "
            f"{(proc.stderr or proc.stdout).strip()}"
        )
    return cmds
