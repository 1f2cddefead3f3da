"""Userspace node datapaths: flannel's UDP backend and IPIP for kernels without the ipip module.

Each datapath is one process that runs inside a node's network namespace and attaches to a
persistent TUN device that the lab engine created (see :mod:`labctl.datapath.tun`). This module
holds what both share: the config file, the longest-prefix route table, IPv4 header helpers, the
ICMP net-unreachable reply, and the event loop with its signal handling.

Process contract (for the supervisor):

* start: ``argv(config_path)`` of :mod:`~labctl.datapath.udpproxy` or :mod:`~labctl.datapath.ipip`,
  run inside the node's netns after the TUN device exists; the process prints ``ready`` on
  stdout once attached and bound;
* SIGHUP re-reads the config (routes and peers; a changed ``tun``, ``local_ip`` or ``port``
  is logged and needs a restart); SIGTERM or SIGINT exits 0;
* exit 2: unusable config; exit 1: the TUN device or a socket could not be set up.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import logging
import os
import select
import signal
import socket
import struct
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = [
    "ConfigError",
    "Datapath",
    "DatapathConfig",
    "ErrorLog",
    "Route",
    "RouteTable",
    "decrement_ttl",
    "internet_checksum",
    "load_config",
    "net_unreachable",
    "run",
]

T = TypeVar("T")

#: How many packets one handler moves per wakeup before it yields to the other direction.
#: Draining to EAGAIN amortises the epoll call; the cap keeps a busy direction from starving
#: the other (TCP data one way, its ACKs the other).
BATCH = 64

#: Large socket buffers absorb bursts while the single-threaded loop serves the other side.
SOCKET_BUFFER = 4 * 1024 * 1024

_ICMP_ERROR_TYPES = frozenset({3, 4, 5, 11, 12})
_IPPROTO_ICMP = 1


class ConfigError(ValueError):
    """The datapath config file is missing, not JSON, or has wrong fields."""


@dataclass(frozen=True)
class Route:
    """One peer: packets for ``subnet`` go to the node at ``node_ip``."""

    subnet: ipaddress.IPv4Network
    node_ip: ipaddress.IPv4Address


@dataclass(frozen=True)
class DatapathConfig:
    """The JSON config the engine writes for one datapath process."""

    tun: str
    local_ip: ipaddress.IPv4Address
    port: int | None
    routes: tuple[Route, ...]

    def identity(self) -> tuple[str, ipaddress.IPv4Address, int | None]:
        """The fields that are bound at start-up and need a restart to change."""
        return (self.tun, self.local_ip, self.port)


def load_config(path: str, *, need_port: bool) -> DatapathConfig:
    """Read and validate a datapath config file; raise ConfigError with the reason."""
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be an object")
    try:
        tun = raw["tun"]
        if not isinstance(tun, str) or not 0 < len(tun) < 16:
            raise ConfigError(f"{path}: 'tun' must be an interface name")
        local_ip = ipaddress.IPv4Address(raw["local_ip"])
        port: int | None = None
        if need_port:
            port = raw["port"]
            if not isinstance(port, int) or not 0 < port < 65536:
                raise ConfigError(f"{path}: 'port' must be 1..65535")
        routes = tuple(
            Route(ipaddress.IPv4Network(r["subnet"]), ipaddress.IPv4Address(r["node_ip"]))
            for r in raw.get("routes", [])
        )
    except KeyError as exc:
        raise ConfigError(f"{path}: missing field {exc}") from exc
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    return DatapathConfig(tun=tun, local_ip=local_ip, port=port, routes=routes)


class RouteTable(Generic[T]):
    """Longest-prefix match over IPv4 subnets.

    One dict per prefix length, probed from the longest length down: a lookup costs one dict
    probe per distinct prefix length in use (usually one: every node has a /24 or a /26),
    independent of the number of peers.
    """

    def __init__(self, entries: Iterable[tuple[ipaddress.IPv4Network, T]]) -> None:
        by_len: dict[int, dict[int, T]] = {}
        for net, value in entries:
            by_len.setdefault(net.prefixlen, {})[int(net.network_address)] = value
        self._levels: tuple[tuple[int, dict[int, T]], ...] = tuple(
            ((0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF, table)
            for plen, table in sorted(by_len.items(), reverse=True)
        )

    def lookup(self, addr: int) -> T | None:
        """Value of the longest prefix containing ``addr`` (host-order int), or None."""
        for mask, table in self._levels:
            value = table.get(addr & mask)
            if value is not None:
                return value
        return None


def internet_checksum(data: bytes) -> int:
    """RFC 1071 checksum of ``data`` (used off the hot path: ICMP replies, tests)."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def decrement_ttl(buf: bytearray, off: int = 0) -> bool:
    """Decrement the TTL of the IPv4 header at ``buf[off:]`` and patch its checksum.

    Returns False (and leaves the packet alone) when the TTL is 0 or 1, so the caller drops it,
    as flannel's proxy does. The checksum update is the kernel's ip_decrease_ttl(): the TTL is
    the high byte of the 16-bit word at offset 8, so the sum drops by 0x0100 and the stored
    complement rises by 0x0100, with the end-around carry (RFC 1624).
    """
    ttl = buf[off + 8]
    if ttl <= 1:
        return False
    buf[off + 8] = ttl - 1
    check = ((buf[off + 10] << 8) | buf[off + 11]) + 0x0100
    if check >= 0xFFFF:
        check = (check + 1) & 0xFFFF
    buf[off + 10] = check >> 8
    buf[off + 11] = check & 0xFF
    return True


def net_unreachable(packet: memoryview) -> bytes | None:
    """ICMP destination unreachable (type 3, code 0) for ``packet``, or None if none is due.

    As flannel's send_net_unreachable(), but with two deliberate differences:

    * The source address is the unreachable destination, not the TUN's own address. The reply
      is written into the TUN, i.e. it *arrives* at the node; an arriving packet whose source is
      one of the node's own addresses is a martian to Linux and is dropped, so flannel's choice
      never reaches the sender.
    * Only ICMP *error* messages are exempt (RFC 1122 3.2.2); flannel also stays silent for
      echo requests, which would leave ``ping`` with nothing to show.

    No reply for non-first fragments, malformed headers or a zero/multicast/broadcast source.
    """
    n = len(packet)
    if n < 20 or packet[0] >> 4 != 4:
        return None
    ihl = (packet[0] & 0x0F) * 4
    if ihl < 20 or ihl > n:
        return None
    if (packet[6] << 8 | packet[7]) & 0x1FFF:
        return None
    src = bytes(packet[12:16])
    if src[0] == 0 or src[0] >= 224:
        return None
    if packet[9] == _IPPROTO_ICMP and (n <= ihl or packet[ihl] in _ICMP_ERROR_TYPES):
        return None
    quote = bytes(packet[: min(n, ihl + 8)])
    icmp = bytearray(struct.pack("!BBHI", 3, 0, 0, 0) + quote)
    struct.pack_into("!H", icmp, 2, internet_checksum(bytes(icmp)))
    # TOS as Linux's icmp_send(): the offender's TOS bits plus precedence "internetwork control".
    tos = (packet[1] & 0x1E) | 0xC0
    header = bytearray(
        struct.pack(
            "!BBHHHBBH4s4s", 0x45, tos, 20 + len(icmp), 0, 0, 64, 1, 0, bytes(packet[16:20]), src
        )
    )
    struct.pack_into("!H", header, 10, internet_checksum(bytes(header)))
    return bytes(header + icmp)


class ErrorLog:
    """Counts recurring per-packet errors and logs the 1st, 2nd, 4th, 8th... occurrence.

    A datapath can hit the same error at line rate (a peer gone, a full queue); logging each
    would cost more than moving the packets.
    """

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self.counts: dict[str, int] = {}

    def __call__(self, key: str, message: str) -> None:
        """Count one occurrence of ``key`` and log ``message`` if the count is a power of 2."""
        count = self.counts.get(key, 0) + 1
        self.counts[key] = count
        if count & (count - 1) == 0:
            self._logger.warning("%s (seen %d times)", message, count)


def tune_socket(sock: socket.socket) -> None:
    """Non-blocking, with big buffers (forced past rmem_max/wmem_max when running as root)."""
    sock.setblocking(False)
    for force, plain in (
        (getattr(socket, "SO_RCVBUFFORCE", 33), socket.SO_RCVBUF),
        (getattr(socket, "SO_SNDBUFFORCE", 32), socket.SO_SNDBUF),
    ):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, SOCKET_BUFFER)
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, plain, SOCKET_BUFFER)


class Datapath(ABC):
    """One running datapath: the fds it serves and how to swap in new routes."""

    @abstractmethod
    def handlers(self) -> dict[int, Callable[[], None]]:
        """Map each fd to watch for readability to the function that drains it."""

    @abstractmethod
    def apply(self, config: DatapathConfig) -> None:
        """Replace the route/peer tables with those of ``config`` (SIGHUP)."""

    @abstractmethod
    def close(self) -> None:
        """Close sockets and detach from the TUN (the persistent device stays)."""

    def summary(self) -> str:
        """One line for the exit log: counters worth knowing about."""
        return ""

    # Set by subclasses when they attach: the TUN fd and their rate-limited error log.
    _tun: int
    _errors: ErrorLog
    #: What every write to the TUN starts with (a virtio_net_hdr when opened with one).
    _tun_header: bytes = b""

    def _unreachable(self, packet: memoryview) -> None:
        """Answer a packet with no route with ICMP net unreachable, as flanneld's proxy does."""
        reply = net_unreachable(packet)
        if reply is None:
            return
        try:
            os.write(self._tun, self._tun_header + reply)
        except OSError as exc:
            self._errors(f"icmp:{exc.errno}", f"ICMP net unreachable into TUN: {exc}")


def _parse_args(prog: str, argv: Sequence[str] | None) -> str:
    parser = argparse.ArgumentParser(prog=f"python -m {prog}")
    parser.add_argument("--config", required=True, help="JSON config written by the engine")
    return str(parser.parse_args(argv).config)


def run(
    prog: str,
    build: Callable[[DatapathConfig], Datapath],
    *,
    need_port: bool,
    argv: Sequence[str] | None = None,
) -> int:
    """Entry point shared by the datapath modules: parse, attach, serve until SIGTERM."""
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format=f"{prog}[{os.getpid()}]: %(message)s"
    )
    log = logging.getLogger(prog)
    config_path = _parse_args(prog, argv)
    try:
        config = load_config(config_path, need_port=need_port)
    except ConfigError as exc:
        log.error("bad config: %s", exc)
        return 2
    try:
        datapath = build(config)
    except (OSError, RuntimeError) as exc:  # RuntimeError: TunError
        log.error("cannot start: %s", exc)
        return 1

    # Signals reach the loop through a socketpair (set_wakeup_fd), so epoll wakes on them
    # instead of the handler racing the loop; the no-op handlers only stop the defaults.
    wake_r, wake_w = socket.socketpair()
    wake_r.setblocking(False)
    wake_w.setblocking(False)
    for signum in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda _s, _f: None)
    signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)

    handlers = datapath.handlers()
    epoll = select.epoll()
    epoll.register(wake_r.fileno(), select.EPOLLIN)
    for fd in handlers:
        epoll.register(fd, select.EPOLLIN)
    log.info("attached to %s, %d routes", config.tun, len(config.routes))
    with contextlib.suppress(BrokenPipeError):
        print("ready", flush=True)

    try:
        while True:
            for fd, _events in epoll.poll():
                handler = handlers.get(fd)
                if handler is not None:
                    handler()
                    continue
                for received in wake_r.recv(64):
                    if received == signal.SIGHUP:
                        config = _reload(log, config_path, config, datapath, need_port)
                    else:
                        log.info("signal %d: exiting. %s", received, datapath.summary())
                        return 0
    finally:
        signal.set_wakeup_fd(-1)
        epoll.close()
        wake_r.close()
        wake_w.close()
        datapath.close()


def _reload(
    log: logging.Logger,
    path: str,
    current: DatapathConfig,
    datapath: Datapath,
    need_port: bool,
) -> DatapathConfig:
    """SIGHUP: swap in the new routes; keep the old config if the new one is unusable."""
    try:
        new = load_config(path, need_port=need_port)
    except ConfigError as exc:
        log.error("SIGHUP: keeping the old config: %s", exc)
        return current
    if new.identity() != current.identity():
        log.warning(
            "SIGHUP: tun/local_ip/port changed to %s; they take effect on restart only",
            new.identity(),
        )
    datapath.apply(new)
    log.info("SIGHUP: %d routes", len(new.routes))
    return new
