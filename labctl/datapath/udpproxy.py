"""Flannel's UDP backend in userspace: what flanneld's proxy_amd64.c does.

TUN -> UDP: a bare IP packet read from the TUN is looked up by destination in the route table;
no route: an ICMP net unreachable goes back into the TUN; otherwise TTL - 1 and the whole
packet is the payload of one UDP datagram to ``node_ip:port``. UDP -> TUN: TTL - 1, write the
payload into the TUN. No extra header in either direction, so the wire shows UDP dst 8285 whose
payload is the pod-to-pod IP packet.

Run as ``python -m labctl.datapath.udpproxy --config FILE`` inside the node's netns.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import sys
from collections.abc import Callable, Sequence

from labctl.datapath import (
    BATCH,
    Datapath,
    DatapathConfig,
    ErrorLog,
    RouteTable,
    decrement_ttl,
    net_unreachable,
    run,
    tune_socket,
)
from labctl.datapath.tun import open_tun

PROG = "labctl.datapath.udpproxy"
_BUF = 65536
_U32 = struct.Struct("!I")


def argv(config_path: str) -> list[str]:
    """Command line the supervisor runs (inside the node's netns) to start this datapath."""
    return [sys.executable, "-m", PROG, "--config", config_path]


class UdpProxy(Datapath):
    """One TUN fd and one UDP socket bound to ``local_ip:port``."""

    def __init__(self, config: DatapathConfig) -> None:
        assert config.port is not None
        self._log = logging.getLogger(PROG)
        self._errors = ErrorLog(self._log)
        self._port = config.port
        self._routes: RouteTable[tuple[str, int]] = RouteTable([])
        self._tun = open_tun(config.tun)
        try:
            self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            tune_socket(self._sock)
            self._sock.bind((str(config.local_ip), config.port))
        except BaseException:
            os.close(self._tun)
            raise
        self.apply(config)
        # One buffer per direction, reused for every packet.
        self._tbuf = bytearray(_BUF)
        self._tmv = memoryview(self._tbuf)
        self._tbufs = [self._tmv]
        self._ubuf = bytearray(_BUF)
        self._umv = memoryview(self._ubuf)

    def handlers(self) -> dict[int, Callable[[], None]]:
        """TUN readable: forward to peers; socket readable: deliver into the TUN."""
        return {self._tun: self.tun_to_udp, self._sock.fileno(): self.udp_to_tun}

    def apply(self, config: DatapathConfig) -> None:
        """Swap in a new route table; the sockaddr tuples are built once here, not per packet."""
        self._routes = RouteTable((r.subnet, (str(r.node_ip), self._port)) for r in config.routes)

    def close(self) -> None:
        """Close the socket and the TUN fd; the persistent device and its routes stay."""
        self._sock.close()
        os.close(self._tun)

    def summary(self) -> str:
        """Error counters by kind."""
        return f"errors: {self._errors.counts}"

    def tun_to_udp(self) -> None:
        """Move up to BATCH packets from the TUN to their peers."""
        tun, buf, mv, bufs = self._tun, self._tbuf, self._tmv, self._tbufs
        lookup, sendto = self._routes.lookup, self._sock.sendto
        readv, dst_of = os.readv, _U32.unpack_from
        for _ in range(BATCH):
            try:
                n = readv(tun, bufs)
            except BlockingIOError:
                return
            if n < 20:
                continue
            peer = lookup(dst_of(buf, 16)[0])
            if peer is None:
                self._unreachable(mv[:n])
            elif decrement_ttl(buf):
                try:
                    sendto(mv[:n], peer)
                except BlockingIOError:
                    self._errors("sndbuf", "UDP send buffer full, dropping")
                except OSError as exc:
                    self._errors(f"send:{exc.errno}", f"sendto {peer}: {exc}")

    def udp_to_tun(self) -> None:
        """Move up to BATCH datagrams from the socket into the TUN."""
        tun, buf, mv = self._tun, self._ubuf, self._umv
        recv_into, write = self._sock.recv_into, os.write
        for _ in range(BATCH):
            try:
                n = recv_into(buf)
            except BlockingIOError:
                return
            if n < 20 or buf[0] >> 4 != 4:
                self._errors("runt", f"dropping a {n}-byte datagram that is no IPv4 packet")
                continue
            if decrement_ttl(buf):
                try:
                    write(tun, mv[:n])
                except OSError as exc:
                    self._errors(f"tun:{exc.errno}", f"write to TUN: {exc}")

    def _unreachable(self, packet: memoryview) -> None:
        reply = net_unreachable(packet)
        if reply is None:
            return
        try:
            os.write(self._tun, reply)
        except OSError as exc:
            self._errors(f"icmp:{exc.errno}", f"ICMP net unreachable into TUN: {exc}")


def main(args: Sequence[str] | None = None) -> int:
    """Run the UDP proxy until SIGTERM; see :func:`labctl.datapath.run`."""
    return run(PROG, UdpProxy, need_port=True, argv=args)


if __name__ == "__main__":
    sys.exit(main())
