"""Userspace IPIP for kernels without the ``ipip`` module, byte-compatible with ``tunl0``.

TUN -> wire: the inner packet read from the TUN (``flannel.ipip`` or ``tunl0``) gets the peer
node from the route table (no route: ICMP net unreachable back into the TUN) and leaves through
a raw ``IPPROTO_IPIP`` socket as ``outer IPv4 (proto 4, local_ip -> node_ip) + inner packet``.
Wire -> TUN: the raw socket hands over outer header + inner packet; packets whose outer source
is not a known node are dropped and counted (Calico's INPUT rule drops IPIP from non-nodes),
the others lose the outer header and go into the TUN.

Outer header, as the kernel's ipip_tunnel_xmit() builds it for ``tunl0`` and ``flannel.ipip``
(both ``ttl inherit nopmtudisc``): TTL copied from the inner packet, DF copied from the inner
packet, ECN encapsulated per RFC 6040, DSCP 0, a fresh IP ID. A plain raw socket can't vary TTL
and DF per packet without two setsockopt calls per packet (and IP_PMTUDISC_DO would set DF on
every packet, which tunl0 doesn't), so the socket uses IP_HDRINCL and this module writes the
outer header; the kernel still fills in total length and header checksum. The inner TTL is not
decremented, as in the kernel.

Run as ``python -m labctl.datapath.ipip --config FILE`` inside the node's netns.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import random
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
    internet_checksum,
    run,
    tune_socket,
)
from labctl.datapath.tun import open_tun

PROG = "labctl.datapath.ipip"
IPPROTO_IPIP = 4
_BUF = 65536
_OUTER = 20
_U32 = struct.Struct("!I")
_DF = 0x40  # in the high byte of frag_off


def argv(config_path: str) -> list[str]:
    """Command line the supervisor runs (inside the node's netns) to start this datapath."""
    return [sys.executable, "-m", PROG, "--config", config_path]


class Ipip(Datapath):
    """One TUN fd and one raw protocol-4 socket bound to ``local_ip``."""

    def __init__(self, config: DatapathConfig) -> None:
        self._log = logging.getLogger(PROG)
        self._errors = ErrorLog(self._log)
        self._routes: RouteTable[tuple[tuple[str, int], bytes]] = RouteTable([])
        self._peers: frozenset[int] = frozenset()
        self.unknown_source_drops = 0
        self._tun = open_tun(config.tun)
        try:
            self._sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, IPPROTO_IPIP)
            self._sock.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
            tune_socket(self._sock)
            # Bound, the socket only sees IPIP addressed to this node.
            self._sock.bind((str(config.local_ip), 0))
        except BaseException:
            os.close(self._tun)
            raise
        self.apply(config)
        self._ident = random.randrange(1, 0x10000)
        # TUN -> wire: the inner packet is read in place behind a 20-byte outer header whose
        # constant fields (version/IHL, protocol, source) are written once, here.
        self._tbuf = bytearray(_BUF)
        struct.pack_into(
            "!BBHHHBBH4s", self._tbuf, 0, 0x45, 0, 0, 0, 0, 0, IPPROTO_IPIP, 0,
            config.local_ip.packed,
        )  # fmt: skip
        self._tmv = memoryview(self._tbuf)
        self._tbufs = [self._tmv[_OUTER:]]
        self._rbuf = bytearray(_BUF)
        self._rmv = memoryview(self._rbuf)

    def handlers(self) -> dict[int, Callable[[], None]]:
        """TUN readable: encapsulate; raw socket readable: decapsulate."""
        return {self._tun: self.tun_to_wire, self._sock.fileno(): self.wire_to_tun}

    def apply(self, config: DatapathConfig) -> None:
        """New route table and set of accepted outer sources (the peers' node IPs)."""
        self._routes = RouteTable(
            (r.subnet, ((str(r.node_ip), 0), r.node_ip.packed)) for r in config.routes
        )
        self._peers = frozenset(int(r.node_ip) for r in config.routes)

    def close(self) -> None:
        """Close the raw socket and the TUN fd; the persistent device and its routes stay."""
        self._sock.close()
        os.close(self._tun)

    def summary(self) -> str:
        """Drops from unknown hosts and error counters."""
        drops = self.unknown_source_drops
        return f"dropped from unknown hosts: {drops}; errors: {self._errors.counts}"

    def tun_to_wire(self) -> None:
        """Encapsulate up to BATCH packets from the TUN."""
        tun, buf, mv, bufs = self._tun, self._tbuf, self._tmv, self._tbufs
        lookup, sendto = self._routes.lookup, self._sock.sendto
        readv, dst_of = os.readv, _U32.unpack_from
        ident = self._ident
        for _ in range(BATCH):
            try:
                n = readv(tun, bufs)
            except BlockingIOError:
                break
            if n < 20:
                continue
            peer = lookup(dst_of(buf, _OUTER + 16)[0])
            if peer is None:
                self._unreachable(mv[_OUTER : _OUTER + n])
                continue
            address, packed = peer
            ecn = buf[_OUTER + 1] & 3
            buf[1] = 2 if ecn == 3 else ecn  # RFC 6040: CE is sent as ECT(0)
            ident = (ident + 1) & 0xFFFF or 1  # 0 would make the kernel pick one itself
            buf[4] = ident >> 8
            buf[5] = ident & 0xFF
            buf[6] = buf[_OUTER + 6] & _DF
            buf[8] = buf[_OUTER + 8]
            buf[16:20] = packed
            try:
                sendto(mv[: _OUTER + n], address)
            except BlockingIOError:
                self._errors("sndbuf", "raw socket send buffer full, dropping")
            except OSError as exc:
                self._errors(f"send:{exc.errno}", f"sendto {address[0]}: {exc}")
        self._ident = ident

    def wire_to_tun(self) -> None:
        """Decapsulate up to BATCH IPIP packets from known nodes into the TUN."""
        tun, buf, mv, peers = self._tun, self._rbuf, self._rmv, self._peers
        recv_into, write, src_of = self._sock.recv_into, os.write, _U32.unpack_from
        for _ in range(BATCH):
            try:
                n = recv_into(buf)
            except BlockingIOError:
                return
            src = src_of(buf, 12)[0]
            if src not in peers:
                self.unknown_source_drops += 1
                self._errors(
                    "unknown-source",
                    f"dropping IPIP from {ipaddress.IPv4Address(src)}: not a known node",
                )
                continue
            ihl = (buf[0] & 0x0F) * 4
            if n < ihl + 20 or buf[ihl] >> 4 != 4:
                self._errors("runt", f"dropping IPIP without an inner IPv4 packet ({n} bytes)")
                continue
            if buf[1] & 3 == 3 and not self._propagate_ce(ihl):
                continue
            try:
                write(tun, mv[ihl:n])
            except OSError as exc:
                self._errors(f"tun:{exc.errno}", f"write to TUN: {exc}")

    def _propagate_ce(self, ihl: int) -> bool:
        """Outer CE: mark the inner packet CE (RFC 6040); False if it must be dropped."""
        buf = self._rbuf
        inner_ecn = buf[ihl + 1] & 3
        if inner_ecn == 0:
            # Congestion experienced on a flow that is not ECN-capable: drop, as the kernel does.
            self._errors("ecn", "dropping CE-marked IPIP packet with a Not-ECT inner packet")
            return False
        if inner_ecn != 3:
            buf[ihl + 1] |= 3
            struct.pack_into("!H", buf, ihl + 10, 0)
            hlen = (buf[ihl] & 0x0F) * 4
            struct.pack_into("!H", buf, ihl + 10, internet_checksum(bytes(buf[ihl : ihl + hlen])))
        return True


def main(args: Sequence[str] | None = None) -> int:
    """Run the userspace IPIP datapath until SIGTERM; see :func:`labctl.datapath.run`."""
    return run(PROG, Ipip, need_port=False, argv=args)


if __name__ == "__main__":
    sys.exit(main())
