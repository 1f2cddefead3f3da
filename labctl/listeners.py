"""Pod servers: one process answers on every declared port of every pod (and on port 80 of
every external host, so traffic to the outside has something to reach).

Sockets are opened inside each pod's namespace (setns) and then served from a single
selector loop, so hundreds of pods cost one interpreter, not hundreds. TCP ports answer
HTTP/1.1 like the seed's `myapp` image (status 200; the body's first line is the pod's
"ns/name", the second the client address the pod saw), so `curl` works and a probe proves
which pod it reached and whether its source was NATed; UDP ports echo "ns/name".
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from labctl.nsutil import in_netns
from labctl.topology import PodPort

#: A client that sends no request within this time is dropped.
REQUEST_TIMEOUT = 5.0


class Answering(Protocol):
    """Whatever answers: a pod (`ns/name`) or an external host (its name)."""

    @property
    def key(self) -> str: ...

    @property
    def ports(self) -> Sequence[PodPort]: ...


@dataclass(frozen=True)
class Host:
    """An external host's server: it answers like a pod, under its own name."""

    key: str
    ports: Sequence[PodPort]


@dataclass
class _Server:
    pod: str
    sock: socket.socket
    proto: str


@dataclass
class _Conn:
    pod: str
    sock: socket.socket
    peer: tuple[str, int]
    deadline: float
    data: bytearray = field(default_factory=bytearray)


def http_response(pod: str, peer: tuple[str, int]) -> bytes:
    """What a pod answers to any HTTP request."""
    body = f"{pod}\nclient {peer[0]}:{peer[1]}\n".encode()
    head = (
        "HTTP/1.1 200 OK\r\n"
        "Content-Type: text/plain\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


class PodServers:
    """TCP (HTTP) listeners and UDP echo sockets for the pods of a lab."""

    def __init__(self) -> None:
        self.sel = selectors.DefaultSelector()
        self.count = 0
        self._by_pod: dict[str, list[socket.socket]] = {}

    def open(self, pods: Iterable[Answering], pids: dict[str, int]) -> None:
        """Bind every pod's (or host's) declared ports inside its namespace."""
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
                    self._by_pod.setdefault(pod.key, []).append(s)
                    self.count += 1

    def close_pod(self, key: str) -> None:
        """Close a pod's sockets (before its namespace goes: a socket keeps a namespace alive)."""
        for s in self._by_pod.pop(key, []):
            self.sel.unregister(s)
            s.close()
            self.count -= 1
        for k in list(self.sel.get_map().values()):
            if isinstance(k.data, _Conn) and k.data.pod == key:
                self._drop(k.data)

    def watch(self, sock: socket.socket, on_ready: Callable[[], None]) -> None:
        """Also call `on_ready` when `sock` is readable (the supervisor's control socket)."""
        self.sel.register(sock, selectors.EVENT_READ, on_ready)

    def serve(self, timeout: float) -> None:
        """Answer whatever is ready, waiting at most `timeout` seconds."""
        for key, _ in self.sel.select(timeout):
            data = key.data
            if callable(data):
                data()
            elif isinstance(data, _Conn):
                self._read(data)
            elif data.proto == "TCP":
                self._accept(data)
            else:
                # Drain: one wakeup may carry many probes.
                try:
                    while True:
                        _, addr = data.sock.recvfrom(2048)
                        data.sock.sendto(data.pod.encode() + b"\n", addr)
                except (BlockingIOError, ConnectionError):
                    continue
        now = time.monotonic()
        for k in list(self.sel.get_map().values()):
            if isinstance(k.data, _Conn) and k.data.deadline < now:
                self._drop(k.data)

    def _accept(self, srv: _Server) -> None:
        try:
            conn, peer = srv.sock.accept()
        except (BlockingIOError, ConnectionError):
            return
        conn.setblocking(False)
        c = _Conn(srv.pod, conn, peer, time.monotonic() + REQUEST_TIMEOUT)
        self.sel.register(conn, selectors.EVENT_READ, c)

    def _read(self, c: _Conn) -> None:
        try:
            chunk = c.sock.recv(4096)
        except BlockingIOError:
            return
        except ConnectionError:
            chunk = b""
        c.data += chunk
        # Answer once the request head is complete (or the client stopped sending).
        if chunk and b"\r\n\r\n" not in c.data and b"\n\n" not in c.data:
            return
        if c.data:
            with contextlib.suppress(OSError):
                c.sock.send(http_response(c.pod, c.peer))
        self._drop(c)

    def _drop(self, c: _Conn) -> None:
        self.sel.unregister(c.sock)
        c.sock.close()

    def close(self) -> None:
        """Close every socket and the selector."""
        for key in list(self.sel.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        self.sel.close()
