"""Flannel's UDP backend in userspace: what flanneld's proxy_amd64.c does.

TUN -> UDP: a bare IP packet read from the TUN is looked up by destination in the route table;
no route: an ICMP net unreachable goes back into the TUN; otherwise TTL - 1 and the whole
packet is the payload of one UDP datagram to ``node_ip:port``. UDP -> TUN: TTL - 1, write the
payload into the TUN. No extra header in either direction, so the wire shows UDP dst 8285 whose
payload is the pod-to-pod IP packet.

Split as in flanneld, where a Go process drives a C proxy over a control socket: the packets
are moved by the two loops of ``udpproxy.c`` (built with the system C compiler into
``build/udpproxy/udpproxy.so``, loaded with ctypes), each in its own thread with the GIL
released. This module is the process the supervisor runs: it opens the TUN and the UDP socket,
pushes the route table to the C side over a SOCK_SEQPACKET socketpair (again on SIGHUP), and
answers the packets the C side hands back for want of a route with ICMP net unreachable (the
same :func:`labctl.datapath.net_unreachable` the IPIP datapath uses). There is no Python packet
loop to fall back to: if the library cannot be built, the process exits 1 saying why, and
``labctl up`` fails with that line.

Batching: consecutive TUN packets to the same peer leave in one sendmsg() with UDP_SEGMENT
(GSO), and the socket has UDP_GRO on, so one receive can return several datagrams. A capture on
a veth (which passes GSO packets through unsegmented) would show a batch as one large UDP
datagram holding several inner packets; the flannel-udp plan turns ``tx-udp-segmentation`` off
on the node's underlay so the kernel splits them before the capture point, as a NIC would.

Run as ``python -m labctl.datapath.udpproxy --config FILE`` inside the node's netns.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from labctl.datapath import BATCH, Datapath, DatapathConfig, ErrorLog, Route, run, tune_socket
from labctl.datapath.tun import enable_tcp_offload, open_tun

PROG = "labctl.datapath.udpproxy"
SOURCE = Path(__file__).with_name("udpproxy.c")
#: The build output (gitignored): scripts/install.sh compiles it, the proxy recompiles it at
#: start when it is missing or older than its source.
LIBRARY = Path(__file__).resolve().parents[2] / "build" / "udpproxy" / "udpproxy.so"
COMPILERS = ("cc", "gcc", "clang")
#: The C side's counter slots, in its enum order.
COUNTERS = (
    "sent",
    "received",
    "no route",
    "TTL expired (out)",
    "TTL expired (in)",
    "malformed offload",
    "send buffer full",
    "send errors",
    "not IPv4",
    "TUN write errors",
)
# <linux/udp.h>: UDP_GRO (receive-side coalescing of same-size datagrams).
UDP_GRO = 104
_BUF = 65536
_ROUTE = struct.Struct("!IB3x4s")
_COUNT = struct.Struct("!I")


class ProxyBuildError(RuntimeError):
    """udpproxy.c cannot be compiled here (no C compiler, or it failed)."""


def argv(config_path: str) -> list[str]:
    """Command line the supervisor runs (inside the node's netns) to start this datapath."""
    return [sys.executable, "-m", PROG, "--config", config_path]


def compile_argv(compiler: str, source: Path, out: Path) -> list[str]:
    """The command that builds the shared library from ``source`` into ``out``."""
    return [compiler, "-O2", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC",
            "-o", str(out), str(source)]  # fmt: skip


def ensure_library(source: Path = SOURCE, lib: Path = LIBRARY) -> Path:
    """Build the library if it is missing or older than its source; ProxyBuildError if not.

    Two nodes' proxies may start at once: each compiles to its own file and renames it into
    place, so neither ever loads a half-written library.
    """
    if lib.exists() and lib.stat().st_mtime >= source.stat().st_mtime:
        return lib
    compiler = next((c for c in COMPILERS if shutil.which(c)), None)
    if compiler is None:
        raise ProxyBuildError(
            f"the UDP proxy needs {lib}, built from {source.name} with a C compiler, and none "
            f"of {', '.join(COMPILERS)} is installed; run 'bash scripts/install.sh' as root"
        )
    lib.parent.mkdir(parents=True, exist_ok=True)
    tmp = lib.with_name(f".{lib.name}.{os.getpid()}")
    proc = subprocess.run(compile_argv(compiler, source, tmp), capture_output=True, text=True)
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise ProxyBuildError(
            f"{compiler} could not build {source.name}: {proc.stderr.strip()[-500:]}"
        )
    os.replace(tmp, lib)
    return lib


def encode_routes(routes: Iterable[Route]) -> bytes:
    """The control message for the C side: a count, then (network, prefix length, node IP)
    per route, network order, longest prefix first (the C lookup takes the first match)."""
    ordered = sorted(routes, key=lambda r: r.subnet.prefixlen, reverse=True)
    return _COUNT.pack(len(ordered)) + b"".join(
        _ROUTE.pack(int(r.subnet.network_address), r.subnet.prefixlen, r.node_ip.packed)
        for r in ordered
    )


def load_library() -> ctypes.CDLL:
    """Build if needed, load, and declare the two loop functions of udpproxy.c."""
    lib = ctypes.CDLL(str(ensure_library()))
    counters = ctypes.POINTER(ctypes.c_ulonglong)
    lib.labctl_udp_tun_to_udp.argtypes = [ctypes.c_int] * 4 + [counters]
    lib.labctl_udp_udp_to_tun.argtypes = [ctypes.c_int] * 3 + [counters]
    for fn in (lib.labctl_udp_tun_to_udp, lib.labctl_udp_udp_to_tun):
        fn.restype = ctypes.c_int
    return lib


class UdpProxy(Datapath):
    """One TUN fd and one UDP socket bound to ``local_ip:port``, served by two C threads."""

    #: The TUN is opened with IFF_VNET_HDR (see udpproxy.c); an empty header: a plain packet.
    _tun_header = bytes(10)

    def __init__(self, config: DatapathConfig) -> None:
        assert config.port is not None
        self._log = logging.getLogger(PROG)
        self._errors = ErrorLog(self._log)
        lib = load_library()
        self._tun = open_tun(config.tun, vnet_hdr=True)
        try:
            enable_tcp_offload(self._tun)  # the C side segments and checksums (udpproxy.c)
            self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            tune_socket(self._sock)
            self._sock.bind((str(config.local_ip), config.port))
            self._sock.setsockopt(socket.SOL_UDP, UDP_GRO, 1)
            # _ctl is ours, _peer the C side's; shutting down _ctl stops both loops.
            self._ctl, self._peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        except BaseException:
            os.close(self._tun)
            raise
        self.apply(config)  # queued in the socketpair before the loops start
        self._buf = bytearray(_BUF)
        self._counters = (ctypes.c_ulonglong * len(COUNTERS))()
        tun, sock, ctl = self._tun, self._sock.fileno(), self._peer.fileno()
        self._threads = [
            threading.Thread(
                target=self._loop,
                args=(lib.labctl_udp_tun_to_udp, (tun, sock, ctl, config.port, self._counters)),
                name="tun->udp",
                daemon=True,
            ),
            threading.Thread(
                target=self._loop,
                args=(lib.labctl_udp_udp_to_tun, (sock, tun, ctl, self._counters)),
                name="udp->tun",
                daemon=True,
            ),
        ]
        for thread in self._threads:
            thread.start()

    def _loop(self, fn: Callable[..., int], args: tuple[object, ...]) -> None:
        """Run one C loop; it returns 0 when told to stop, -errno when its fd broke."""
        rc = fn(*args)
        if rc < 0:
            # The TUN or the socket is gone: exit so the supervisor starts a fresh process.
            name = threading.current_thread().name
            self._log.error("%s loop failed: %s", name, os.strerror(-rc))
            os._exit(1)

    def handlers(self) -> dict[int, Callable[[], None]]:
        """The control socket: packets the C side found no route for."""
        return {self._ctl.fileno(): self._no_route}

    def _no_route(self) -> None:
        """Answer up to BATCH packets without a route with ICMP net unreachable."""
        mv = memoryview(self._buf)
        for _ in range(BATCH):
            try:
                n = self._ctl.recv_into(self._buf, _BUF, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            self._unreachable(mv[:n])

    def apply(self, config: DatapathConfig) -> None:
        """Push a new route table to the C side, which swaps it in between two reads."""
        self._ctl.send(encode_routes(config.routes))

    def close(self) -> None:
        """Stop both loops, then close the sockets and the TUN fd (the device stays)."""
        self._ctl.shutdown(socket.SHUT_WR)
        for thread in self._threads:
            thread.join()
        self._ctl.close()
        self._peer.close()
        self._sock.close()
        os.close(self._tun)

    def summary(self) -> str:
        """Packet and error counters of both loops, plus ICMP errors."""
        counts = ", ".join(f"{k}: {v}" for k, v in zip(COUNTERS, self._counters, strict=True) if v)
        return f"{counts or 'no packets'}; icmp errors: {self._errors.counts}"


def main(args: Sequence[str] | None = None) -> int:
    """Run the UDP proxy until SIGTERM; see :func:`labctl.datapath.run`."""
    return run(PROG, UdpProxy, need_port=True, argv=args)


if __name__ == "__main__":
    sys.exit(main())
