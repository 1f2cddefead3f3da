"""Pod servers: one process answers on every declared port of every pod.

Sockets are opened inside each pod's namespace (setns) and then served from a single
selector loop, so hundreds of pods cost one interpreter, not hundreds. Each answer names the
pod ("ns/name"), which lets a probe prove it reached the pod it aimed at.
"""

from __future__ import annotations

import selectors
import socket
from collections.abc import Iterable
from dataclasses import dataclass

from labctl.nsutil import in_netns
from labctl.store import PodRecord


@dataclass
class _Server:
    pod: str
    sock: socket.socket
    proto: str


class PodServers:
    """TCP listeners and UDP echo sockets for all pods of a topology."""

    def __init__(self) -> None:
        self.sel = selectors.DefaultSelector()
        self.count = 0

    def open(self, pods: Iterable[PodRecord], pids: dict[str, int]) -> None:
        """Bind every pod's declared ports inside that pod's namespace."""
        for pod in pods:
            with in_netns(pids[pod.key]):
                for port in pod.ports:
                    if port.protocol == "TCP":
                        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                        s.bind(("0.0.0.0", port.containerPort))
                        s.listen(128)
                    else:
                        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                        s.bind(("0.0.0.0", port.containerPort))
                    s.setblocking(False)
                    self.sel.register(s, selectors.EVENT_READ, _Server(pod.key, s, port.protocol))
                    self.count += 1

    def serve(self, timeout: float) -> None:
        """Answer whatever is ready, waiting at most `timeout` seconds."""
        for key, _ in self.sel.select(timeout):
            srv: _Server = key.data
            reply = srv.pod.encode() + b"\n"
            try:
                if srv.proto == "TCP":
                    conn, _ = srv.sock.accept()
                    with conn:
                        conn.setblocking(False)
                        conn.send(reply)
                else:
                    # Drain: one wakeup may carry many probes.
                    while True:
                        _, addr = srv.sock.recvfrom(2048)
                        srv.sock.sendto(reply, addr)
            except (BlockingIOError, ConnectionError):
                continue

    def close(self) -> None:
        """Close every listening socket and the selector."""
        for key in list(self.sel.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        self.sel.close()
