"""The TC-BPF IPIP datapath: kernel-speed IP-in-IP where the kernel has no ``ipip`` module.

The packets are moved by two tc (clsact) programs from ``ipip.bpf.c`` (see its header
comment): ``ipip_encap`` on the egress of the node's tunnel device and ``ipip_decap`` on the
ingress of the underlay device. This module builds the object with clang and is the per-node
loader process the supervisor runs (``python -m labctl.datapath.bpf --config FILE``, the same
process contract as the userspace datapaths in :mod:`labctl.datapath`):

* it attaches to the persistent TUN device the engine made and holds it open without reading,
  so the device has carrier (``state UNKNOWN``, no ``linkdown`` on its routes) and is what the
  routes point at; nothing ever queues on it, because the egress program redirects or drops
  every packet before the device's queue;
* it attaches both programs with ``tc`` and fills their maps with ``bpftool``: the node's IP and
  the two ifindexes, and the peer node IPs IPIP is accepted from (from the plan's routes);
* it prints ``ready``; SIGHUP re-reads the peers; SIGTERM detaches the programs and exits 0.

The outer destination is not in a map: it is the next hop of the route that sent the packet
to the tunnel (``bpf_fib_lookup``), as the kernel's tunnel with remote "any" does, so the
node's ``ip route`` decides where pod traffic goes, for the BPF path as for the kernel's.
Nothing is pinned: programs and maps live as long as their devices, i.e. the lab.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import sysconfig
from collections.abc import Iterable, Sequence
from ipaddress import IPv4Address
from pathlib import Path

PROG = "labctl.datapath.bpf"
SOURCE = Path(__file__).with_name("ipip.bpf.c")
#: The build output (gitignored): scripts/install.sh compiles it, `up` recompiles it when stale.
OBJECT = Path(__file__).resolve().parents[3] / "build" / "bpf" / "ipip.bpf.o"
ENCAP = ("egress", "tc/encap")  # on the tunnel device
DECAP = ("ingress", "tc/decap")  # on the underlay device
CONFIG_MAP = "ipip_config"
PEERS_MAP = "ipip_peers"
STATS_MAP = "ipip_stats"
STATS = ("encapsulated", "decapsulated", "no route", "from unknown hosts", "errors")
TOOLS = ("clang", "tc", "bpftool")


class BpfError(RuntimeError):
    """The object cannot be built, or tc/bpftool refused something (exit 3 from the CLI)."""

    exit_code = 3


def compile_argv(source: Path = SOURCE, obj: Path = OBJECT) -> list[str]:
    """The clang command that builds the object (BPF target, the arch's asm/ headers)."""
    multiarch = sysconfig.get_config_var("MULTIARCH") or f"{os.uname().machine}-linux-gnu"
    return [
        "clang", "-O2", "-g", "-Wall", "-Werror", "-target", "bpf",
        f"-I/usr/include/{multiarch}", "-c", str(source), "-o", str(obj),
    ]  # fmt: skip


def is_stale(source: Path = SOURCE, obj: Path = OBJECT) -> bool:
    """True when the object is missing or older than its source."""
    return not obj.exists() or obj.stat().st_mtime < source.stat().st_mtime


def ensure_object(source: Path = SOURCE, obj: Path = OBJECT) -> Path:
    """Build the object if it is missing or stale; BpfError naming the fix if it can't be."""
    if not is_stale(source, obj):
        return obj
    if shutil.which("clang") is None:
        raise BpfError(
            f"the BPF datapath needs {obj}, built from {source.name} with clang, which is not "
            "installed; run 'bash scripts/install.sh' as root (or use --datapath userspace)"
        )
    obj.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(compile_argv(source, obj), capture_output=True, text=True)
    if proc.returncode != 0:
        obj.unlink(missing_ok=True)
        raise BpfError(f"clang could not build {source.name}: {proc.stderr.strip()[-500:]}")
    return obj


def missing_tools() -> list[str]:
    """The programs the BPF datapath needs that are not on PATH."""
    return [t for t in TOOLS if shutil.which(t) is None]


def attach_argv(dev: str, hook: str, section: str, obj: Path = OBJECT) -> list[list[str]]:
    """tc commands that put the program of `section` on `dev`'s `hook` (ingress/egress)."""
    return [
        ["tc", "qdisc", "replace", "dev", dev, "clsact"],
        ["tc", "filter", "replace", "dev", dev, hook, "pref", "1", "handle", "1",
         "bpf", "direct-action", "obj", str(obj), "sec", section],
    ]  # fmt: skip


def detach_argv(dev: str) -> list[str]:
    """tc command that removes the clsact qdisc of `dev`, and with it its programs."""
    return ["tc", "qdisc", "del", "dev", dev, "clsact"]


def config_value(local_ip: IPv4Address, underlay: int, tunnel: int) -> bytes:
    """The ``struct config`` of ipip.bpf.c: outer source (network order), two ifindexes."""
    return local_ip.packed + struct.pack("=II", underlay, tunnel)


def peer_keys(routes: Iterable[dict[str, str]]) -> list[bytes]:
    """ipip_peers keys (node IPs, network order) from the plan's routes, deduplicated."""
    return sorted({IPv4Address(r["node_ip"]).packed for r in routes})


def map_update_argv(map_id: int, key: bytes, value: bytes) -> list[str]:
    """bpftool command that writes one map entry (bytes as hex, as bpftool takes them)."""
    return [
        "bpftool", "map", "update", "id", str(map_id),
        "key", "hex", *[f"{b:02x}" for b in key],
        "value", "hex", *[f"{b:02x}" for b in value],
    ]  # fmt: skip


def map_delete_argv(map_id: int, key: bytes) -> list[str]:
    """bpftool command that removes one map entry."""
    return ["bpftool", "map", "delete", "id", str(map_id), "key", "hex", *[f"{b:02x}" for b in key]]


def argv(config_path: str) -> list[str]:
    """Command line the supervisor runs (inside the node's netns) to start the loader."""
    return [sys.executable, "-m", PROG, "--config", config_path]


def _run(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BpfError(f"{' '.join(cmd[:6])}...: {(proc.stderr or proc.stdout).strip()}")
    return proc.stdout


def attached_prog(dev: str, hook: str) -> int | None:
    """Id of the BPF program on `dev`'s `hook` in this netns, or None."""
    proc = subprocess.run(
        ["tc", "-j", "filter", "show", "dev", dev, hook], capture_output=True, text=True
    )
    if proc.returncode != 0:
        return None
    for f in json.loads(proc.stdout or "[]"):
        prog = f.get("options", {}).get("prog")
        if prog:
            return int(prog["id"])
    return None


def prog_maps(prog_id: int) -> dict[str, int]:
    """Map name -> id of the maps program `prog_id` uses."""
    info = json.loads(_run(["bpftool", "-j", "prog", "show", "id", str(prog_id)]))
    maps = {}
    for map_id in info.get("map_ids", []):
        m = json.loads(_run(["bpftool", "-j", "map", "show", "id", str(map_id)]))
        maps[m["name"]] = int(map_id)
    return maps


def read_stats(map_id: int) -> dict[str, int]:
    """The program's counters summed over CPUs (the ipip_stats per-CPU array)."""
    dump = json.loads(_run(["bpftool", "-j", "map", "dump", "id", str(map_id)]))
    out = dict.fromkeys(STATS, 0)
    for entry in dump:
        index = int(entry["key"]) if not isinstance(entry["key"], list) else entry["key"][0]
        if index < len(STATS):
            out[STATS[index]] = sum(int(v["value"]) for v in entry.get("values", []))
    return out


class Loader:
    """The programs of one node: attached on start, peers updated on reload, detached on stop."""

    def __init__(self, raw: dict[str, object]) -> None:
        self.tun = str(raw["tun"])
        self.underlay = str(raw.get("underlay", "eth0"))
        self.local_ip = IPv4Address(str(raw["local_ip"]))
        self.maps: dict[str, dict[str, int]] = {}
        self.peers: set[bytes] = set()

    def attach(self, routes: list[dict[str, str]]) -> None:
        """Attach both programs and fill their maps."""
        obj = ensure_object()
        value = config_value(
            self.local_ip, socket.if_nametoindex(self.underlay), socket.if_nametoindex(self.tun)
        )
        for dev, (hook, section) in ((self.tun, ENCAP), (self.underlay, DECAP)):
            for cmd in attach_argv(dev, hook, section, obj):
                _run(cmd)
            prog = attached_prog(dev, hook)
            if prog is None:
                raise BpfError(f"tc shows no BPF program on {dev} {hook} after attaching it")
            self.maps[section] = prog_maps(prog)
            _run(map_update_argv(self.maps[section][CONFIG_MAP], b"\0\0\0\0", value))
        self.set_peers(routes)

    def set_peers(self, routes: list[dict[str, str]]) -> None:
        """Make ipip_peers of the decap program hold exactly the routes' node IPs."""
        peers_map = self.maps[DECAP[1]][PEERS_MAP]
        want = set(peer_keys(routes))
        for key in sorted(want - self.peers):
            _run(map_update_argv(peers_map, key, struct.pack("=I", 1)))
        for key in sorted(self.peers - want):
            _run(map_delete_argv(peers_map, key))
        self.peers = want

    def stats(self) -> dict[str, int]:
        """Counters of both programs, summed."""
        total = dict.fromkeys(STATS, 0)
        for maps in self.maps.values():
            for k, v in read_stats(maps[STATS_MAP]).items():
                total[k] += v
        return total

    def detach(self) -> None:
        """Remove both clsact qdiscs (and with them the programs and their maps)."""
        for dev in (self.tun, self.underlay):
            subprocess.run(detach_argv(dev), capture_output=True)


def _read(path: str) -> dict[str, object]:
    with open(path, encoding="utf-8") as f:
        raw = json.load(f)
    if not isinstance(raw, dict) or not {"tun", "local_ip"} <= raw.keys():
        raise ValueError(f"{path}: needs 'tun' and 'local_ip'")
    return raw


def _routes(raw: dict[str, object]) -> list[dict[str, str]]:
    routes = raw.get("routes", [])
    if not isinstance(routes, list) or not all(isinstance(r, dict) for r in routes):
        raise ValueError("'routes' must be a list of {subnet, node_ip}")
    return routes


def main(args: Sequence[str] | None = None) -> int:
    """Attach, report ready, serve SIGHUP (peers) until SIGTERM; exit 2 bad config, 1 failure."""
    import argparse

    from labctl.datapath.tun import open_tun

    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format=f"{PROG}[{os.getpid()}]: %(message)s"
    )
    log = logging.getLogger(PROG)
    parser = argparse.ArgumentParser(prog=f"python -m {PROG}")
    parser.add_argument("--config", required=True, help="JSON config written by the engine")
    path = str(parser.parse_args(args).config)
    try:
        raw = _read(path)
        _routes(raw)
        loader = Loader(raw)
    except (OSError, ValueError) as exc:
        log.error("bad config: %s", exc)
        return 2
    # Blocked, then taken with sigwait: a SIGTERM during start-up waits until attach is done.
    wanted = {signal.SIGHUP, signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, wanted)
    try:
        tun_fd = open_tun(loader.tun)  # held, never read: the device keeps its carrier
        loader.attach(_routes(raw))
    except (OSError, RuntimeError) as exc:
        log.error("cannot start: %s", exc)
        loader.detach()
        return 1
    log.info("programs on %s egress and %s ingress, %d peers", loader.tun, loader.underlay,
             len(loader.peers))  # fmt: skip
    print("ready", flush=True)
    try:
        while True:
            received = signal.sigwait(wanted)
            if received != signal.SIGHUP:
                break
            try:
                loader.set_peers(_routes(_read(path)))
                log.info("SIGHUP: %d peers", len(loader.peers))
            except (OSError, ValueError, BpfError) as exc:
                log.error("SIGHUP: keeping the old peers: %s", exc)
        with contextlib.suppress(BpfError):
            log.info("exiting: %s", loader.stats())
    finally:
        loader.detach()
        os.close(tun_fd)
    return 0
