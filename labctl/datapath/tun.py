"""Attach to a TUN device that the lab engine created beforehand.

The engine creates the device persistent (pyroute2 ``tuntap``, mode tun, IFF_NO_PI), addresses
it and points routes at it. A datapath process only attaches a file descriptor to it, so the
device, its addresses and its routes survive a restart of that process.
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct

# From <linux/if_tun.h>; the _IOW numbers are those of x86_64/arm64/most little-endian arches.
TUNSETIFF = 0x400454CA
TUNGETIFF = 0x800454D2
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
IFF_PERSIST = 0x0800
TUNSETOFFLOAD = 0x400454D0
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02

_IFREQ = struct.Struct("16sH")


class TunError(RuntimeError):
    """The named TUN device is missing or is not the persistent device the engine made."""


def open_tun(name: str, *, vnet_hdr: bool = False) -> int:
    """Attach to the existing persistent TUN device ``name`` and return a non-blocking fd.

    With ``vnet_hdr`` every read and write on the fd starts with a 10-byte ``virtio_net_hdr``
    (IFF_VNET_HDR), through which a write can hand the kernel one large TCP packet to treat as
    a GRO aggregate of segments.

    Raises TunError if no interface of that name exists in this network namespace, or if it is
    not a persistent TUN device (TUNSETIFF would otherwise silently create a new, transient
    device that has neither addresses nor routes).
    """
    try:
        socket.if_nametoindex(name)
    except OSError as exc:
        raise TunError(f"no interface {name!r} in this network namespace") from exc
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        try:
            flags = IFF_TUN | IFF_NO_PI | (IFF_VNET_HDR if vnet_hdr else 0)
            fcntl.ioctl(fd, TUNSETIFF, _IFREQ.pack(name.encode(), flags))
        except OSError as exc:
            # EINVAL/EBUSY: the name belongs to a non-TUN link, or a TAP, or flags differ.
            raise TunError(f"cannot attach to {name!r} as IFF_TUN|IFF_NO_PI: {exc}") from exc
        _, flags = _IFREQ.unpack(fcntl.ioctl(fd, TUNGETIFF, bytes(_IFREQ.size)))
        if not flags & IFF_PERSIST:
            # The device vanished between the lookup and TUNSETIFF, and the kernel made a new
            # transient one; closing fd removes it again.
            raise TunError(f"{name!r} is not a persistent TUN device")
    except BaseException:
        os.close(fd)
        raise
    return fd


def enable_tcp_offload(fd: int) -> None:
    """Let the kernel hand ``fd`` (opened with ``vnet_hdr``) unsegmented TCPv4 packets of up
    to 64 KB and packets with partial checksums, both described by the virtio_net_hdr; the
    reader must then segment and checksum them itself. The setting belongs to the device and
    outlives the fd, so every process attaching to it must handle such packets."""
    fcntl.ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4)
