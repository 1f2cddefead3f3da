"""Flannel's UDP backend in userspace: what flanneld's proxy_amd64.c does.

TUN -> UDP: a bare IP packet read from the TUN is looked up by destination in the route table;
no route: an ICMP net unreachable goes back into the TUN; otherwise TTL - 1 and the whole
packet is the payload of one UDP datagram to ``node_ip:port``. UDP -> TUN: TTL - 1, write the
payload into the TUN. No extra header in either direction, so the wire shows UDP dst 8285 whose
payload is the pod-to-pod IP packet.

Batching: consecutive TUN packets to the same peer leave in one sendmsg() with UDP_SEGMENT
(GSO), and the socket has UDP_GRO on, so one receive can return several datagrams. Measured with
``benchmarks/datapath_throughput.py`` this moves about 1.5x the plain one-sendto-per-packet
loop. The datagrams are the same as without batching, but a capture on a veth (which passes GSO
packets through unsegmented) shows a batch as one large UDP datagram holding several inner
packets; ``ethtool -K <underlay> tx-udp-segmentation off`` in the node makes the kernel split
them before the capture point.

Run as ``python -m labctl.datapath.udpproxy --config FILE`` inside the node's netns.
"""

from __future__ import annotations

import errno
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
    run,
    tune_socket,
)
from labctl.datapath.tun import open_tun

PROG = "labctl.datapath.udpproxy"
_BUF = 65536
# <linux/udp.h>: UDP_SEGMENT (send-side GSO, a u16 segment size), UDP_GRO (receive-side).
UDP_SEGMENT = 103
UDP_GRO = 104
#: One GSO send carries at most 64 KiB of UDP payload and (since 5.x) 128 segments; stay below.
_GSO_BYTES = 65000
_GSO_SEGMENTS = 64
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
        self._gso = True
        self._routes: RouteTable[tuple[str, int]] = RouteTable([])
        self._tun = open_tun(config.tun)
        try:
            self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            tune_socket(self._sock)
            self._sock.bind((str(config.local_ip), config.port))
            self._sock.setsockopt(socket.SOL_UDP, UDP_GRO, 1)
        except BaseException:
            os.close(self._tun)
            raise
        self.apply(config)
        # One buffer per direction, reused for every packet. The TUN side holds a GSO batch
        # (up to _GSO_BYTES) plus room to read one more packet of any size behind it.
        self._tbuf = bytearray(_GSO_BYTES + _BUF)
        self._tmv = memoryview(self._tbuf)
        self._ubuf = bytearray(_BUF)
        self._umv = memoryview(self._ubuf)
        self._ubufs = [self._umv]
        self._cmsg_space = socket.CMSG_SPACE(4)

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
        """Move up to BATCH packets from the TUN to their peers, batched with UDP GSO.

        Packets are read back to back into one buffer. While they go to the same peer and none
        is longer than the first, they form one GSO batch that a single sendmsg() hands to the
        kernel, which cuts it into one datagram per packet again; a shorter packet can only end
        a batch (UDP_SEGMENT: all segments but the last have the same size).
        """
        tun, buf, mv = self._tun, self._tbuf, self._tmv
        lookup, readv, dst_of, send = self._routes.lookup, os.readv, _U32.unpack_from, self._send
        off = seg = count = 0
        batch_peer = ("", 0)  # set by the first packet of each batch
        for _ in range(BATCH):
            try:
                n = readv(tun, [mv[off : off + _BUF]])
            except BlockingIOError:
                break
            if n < 20:
                continue
            peer = lookup(dst_of(buf, off + 16)[0])
            if peer is None:
                self._unreachable(mv[off : off + n])
                continue
            if not decrement_ttl(buf, off):
                continue
            if off and (peer != batch_peer or n > seg):
                send(off, seg, batch_peer)
                mv[:n] = bytes(mv[off : off + n])
                off = count = 0
            if not off:
                batch_peer, seg = peer, n
            off += n
            count += 1
            if n < seg or off + seg > _GSO_BYTES or count == _GSO_SEGMENTS:
                send(off, seg, batch_peer)
                off = count = 0
        if off:
            send(off, seg, batch_peer)

    def _send(self, length: int, seg: int, peer: tuple[str, int]) -> None:
        """Send buf[:length], one datagram per ``seg`` bytes, to ``peer``."""
        data = self._tmv[:length]
        try:
            if length == seg or not self._gso:
                for off in range(0, length, seg):
                    self._sock.sendto(data[off : off + seg], peer)
            else:
                cmsg = (socket.SOL_UDP, UDP_SEGMENT, seg.to_bytes(2, sys.byteorder))
                self._sock.sendmsg([data], [cmsg], 0, peer)
        except BlockingIOError:
            self._errors("sndbuf", "UDP send buffer full, dropping")
        except OSError as exc:
            if exc.errno in (errno.EIO, errno.EINVAL) and self._gso:
                # No checksum offload on the route's device (or an old kernel): no GSO here.
                self._log.warning("UDP GSO unavailable (%s); sending one datagram per packet", exc)
                self._gso = False
                self._send(length, seg, peer)
            else:
                self._errors(f"send:{exc.errno}", f"sendto {peer}: {exc}")

    def udp_to_tun(self) -> None:
        """Move up to BATCH receives from the socket into the TUN.

        With UDP_GRO the kernel may hand over several same-size datagrams in one receive; a
        control message gives the datagram size, and each is written to the TUN on its own.
        """
        tun, buf, mv, bufs = self._tun, self._ubuf, self._umv, self._ubufs
        recvmsg_into, write, cmsg_space = self._sock.recvmsg_into, os.write, self._cmsg_space
        for _ in range(BATCH):
            try:
                n, ancillary, _flags, _addr = recvmsg_into(bufs, cmsg_space)
            except BlockingIOError:
                return
            seg = n
            for level, kind, data in ancillary:
                if level == socket.SOL_UDP and kind == UDP_GRO:
                    seg = int.from_bytes(data[:4], sys.byteorder)
            for off in range(0, n, seg):
                end = min(off + seg, n)
                if end - off < 20 or buf[off] >> 4 != 4:
                    self._errors("runt", f"dropping a {end - off}-byte datagram: not IPv4")
                elif decrement_ttl(buf, off):
                    try:
                        write(tun, mv[off:end])
                    except OSError as exc:
                        self._errors(f"tun:{exc.errno}", f"write to TUN: {exc}")


def main(args: Sequence[str] | None = None) -> int:
    """Run the UDP proxy until SIGTERM; see :func:`labctl.datapath.run`."""
    return run(PROG, UdpProxy, need_port=True, argv=args)


if __name__ == "__main__":
    sys.exit(main())
